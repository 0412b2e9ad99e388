"""The dynamics kernel (docs/dynamics.md): limits it must reduce to, the exact steady state,
closed forms of the flow shop, quadrature of the noisy barrier, enumeration of expert-rank
maxima, and chunk-size independence for every option."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from afd_jax.errors import InputError
from afd_jax.kernels import sampling as KS
from afd_jax.kernels.dynamics import (
    Dynamics,
    attention_noise,
    expert_rank_loads,
    uniform_ranks,
)
from afd_jax.kernels.options import ROUTINGS
from afd_jax.model.exact import exact_step_times
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.montecarlo.dynamics import flow_shop
from afd_jax.montecarlo.simulate import simulate
from afd_jax.workload.containers import TraceWorkload
from afd_jax.workload.slotload import slot_load_pmf

ROUTED = tuple(r for r in ROUTINGS if r != "in-place")  # every load-aware policy

LAT = Latency(
    alpha_attn=0.05, beta_attn=10.0, alpha_ffn=0.5, beta_ffn=20.0, alpha_comm=0.01, beta_comm=2.0
)
SERIAL = ModelOptions(overlap="serial")
KW = dict(steps=256, warmup=0, replications=2, seed=3)


@pytest.fixture(scope="module")
def trace():
    """A small heavy-ish tailed trace workload and its sampler facts."""
    rng = np.random.default_rng(0)
    p = np.minimum(rng.pareto(1.5, 400) * 40, 600).astype(np.int64)
    d = rng.integers(1, 40, 400)
    return TraceWorkload("synthetic", p, d)


def _run(w, r_max=4, batch=4, **kw):
    return simulate(w, LAT, batch, r_max, **{**KW, **kw})


def test_in_place_dynamics_reproduce_the_trajectory_kernel(trace):
    a = _run(trace, kernel="trajectory")
    b = _run(trace, dynamics=Dynamics())
    np.testing.assert_array_equal(a.mean_tau, b.mean_tau)
    np.testing.assert_array_equal(a.se_tau, b.se_tau)
    np.testing.assert_allclose(a.throughput, b.throughput, rtol=1e-12)
    np.testing.assert_allclose(a.barrier_share, b.barrier_share, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.idle_ffn, b.idle_ffn, rtol=1e-5)
    assert b.kernel == "dynamics" and np.all(b.empty_slot_fraction == 0)
    assert "empty_slot_fraction" in b.results_table()[0]
    assert "empty_slot_fraction" not in a.results_table()[0]


@pytest.mark.parametrize("slack", [0])  # slack 2: experiments/dynamics.py (same routed path)
def test_one_worker_makes_every_routing_policy_identical(trace, slack):
    ref = None
    for routing in ROUTED + (("in-place",) if slack == 0 else ()):
        res = _run(trace, dynamics=Dynamics(routing=routing, slot_slack=slack))
        if ref is None:
            ref = res
        np.testing.assert_array_equal(res.mean_tau[0], ref.mean_tau[0], err_msg=routing)


def test_kv_capacity_above_any_load_equals_no_capacity(trace):
    batch = 4
    cap = batch * int((trace.prompt + trace.decode).max()) + 1
    a = _run(trace, dynamics=Dynamics())
    b = _run(trace, dynamics=Dynamics(kv_capacity=cap))
    np.testing.assert_array_equal(a.mean_tau, b.mean_tau)


@pytest.mark.slow
def test_kv_capacity_above_any_load_equals_no_capacity_when_routed(trace):
    cap = 4 * int((trace.prompt + trace.decode).max()) + 1
    c = _run(trace, dynamics=Dynamics(routing="balanced"))
    d = _run(trace, dynamics=Dynamics(routing="balanced", kv_capacity=cap))
    np.testing.assert_array_equal(c.mean_tau, d.mean_tau)


def test_kv_capacity_leaves_slots_empty(trace):
    a = _run(trace, dynamics=Dynamics())
    b = _run(trace, dynamics=Dynamics(kv_capacity=600))  # the largest prompt: 600
    empty = b.empty_slot_fraction  # 0.04 to 0.17 over r (2 x 256 steps of 4 x 4 slots)
    assert np.all(empty > 0.01) and empty.mean() > 0.05 and np.all(empty < 1)
    np.testing.assert_allclose(b.active_fraction, 1 - b.empty_slot_fraction)
    # the capacity turns the heaviest loads away: no slower steps (not a law for throughput,
    # whose tokens fall with the empty slots while the steps get shorter)
    assert np.all(b.mean_tau <= a.mean_tau + 4 * np.hypot(a.se_tau, b.se_tau))


def test_kv_capacity_below_the_prompts_is_refused(trace):
    """A prompt above the KV capacity fits no worker: in place it held its slot for good, so
    the run's throughput fell with its length (a review: empty slots 0.65, 0.74, 0.81 after
    256, 2,048, 8,192 steps). Refused before any work when more than 1e-12 of the requests
    are such, naming the smallest capacity that leaves at most that share; a parametric
    workload's far tail (cut at 1e-15) does not count."""
    from afd_jax.montecarlo.simulate import check_kv_capacity
    from afd_jax.workload import families as fam

    share = float(np.mean(trace.prompt[trace.decode > 0] > 300))
    for routing in ("in-place", "balanced"):
        with pytest.raises(InputError) as e:
            _run(trace, dynamics=Dynamics(routing=routing, kv_capacity=300))
        assert e.value.field == "kv-capacity"
        msg = str(e.value)
        assert f"{share:.3g} of the requests" in msg and "at least 600 tokens" in msg
    geo = fam.independent(fam.geometric(20.0, min=0), fam.geometric(10.0))
    p = np.asarray(geo.components[0].prompt.values)
    tail = np.cumsum(geo.components[0].prompt.pmf[::-1])[::-1]  # Pr(P >= p)
    need = int(p[np.argmax(tail <= 1e-12)]) - 1  # the smallest C with Pr(P > C) <= 1e-12
    with pytest.raises(InputError, match=f"at least {need} tokens"):
        check_kv_capacity(geo, need - 1)
    check_kv_capacity(geo, need)
    check_kv_capacity(geo, 0)  # no capacity
    with pytest.raises(InputError, match="at least 601 tokens"):  # the load offset counts
        check_kv_capacity(trace, 600, load_offset=1)


def test_kv_capacity_names_the_right_capacity_for_a_large_trace():
    """10^5 rows: 1 - a cumsum of 1e-5 shares never fell below 1e-12 (round-off), so the error
    named the smallest prompt as enough (a review); the tail is now summed from the top."""
    from afd_jax.montecarlo.simulate import check_kv_capacity

    rng = np.random.default_rng(1)
    p = np.concatenate([[9000], rng.integers(100, 4000, 99_999)])
    big = TraceWorkload("big", p, np.full(p.size, 10))
    with pytest.raises(InputError, match="at least 9000 tokens"):
        check_kv_capacity(big, 5000)
    check_kv_capacity(big, 9000)


def test_in_place_agrees_with_the_exact_steady_state(trace):
    # the in-place KV path (capacity never binding); segments of 256 steps, 2 replications
    # per call: the kernel compiled for the other tests
    cap = 4 * int((trace.prompt + trace.decode).max()) + 1
    res = _run(trace, steps=2048, warmup=128, replications=4, seed=11, segment_steps=256,
               replications_per_call=2, dynamics=Dynamics(kv_capacity=cap))  # fmt: skip
    exact = exact_step_times(slot_load_pmf(trace), LAT, 4, 4)
    assert np.all(np.abs(res.mean_tau - exact) < 4 * res.se_tau), (res.mean_tau, exact)


NOISE = dict(jitter_cv=0.3, straggler_p=0.1, straggler_s=3.0)
EXPERTS = dict(experts=8, expert_k=2, expert_ranks=4, expert_skew=1.0)
EXPERTS_UNIFORM = dict(experts=8, expert_k=2, expert_ranks=4)
OPTIONS = [
    Dynamics(kv_capacity=650, microbatches=2, **NOISE, **EXPERTS),
    pytest.param(  # the routed path (balanced, power-of-d and lookahead share it), all options
        Dynamics(
            routing="lookahead",
            lookahead=4,
            slot_slack=1,
            kv_capacity=600,
            microbatches=2,
            **NOISE,
            **EXPERTS_UNIFORM,  # drawn rank by rank (the in-place case: the Gumbel top-k)
        ),
        marks=pytest.mark.slow,
    ),
]


# power-of-d shares the routed path of balanced and lookahead (its choice is tested above)
@pytest.mark.parametrize("cfg", OPTIONS, ids=["in-place", "routed"])
def test_same_seed_same_numbers_whatever_the_chunking(trace, cfg):
    kw = dict(dynamics=cfg, steps=300, replications=3)
    a = _run(trace, segment_steps=128, replications_per_call=1, **kw)
    b = _run(trace, segment_steps=384, replications_per_call=2, **kw)
    for f in ("mean_tau", "se_tau", "throughput", "barrier_share", "empty_slot_fraction"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    np.testing.assert_array_equal(a.step_p99, b.step_p99)


# ---------------------------------------------------------------- noise


def test_zero_jitter_is_no_noise():
    eps = attention_noise(jr.key(0), Dynamics(jitter_cv=0.0, straggler_s=3.0), (1000,))
    np.testing.assert_array_equal(np.asarray(eps), 1.0)


def test_jitter_has_mean_one_and_the_asked_cv():
    eps = np.asarray(attention_noise(jr.key(1), Dynamics(jitter_cv=0.4), (200_000,)), np.float64)
    se = eps.std() / math.sqrt(eps.size)
    assert abs(eps.mean() - 1.0) < 4 * se
    assert abs(eps.std() / eps.mean() - 0.4) < 0.01


def _expected_max_noise(r: int, cv: float, p: float, s: float) -> float:
    """E[max of r i.i.d. noise draws] by quadrature of 1 - F(x)^r."""
    sigma = math.sqrt(math.log1p(cv * cv))
    mu = -sigma * sigma / 2

    def cdf(x):
        base = scipy.stats.lognorm.cdf(x, sigma, scale=math.exp(mu))
        slow = scipy.stats.lognorm.cdf(x / s, sigma, scale=math.exp(mu))
        return (1 - p) * base + p * slow

    val, _ = scipy.integrate.quad(lambda x: 1 - cdf(x) ** r, 0, np.inf, limit=200)
    return val


def test_noisy_barrier_matches_quadrature_with_deterministic_loads():
    sampler = KS.table_sampler(np.array([50]), np.array([1]))  # every load is 50 per slot
    cfg = Dynamics(jitter_cv=0.3, straggler_p=0.1, straggler_s=2.0)
    batch, r_max = 4, 6
    res = simulate(sampler, LAT, batch, r_max, steps=1024, replications=4, seed=5,
                   opts=SERIAL, dynamics=cfg)  # fmt: skip
    r = np.arange(1, r_max + 1)
    t_a = LAT.alpha_attn * 50 * batch + LAT.beta_attn
    other = (LAT.alpha_comm * r * batch + LAT.beta_comm) + (LAT.alpha_ffn * r * batch + 20.0)
    want = np.array([t_a * _expected_max_noise(k, 0.3, 0.1, 2.0) for k in r]) + other
    assert np.all(np.abs(res.mean_tau - want) < 4 * res.se_tau), (res.mean_tau, want)


# ---------------------------------------------------------------- micro-batches


def test_one_microbatch_equals_the_serial_step(trace):
    a = _run(trace, opts=SERIAL, dynamics=Dynamics())
    b = _run(trace, dynamics=Dynamics(microbatches=1))
    np.testing.assert_allclose(b.mean_tau, a.mean_tau, rtol=2e-6)
    np.testing.assert_allclose(b.barrier_share, a.barrier_share, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stages", [(30.0, 10.0, 20.0), (5.0, 40.0, 12.0), (8.0, 8.0, 8.0)])
def test_flow_shop_of_equal_microbatches_tends_to_the_pipelined_step(stages):
    a, c, f = stages
    for m in (1, 2, 3, 8, 64):
        got = float(flow_shop(jnp.full((m,), a / m, jnp.float32), c / m, f / m))
        # identical jobs: one job's three stages, then m - 1 more of the bottleneck stage
        want = (a + c + f) / m + (m - 1) * max(a, c, f) / m
        assert got == pytest.approx(want, rel=1e-5)
    assert want == pytest.approx(max(a, c, f), rel=(a + c + f) / (64 * max(a, c, f)))


# ---------------------------------------------------------------- expert imbalance


def _exact_max_rank_load(tokens: int, e: int, k: int, g: int, skew: float) -> float:
    """E[max_g N_g] by enumerating the ordered top-k picks of every token (Plackett-Luce
    with weights (e + 1)^-skew, uniform when skew = 0)."""
    w = np.arange(1, e + 1, dtype=np.float64) ** -skew
    picks, probs = [], []
    for seq in itertools.permutations(range(e), k):
        p, left = 1.0, w.sum()
        for x in seq:
            p *= w[x] / left
            left -= w[x]
        counts = np.bincount(np.array(seq) // (e // g), minlength=g)
        picks.append(counts)
        probs.append(p)
    total = 0.0
    for combo in itertools.product(range(len(picks)), repeat=tokens):
        n = sum(picks[i] for i in combo)
        total += math.prod(probs[i] for i in combo) * n.max()
    return total


@pytest.mark.parametrize(
    ("tokens", "e", "k", "g", "skew", "by_rank"),
    [(3, 4, 2, 2, 0.0, True), (3, 4, 2, 2, 1.0, False), (2, 4, 3, 2, 0.0, False),
     (2, 8, 3, 2, 0.0, True)],
)  # fmt: skip
def test_expert_rank_maximum_matches_enumeration(tokens, e, k, g, skew, by_rank):
    cfg = Dynamics(experts=e, expert_k=k, expert_ranks=g, expert_skew=skew)
    assert uniform_ranks(cfg) == by_rank  # both ways of drawing, uniform routing in both
    n = np.asarray(
        jax.jit(expert_rank_loads, static_argnums=(1, 2))(jr.key(2), cfg, (20_000, tokens))
    )
    assert np.all(n.sum(axis=-1) == k * tokens)
    mx = n.max(axis=-1).astype(np.float64)
    want = _exact_max_rank_load(tokens, e, k, g, skew)
    assert abs(mx.mean() - want) < 4 * mx.std() / math.sqrt(mx.size), (mx.mean(), want)


def test_uniform_rank_counts_are_multivariate_hypergeometric():
    """One token's counts per rank when drawn rank by rank: the law of a uniform k-subset of
    E experts, prod C(E / G, c_g) / C(E, k), cell by cell within 5 standard errors."""
    e, k, g, n = 12, 4, 3, 200_000
    cfg = Dynamics(experts=e, expert_k=k, expert_ranks=g)
    assert uniform_ranks(cfg)
    c = np.asarray(expert_rank_loads(jr.key(7), cfg, (n, 1)))
    rows, counts = np.unique(c, axis=0, return_counts=True)
    cells = dict(zip(map(tuple, rows.tolist()), counts.tolist(), strict=True))
    support = [x for x in itertools.product(range(k + 1), repeat=g) if sum(x) == k]
    assert set(cells) <= set(support)
    for x in support:
        p = math.prod(math.comb(e // g, ci) for ci in x) / math.comb(e, k)
        got = cells.get(x, 0) / n
        assert abs(got - p) < 5 * math.sqrt(p * (1 - p) / n), (x, got, p)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_power_of_d_takes_the_lightest_of_d_uniform_picks_from_the_pool(d):
    """power-of-d's choice against its law: d workers drawn uniformly (with replacement)
    among those with room and short of B - slack, the lightest taken, so with distinct loads
    worker j wins with probability (n_>=j^d - n_>j^d) / n^d (n_>=j: pool workers at least as
    loaded); a full worker, one with room but not short, and an inactive one are never
    chosen. Cell by cell, 5 SE."""
    from afd_jax.kernels import dynamics as KD

    cfg = Dynamics(routing="power-of-d", routing_d=d, slot_slack=1)
    load = np.array([50, 10, 0, 30, 20, 5])
    count = jnp.asarray([2, 2, 5, 2, 3, 2], jnp.int32)  # B = 4: 2 full, 4 not short
    active = jnp.arange(6) < 5  # worker 5 inactive
    rt = KD._Route(*(None,) * 2, jnp.asarray(load, jnp.int32), count, *(None,) * 5)
    n = 200_000
    words = jr.bits(jr.key(4), (n, d), jnp.uint32)
    choose = jax.jit(jax.vmap(lambda w: KD._choose_worker(w, rt, 7, active, cfg, 4)))
    j, ok = (np.asarray(x) for x in choose(words))
    assert ok.all()
    got = np.bincount(j, minlength=6) / n
    pool = [0, 1, 3]
    for w in range(6):
        ge = int((load[pool] >= load[w]).sum())
        p = (ge**d - (ge - 1) ** d) / len(pool) ** d if w in pool else 0.0
        assert abs(got[w] - p) <= 5 * math.sqrt(p * (1 - p) / n), (w, got[w], p)


def test_expert_imbalance_only_slows_the_ffn(trace):
    a = _run(trace, dynamics=Dynamics())
    b = _run(trace, dynamics=Dynamics(experts=16, expert_k=2, expert_ranks=4))
    assert np.all(b.mean_tau >= a.mean_tau)
    assert np.all(b.idle_ffn <= a.idle_ffn + 1e-9)


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "cfg, field",
    [
        (Dynamics(routing="random"), "routing"),
        (Dynamics(slot_slack=1), "slot-slack"),
        (Dynamics(routing="balanced", slot_slack=4), "slot-slack"),
        (Dynamics(microbatches=3), "microbatches"),
        (Dynamics(straggler_p=1.5), "straggler"),
        (Dynamics(routing="lookahead", lookahead=0), "lookahead"),
        (Dynamics(experts=6, expert_k=2, expert_ranks=4), "experts"),
    ],
)
def test_bad_dynamics_are_input_errors(trace, cfg, field):
    with pytest.raises(InputError) as e:
        _run(trace, dynamics=cfg)
    assert e.value.field == field


# ---------------------------------------------------------------- CLI and sweep


def _cli(*extra):
    from conftest import trace_path

    base = ["simulate", "--quiet", "--workload", str(trace_path("azure_code")), "--batch", "4"]
    base += ["--r-max", "3", "--steps", "256", "--replications", "2", "--latency", "paper-v1"]
    return base + list(extra)


def test_cli_dynamics_json_reports_empty_slots_and_the_idealised_optimum(capsys):
    from afd_jax.cli import main

    assert main(_cli("--straggler", "0.05,2", "--kv-capacity", "8000", "--json")) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["kernel"] == "dynamics"
    assert out["dynamics"]["straggler_p"] == 0.05 and out["dynamics"]["kv_capacity"] == 8000
    assert set(out["idealised"]["r_best"]) == {"mean_field", "gaussian", "exact"}
    for row in out["results"]:
        assert 0.0 <= row["empty_slot_fraction"] < 1.0
        assert row["ci_low"] <= row["throughput"] <= row["ci_high"]


@pytest.mark.parametrize(
    "extra, field",
    [
        (("--microbatches", "3"), "microbatches"),
        (("--routing", "balanced", "--kernel", "fast"), "kernel"),
        (("--slot-slack", "1"), "slot-slack"),
        (("--experts", "6,2,4"), "experts"),
        (("--microbatches", "-1"), "microbatches"),  # said "must divide B = 2" (a review)
        (("--jitter-cv", "inf"), "jitter-cv"),  # ran, with NaN results
        (("--straggler", "0.5,inf"), "straggler"),
        (("--experts", "8,2,4", "--expert-skew", "inf"), "expert-skew"),
        (("--lookahead", "3"), "lookahead"),  # ignored without --routing lookahead
        (("--routing-d", "3"), "routing-d"),
        (("--kv-capacity", "3000"), "kv-capacity"),  # the trace's largest prompt: 7,437
    ],
)
def test_cli_bad_dynamics_exit_2_with_one_line(capsys, extra, field):
    from afd_jax.cli import main

    assert main(_cli(*extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"field {field}" in err[0]


@pytest.mark.parametrize(
    "mc, key",
    [
        ("routing='random'", "mc.routing"),
        ("straggler=[0.1]", "mc.straggler"),
        ("experts=[8, 2, 3]", "mc.experts"),
        ("jitter_cv='x'", "mc.jitter_cv"),
    ],
)
def test_sweep_mc_dynamics_are_validated_with_the_spec(mc, key):
    import tomllib

    from afd_jax.studies.sweep import spec as S

    text = f"batch = [1]\n[workloads]\nspecs=['x']\n[mc]\n{mc}"
    with pytest.raises(InputError) as err:
        S.parse_sweep_spec(tomllib.loads(text), "bad.toml")
    assert err.value.field == key and err.value.path == "bad.toml"


def test_sweep_mc_kv_capacity_is_checked_against_each_workload_before_any_work():
    import tomllib

    from afd_jax.studies.sweep import spec as S
    from afd_jax.studies.sweep.plan import make_plan

    text = (
        "methods = ['mc']\nbatch = [4]\nr_max = 2\n[workloads]\n"
        "specs = ['deterministic:prompt=50,decode=5', 'geometric:prompt=20,decode=10']\n"
        "[latency]\nbase = 'paper-v1'\n[mc]\nkv_capacity = {}\n"
    )
    with pytest.raises(InputError, match=r"workloads\[1\]") as err:
        make_plan(S.parse_sweep_spec(tomllib.loads(text.format(100)), "kv.toml"))
    assert err.value.field == "mc.kv_capacity" and err.value.path == "kv.toml"
    make_plan(S.parse_sweep_spec(tomllib.loads(text.format(600)), "kv.toml"))
    analytic = text.format(100).replace("methods = ['mc']", "methods = ['exact']")
    make_plan(S.parse_sweep_spec(tomllib.loads(analytic), "kv.toml"))  # mc's options unread


def test_sweep_mc_method_runs_the_dynamics(tmp_path, trace):
    import tomllib

    from afd_jax.studies.sweep import spec as S
    from afd_jax.studies.sweep.evaluate import mc_chunk
    from afd_jax.studies.sweep.plan import make_plan

    path = tmp_path / "t.csv"
    rows = "\n".join(f"{p},{d}" for p, d in zip(trace.prompt, trace.decode, strict=True))
    path.write_text("ContextTokens,GeneratedTokens\n" + rows + "\n")
    text = f"""
r_max = 4
methods = ["mc"]
batch = [4]
[workloads]
specs = ["{path}"]
[latency.set]
alpha_attn = 0.05
beta_attn = 10.0
alpha_ffn = 0.5
beta_ffn = 20.0
alpha_comm = 0.01
beta_comm = 2.0
[mc]
steps = 256
replications = 2
seed = 3
jitter_cv = 0.3
"""
    plan = make_plan(S.parse_sweep_spec(tomllib.loads(text), "s.toml"))
    got, _ = mc_chunk(plan, slice(0, 1))
    want = _run(plan.workloads[0].workload, dynamics=Dynamics(jitter_cv=0.3))
    np.testing.assert_allclose(got[0], want.throughput, rtol=1e-12)


def test_lookahead_keeps_the_admitted_mix_and_balances(trace):
    """Holding k - 1 requests back changes the order of admission, not the mix: the mean slot
    load stays that of in-place within 4 SE; the barrier share falls at r = 4."""
    a = _run(trace, dynamics=Dynamics(), steps=1024)
    b = _run(trace, dynamics=Dynamics(routing="lookahead", lookahead=4), steps=1024)
    se = math.hypot(a.se_slot_load, b.se_slot_load)
    assert abs(a.mean_slot_load - b.mean_slot_load) < 4 * se
    assert b.barrier_share[3] < a.barrier_share[3]


@pytest.mark.slow
def test_load_aware_routing_beats_in_place_on_a_heavy_tailed_shared_trace():
    """azure_code, paper-v1, B = 36, r = 4 (the setting of docs/dynamics.md): balanced and
    lookahead cut the barrier share by half or more and raise the throughput by more than 4
    combined SE (fixed seed)."""
    from conftest import trace_path

    from afd_jax.model.latency_io import resolve_latency
    from afd_jax.workload.traces import load_trace

    w = load_trace(trace_path("azure_code"))
    lat, opts = resolve_latency("paper-v1")
    kw = dict(steps=2048, warmup=512, replications=3, seed=1, opts=opts)
    base = simulate(w, lat, 36, 4, dynamics=Dynamics(), **kw)
    for cfg in (Dynamics(routing="balanced"), Dynamics(routing="lookahead", lookahead=8)):
        res = simulate(w, lat, 36, 4, dynamics=cfg, **kw)
        assert res.barrier_share[3] < 0.5 * base.barrier_share[3], cfg.routing
        se = math.hypot(res.se[3], base.se[3])
        assert res.throughput[3] - base.throughput[3] > 4 * se, cfg.routing


def test_routed_steps_take_every_live_request(trace):
    """A routed step takes every live fresh request from its slot's stream, routed or not: a
    KV stop drops the ones left, as fresh draws would be (kept, balanced routing, longest
    first, handed the next step the short ones it had left: a biased law; a review measured
    the empty share at 0.097 against 0.113 before the streams). Counted per bundle over 60
    steps of every routed policy with a capacity that stops the routing."""
    import jax

    from afd_jax.kernels.dynamics import advance_routed, init_dynamics

    sampler = KS.alias_sampler(trace.prompt, trace.decode, size=512)
    batch, r_max = 4, 3
    want_active = (np.arange(r_max) + 1) * batch
    for routing in ROUTED:
        cfg = Dynamics(
            routing=routing, kv_capacity=350, lookahead=3 if routing == "lookahead" else 1
        )
        st = init_dynamics(jr.key(1), sampler, r_max, batch, "stationary", cfg)
        step = jax.jit(lambda k, s, c=cfg: advance_routed(k, jr.key(9), s, sampler, c, batch)[0])
        stops = 0
        for t in range(60):
            occ, age, decode = (np.asarray(x) for x in (st.occ, st.age, st.decode))
            staying = (occ & (age + 1 < decode)).sum(axis=(1, 2))
            new = step(jr.fold_in(jr.key(2), t), st)
            taken = (np.asarray(new.drawn) - np.asarray(st.drawn)).sum(axis=(1, 2))
            np.testing.assert_array_equal(taken, want_active - staying, err_msg=routing)
            stops += int((np.asarray(new.occ).sum(axis=(1, 2)) < want_active).sum())
            st = new
        assert stops > 5, routing  # the capacity did stop the routing


def test_fresh_order_and_longest_first_are_stable_argsorts():
    """The counting sort of the routing order (all of it and its head) and the prompt sort of
    ``balanced`` against NumPy's stable argsort of the same keys."""
    from afd_jax.kernels.dynamics import fresh_order, longest_first

    rng = np.random.default_rng(3)
    for _ in range(20):
        occ = rng.random((5, 37)) < 0.7
        done = occ & (rng.random(occ.shape) < 0.3)
        rank = np.where(done, 0, np.where(occ & ~done, 2, 1)).reshape(-1)
        got = np.asarray(jax.jit(fresh_order)(done, occ & ~done))
        np.testing.assert_array_equal(got, np.argsort(rank, kind="stable"))
        head = np.asarray(jax.jit(fresh_order, static_argnums=2)(done, occ & ~done, 50))
        np.testing.assert_array_equal(head, got[:50])
        p = rng.integers(0, 6, 185).astype(np.int32)  # ties: their order must be kept
        n_fresh = int(rng.integers(0, 40))
        key = np.where(np.arange(185) < n_fresh, -p, 1)
        got = np.asarray(longest_first(jnp.asarray(p), jnp.int32(n_fresh)))
        np.testing.assert_array_equal(got, np.argsort(key, kind="stable"))


def test_routing_loop_stops_when_every_row_and_bundle_is_done(trace, monkeypatch):
    """The routing ``while_loop`` of a routed step runs while any row or bundle vmapped
    around it has requests left (:func:`any_member`), so that its condition is not batched (a
    batched one selects every bundle's slots at every iteration); a bundle that is done
    changes nothing: three rows of routed steps from a cold start (``lookahead`` and
    ``power-of-d`` with slack, ``lookahead``'s window carried by the body, ``power-of-d`` and
    ``balanced`` at a KV capacity at which bundles stop early) equal the loop of each
    bundle's own condition, bit for bit."""
    from afd_jax.kernels import dynamics as KD

    anyone = jax.vmap(jax.vmap(KD.any_member))
    np.testing.assert_array_equal(anyone(jnp.arange(6).reshape(2, 3) == 4), True)  # for all
    np.testing.assert_array_equal(anyone(jnp.arange(6).reshape(2, 3) == 7), False)
    assert bool(KD.any_member(jnp.bool_(True)))

    def count_up(n):  # counts to the largest n of all members, each member's to its own
        def body(c):
            return c[0] + 1, c[1] + (c[0] < n).astype(jnp.int32)

        return jax.lax.while_loop(lambda c: KD.any_member(c[0] < n), body, (0, 0))

    iters, own = jax.jit(jax.vmap(jax.vmap(count_up)))(jnp.array([[3, 9, 0], [5, 2, 7]]))
    np.testing.assert_array_equal(iters, 9)
    np.testing.assert_array_equal(own, [[3, 9, 0], [5, 2, 7]])
    sampler = KS.alias_sampler(trace.prompt, trace.decode, size=512)
    # with slack a bundle that routed its requests still has room: what it would route next
    # must be masked (without slack every worker is full, and no request fits)
    for cfg in (  # slack: lookahead and power-of-d; balanced at a KV capacity
        Dynamics(routing="lookahead", lookahead=3, slot_slack=2),
        Dynamics(routing="power-of-d", slot_slack=1, kv_capacity=300),
        Dynamics(routing="balanced", kv_capacity=300),
    ):
        st = jax.vmap(lambda k, c=cfg: KD.init_dynamics(k, sampler, 4, 4, "cold", c))(
            jr.split(jr.key(1), 3)
        )
        steps = [_routed_steps(sampler, cfg, jr.split(jr.key(2), 3)) for _ in range(2)]
        with monkeypatch.context() as m:
            m.setattr(KD, "any_member", lambda flag: flag)  # each bundle's own condition
            assert _batched_loop_condition(steps[0], st)
            want = steps[0](st, 0)  # traced (and compiled) here
        assert not _batched_loop_condition(steps[1], st)
        got = steps[1](st, 0)
        short = False  # a bundle left with fewer requests than its workers' B: the KV stop
        for t in range(1, 12):
            want, got = steps[0](want, t), steps[1](got, t)
            for a, b in zip(want, got, strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            short |= bool(np.any(np.asarray(got.occ).sum(axis=(-2, -1)) < np.arange(1, 5) * 4))
        assert short == (cfg.kv_capacity > 0), cfg


@pytest.mark.parametrize("routing", ROUTED)
def test_routed_request_that_fits_nowhere_ends_the_routing(routing):
    """Routed, a request that fits nowhere under the KV capacity ends the step's routing:
    the smaller requests after it stay unrouted although they would fit (two empty workers
    of two slots, capacity 100: prompts 150, 50, 50, 50 route none; 50, 50, 50, 50 route
    four)."""
    from afd_jax.kernels import dynamics as KD

    cfg = Dynamics(routing=routing, kv_capacity=100, lookahead=1)
    zeros = jnp.zeros((2, 2), jnp.int32)
    st = KD.DynState(zeros, zeros, zeros, jnp.zeros((2, 2), bool), None, zeros)
    src, decode = jnp.arange(4, dtype=jnp.int32), jnp.full(4, 5, jnp.int32)
    if routing == "lookahead":  # a window of one: the new request alone, in draw order
        st = st._replace(queue=jnp.zeros((0, 3), jnp.int32))
    for first, routed in ((150, 0), (50, 4)):
        prompt = jnp.array([first, 50, 50, 50], jnp.int32)
        out = KD.route_bundle(jr.key(0), st, (prompt, decode, src), 2, cfg, 2)
        assert int(out.occ.sum()) == routed, (routing, first)


def test_a_policy_without_its_worker_choice_is_refused():
    """A routing name the kernel has no worker choice for raises, rather than running as
    power-of-d (the last branch: a new policy added to ROUTINGS alone ran as it, a review)."""
    from afd_jax.kernels import dynamics as KD

    zeros = jnp.zeros((2, 2), jnp.int32)
    st = KD.DynState(zeros, zeros, zeros, jnp.zeros((2, 2), bool), None, zeros)
    fresh = (jnp.full(4, 50, jnp.int32), jnp.full(4, 5, jnp.int32), jnp.arange(4, dtype=jnp.int32))
    with pytest.raises(ValueError, match="no worker choice for routing 'round-robin'"):
        KD.route_bundle(jr.key(0), st, fresh, 2, Dynamics(routing="round-robin"), 2)


def _routed_steps(sampler, cfg, keys):
    """A new jitted function (its own trace) of a routed step of every row of ``keys``."""
    from afd_jax.kernels import dynamics as KD

    def one(k, s, t):
        return KD.advance_routed(jr.fold_in(k, t), k, s, sampler, cfg, 4)[0]

    return jax.jit(lambda s, t: jax.vmap(one, in_axes=(0, 0, None))(keys, s, t))


def _batched_loop_condition(step, st) -> bool:
    """Whether a ``while_loop`` of the step has a batched condition (one flag per member of
    the ``vmap``s around it: XLA then runs the loop until all are done and passes every
    member's carry through a select at each iteration)."""

    def jaxprs(x):
        x = getattr(x, "jaxpr", x)
        if hasattr(x, "eqns"):
            yield x
        elif isinstance(x, (tuple, list)):
            for y in x:
                yield from jaxprs(y)

    def batched(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "while":
                if eqn.params["cond_jaxpr"].jaxpr.outvars[0].aval.ndim > 0:
                    return True
            if any(batched(j) for param in eqn.params.values() for j in jaxprs(param)):
                return True
        return False

    return batched(jax.make_jaxpr(step)(st, 0).jaxpr)


@pytest.mark.parametrize(
    "cfg",
    [Dynamics(routing=r) for r in ROUTED],
    ids=lambda c: c.routing,
)
def test_routing_a_prefix_of_the_fresh_slots_gives_the_same_numbers(trace, cfg, monkeypatch):
    """A routed step draws (and ``balanced`` sorts) only the first slots of each bundle's
    routing order; a step whose fresh requests do not fit reports it and the chunk runs
    again over every slot: a prefix of 3 of 16 slots (short at some steps) gives the
    numbers of every slot, bit for bit, step by step and (balanced) through the driver."""
    from afd_jax.kernels import dynamics as KD
    from afd_jax.montecarlo import dynamics as MD

    sampler = KS.alias_sampler(trace.prompt, trace.decode, size=512)
    st = KD.init_dynamics(jr.key(1), sampler, 4, 4, "stationary", cfg)
    steps = [jax.jit(lambda k, s, n=n: KD.advance_routed(k, jr.key(9), s, sampler, cfg, 4, n))
             for n in (None, 3)]  # fmt: skip
    fits_seen = set()
    for t in range(60):
        (full, _), (part, fits) = (f(jr.fold_in(jr.key(2), t), st) for f in steps)
        fits_seen.add(bool(fits))
        if fits:
            for a, b in zip(full, part, strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        st = full
    assert fits_seen == {True, False}
    if cfg.routing != "balanced":  # the driver's rerun does not depend on the policy
        return
    want = _run(trace, dynamics=cfg, segment_steps=64)
    monkeypatch.setattr(MD, "fresh_prefix", lambda r_max, batch, c, mean_decode: 3)
    got = _run(trace, dynamics=cfg, segment_steps=64)
    np.testing.assert_array_equal(want.mean_tau, got.mean_tau)
    np.testing.assert_array_equal(want.empty_slot_fraction, got.empty_slot_fraction)


def test_fresh_prefix_holds_a_steady_step_and_reruns_short_calls(trace, monkeypatch):
    """The prefix is far above the requests a steady step frees (r_max B / E[D]), and
    None where it would not be fewer than the slots or with a KV capacity; the driver
    reruns a short call and draws for every slot after the second."""
    from afd_jax.kernels import dynamics as KD
    from afd_jax.montecarlo import dynamics as MD

    bal = Dynamics(routing="balanced")
    assert KD.fresh_prefix(64, 256, bal, 211.0) == 256  # 78 per step: 78 + 53 + 16 -> 256
    assert KD.fresh_prefix(16, 64, bal, 211.0) == 64  # 4.9 + 13.2 + 16
    assert KD.fresh_prefix(4, 4, bal, 1.0) is None  # 16 per step of 16 slots
    assert KD.fresh_prefix(64, 256, Dynamics(routing="balanced", kv_capacity=10**6), 9.0) is None
    assert KD.fresh_prefix(64, 256, Dynamics(), 211.0) is None
    kernels = []
    real = MD.dynamics_chunk

    def spy(*a, kernel, **kw):
        kernels.append(kernel.enlarge is not None)  # True: the prefix kernel
        return real(*a, kernel=kernel, **kw)

    monkeypatch.setattr(MD, "dynamics_chunk", spy)
    monkeypatch.setattr(MD, "fresh_prefix", lambda r_max, batch, c, mean_decode: 3)
    kw = dict(dynamics=bal, segment_steps=128, steps=1024)
    res = _run(trace, **kw)  # 8 calls of 128 steps, all short
    # each call is fetched after the next one started: the second short call is known when
    # the third has started, and the rest draw for every slot
    assert kernels == [True] * 3 + [False] * 5
    monkeypatch.undo()
    np.testing.assert_array_equal(res.mean_tau, _run(trace, **kw).mean_tau)


def test_in_place_requests_drawn_ahead_fall_back_when_short(trace, monkeypatch):
    """In place each slot's next K requests are drawn ahead per segment; with K = 1 (short
    for every segment: decodes of 1 to 39 steps) the chunk runs again drawing at every step,
    with and without a KV capacity: the numbers of the planned K, bit for bit, and of the
    trajectory kernel (the same streams)."""
    from afd_jax.montecarlo import simulate as S

    kw = dict(segment_steps=128)
    want = [
        _run(trace, dynamics=Dynamics(), **kw),
        _run(trace, dynamics=Dynamics(kv_capacity=700), **kw),
    ]
    seen = []

    def one_ahead(sampler, length):
        seen.append(length)
        return 1, 2 * 40

    monkeypatch.setattr(S, "requests_ahead", one_ahead)
    got = [
        _run(trace, dynamics=Dynamics(), **kw),
        _run(trace, dynamics=Dynamics(kv_capacity=700), **kw),
    ]
    assert seen == [128, 128]
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a.mean_tau, b.mean_tau)
        np.testing.assert_array_equal(a.empty_slot_fraction, b.empty_slot_fraction)
    np.testing.assert_array_equal(_run(trace, kernel="trajectory", **kw).mean_tau, want[0].mean_tau)

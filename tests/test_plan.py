"""The planner (afd_jax.studies.plan) and its hardware arithmetic (afd_jax.model.hardware):
front points against provision's exact curve, P50/P99 and the barrier share against an
independent float64 computation (direct convolutions, no FFT), the KV-capacity B against a
brute-force search, cost arithmetic by hand, the r-values restriction of every method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from afd_jax import plan, provision, resolve_latency, resolve_workload
from afd_jax.errors import InputError
from afd_jax.model.hardware import (
    SYSTEMS,
    Hardware,
    check_ffn_fits,
    feasible_ratios,
    kv_capacity_tokens,
    per_gpu_latency,
    read_hardware,
    user_metrics,
)
from afd_jax.studies.plan import pareto_front
from afd_jax.workload.slotload import slot_load_pmf

DATA = Path(__file__).parent / "data"
SMALL = str(DATA / "plan-small.toml")
AFFINE = str(DATA / "plan-affine.toml")
SMALL_WORKLOAD = "uniform:prompt=0..20,decode=1..10"


@pytest.fixture(scope="module")
def small_plan():
    hw = read_hardware(SMALL)
    return plan(
        SMALL_WORKLOAD, SMALL, hardware=hw, batches=(4, 8, 16, 32), r_max=12, elasticities=False
    )


def test_read_hardware_defaults_and_overrides(tmp_path):
    hw = read_hardware(SMALL)
    assert (hw.attn_gpus, hw.ffn_gpus, hw.gpus(3)) == (1, 2, 5)
    assert hw.attn_price == SYSTEMS["h100_sxm"].price_usd_per_hour  # the system's default
    assert hw.ffn_price == 4.0  # [costs] beats the system default
    assert hw.attn_memory_gib == SYSTEMS["h100_sxm"].memory_gib
    flags = read_hardware(SMALL, {"price_ffn": 5.0, "ffn_gpus": 8, "power_attn": None})
    assert (flags.ffn_price, flags.ffn_gpus, flags.attn_power) == (5.0, 8, 700.0)
    assert read_hardware(None) == Hardware()
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(SMALL).read_text().replace("attn_gpus = 1", "attn_gpus = 1.5"))
    with pytest.raises(InputError, match=r"bad.toml: field attn_gpus: must be an integer"):
        read_hardware(bad)
    bad.write_text(Path(SMALL).read_text().replace("price_ffn = 4.0", "price = 4.0"))
    with pytest.raises(InputError, match=r"field costs: unknown key 'price'"):
        read_hardware(bad)


def test_plan_reads_the_hardware_of_a_latency_file():
    kw = dict(batches=(8,), r_max=4, elasticities=False)
    by_name = plan(SMALL_WORKLOAD, SMALL, **kw)
    assert by_name.hardware == read_hardware(SMALL)
    assert by_name.points == plan(SMALL_WORKLOAD, SMALL, hardware=read_hardware(SMALL), **kw).points


def test_latency_file_with_hardware_still_reads():
    lat, opts = resolve_latency(SMALL)
    assert (lat.alpha_attn, lat.cost_attn, opts.comm_scaling) == (2.0, 1.0, "aggregate")


def test_cost_arithmetic_by_hand():
    lat, _ = resolve_latency(SMALL)
    hw = read_hardware(SMALL)
    r, b, tau = 3, 16, 500.0  # us
    got = user_metrics(lat, hw, r, b, tau)
    tokens_per_s = 1e6 * r * b / tau  # one bundle
    gpus = r * 1 + 2
    usd_per_s = (r * 1 * 2.99 + 2 * 4.0) / 3600
    watts = r * 1 * 700.0 + 2 * 700.0
    assert got["gpus"] == gpus
    assert got["tokens_per_s_per_gpu"] == pytest.approx(tokens_per_s / gpus, rel=1e-14)
    assert got["tokens_per_dollar"] == pytest.approx(tokens_per_s / usd_per_s, rel=1e-14)
    assert got["cost_per_million_tokens"] == pytest.approx(1e6 * usd_per_s / tokens_per_s)
    assert got["joules_per_token"] == pytest.approx(watts / tokens_per_s, rel=1e-14)
    # the per-instance throughput with unit costs is the per-GPU one times the GPUs / (r + 1)
    unit = per_gpu_latency(lat, Hardware(attn_gpus=1, ffn_gpus=1), "gpu")
    assert (unit.cost_attn, unit.cost_ffn) == (1.0, 1.0)
    unknown = user_metrics(lat, Hardware(attn_gpus=1, ffn_gpus=1), r, b, tau)
    assert unknown["tokens_per_dollar"] is None and unknown["joules_per_token"] is None


def test_kv_capacity_tokens_closed_form():
    hw = read_hardware(SMALL)
    expected = (1 * 80.0 * 2**30 * 0.9 - 7.0e10) / 2.0e7
    assert kv_capacity_tokens(hw, 0.1) == pytest.approx(expected, rel=1e-15)
    assert kv_capacity_tokens(Hardware(attn_gpus=1)) is None  # no KV bytes per token
    with pytest.raises(InputError, match="no room for the KV cache"):
        kv_capacity_tokens(hw._replace(attn_weight_bytes=1e12))
    with pytest.raises(InputError, match="kv_reserved"):
        kv_capacity_tokens(hw, 1.0)
    # FFN: 2 x 80 GiB x 0.9 = 1.546e11 B usable
    check_ffn_fits(hw._replace(ffn_weight_bytes=1.5e11))
    with pytest.raises(InputError, match="ffn_weight_bytes"):
        check_ffn_fits(hw._replace(ffn_weight_bytes=1.6e11))
    with pytest.raises(InputError, match="FFN weights"):
        plan(SMALL_WORKLOAD, SMALL, hardware=hw._replace(ffn_weight_bytes=1.6e11), batches=(4,))


def _direct_worker_pmf(slot, batch):
    """Worker-load law by repeated direct convolution (float64, no FFT)."""
    out = np.ones(1)
    for _ in range(batch):
        out = np.convolve(out, slot.pmf)
    return slot.start * batch + slot.width * np.arange(out.shape[0]), out


def test_kv_batch_limit_brute_force(small_plan):
    slot = slot_load_pmf(resolve_workload(SMALL_WORKLOAD))
    cap, eps = small_plan.kv_capacity_tokens, small_plan.kv_epsilon
    ok = [b for b in range(1, 33) if _direct_worker_pmf(slot, b)[1][
        _direct_worker_pmf(slot, b)[0] > cap].sum() <= eps]  # fmt: skip
    assert small_plan.kv_batch_limit == max(ok) and ok == list(range(1, max(ok) + 1))
    assert 4 < small_plan.kv_batch_limit < 32  # the fixture makes the capacity bind
    assert all("kv_capacity" in p["violates"] for p in small_plan.points if p["batch"] == 32)
    assert all(p["batch"] <= small_plan.kv_batch_limit for p in small_plan.front)


def test_front_points_match_provision_exact_curve(small_plan):
    lat, opts = resolve_latency(SMALL)
    hw = read_hardware(SMALL)
    per_gpu = per_gpu_latency(lat, hw, "gpu")
    curves = {}
    for p in small_plan.front:
        b = p["batch"]
        if b not in curves:
            res = provision(SMALL_WORKLOAD, per_gpu, b, r_max=12, opts=opts)
            curves[b] = res.throughput["exact"], res.step_time["exact"]
        thr, tau = curves[b]
        assert p["tokens_per_s_per_gpu"] == pytest.approx(thr[p["r"] - 1], rel=1e-12)
        assert p["step_time_us"] == pytest.approx(tau[p["r"] - 1], rel=1e-12)
    assert len(small_plan.front) >= 5


def test_front_is_the_non_dominated_set(small_plan):
    within = [p for p in small_plan.points if "kv_capacity" not in p["violates"]]
    key = "tokens_per_s_per_gpu"

    def dominated(p):
        return any(
            q[key] >= p[key] and q["tpot_p99_ms"] <= p["tpot_p99_ms"]
            and (q[key] > p[key] or q["tpot_p99_ms"] < p["tpot_p99_ms"])
            for q in within
        )  # fmt: skip

    expected = {(p["r"], p["batch"]) for p in within if not dominated(p)}
    assert {(p["r"], p["batch"]) for p in small_plan.front} == expected
    best = max(within, key=lambda p: p[key])
    assert small_plan.best is not None and small_plan.best[key] == best[key]


def test_pareto_front_toy():
    pts = [
        {"tpot_p99_ms": 1.0, "m": 1.0},
        {"tpot_p99_ms": 2.0, "m": 0.5},  # dominated
        {"tpot_p99_ms": 2.0, "m": 3.0},
        {"tpot_p99_ms": 3.0, "m": 2.0},  # dominated
    ]
    assert [p["m"] for p in pareto_front(pts, "m")] == [1.0, 3.0]


@pytest.mark.parametrize("r,batch", [(1, 4), (3, 8), (7, 16), (12, 16)])
def test_quantiles_and_barrier_share_independent(small_plan, r, batch):
    """P50/P99 of tau, E[tau] and the barrier share from the law of M_r built by direct
    convolution and F^r (float64), with the stage times written out by hand."""
    slot = slot_load_pmf(resolve_workload(SMALL_WORKLOAD))
    w, pmf = _direct_worker_pmf(slot, batch)
    cdf = np.cumsum(pmf)
    pm = np.diff(np.concatenate([[0.0], np.clip(cdf, 0, 1) ** r]))  # Pr(M_r = w)
    t_a = 2.0 * w + 50.0
    g = max(0.5 * r * batch + 100.0, 0.05 * r * batch + 20.0)
    tau = np.maximum(t_a, g)
    tau_cdf = np.cumsum(pm)
    p = next(q for q in small_plan.points if (q["r"], q["batch"]) == (r, batch))
    for q, key in ((0.5, "tpot_p50_ms"), (0.99, "tpot_p99_ms")):
        quantile = tau[np.searchsorted(tau_cdf, q - 1e-12)]
        assert p[key] * 1e3 == pytest.approx(quantile, rel=1e-12)
    mean_tau = float(np.dot(pm, tau))
    assert p["step_time_us"] == pytest.approx(mean_tau, rel=1e-9)
    share = (np.dot(pm, t_a) - np.dot(pmf, t_a)) / mean_tau
    assert p["barrier_share"] == pytest.approx(share, rel=1e-9, abs=1e-12)


def test_slo_and_budget_constrain_the_best():
    hw = read_hardware(SMALL)
    kw = dict(hardware=hw, batches=(4, 8, 16), r_max=12, elasticities=False)
    free = plan(SMALL_WORKLOAD, SMALL, **kw)
    slo = plan(SMALL_WORKLOAD, SMALL, tpot_p99_ms=0.4, **kw)
    assert slo.best["tpot_p99_ms"] <= 0.4 < free.best["tpot_p99_ms"]
    assert slo.best == max(
        (p for p in slo.points if p["tpot_p99_ms"] <= 0.4),
        key=lambda p: p["tokens_per_s_per_gpu"],
    )
    budget = plan(SMALL_WORKLOAD, SMALL, budget_gpus=6, **kw)
    assert budget.best["gpus"] <= 6 and budget.best["r"] <= 4
    none = plan(SMALL_WORKLOAD, SMALL, tpot_p99_ms=0.01, **kw)
    assert none.best is None and none.ranked == [] and none.front  # the front ignores the SLO
    dollars = plan(SMALL_WORKLOAD, SMALL, objective="per_dollar", **kw)
    assert dollars.best["tokens_per_dollar"] == max(
        p["tokens_per_dollar"] for p in dollars.points if not p["violates"]
    )


def test_r_values_restrict_plan_and_provision():
    hw = read_hardware(SMALL)
    res = plan(
        SMALL_WORKLOAD, SMALL, hardware=hw, batches=(8,), r_values=(2, 5, 9), elasticities=False
    )
    assert {p["r"] for p in res.points} == {2, 5, 9} and res.best["r"] in (2, 5, 9)
    full = provision(SMALL_WORKLOAD, SMALL, 8, r_max=12)
    part = provision(SMALL_WORKLOAD, SMALL, 8, r_max=12, r_values=(2, 5, 9))
    for m, curve in full.throughput.items():
        allowed = {r: curve[r - 1] for r in (2, 5, 9)}
        assert part.r_best[m] == max(allowed, key=allowed.get)
        np.testing.assert_array_equal(part.throughput[m], curve)  # curves unchanged
    assert part.to_json()["r_values"] == [2, 5, 9] and "r_values" not in full.to_json()


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"r_values": [0, 2]}, "r_values"),
        ({"r_values": [2, 99]}, "r_values"),
        ({"r_values": []}, "r_values"),
        ({"r_values": [2], "r_step": 2}, "r_values"),
        ({"r_step": 0}, "r_step"),
        ({"r_step": 99}, "r_step"),
    ],
)
def test_feasible_ratios_errors(kwargs, field):
    with pytest.raises(InputError) as err:
        feasible_ratios(r_max=16, **kwargs)
    assert err.value.field == field


def test_feasible_ratios_values():
    assert feasible_ratios(r_max=8) is None
    assert feasible_ratios([8, 2, 4, 2], r_max=8).tolist() == [2, 4, 8]
    assert feasible_ratios(r_step=3, r_max=10).tolist() == [3, 6, 9]


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"hardware": Hardware()}, "attn_gpus"),
        ({"batches": ()}, "batches"),
        ({"batches": (0,)}, "batches"),
        ({"tpot_p99_ms": -1.0}, "tpot_p99"),
        ({"budget_gpus": 0}, "budget_gpus"),
        ({"objective": "per_watt"}, "objective"),
        ({"kv_epsilon": 1.0}, "kv_epsilon"),
        ({"hardware": Hardware(attn_gpus=1, ffn_gpus=1), "objective": "per_dollar"}, "price"),
    ],
)
def test_plan_errors(kwargs, field):
    args = {"hardware": read_hardware(SMALL), **kwargs}
    with pytest.raises(InputError) as err:
        plan(SMALL_WORKLOAD, SMALL, elasticities=False, **args)
    assert err.value.field == field


def test_provision_user_terms():
    hw = read_hardware(AFFINE)
    res = provision("paper-v1", AFFINE, 64, r_max=12, hardware=hw).to_json()
    u, r = res["user_terms"], res["r_best"]["exact"]
    assert (u["r"], u["gpus"]) == (r, 2 * r + 4)
    per_instance = res["curve"][r - 1]["exact"]  # unit costs: per instance, r + 1 instances
    assert u["tokens_per_s_per_gpu"] == pytest.approx(per_instance * (r + 1) / (2 * r + 4))
    assert res["hardware"]["ffn_system"] == "gb200" and res["hardware"]["power_ffn_w"] == 1200.0
    assert "user_terms" not in provision("paper-v1", AFFINE, 64, r_max=12).to_json()
    # the best r per GPU and per USD: plan's best at this one B, with no SLO or budget (the
    # choice above is per instance: a planner read its r as the per-GPU best, a review)
    for objective, key in (
        ("per_gpu", "tokens_per_s_per_gpu"),
        ("per_dollar", "tokens_per_dollar"),
    ):
        best = plan("paper-v1", AFFINE, batches=(64,), r_max=12, objective=objective).best
        assert u[f"best_r_{objective}"] == best["r"]
        assert u[f"best_{key}"] == pytest.approx(best[key], rel=1e-9)


@pytest.mark.parametrize("obj", ["plan", "hardware"])
def test_docstring_examples_run(obj):
    import doctest

    import afd_jax.model.hardware as hardware_module

    target = plan if obj == "plan" else hardware_module
    tests = doctest.DocTestFinder(recurse=False).find(target, obj, globs={})
    assert sum(len(t.examples) for t in tests) > 0
    runner = doctest.DocTestRunner()
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_front_on_a_shared_trace_matches_provision():
    """On a shipped trace: every front point is provision's exact throughput at (r, B)."""
    from conftest import trace_path

    trace = str(trace_path("azure_code"))
    hw = read_hardware(AFFINE)
    res = plan(trace, AFFINE, hardware=hw, batches=(16, 32), r_max=12, elasticities=False)
    lat, opts = resolve_latency(AFFINE)
    curves = {
        b: provision(trace, per_gpu_latency(lat, hw, "gpu"), b, r_max=12, opts=opts)
        for b in (16, 32)
    }
    assert res.front
    for p in res.front:
        exact = curves[p["batch"]].throughput["exact"][p["r"] - 1]
        assert p["tokens_per_s_per_gpu"] == pytest.approx(exact, rel=1e-12)


@pytest.mark.slow
def test_optimize_chooses_among_r_values():
    """optimize's integer choice with r_values is the exact argmax over the allowed r (brute
    force over the exact curve), and the restriction bites (the free argmax is not allowed)."""
    from afd_jax import exact_throughput, optimize, workload_stats

    w = resolve_workload("paper-v1")
    st, (lat, opts) = workload_stats(w), resolve_latency("paper-v1")
    pmf = slot_load_pmf(w, max_bins=4096)
    allowed = (4, 8, 12, 16)
    res = optimize(pmf, st.theta, st.slot_var, lat, opts, batch=256, r_max=32, r_values=allowed)
    thr = exact_throughput(pmf, lat, 256, 32, opts)
    assert int(np.argmax(thr)) + 1 not in allowed
    assert res.r == max(allowed, key=lambda r: thr[r - 1])
    assert res.throughput == pytest.approx(thr[res.r - 1], rel=1e-12)
    assert res.constraints["r_values"]["binds"] and res.constraints["r_max"]["limit"] == 32
    with pytest.raises(InputError, match="r_values"):
        optimize(pmf, st.theta, st.slot_var, lat, opts, batch=256, r_max=32, r_values=(40,))


@pytest.mark.slow
def test_front_on_a_measured_preset_matches_provision(tmp_path):
    """On a shipped trace and a shipped measured (table) preset: every front point is the
    exact throughput at (r, B) of provision's exact method (``exact_throughput``, without the
    Gaussian compile), the P99 is at least the P50, and the figure is drawn."""
    from conftest import trace_path

    from afd_jax import exact_throughput
    from afd_jax.model.latency_io import latency_file
    from afd_jax.studies.plots import plot_plan_front

    trace, preset = str(trace_path("azure_conv")), "qwen3-235b-a22b@gb200"
    res = plan(trace, preset, batches=(32, 64), r_max=8, elasticities=False)
    hw = read_hardware(latency_file(preset))
    lat, opts = resolve_latency(preset)
    slot = slot_load_pmf(resolve_workload(trace), max_bins=4096)
    lat_gpu = per_gpu_latency(lat, hw, "gpu")
    curves = {b: exact_throughput(slot, lat_gpu, b, 8, opts) for b in (32, 64)}
    assert res.front and res.best is not None
    for p in res.front:
        exact = curves[p["batch"]][p["r"] - 1]
        assert p["tokens_per_s_per_gpu"] == pytest.approx(exact, rel=1e-12)
        assert p["tpot_p99_ms"] >= p["tpot_p50_ms"] > 0
    out = tmp_path / "front.png"
    plot_plan_front({**res.to_json(), "points": res.points}, out)
    assert out.stat().st_size > 0


def test_batches_beyond_a_measured_table_are_refused():
    """A B past the Attention tables of a measured preset was evaluated by extrapolation
    (B = 4,096 on a table that ends at 512: +94 % tokens/s per GPU, a planner's review);
    provision, optimize and simulate refused it. Now plan does too, naming --batches."""
    with pytest.raises(InputError, match=r"B=1024 is outside the Attention tables") as err:
        plan("paper-v1", "qwen3-235b-a22b@b200_sxm", batches=(512, 1024), elasticities=False)
    assert err.value.field == "batches"


def test_best_at_the_largest_batch_searched_is_flagged():
    """A best point at the largest B searched, with the SLO and the KV capacity slack, is the
    grid's answer, not a constraint's (a planner's review: B = 512 beat the default grid's
    256 by 38 %). Not flagged at the end of the measured tables."""
    preset = "qwen3-235b-a22b@h200_sxm"
    kw = dict(r_max=4, elasticities=False)
    grid = plan("paper-v1", preset, batches=(128, 256), **kw)
    assert grid.best["batch"] == 256 and grid.best_at_largest_batch
    assert grid.to_json()["best_at_largest_batch"] is True
    wider = plan("paper-v1", preset, batches=(256, 512), **kw)
    assert wider.best["batch"] == 512 and wider.batch_ceiling == 512
    assert wider.best["tokens_per_s_per_gpu"] > grid.best["tokens_per_s_per_gpu"]
    assert not wider.best_at_largest_batch  # the tables end at 512
    tight = plan("paper-v1", preset, batches=(128, 256), tpot_p99_ms=grid.best["tpot_p99_ms"], **kw)
    assert tight.best == grid.best and not tight.best_at_largest_batch  # the SLO binds there

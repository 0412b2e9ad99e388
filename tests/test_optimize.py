"""Gradient-based provisioning (afd_jax/studies/optimize.py) against independent references: the
unsmoothed Gaussian model (theory), the exact steady state (exact, float64 NumPy, brute-force
grids) and finite differences of the converged solver."""

from __future__ import annotations

import contextlib
import math

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax.model import theory
from afd_jax.model.exact import exact_step_times, exact_throughput, worker_load_pmf
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.studies import optimize as opt
from afd_jax.workload.containers import TraceWorkload
from afd_jax.workload.slotload import slot_load_pmf

R_MAX = 48


@contextlib.contextmanager
def count_traces(fun_name: str):
    """Count the jaxpr traces (= compilations) of the function named ``fun_name`` while the
    block runs, from JAX's own monitoring events: ``with count_traces("f") as n: ...; n[0]``."""
    count = [0]

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration" and kwargs.get("fun_name") == fun_name:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _workload(rng):
    n = 300
    prompt = rng.integers(0, int(rng.integers(80, 300)), n)
    decode = rng.geometric(1.0 / float(rng.uniform(10, 60)), n)
    pmf = slot_load_pmf(TraceWorkload("synthetic", prompt, decode))
    return pmf, pmf.mean(), pmf.var()


def _latency(rng, regime, theta, batch):
    """Coefficients placing the mean-field optimum in the wanted regime (docs/model.md 5): with the
    growing stage's intercept beta = f tA_bar and slope a B, the peak sqrt(beta/(a B)) beats the
    balance point (tA_bar - beta)/(a B) iff f > r_peak / (1 + r_peak)."""
    a_attn, b_attn = float(rng.uniform(0.005, 0.02)), float(rng.uniform(20, 80))
    ta = a_attn * batch * theta + b_attn
    if regime == "attention":
        f, r0 = float(rng.uniform(0.15, 0.5)), float(rng.uniform(4, 30))
        slope = (1 - f) * ta / r0
    else:
        r_peak = float(rng.uniform(2.5, 12))
        f = min(0.98, r_peak / (1 + r_peak) + float(rng.uniform(0.03, 0.12)))
        slope = f * ta / r_peak**2
    grow = (slope / batch, f * ta)
    small = (float(rng.uniform(0.0, 0.05)) * slope / batch, float(rng.uniform(0, 0.3)) * f * ta)
    ffn, comm = (small, grow) if regime == "communication" else (grow, small)
    return Latency(a_attn, b_attn, ffn[0], ffn[1], comm[0], comm[1])


def _scenarios(n=30, seed=2024):
    rng = np.random.default_rng(seed)
    regimes = ("attention", "communication", "ffn")
    out = []
    for i in range(n):
        pmf, theta, var = _workload(rng)
        batch = int(rng.choice([16, 24, 32, 48, 64]))
        lat = _latency(rng, regimes[i % 3], theta, batch)
        out.append((pmf, theta, var, batch, lat))
    return out


SCENARIOS = _scenarios()


def test_smoothing_bias_vanishes_linearly():
    """E_T[tau] -> theory.gaussian_step_time as T -> 0, with 0 <= bias <= T (log 2 + 1 + m_r)
    (module docstring), including a deterministic workload (v = 0) and points at the kinks."""
    lat = Latency(0.01, 50.0, 0.05, 100.0, 0.04, 90.0)
    theta, batch = 300.0, 32.0
    r = jnp.asarray([1.0, 3.0, 4.0, 7.5, 28.75, 40.0])  # 4.0: C/F crossover; 28.75: balance
    m_r = theory.expected_max_std_normal(r)
    temps = jnp.asarray([1.0, 0.1, 0.01, 0.001])[:, None]
    bound = np.asarray(temps * (math.log(2) + 1 + m_r[None, :]))
    smoothed = jax.jit(opt.smoothed_step_time, static_argnames="opts")  # one compile per opts
    for opts in (ModelOptions(), ModelOptions(overlap="serial")):
        for var in (0.0, 150.0**2):
            ref = theory.gaussian_step_time_jit(lat, theta, var, r, batch, opts)
            zero = smoothed(lat, theta, var, r, batch, 0.0, opts)
            np.testing.assert_allclose(zero, ref, rtol=1e-13)
            sm = smoothed(lat, theta, var, r[None, :], batch, temps, opts)
            bias = np.asarray(sm - ref[None, :])
            assert np.all(bias >= -1e-9 * np.asarray(ref))
            assert np.all(bias <= bound + 1e-9)
            worst = np.max(bias, axis=1)
            assert np.all(worst[1:] <= 0.11 * worst[:-1] + 1e-9)  # linear in T


def test_regimes_are_spread():
    got = [
        theory.mean_field_optimum(lat, th, b, ModelOptions(), R_MAX).regime
        for _, th, _, b, lat in SCENARIOS
    ]
    for regime in ("attention", "communication", "ffn"):
        assert got.count(regime) >= 8, got


@pytest.mark.parametrize("idx", range(len(SCENARIOS)))
def test_integer_r_matches_exact_grid(idx):
    pmf, theta, var, batch, lat = SCENARIOS[idx]
    res = opt.optimize(pmf, theta, var, lat, batch=batch, r_max=R_MAX)
    assert res.converged
    grid = exact_throughput(pmf, lat, batch, R_MAX)
    best = int(np.argmax(grid)) + 1
    assert res.r == best or res.throughput >= (1 - 1e-3) * grid.max()
    np.testing.assert_allclose(res.throughput, grid[res.r - 1], rtol=1e-12)
    # the continuous optimum is the maximiser of the unsmoothed Gaussian model (to its bias)
    r_g = theory.gaussian_optimum_continuous(lat, theta, var, batch, r_max=R_MAX, grid=401)
    assert abs(res.r_continuous - r_g) <= 0.02 * r_g + 1e-3


FD_PARAMS = ("theta", "slot_var", "alpha_ffn", "beta_ffn")


@pytest.mark.parametrize("idx", [0, 1, 2, 5])
def test_sensitivities_match_finite_differences(idx):
    """Implicit-function sensitivities vs central differences of the converged solver (all 8
    perturbed problems in one batched solve)."""
    pmf, theta, var, batch, lat = SCENARIOS[idx]
    if idx == 1:  # communication regime: its coefficients matter
        params = ("theta", "alpha_comm", "beta_comm", "alpha_attn")
    elif idx == 5:
        params = ("alpha_attn", "beta_attn", "cost_attn", "batch")
    else:
        params = FD_PARAMS
    scen = opt.make_scenario(lat, theta, var, float(batch), r_max=float(R_MAX))
    sol = opt.solve_continuous(scen)
    assert bool(sol.converged)
    dr, _ = opt.sensitivities(scen, sol)

    def value(tree, name):
        if name in Latency._fields:
            return float(getattr(tree.latency, name))
        return float(getattr(tree, name))

    rows, steps = [], []
    for name in params:
        p0 = value(scen, name)
        h = 1e-4 * p0
        steps.append(h)
        for sign in (1.0, -1.0):
            lat_kw = {f: value(scen, f) for f in Latency._fields}
            kw = dict(theta=theta, slot_var=var, batch=float(batch))
            if name in lat_kw:
                lat_kw[name] = p0 + sign * h
            else:
                kw[name] = p0 + sign * h
            if name == "batch":  # a fixed B moves with its bounds
                kw["batch_max"] = kw["batch"]
            rows.append((Latency(**lat_kw), kw))
    stacked = opt.make_scenario(
        Latency(*(np.array([getattr(r[0], f) for r in rows]) for f in Latency._fields)),
        np.array([r[1]["theta"] for r in rows]),
        np.array([r[1]["slot_var"] for r in rows]),
        np.array([r[1]["batch"] for r in rows]),
        r_max=float(R_MAX),
        batch_min=np.array([r[1]["batch"] for r in rows]),
        batch_max=np.array([r[1]["batch"] for r in rows]),
    )
    perturbed = opt.solve_continuous_batched(stacked)
    assert bool(np.all(perturbed.converged))
    got = np.asarray(perturbed.r)
    named = opt._named(dr, optimize_batch=False)
    for i, name in enumerate(params):
        fd = (got[2 * i] - got[2 * i + 1]) / (2 * steps[i])
        an = named[name]
        scale = float(sol.r) / value(scen, name)  # elasticity units
        assert abs(an - fd) <= 2e-3 * abs(fd) + 1e-5 * scale, (name, an, fd)


def _brute_force(pmf, lat, opts, batches, r_max, slo_mean, slo_p99, kv_cap, kv_eps):
    best = (-1.0, None, None)
    for b in batches:
        wp = worker_load_pmf(pmf, b)
        if kv_cap is not None and float(np.sum(wp.pmf[wp.support > kv_cap])) > kv_eps:
            continue
        mean = exact_step_times(pmf, lat, b, r_max, opts, wp)
        p99 = opt.exact_p99_step_times(wp, lat, b, r_max, opts)
        r = np.arange(1, r_max + 1)
        thr = 1e6 * r * b / ((r * lat.cost_attn + lat.cost_ffn) * mean)
        ok = np.ones(r_max, bool)
        if slo_mean is not None:
            ok &= mean <= slo_mean
        if slo_p99 is not None:
            ok &= p99 <= slo_p99
        if ok.any():
            i = int(np.argmax(np.where(ok, thr, -1.0)))
            if thr[i] > best[0]:
                best = (float(thr[i]), i + 1, b)
    return best


def test_p99_matches_direct_quantile():
    pmf, _, _, batch, lat = SCENARIOS[3]
    wp = worker_load_pmf(pmf, batch)
    p99 = opt.exact_p99_step_times(wp, lat, batch, 6, ModelOptions())
    cdf = np.cumsum(wp.pmf)
    for r in (1, 2, 6):
        q_load = wp.support[np.argmax(cdf**r >= 0.99)]
        tc = lat.alpha_comm * r * batch + lat.beta_comm
        g = max(tc, lat.alpha_ffn * r * batch + lat.beta_ffn)
        assert p99[r - 1] == pytest.approx(max(g, lat.alpha_attn * q_load + lat.beta_attn), 1e-12)


@pytest.mark.parametrize("case", ["slo_fixed_b", "joint_kv_slo", "joint_p99"])
def test_constrained_optimum_is_feasible_and_grid_optimal(case):
    pmf, theta, var, batch, lat = SCENARIOS[4]
    opts = ModelOptions()
    unconstrained = opt.optimize(pmf, theta, var, lat, batch=batch, r_max=R_MAX)
    kw = {}
    if case == "slo_fixed_b":
        kw = dict(batch=batch, step_slo=0.97 * unconstrained.step_time)
        batches = [batch]
    elif case == "joint_kv_slo":
        cap = float(worker_load_pmf(pmf, 40).mean()) * 1.02
        kw = dict(
            optimize_batch=True,
            batch_max=64,
            kv_capacity=cap,
            kv_epsilon=1e-2,
            step_slo=unconstrained.step_time * 1.1,
        )
        batches = range(1, 65)
    else:
        kw = dict(optimize_batch=True, batch_max=48, step_slo_p99=unconstrained.step_time * 0.95)
        batches = range(1, 49)
    res = opt.optimize(pmf, theta, var, lat, opts, r_max=R_MAX, **kw)
    # feasibility against the exact law
    wp = worker_load_pmf(pmf, res.batch)
    mean = exact_step_times(pmf, lat, res.batch, res.r, opts, wp)[-1]
    assert mean == pytest.approx(res.step_time, rel=1e-12)
    if "step_slo" in kw:
        assert mean <= kw["step_slo"]
    if case == "slo_fixed_b":
        assert res.constraints["step_slo"]["binds"]
    if "step_slo_p99" in kw:
        assert opt.exact_p99_step_times(wp, lat, res.batch, res.r, opts)[-1] <= kw["step_slo_p99"]
    if "kv_capacity" in kw:
        assert float(np.sum(wp.pmf[wp.support > kw["kv_capacity"]])) <= kw["kv_epsilon"]
        assert res.kv_batch_limit is not None and res.batch <= res.kv_batch_limit
    # optimal on the brute-force grid
    thr, _, _ = _brute_force(
        pmf,
        lat,
        opts,
        batches,
        R_MAX,
        kw.get("step_slo"),
        kw.get("step_slo_p99"),
        kw.get("kv_capacity"),
        kw.get("kv_epsilon"),
    )
    assert res.throughput == pytest.approx(thr, rel=1e-12)


def test_batched_solver_compiles_once_and_matches_single():
    rows = SCENARIOS[:4]

    def stack(scale):
        lats = [lat for *_, lat in rows]
        lat = Latency(*(np.array([getattr(x, f) * scale for x in lats]) for f in Latency._fields))
        return opt.make_scenario(
            lat,
            np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows]),
            np.array([float(r[3]) for r in rows]),
            r_max=np.full(4, float(R_MAX)),
        )

    with count_traces("_solve_one") as traces:
        first = opt.solve_continuous_batched(stack(1.0))
        second = opt.solve_continuous_batched(stack(1.3))  # new values, same shapes: no retrace
    assert traces[0] <= 1
    assert bool(np.all(first.converged)) and bool(np.all(second.converged))
    # scaling every coefficient scales every time: the optimal r does not move
    np.testing.assert_allclose(second.r, first.r, rtol=1e-8)
    for i in (0, 3):
        pmf, theta, var, batch, lat = rows[i]
        single = opt.solve_continuous(
            opt.make_scenario(lat, theta, var, float(batch), r_max=float(R_MAX))
        )
        np.testing.assert_allclose(first.r[i], single.r, rtol=1e-9)


def test_bad_input_raises():
    pmf, theta, var, batch, lat = SCENARIOS[0]
    with pytest.raises(opt.InputError):
        opt.optimize(pmf, theta, var, lat, batch=0)
    with pytest.raises(opt.InputError):
        opt.optimize(pmf, theta, var, lat, batch=batch, step_slo=1e-3)  # infeasible
    with pytest.raises(opt.InputError):
        opt.optimize(pmf, theta, var, lat, batch=batch, kv_capacity=1.0)


def test_kv_capacity_far_above_the_batch_range_does_not_bind():
    """With a KV capacity no B up to --batch-max comes near, the largest B is set by
    batch_max: the KV capacity was reported binding (its search stops at batch_max, so every
    candidate past it counted as a KV violation; a planner's review)."""
    pmf, theta, var, _, lat = SCENARIOS[4]
    cap = float(worker_load_pmf(pmf, 64).support[-1]) * 10.0  # never exceeded up to B = 64
    res = opt.optimize(
        pmf, theta, var, lat, r_max=R_MAX, optimize_batch=True, batch_max=16, kv_capacity=cap
    )
    kv = res.constraints["kv_capacity"]
    assert kv["batch_limit"] == 16 and kv["value"] == 0.0 and not kv["binds"]
    assert res.batch == 16 and res.constraints["batch_max"]["binds"]

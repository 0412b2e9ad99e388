"""Mean-field regimes/optimum and the Gaussian barrier (afd_jax.model.theory) against independent
references: scipy quad in float64, a fine-grid argmax, finite differences, closed forms."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from afd_jax.model import theory
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.theory import (
    expected_max_std_normal,
    gaussian_step_time,
    gaussian_throughput,
    mean_field_optimum,
    mean_field_step_time,
    mean_field_throughput,
)

PAPER = Latency(0.01, 100.0, 0.5, 443.04, 0.5, 100.0)
PER_WORKER = ModelOptions(comm_scaling="per_worker")


def quad_step_time(lat, theta, v, r, batch, opts):
    """float64 reference: E[tau] = G + s int_z^inf (1 - Phi^r) (pipelined) by adaptive quad."""
    rr = float(r)
    tf = lat.alpha_ffn * rr * batch + lat.beta_ffn
    x = rr * batch if opts.comm_scaling == "aggregate" else batch
    tc = lat.alpha_comm * x + lat.beta_comm
    mu = lat.alpha_attn * batch * theta + lat.beta_attn
    s = lat.alpha_attn * math.sqrt(batch * v)

    def f(x):
        return -np.expm1(rr * stats.norm.logcdf(x))

    if opts.overlap == "serial":
        m = -40.0 + integrate.quad(f, -40.0, np.inf, epsabs=0, epsrel=1e-13, limit=200)[0]
        return mu + s * m + tc + tf
    g = max(tc, tf)
    z = (g - mu) / s
    lo = max(z, -40.0)
    return g + s * ((lo - z) + integrate.quad(f, lo, np.inf, epsabs=0, epsrel=1e-13, limit=200)[0])


CASES = [
    # (lat, theta, v, batch, opts): attention-bound, balanced, FFN-bound, serial, aggregate
    (PAPER, 599.0, 600.0**2, 256, PER_WORKER),
    (PAPER, 599.0, 600.0**2, 16, PER_WORKER),
    (Latency(0.002, 50.0, 0.3, 2000.0, 0.2, 300.0), 1226.5, 712.9**2, 128, ModelOptions()),
    (Latency(0.004, 500.0, 0.1, 100.0, 0.05, 20.0), 13125.4, 16516.4**2, 64, ModelOptions()),
    (PAPER, 599.0, 600.0**2, 64, ModelOptions(overlap="serial")),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_gaussian_tail_matches_quad_reference(case):
    lat, theta, v, batch, opts = CASES[case]
    rs = np.array([1.0, 1.5, 2.0, 3.7, 8.0, 9.3, 16.0, 31.2, 64.0])
    got = np.asarray(gaussian_step_time(lat, theta, v, jnp.asarray(rs), batch, opts))
    ref = np.array([quad_step_time(lat, theta, v, r, batch, opts) for r in rs])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=0)


def _quad_excess(z: float, r: float) -> float:
    """float64 reference: int_z^inf (1 - Phi^r) dx by adaptive quad (split at 0)."""

    def f(x):
        return -np.expm1(r * stats.norm.logcdf(x))

    lo = max(z, -40.0)
    pieces = [(lo, 0.0), (0.0, np.inf)] if lo < 0 else [(lo, np.inf)]
    total = lo - z
    for a, b in pieces:
        total += integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=200)[0]
    return total


@pytest.mark.parametrize("r", [1.0, 2.0, 7.5, 64.0, 256.0])
def test_barrier_excess_within_stated_bound(r):
    # docs: 8 x 12 Gauss-Legendre nodes on the window [lo_r, hi_r]; 1e-9 relative (the
    # issue's bar) plus an absolute floor far below any step time's rounding.
    zs = np.array([-30.0, -12.0, -6.0, -3.0, -1.0, -0.2, 0.0, 0.7, 1.9, 3.0, 5.0, 8.0, 11.0])
    got = np.asarray(theory._barrier_excess(jnp.asarray(zs), jnp.full(zs.shape, r)))
    ref = np.array([_quad_excess(float(z), r) for z in zs])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)


def test_gaussian_float32_runs_in_float32():
    lat = Latency(*[jnp.float32(x) for x in PAPER])
    rs = jnp.arange(1, 33, dtype=jnp.float32)
    got = gaussian_step_time(lat, jnp.float32(599.0), jnp.float32(360000.0), rs, 64, PER_WORKER)
    assert got.dtype == jnp.float32
    ref = [quad_step_time(PAPER, 599.0, 360000.0, r, 64, PER_WORKER) for r in range(1, 33)]
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), ref, rtol=2e-6)


def test_expected_max_of_normals_table():
    # docs/model.md 5 table (4 decimals) and the closed forms m_1 = 0, m_2 = 1/sqrt(pi),
    # m_3 = 3 / (2 sqrt(pi)).
    rs = jnp.asarray([1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    m = np.asarray(expected_max_std_normal(rs))
    np.testing.assert_allclose(
        m[:3], [0.0, 1 / math.sqrt(math.pi), 1.5 / math.sqrt(math.pi)], atol=1e-12
    )
    np.testing.assert_allclose(m[3:], [1.0294, 1.4236, 1.7660, 2.0697, 2.3437], atol=6e-5)


def test_max_of_means_below_tail_and_zero_variance_is_mean_field():
    lat, theta, v, batch, opts = CASES[0]
    rs = jnp.arange(1.0, 33.0)
    tail = gaussian_step_time(lat, theta, v, rs, batch, opts)
    mom = gaussian_step_time(lat, theta, v, rs, batch, opts, method="max_of_means")
    assert np.all(np.asarray(mom) <= np.asarray(tail) * (1 + 1e-12))  # Jensen
    # strictly larger where G is near the attention time (r = 9, 10 here)
    assert float(jnp.max(tail - mom)) > 1.0
    mf = mean_field_step_time(lat, theta, rs, batch, opts)
    g0 = gaussian_step_time(lat, theta, 0.0, rs, batch, opts)
    np.testing.assert_allclose(np.asarray(g0), np.asarray(mf), rtol=1e-14)
    # serial: both methods are E[max tA] + G exactly
    ser = ModelOptions(overlap="serial")
    np.testing.assert_allclose(
        np.asarray(gaussian_step_time(lat, theta, v, rs, batch, ser)),
        np.asarray(gaussian_step_time(lat, theta, v, rs, batch, ser, method="max_of_means")),
        rtol=1e-14,
    )


@pytest.mark.parametrize("opts", [PER_WORKER, ModelOptions(), ModelOptions(overlap="serial")])
def test_gaussian_gradients_match_finite_differences(opts):
    lat = Latency(0.01, 300.0, 0.5, 443.04, 0.3, 900.0, 1.0, 2.0)
    theta, v, batch = 599.0, 600.0**2, 128.0

    def f(lat, theta, v, r):
        return gaussian_throughput(lat, theta, v, r, batch, opts)

    grad_fn = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))
    f_jit = jax.jit(f)
    for r in (3.3, 6.1, 12.4):  # away from the kinks of max(t_C, t_F)
        g_lat, g_theta, g_v, g_r = grad_fn(lat, theta, v, r)
        args = {"theta": theta, "v": v, "r": r}

        def fd(name, h, lat=lat, args=args, r=r):
            def at(delta):
                a = dict(args)
                la = lat
                if name in args:
                    a[name] = args[name] + delta
                else:
                    la = lat._replace(**{name: getattr(lat, name) + delta})
                return float(f_jit(la, a["theta"], a["v"], a["r"]))

            d1 = (at(h) - at(-h)) / (2 * h)
            d2 = (at(h / 2) - at(-h / 2)) / h
            return (4 * d2 - d1) / 3  # Richardson: O(h^4)

        checks = [("theta", float(g_theta)), ("v", float(g_v)), ("r", float(g_r))]
        checks += [(k, float(getattr(g_lat, k))) for k in Latency._fields]
        for name, analytic in checks:
            base = args[name] if name in args else getattr(lat, name)
            h = 1e-4 * max(abs(base), 1e-3)
            numeric = fd(name, h)
            # truncation O(h^2) relative + round-off of the difference quotient
            noise = 50 * np.finfo(np.float64).eps * abs(float(f_jit(lat, theta, v, r))) / h
            tol = 1e-6 * max(abs(analytic), abs(numeric)) + noise
            assert abs(analytic - numeric) <= tol, (name, r, analytic, numeric)


def test_jitted_gaussian_does_not_retrace_on_new_coefficients():
    traces = []

    def f(lat, theta, v, r):
        traces.append(1)
        return gaussian_throughput(lat, theta, v, r, 256, PER_WORKER)

    jf = jax.jit(f)
    rs = jnp.arange(1.0, 17.0)
    a = jf(PAPER, 599.0, 360000.0, rs)
    b = jf(PAPER._replace(alpha_attn=0.02, beta_ffn=500.0, cost_ffn=3.0), 700.0, 1e5, rs + 0.5)
    jax.block_until_ready(b)
    assert len(traces) == 1
    assert not np.allclose(np.asarray(a), np.asarray(b))
    # the module-level jitted entry point, too
    from afd_jax.model.theory import gaussian_throughput_jit

    gaussian_throughput_jit(PAPER, 599.0, 360000.0, rs, 256, PER_WORKER)
    size = gaussian_throughput_jit._cache_size()
    gaussian_throughput_jit(PAPER._replace(beta_attn=7.0), 123.0, 4.0, rs * 2, 512, PER_WORKER)
    assert gaussian_throughput_jit._cache_size() == size


# ---- mean field -------------------------------------------------------------------------


def grid_argmax(lat, theta, batch, opts, r_max, step=1e-4):
    rs = np.arange(1.0, r_max + step / 2, step)
    tp = np.asarray(mean_field_throughput(lat, theta, jnp.asarray(rs), batch, opts))
    i = int(np.argmax(tp))
    return rs[i], tp[i]


def random_latency(rng):
    return Latency(
        alpha_attn=rng.uniform(0.001, 0.03),
        beta_attn=rng.uniform(0, 500),
        alpha_ffn=rng.uniform(0.05, 1.5),
        beta_ffn=rng.uniform(0, 5000),
        alpha_comm=rng.uniform(0, 1.0),
        beta_comm=rng.uniform(0, 3000),
        cost_attn=rng.choice([1.0, 0.5, 2.0]),
        cost_ffn=rng.choice([1.0, 3.0, 0.7]),
    )


@pytest.mark.parametrize("seed", range(6))
def test_mean_field_optimum_equals_fine_grid_argmax(seed):
    rng = np.random.default_rng(seed)
    for opts in (
        ModelOptions(),
        PER_WORKER,
        ModelOptions(overlap="serial"),
        ModelOptions("per_worker", "serial"),
    ):
        lat = random_latency(rng)
        theta, batch, r_max = rng.uniform(100, 3000), int(rng.integers(16, 512)), 48
        opt = mean_field_optimum(lat, theta, batch, opts, r_max)
        r_grid, tp_grid = grid_argmax(lat, theta, batch, opts, r_max)
        tp_opt = float(mean_field_throughput(lat, theta, opt.r_continuous, batch, opts))
        assert tp_opt >= tp_grid * (1 - 1e-12)
        assert abs(opt.r_continuous - r_grid) <= 1e-3 * max(1.0, r_grid)
        ints = np.arange(1, r_max + 1, dtype=np.float64)
        tp_int = np.asarray(mean_field_throughput(lat, theta, jnp.asarray(ints), batch, opts))
        assert opt.r_best == int(np.argmax(tp_int)) + 1


def test_paper_v1_preset_gives_r_star_9_3_attention_bound():
    opt = mean_field_optimum(PAPER, 599.0, 256, PER_WORKER, 64)
    assert opt.r_continuous == pytest.approx(9.3, rel=1e-12)
    assert opt.regime == "attention"
    assert opt.r_best == 9
    rule = {c.name: c.r for c in opt.candidates}["paper_v1_rule"]
    assert rule == pytest.approx(9.3, rel=1e-12)


def test_regime_ffn_peak_with_costs():
    # FFN overhead dominates: interior peak sqrt(c_F beta_F / (c_A alpha_F B)).
    lat = Latency(0.001, 10.0, 0.2, 8000.0, 0.05, 50.0, cost_attn=1.5, cost_ffn=4.0)
    for opts in (ModelOptions(), PER_WORKER):
        opt = mean_field_optimum(lat, 500.0, 64, opts, 64)
        assert opt.regime == "ffn"
        assert opt.r_continuous == pytest.approx(math.sqrt(4.0 * 8000.0 / (1.5 * 0.2 * 64)))


def test_regime_communication_aggregate_peak():
    lat = Latency(0.001, 10.0, 0.01, 100.0, 0.2, 6000.0, cost_attn=1.0, cost_ffn=2.0)
    opt = mean_field_optimum(lat, 500.0, 64, ModelOptions(), 64)
    assert opt.regime == "communication"
    assert opt.r_continuous == pytest.approx(math.sqrt(2.0 * 6000.0 / (0.2 * 64)))


def test_regime_communication_per_worker_crossover_is_paper_rule():
    # constant t_C = 0.5*256 + 2000 above tA_bar: throughput grows until FFN overtakes t_C
    lat = Latency(0.005, 100.0, 0.5, 100.0, 0.5, 2000.0)
    opt = mean_field_optimum(lat, 599.0, 256, PER_WORKER, 64)
    r_c = (0.5 * 256 + 2000.0 - 100.0) / (0.5 * 256)
    assert opt.regime == "communication"
    assert opt.r_continuous == pytest.approx(r_c)
    assert {c.name: c.r for c in opt.candidates}["paper_v1_rule"] == pytest.approx(r_c)


def test_regime_attention_aggregate_and_serial():
    lat = Latency(0.02, 100.0, 0.3, 200.0, 0.1, 100.0, cost_attn=1.0, cost_ffn=2.0)
    opt = mean_field_optimum(lat, 800.0, 128, ModelOptions(), 64)
    ta = 0.02 * 128 * 800 + 100
    assert opt.regime == "attention"
    assert opt.r_continuous == pytest.approx((ta - 200.0) / (0.3 * 128))
    ser = mean_field_optimum(lat, 800.0, 128, ModelOptions(overlap="serial"), 64)
    assert ser.regime == "attention"  # the largest stage at the serial peak
    assert ser.r_continuous == pytest.approx(math.sqrt(2.0 * (ta + 300.0) / (0.4 * 128)))


def test_mean_field_grid_end_when_unbounded():
    # no growing stage: throughput increases up to r_max, attention-bound
    lat = Latency(0.01, 100.0, 0.0, 50.0, 0.0, 10.0)
    opt = mean_field_optimum(lat, 599.0, 256, ModelOptions(), 24)
    assert (opt.r_continuous, opt.r_best, opt.regime) == (24.0, 24, "attention")


def test_negative_intercept_from_the_api_does_not_crash():
    """Coefficients come validated from the CLI, but a library caller may pass a negative
    intercept: the peak candidate is then clipped, not a math domain error."""
    lat = Latency(0.01, 100.0, 0.5, -10.0, 0.5, 100.0)
    opt = mean_field_optimum(lat, 599.0, 256, ModelOptions(comm_scaling="per_worker"), r_max=64)
    assert 1 <= opt.r_best <= 64


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_tail_sum_paths_agree_to_an_ulp(dtype):
    # the CPU path (node by node, stacked) and the wide path (one array [..., nodes]) of
    # _barrier_excess's quadrature: the same terms and pairwise order; XLA:CPU may contract
    # the wide path's weight multiply and first add into an FMA, so the sums differ in about
    # 1 element in 700 (2 ulp at most over 12 seeds x 64,000 sums in each dtype); bound 4 ulp,
    # under jit and under vmap (the sweep vmaps over scenarios), on 16,000 sums (18 differ in
    # float64, 55 in float32 as users compile; none in the tests' unoptimised build, which
    # took 5 s per dtype to run 64,000)
    rng = np.random.default_rng(3)
    z = jnp.asarray(rng.uniform(-40, 40, (250, 64)), dtype)
    r = jnp.asarray(np.exp(rng.uniform(0, np.log(1e4), (250, 64))), dtype)
    lo, hi = theory._window(r)
    start = jnp.clip(z, lo, hi)
    length = hi - start
    for transform in (jax.jit, lambda f: jax.jit(jax.vmap(f))):
        a = np.asarray(transform(theory._node_by_node_sum)(start, length, r))
        b = np.asarray(transform(theory._tail_sum)(start, length, r))
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_array_max_ulp(a, b, maxulp=4)
    # the CPU path's derivatives are the wide path's (custom_jvp), to the bit
    grad = partial(jax.grad, argnums=(0, 1, 2))
    g_cpu = jax.jit(grad(lambda *a: theory._tail_sum_cpu(*a).sum()))(start, length, r)
    g_wide = jax.jit(grad(lambda *a: theory._tail_sum(*a).sum()))(start, length, r)
    for a, b in zip(g_cpu, g_wide, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_tail_by_node_changes_no_number():
    # the sweep traces its Gaussian kernel inside tail_by_node (CPU: node by node): a
    # step-time curve agrees to 8 ulp (float64) and its derivatives to the bit
    rs = jnp.linspace(1.0, 64.0, 64)
    lat, theta, v = PAPER, 599.0, 600.0**2

    def curve(r):
        return gaussian_step_time(lat, theta, v, r, 64.0, PER_WORKER)

    def both(f):
        plain = np.asarray(jax.jit(f)(rs))
        with theory.tail_by_node():
            by_node = np.asarray(jax.jit(lambda r: f(r))(rs))  # a new trace inside the block
        return plain, by_node

    plain, by_node = both(curve)
    np.testing.assert_array_max_ulp(plain, by_node, maxulp=8)
    plain, by_node = both(jax.vmap(jax.grad(curve)))
    assert np.array_equal(plain, by_node)

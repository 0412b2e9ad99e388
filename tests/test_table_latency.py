"""Measured (table) stage latencies through every method (docs/model.md 2.1).

* the PCHIP interpolation against scipy's ``PchipInterpolator`` (an independent implementation),
  NumPy and JAX alike, its extrapolation rule, its gradients against finite differences (also
  through a shipped measured preset);
* an affine model written as a table of its own (collinear) points gives the affine numbers
  in every method;
* on a non-affine, MoE-shaped table (tests/data/moe_table.toml): exact against a direct sum,
  Gaussian against adaptive quadrature, Monte Carlo within 4 standard errors of exact;
* input errors name the file and field.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, stats
from scipy.interpolate import PchipInterpolator

from afd_jax.errors import InputError
from afd_jax.model import latency as L
from afd_jax.model import theory
from afd_jax.model.exact import exact_step_times, worker_load_pmf
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.latency_io import format_latency_toml, read_latency_file, resolve_latency
from afd_jax.model.stages import (
    attn_table,
    check_batch,
    eval_stage,
    invert_stage,
    slope_stage,
    table_stage,
)
from afd_jax.montecarlo.simulate import simulate
from afd_jax.studies.directions import scale_tables
from afd_jax.studies.provision import provision
from afd_jax.workload.slotload import slot_load_pmf
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

DATA = Path(__file__).parent / "data" / "moe_table.toml"
WORKLOAD = "uniform:prompt=50..150,decode=100..300"
OPTIONS = [
    ModelOptions("aggregate", "pipelined"),
    ModelOptions("per_worker", "pipelined"),
    ModelOptions("aggregate", "serial"),
    ModelOptions("per_worker", "serial"),
]
X = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
Y = np.array([100.0, 101.0, 101.5, 110.0, 140.0, 200.0, 330.0])


def _ref(x, y):
    """scipy's PCHIP inside, linear with the end slopes outside (the documented rule)."""
    p = PchipInterpolator(x, y)

    def f(t, nu=0):
        t = np.asarray(t, dtype=np.float64)
        d0, d1 = p(x[0], 1), p(x[-1], 1)
        if nu == 1:
            return np.where(t < x[0], d0, np.where(t > x[-1], d1, p(np.clip(t, x[0], x[-1]), 1)))
        lo, hi = y[0] + d0 * (t - x[0]), y[-1] + d1 * (t - x[-1])
        return np.where(t < x[0], lo, np.where(t > x[-1], hi, p(np.clip(t, x[0], x[-1]))))

    return f


# ------------------------------------------------------------------------------- interpolation


def test_pchip_matches_scipy_numpy_and_jax():
    st, ref = table_stage(X, Y), _ref(X, Y)
    xs = np.linspace(-10.0, 90.0, 1001)
    np.testing.assert_allclose(eval_stage(st, xs), ref(xs), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(slope_stage(st, xs), ref(xs, 1), rtol=1e-12, atol=1e-12)
    got = jax.jit(lambda v: eval_stage(st, v))(jnp.asarray(xs))
    np.testing.assert_allclose(np.asarray(got), ref(xs), rtol=1e-13, atol=1e-12)
    assert isinstance(eval_stage(st, xs), np.ndarray)  # NumPy in, NumPy out


def test_pchip_is_monotone_and_exact_on_lines():
    st = table_stage(X, Y)
    v = eval_stage(st, np.linspace(0.0, 70.0, 5001))
    assert np.all(np.diff(v) >= 0)
    line = table_stage(X, 3.5 * X + 7.0)
    xs = np.linspace(-5.0, 100.0, 301)
    np.testing.assert_allclose(eval_stage(line, xs), 3.5 * xs + 7.0, rtol=1e-14)
    np.testing.assert_allclose(slope_stage(line, xs), 3.5, rtol=1e-14)


def test_gradients_match_finite_differences():
    st = table_stage(X, Y)
    grad = jax.jit(jax.grad(lambda v: eval_stage(st, v)))
    for x0 in (0.5, 3.0, 20.0, 50.0, 80.0):
        g = float(grad(x0))
        h = 1e-6
        fd = (eval_stage(st, x0 + h) - eval_stage(st, x0 - h)) / (2 * h)
        assert g == pytest.approx(float(fd), rel=1e-7)

    @jax.jit
    def f(y):  # gradient with respect to the measured times (slopes rebuilt under JAX)
        return eval_stage(table_stage(jnp.asarray(X), y), 12.0)

    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(Y)))
    fd = [
        (float(f(jnp.asarray(Y + 1e-6 * e))) - float(f(jnp.asarray(Y - 1e-6 * e)))) / 2e-6
        for e in np.eye(Y.size)
    ]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_inverse_and_its_implicit_gradient():
    st = table_stage(X, Y)

    def inv(t):
        return invert_stage(lambda v: eval_stage(st, v), lambda v: slope_stage(st, v), t, 1.0, 64.0)

    for target in (101.2, 125.0, 300.0):
        x = float(inv(jnp.asarray(target)))
        assert eval_stage(st, x) == pytest.approx(target, rel=1e-12)
        assert float(jax.grad(inv)(target)) == pytest.approx(1 / slope_stage(st, x), rel=1e-9)


def test_attention_tables_interpolate_linearly_in_batch():
    at = attn_table([64.0, 128.0], [(X, Y), (X, 2 * Y)])
    ref = _ref(X, Y)
    assert float(eval_stage(at, 20.0, 96.0)) == pytest.approx(1.5 * float(ref(20.0)), rel=1e-13)
    assert float(eval_stage(at, 20.0, 128.0)) == pytest.approx(2 * float(ref(20.0)), rel=1e-13)
    g = jax.grad(lambda b: eval_stage(at, 20.0, b))(100.0)
    assert float(g) == pytest.approx(float(ref(20.0)) / 64.0, rel=1e-12)
    with pytest.raises(InputError, match="batches: 64, 128"):
        check_batch(at, 256)


# ------------------------------------------------------------ affine written as a table


def _as_table(lat: Latency, batches=(1.0, 64.0, 256.0)):
    """``lat`` with every stage a table of collinear points of its own line."""
    kv = np.array([0.0, 100.0, 1e3, 1e4, 1e5])
    tok = np.array([0.0, 10.0, 100.0, 1e3, 1e4])

    def line(a, b, x):
        return x, a * x + b

    attn = attn_table(batches, [line(lat.alpha_attn, lat.beta_attn, kv)] * len(batches))
    ffn = table_stage(*line(lat.alpha_ffn, lat.beta_ffn, tok))
    comm = table_stage(*line(lat.alpha_comm, lat.beta_comm, tok))
    return L.table_latency(attn, ffn, comm, costs=(lat.cost_attn, lat.cost_ffn))


def _scenario(i):
    rng = np.random.default_rng(500 + i)
    coeffs = rng.uniform(0.0, 1.0, 6) * np.array([0.02, 200.0, 1.0, 500.0, 1.0, 200.0])
    costs = rng.uniform(0.5, 3.0, 2)
    return Latency(*(float(c) for c in coeffs), float(costs[0]), float(costs[1])), OPTIONS[i % 4]


@pytest.fixture(scope="module")
def workload():
    w = resolve_workload(WORKLOAD)
    st = workload_stats(w)
    return w, float(st.theta), float(st.slot_var), slot_load_pmf(w, max_bins=512)


# scenarios 0 and 3: aggregate + pipelined, per-worker + serial (each switch both ways)
@pytest.mark.parametrize("i", [0, pytest.param(3, marks=pytest.mark.slow)])
def test_affine_as_table_mean_field_gaussian_exact(i, workload):
    w, theta, var, pmf = workload
    lat, opts = _scenario(i)
    tab = _as_table(lat)
    batch, r = 16, jnp.arange(1.0, 25.0)
    for fn in (theory.mean_field_step_time, theory.mean_field_throughput):
        np.testing.assert_allclose(
            fn(tab, theta, r, batch, opts), fn(lat, theta, r, batch, opts), rtol=1e-9
        )
    for method in ("tail", "max_of_means"):
        a = theory.gaussian_step_time_jit(lat, theta, var, r, batch, opts, method)
        b = theory.gaussian_step_time_jit(tab, theta, var, r, batch, opts, method)
        np.testing.assert_allclose(b, a, rtol=1e-9)
    mf_a = theory.mean_field_optimum(lat, theta, batch, opts, 24)
    mf_b = theory.mean_field_optimum(tab, theta, batch, opts, 24)
    assert mf_b.r_continuous == pytest.approx(mf_a.r_continuous, rel=1e-9)
    assert (mf_b.r_best, mf_b.regime) == (mf_a.r_best, mf_a.regime)
    wp = worker_load_pmf(pmf, batch)
    np.testing.assert_allclose(
        exact_step_times(pmf, tab, batch, 24, opts, wp),
        exact_step_times(pmf, lat, batch, 24, opts, wp),
        rtol=1e-9,
    )


@pytest.mark.slow
def test_affine_as_table_provision(workload):
    w, *_ = workload
    lat, opts = _scenario(0)
    tab = _as_table(lat)
    a = provision(w, lat, 16, r_max=12, opts=opts, slot_bins=512)
    b = provision(w, tab, 16, r_max=12, opts=opts, slot_bins=512)
    assert a.r_best == b.r_best
    for m in a.throughput:
        np.testing.assert_allclose(b.throughput[m], a.throughput[m], rtol=1e-9)
    # Monte Carlo of the same pair at float64, to 1e-9: tests/test_mc_tables.py


# ---------------------------------------------------------------- a non-affine table model


@pytest.fixture(scope="module")
def moe():
    lat, opts = resolve_latency(str(DATA))
    return lat, opts


def _moe_ref(lat, batch):
    """Independent t_A(., B), t_F, t_C from scipy's PCHIP (linear blend of the B tables)."""
    at = lat.tables.attn
    b = np.asarray(at.batches)
    i = min(max(int(np.searchsorted(b, batch, side="right")) - 1, 0), b.size - 2)
    wgt = (batch - b[i]) / (b[i + 1] - b[i])
    lo, hi = (_ref(np.asarray(at.rows[k].x), np.asarray(at.rows[k].y)) for k in (i, i + 1))
    ffn = _ref(np.asarray(lat.tables.ffn.x), np.asarray(lat.tables.ffn.y))
    comm = _ref(np.asarray(lat.tables.comm.x), np.asarray(lat.tables.comm.y))
    return (lambda t: lo(t) + wgt * (hi(t) - lo(t))), ffn, comm


def test_moe_exact_is_the_direct_sum(moe, workload):
    lat, opts = moe
    _, _, _, pmf = workload
    batch, r_max = 12, 40
    t_a, t_f, t_c = _moe_ref(lat, batch)
    wp = worker_load_pmf(pmf, batch)
    w = wp.start + wp.width * np.arange(wp.pmf.size)
    cdf = np.cumsum(wp.pmf)
    got = exact_step_times(pmf, lat, batch, r_max, opts, wp)
    for r in (1, 5, 17, 40):
        prob = np.diff(np.concatenate([[0.0], np.clip(cdf, 0, 1) ** r]))
        g = max(float(t_c(r * batch)), float(t_f(r * batch)))
        ref = float(np.sum(prob * np.maximum(t_a(w), g)))
        assert got[r - 1] == pytest.approx(ref, rel=1e-9)


def test_moe_gaussian_is_the_quadrature(moe, workload):
    """Adaptive quadrature split at the knots and at the kink t_A = G. Tolerance 1e-10: the
    library's Gauss-Legendre panels (1 sd wide, also cut at every knot, where t_A'' jumps)
    are exact to rounding (with a knot inside a panel they left ~3e-8 here, up to 6e-5 on a
    preset: the next test)."""
    lat, opts = moe
    _, theta, var, _ = workload
    batch = 12
    t_a, t_f, t_c = _moe_ref(lat, batch)
    m, s = batch * theta, math.sqrt(batch * var)
    knots = np.unique(np.concatenate([np.asarray(row.x) for row in lat.tables.attn.rows]))
    zk = [z for z in (knots - m) / s if -12 < z < 12]
    for r in (1, 4, 30):
        g = max(float(t_c(r * batch)), float(t_f(r * batch)))
        pts = list(zk)
        if t_a(m - 12 * s) < g < t_a(m + 12 * s):
            pts.append(optimize.brentq(lambda x, g=g: float(t_a(m + s * x)) - g, -12, 12))

        def dens(x, r=r, g=g):
            tau = max(float(t_a(m + s * x)), g)
            return tau * r * stats.norm.pdf(x) * stats.norm.cdf(x) ** (r - 1)

        ref = integrate.quad(dens, -12, 12, points=sorted(pts), limit=800, epsabs=1e-12)[0]
        got = float(theory.gaussian_step_time_jit(lat, theta, var, float(r), float(batch), opts))
        assert got == pytest.approx(ref, rel=1e-10)


def test_gaussian_on_a_preset_is_the_quadrature_and_scales_with_attention():
    """An audit (session 25): on deepseek-v3@h200_sxm at B = 64, attention-bound, the rule was
    6.25e-5 from quadrature, and scaling t_A by 1.5 scaled E[tau] by 1.5000797. The reference:
    adaptive quadrature of the same PCHIP (NumPy) split at the standardised knots."""
    lat, opts = resolve_latency("deepseek-v3@h200_sxm")
    st, batch = workload_stats(resolve_workload("geometric:prompt=2000,decode=300")), 64
    theta, var = st.theta, st.slot_var
    m, s = batch * theta, math.sqrt(batch * var)
    row = next(k for k, b in enumerate(np.asarray(lat.tables.attn.batches)) if b == batch)
    table = lat.tables.attn.rows[row]
    t_a = _ref(np.asarray(table.x), np.asarray(table.y))
    zk = sorted(z for z in (np.asarray(table.x) - m) / s if -12 < z < 12)
    for scale in (1.0, 1.5):
        scaled = L.scale_latency(lat, {"attn": scale, "ffn": 0.05})

        g = float(L.other_stages(L.host_latency(scaled), 1.0, batch, opts))
        kink = optimize.brentq(lambda x, c=scale, g=g: c * float(t_a(m + s * x)) - g, -12, 12)
        assert kink < -4  # attention-bound: G matters below 4 sd only

        def dens(x, scale=scale, g=g):
            return max(scale * float(t_a(m + s * x)), g) * stats.norm.pdf(x)

        pts = sorted([*zk, kink])
        ref = integrate.quad(dens, -12, 12, points=pts, limit=800, epsabs=1e-12)[0]
        got = float(theory.gaussian_step_time_jit(scaled, theta, var, 1.0, float(batch), opts))
        assert got == pytest.approx(ref, rel=1e-10)


@pytest.mark.slow
def test_moe_monte_carlo_within_4_se_of_exact(moe, workload):
    lat, opts = moe
    w, _, _, pmf = workload
    batch, r_max = 16, 48
    exact = exact_step_times(pmf, lat, batch, r_max, opts)
    mc = simulate(w, lat, batch, r_max, steps=1024, replications=4, opts=opts, seed=11)
    z = (mc.mean_tau - exact) / mc.se_tau
    assert np.all(np.abs(z) < 4), z


@pytest.mark.slow
def test_moe_gradients_match_finite_differences(moe, workload):
    lat, opts = moe
    _, theta, var, _ = workload

    @jax.jit
    def f(r, th, b):
        return theory.gaussian_throughput(lat, th, var, r, b, opts)

    x0 = (20.0, theta, 12.0)
    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(*x0)
    for k in range(3):
        g = float(grads[k])
        h = 1e-4 * abs(x0[k])
        up, dn = list(x0), list(x0)
        up[k] += h
        dn[k] -= h
        fd = (float(f(*up)) - float(f(*dn))) / (2 * h)
        assert g == pytest.approx(fd, rel=1e-5)


def test_shipped_preset_gradients_match_finite_differences():
    """Through a shipped measured preset (deepseek-v3@h200_sxm): d/d(load, B, tokens) of the
    three stage times, and d/d(scale) of each stage's time function (the elasticity directions
    of ``directions.scale_tables``), by ``jax.jacfwd`` under ``jit`` against float64 central
    differences, at a B between two Attention tables and loads inside and beyond the knots.
    h = 1e-6 relative: truncation (PCHIP is C1, f'' jumps at knots) and rounding both stay
    below 1e-7 of each derivative here."""
    lat, _ = resolve_latency("deepseek-v3@h200_sxm")
    tables = jax.tree_util.tree_map(jnp.asarray, lat.tables)

    @jax.jit
    def times(v):  # v = (load, batch, tokens, s_attn, s_ffn, s_comm)
        st = scale_tables(tables, v[3:])
        attn = eval_stage(st.attn, v[0], v[1])
        return jnp.stack([attn, eval_stage(st.ffn, v[2]), eval_stage(st.comm, v[2])])

    jac = jax.jit(jax.jacfwd(times))
    for point in ([6000.0, 48.0, 300.0], [50000.0, 40.0, 700.0], [3.0e6, 100.0, 3000.0]):
        v0 = np.array([*point, 1.0, 1.0, 1.0])
        got = np.asarray(jac(jnp.asarray(v0)))
        for j in range(v0.size):
            h = 1e-6 * abs(v0[j])
            up, dn = v0.copy(), v0.copy()
            up[j] += h
            dn[j] -= h
            fd = (np.asarray(times(jnp.asarray(up))) - np.asarray(times(jnp.asarray(dn)))) / (2 * h)
            np.testing.assert_allclose(got[:, j], fd, rtol=1e-6, atol=1e-9 * np.abs(got).max())
    assert got[0, 0] > 0 and got[1, 2] > 0 and got[2, 2] > 0  # each grows in its own load


# ------------------------------------------------------------------------------ file format


def _write(tmp_path, text):
    p = tmp_path / "lat.toml"
    p.write_text(text)
    return p


def test_file_round_trip(moe, tmp_path):
    lat, opts = moe
    back, opts2 = resolve_latency(str(_write(tmp_path, format_latency_toml(lat, opts))))
    assert opts2 == opts
    for a, b in zip(jax.tree_util.tree_leaves(lat), jax.tree_util.tree_leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)


BAD = [
    ("kv_tokens = [1.0, 1.0]", "latency.attn.table[0].kv_tokens", "strictly increasing"),
    ("time_us = [5.0, 4.0]", "latency.attn.table[0].time_us", "non-decreasing"),
    ("time_us = [-1.0, 4.0]", "latency.attn.table[0].time_us[0]", "> 0"),
    ("time_us = [1.0, 2.0, 3.0]", "latency.attn.table[0].time_us", "entries"),
]


@pytest.mark.parametrize("line,field,msg", BAD)
def test_bad_attention_table(tmp_path, line, field, msg):
    rows = {"kv_tokens": "kv_tokens = [1.0, 2.0]", "time_us": "time_us = [1.0, 2.0]"}
    rows[line.split(" ")[0]] = line
    text = "[latency]\n[[latency.attn.table]]\nbatch = 8\n" + "\n".join(rows.values())
    with pytest.raises(InputError, match=msg) as err:
        read_latency_file(_write(tmp_path, text))
    assert f"field {field}" in str(err.value) and "lat.toml" in str(err.value)


def test_other_file_errors(tmp_path):
    text = "[latency]\n[[latency.attn.table]]\nkv_tokens = [1.0, 2.0]\ntime_us = [1.0, 2.0]\n"
    with pytest.raises(InputError, match="missing batch"):
        read_latency_file(_write(tmp_path, text))
    two = "[[latency.attn.table]]\nbatch = 8\nkv_tokens = [1.0, 2.0]\ntime_us = [1.0, 2.0]\n"
    with pytest.raises(InputError, match="given twice"):
        read_latency_file(_write(tmp_path, "[latency]\n" + two + two))
    with pytest.raises(InputError, match="whole number of requests, got 16.5"):
        read_latency_file(_write(tmp_path, "[latency]\n" + two.replace("8", "16.5")))
    both = "[latency]\nalpha_ffn = 1.0\n[latency.ffn]\ntokens = [1.0, 2.0]\ntime_us = [1.0, 2.0]\n"
    with pytest.raises(InputError, match="stage ffn given twice"):
        read_latency_file(_write(tmp_path, both))
    with pytest.raises(InputError, match="measured table"):
        resolve_latency(str(DATA), overrides={"alpha_ffn": 1.0})


def test_batch_outside_tables_rejected(moe, workload):
    """Every method, the finite pool and the dynamics kernel (which read the tables at B/m)
    refuse a B outside the Attention tables before any work (tables run in every simulator:
    tests/test_mc_tables.py)."""
    from afd_jax.kernels.dynamics import Dynamics
    from afd_jax.montecarlo.pool import pool_simulate

    lat, opts = moe
    w, *_ = workload
    with pytest.raises(InputError, match="outside the Attention tables"):
        provision(w, lat, 64, r_max=4, opts=opts)
    with pytest.raises(InputError, match="outside the Attention tables"):
        simulate(w, lat, 4, 4, opts=opts)
    with pytest.raises(InputError, match="outside the Attention tables"):
        pool_simulate(w, lat, 64, [2], opts=opts)
    with pytest.raises(InputError, match="micro-batches of B/m") as e:
        simulate(w, lat, 16, 4, opts=opts, dynamics=Dynamics(microbatches=4))
    assert e.value.field == "microbatches"


def test_sweep_rejects_a_coefficient_of_a_table_stage(tmp_path):
    from afd_jax.studies.sweep import make_plan
    from afd_jax.studies.sweep.spec import parse_sweep_spec

    def spec(latency):
        return parse_sweep_spec(
            {
                "r_max": 4,
                "methods": ["mean_field"],
                "batch": [16],
                "output": str(tmp_path / "t.csv"),
                "workloads": {"specs": [WORKLOAD]},
                "latency": {"base": str(DATA), **latency},
            }
        )

    with pytest.raises(InputError, match="stage ffn is a measured table; alpha_ffn"):
        make_plan(spec({"grid": {"alpha_ffn": [1.0, 2.0]}}))
    plan = make_plan(spec({"grid": {"cost_ffn": [1.0, 2.0]}}))
    assert plan.n_scenarios == 2 and plan.swept == ("cost_ffn",)
    assert plan.latency(np.arange(2)).tables.ffn.x.shape == (2, 9)

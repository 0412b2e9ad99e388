"""Monte Carlo with measured (table) stages and at float64 (docs/hardware.md "Table stages in
every simulator", docs/model.md 7).

* An affine model written as a table of its own points gives the affine Monte Carlo numbers to
  1e-9 at ``precision="float64"`` in every simulator: the barrier, trajectory and fast kernels,
  the finite pool and the dynamics kernel (same random numbers; the table reaches the kernels as
  float64 values at integer loads and token counts, the affine path computes alpha x + beta).
* float64 and float32 agree within float32 rounding.
* The dynamics kernel with every option off reduces to the trajectory kernel on a table model.
* On a shipped table preset, Gaussian is close to exact and Monte Carlo lies within 4 standard
  errors of exact.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from test_dynamics import (
    EXPERTS,
    trace,  # noqa: F401  (fixture; its shapes share compiled programs)
)
from test_dynamics import KW as DYN_KW
from test_dynamics import LAT as DYN_LAT
from test_dynamics import OPTIONS as DYN_OPTIONS
from test_table_latency import WORKLOAD, _as_table

from afd_jax.errors import InputError
from afd_jax.kernels.dynamics import Dynamics
from afd_jax.model import theory
from afd_jax.model.exact import exact_step_times, worker_load_pmf
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.latency_io import resolve_latency
from afd_jax.model.stages import slope_stage
from afd_jax.montecarlo.pool import pool_simulate
from afd_jax.montecarlo.simulate import simulate
from afd_jax.workload.slotload import slot_load_pmf
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

# attention binds at small r, the FFN at large r; beta_attn = 10.33 keeps tau off exact ties
# with the integer FFN times (a tie could flip attn_fraction by one ulp)
LAT = Latency(0.05, 10.33, 3.0, 20.0, 0.01, 2.0)
FIELDS = ("mean_tau", "throughput", "step_p50", "step_p90", "step_p99")
FRACTIONS = ("idle_attn", "idle_ffn", "idle_bundle", "barrier_share")
F32 = 2.0**-24  # float32 unit roundoff


@pytest.fixture(scope="module")
def workload():
    return resolve_workload(WORKLOAD)


def assert_same(a, b, rtol=1e-9, atol=1e-12):
    """Every per-r number of two runs equal to ``rtol`` (fractions also to ``atol``: they are
    differences of sums, near 0 at r = 1)."""
    for f in FIELDS:
        np.testing.assert_allclose(getattr(b, f), getattr(a, f), rtol=rtol, err_msg=f)
    for f in FRACTIONS:
        np.testing.assert_allclose(getattr(b, f), getattr(a, f), rtol=rtol, atol=atol, err_msg=f)


def assert_float32_rounding(hi, lo, bins_per_log):
    """float32 vs float64: each tau is rounded a few times (2^-24 each) and summed in blocks of
    128 by a pairwise tree (7 levels): |relative error| <= ~10 * 2^-24 < 1e-6 for the means;
    fractions (differences of such sums) to 1e-6 absolute; a percentile may move by one
    histogram bin at most (a tau that crosses a bin edge): relative exp(1 / inv_w) - 1."""
    for f in ("mean_tau", "throughput"):
        np.testing.assert_allclose(getattr(lo, f), getattr(hi, f), rtol=16 * F32, err_msg=f)
    for f in FRACTIONS:
        np.testing.assert_allclose(getattr(lo, f), getattr(hi, f), atol=16 * F32, err_msg=f)
    for f in ("step_p50", "step_p90", "step_p99"):
        np.testing.assert_allclose(getattr(lo, f), getattr(hi, f), rtol=bins_per_log, err_msg=f)


# ------------------------------------------------------------- steps window: three kernels


# B = 16, r_max = 12, 256 steps x 2 replications: small, so that compilation dominates
STEPS_KW = dict(steps=256, replications=2, seed=3)


@pytest.mark.parametrize(
    "kernel",
    # the trajectory kernel on a table: test_dynamics_off_on_a_table_is_the_trajectory_kernel
    ["barrier", pytest.param("fast", marks=pytest.mark.slow)],
)
def test_float64_affine_as_table_is_the_affine_run(workload, kernel):
    tab = _as_table(LAT)
    a = simulate(workload, LAT, 16, 12, kernel=kernel, precision="float64", **STEPS_KW)
    b = simulate(workload, tab, 16, 12, kernel=kernel, precision="float64", **STEPS_KW)
    assert a.precision == b.precision == "float64" and a.to_json()["precision"] == "float64"
    assert np.all(a.barrier_share[1:] > 0.01) and np.any(a.idle_attn > 0.05)  # both regimes
    assert_same(a, b)
    if kernel != "barrier":
        return  # the float32 summaries are the same code for every kernel: checked once
    c = simulate(workload, LAT, 16, 12, kernel=kernel, **STEPS_KW)
    assert c.precision == "float32"
    # the histogram's bins: 4096 over log(hi / lo) (estimators.tau_bins); one bin is < 1e-3
    assert_float32_rounding(a, c, bins_per_log=1e-3)


def test_float64_needs_x64_and_a_known_precision(workload):
    with pytest.raises(InputError, match="precision") as e:
        simulate(workload, LAT, 4, 2, precision="float16")
    assert e.value.field == "precision"
    with jax.enable_x64(False):
        with pytest.raises(InputError, match="jax_enable_x64"):
            simulate(workload, LAT, 4, 2, precision="float64")
        with pytest.raises(InputError, match="jax_enable_x64"):
            pool_simulate(workload, LAT, 4, [1], n_requests=8, precision="float64")


def _sweep_plan(precision: str):
    import tomllib

    from afd_jax.studies.sweep import spec as S
    from afd_jax.studies.sweep.plan import make_plan

    coeffs = "\n".join(f"{k} = {v!r}" for k, v in LAT._asdict().items() if "cost" not in k)
    text = (
        f'r_max = 12\nmethods = ["mc"]\nbatch = [16]\n[workloads]\nspecs = ["{WORKLOAD}"]\n'
        f"[latency.set]\n{coeffs}\n[mc]\nsteps = 256\nreplications = 2\nseed = 3\n"
        f'kernel = "barrier"\nprecision = "{precision}"\n'
    )
    return make_plan(S.parse_sweep_spec(tomllib.loads(text), "s.toml"))


def test_sweep_mc_precision_is_the_simulate_option(workload):
    """The sweep's [mc] precision reaches simulate (the program of the barrier test above)."""
    from afd_jax.studies.sweep.evaluate import mc_chunk

    with pytest.raises(InputError) as e:
        _sweep_plan("float16")
    assert e.value.field == "mc.precision" and e.value.path == "s.toml"
    got, _ = mc_chunk(_sweep_plan("float64"), slice(0, 1))
    want = simulate(workload, LAT, 16, 12, kernel="barrier", precision="float64", **STEPS_KW)
    np.testing.assert_array_equal(got[0], want.throughput)


# ------------------------------------------------------------- the finite pool


@pytest.mark.parametrize(
    "ffn_tokens, opts",
    [
        ("nominal", ModelOptions()),
        pytest.param("active", ModelOptions("per_worker", "serial"), marks=pytest.mark.slow),
    ],
)
def test_pool_affine_as_table_is_the_affine_pool(workload, ffn_tokens, opts):
    kw = dict(n_requests=64, replications=2, seed=1, opts=opts, ffn_tokens=ffn_tokens)
    a = pool_simulate(workload, LAT, 4, [3], precision="float64", diagnostics=True, **kw)
    b = pool_simulate(workload, _as_table(LAT), 4, [3], precision="float64", diagnostics=True, **kw)
    assert a.precision == "float64" and a.barrier_share[0] > 0.01
    assert_same(a, b)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.attn_fraction, b.attn_fraction)


# ------------------------------------------------------------- the dynamics kernel


def test_dynamics_off_on_a_table_is_the_trajectory_kernel(trace):  # noqa: F811
    """The reduction the dynamics kernel has for affine stages (tests/test_dynamics.py), on a
    table model (float32): the same steps, the same Attention grid, the same G(r)."""
    tab = _as_table(DYN_LAT)
    a = simulate(trace, tab, 4, 4, kernel="trajectory", **DYN_KW)
    b = simulate(trace, tab, 4, 4, dynamics=Dynamics(), **DYN_KW)
    np.testing.assert_array_equal(a.mean_tau, b.mean_tau)
    np.testing.assert_array_equal(a.se_tau, b.se_tau)
    np.testing.assert_allclose(a.throughput, b.throughput, rtol=1e-12)
    np.testing.assert_allclose(a.idle_ffn, b.idle_ffn, rtol=1e-5)


def test_dynamics_affine_as_table_float64(trace):  # noqa: F811
    """Every option at once (routing, slot slack, KV capacity, micro-batches, noise, expert
    imbalance): the table path (Attention grid at B/m, per-r FFN / communication, FFN on the
    expert-rank grid)."""
    cfg = DYN_OPTIONS[1].values[0]._replace(**EXPERTS)  # balanced routing, slack 1, ...
    kw = dict(dynamics=cfg, precision="float64", **DYN_KW)
    a = simulate(trace, DYN_LAT, 4, 4, **kw)
    b = simulate(trace, _as_table(DYN_LAT), 4, 4, **kw)
    assert a.precision == "float64" and a.to_json()["precision"] == "float64"
    assert_same(a, b)
    np.testing.assert_allclose(a.empty_slot_fraction, b.empty_slot_fraction, rtol=1e-12)


# ------------------------------------------------------------- a shipped table preset

PRESET = "qwen3-235b-a22b@h200_sxm"
# long prompts (within the tables' 32k tokens per slot) at B = 128: the Attention barrier and
# the FFN trade places between r = 1 and r = 5 (measured: exact tau above G(r) up to r = 5)
PRESET_WORKLOAD = "uniform:prompt=1000..28000,decode=200..2000"


@pytest.mark.slow
def test_table_preset_gaussian_and_monte_carlo_agree_with_exact():
    """Gaussian within ``s_A (|g| / sqrt(B) + 1 / B)`` of exact: the first two Edgeworth orders
    of the worker load (skewness g of a slot's load over sqrt(B), then 1/B) with unit constants,
    in units of s_A = t_A'(B theta) sqrt(B v), the spread of one worker's Attention time (as
    tests/test_exact.py measures the Gaussian on affine stages). Monte Carlo (barrier: exact
    steady state, float64) within 4 standard errors of exact, plus 1e-9 relative where every
    step's tau is G(r) (SE 0)."""
    lat, opts = resolve_latency(PRESET)
    w = resolve_workload(PRESET_WORKLOAD)
    st = workload_stats(w)
    theta, var = float(st.theta), float(st.slot_var)
    batch, r_max = 128, 8
    pmf = slot_load_pmf(w, max_bins=512)
    exact = exact_step_times(pmf, lat, batch, r_max, opts, worker_load_pmf(pmf, batch))
    r = np.arange(1.0, r_max + 1)
    gauss = np.asarray(theory.gaussian_step_time_jit(lat, theta, var, r, batch, opts, "tail"))
    skew = float(np.sum(pmf.pmf * (pmf.support - pmf.mean()) ** 3)) / pmf.var() ** 1.5
    s_a = float(slope_stage(lat.attn, batch * theta, batch)) * math.sqrt(batch * var)
    tol = s_a * (abs(skew) / math.sqrt(batch) + 1.0 / batch)
    assert np.all(np.abs(gauss - exact) <= tol), (gauss - exact, tol)
    mc = simulate(w, lat, batch, r_max, kernel="barrier", steps=1024, replications=4, seed=5,
                  opts=opts, precision="float64")  # fmt: skip
    assert np.sum(mc.se_tau > 0) >= 4  # the barrier is random for several r
    assert np.all(np.abs(mc.mean_tau - exact) <= 4 * mc.se_tau + 1e-9 * exact)

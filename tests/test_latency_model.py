"""One latency model: the mean-field, Gaussian-barrier and exact step times and throughputs (and
the provision verb built on them) agree with :mod:`afd_jax.model.latency` on random scenarios.

Every prediction is ``E[step_time(lat, barrier Attention time, r, B)]`` under some law of the
barrier, and its throughput is ``latency.throughput`` of that mean (docs/model.md 2-3, 5). Here
each is recomputed by hand from the latency module's formulas:

* mean field: the barrier at the mean load, ``step_time(lat, t_attn(lat, B theta), r, B)``;
* Gaussian: ``E[step_time(lat, mu + s X_r, r, B)]`` with X_r the max of r standard normals, by
  adaptive quadrature against its density ``r phi Phi^(r-1)`` (split at the kink);
* exact: ``sum_i Pr(M_r = w_i) step_time(lat, t_attn(lat, w_i), r, B)`` with
  ``Pr(M_r = w_i) = F_B(w_i)^r - F_B(w_{i-1})^r`` from the worker-load pmf.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from afd_jax.model import latency as L
from afd_jax.model import theory
from afd_jax.model.exact import exact_step_times, exact_throughput, worker_load_pmf
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.montecarlo.simulate import simulate
from afd_jax.studies.provision import METHODS, provision
from afd_jax.studies.sweep import make_plan, read_table, run_sweep
from afd_jax.studies.sweep.spec import parse_sweep_spec
from afd_jax.workload.containers import TraceWorkload
from afd_jax.workload.slotload import slot_load_pmf
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

OPTIONS = [
    ModelOptions("aggregate", "pipelined"),
    ModelOptions("per_worker", "pipelined"),
    ModelOptions("aggregate", "serial"),
    ModelOptions("per_worker", "serial"),
]
R_MAX = 12
RS = np.arange(1, R_MAX + 1, dtype=np.float64)


def _scenario(i: int):
    """Scenario i: a random trace workload, latency (costs too), batch and options."""
    rng = np.random.default_rng(1000 + i)
    n = 200
    prompt = rng.integers(0, int(rng.integers(50, 400)), n)
    decode = rng.geometric(1.0 / float(rng.uniform(5, 60)), n)
    w = TraceWorkload(f"synthetic-{i}", prompt, decode)
    batch = int(rng.integers(1, 97))
    scale = np.array([0.02, 200.0, 1.0, 500.0, 1.0, 200.0])
    coeffs = rng.uniform(0.0, 1.0, 6) * scale
    costs = rng.uniform(0.5, 3.0, 2)
    lat = Latency(*(float(c) for c in coeffs), float(costs[0]), float(costs[1]))
    return w, lat, batch, OPTIONS[i % 4]


SCENARIOS = [_scenario(i) for i in range(20)]


@pytest.fixture(scope="module", params=range(len(SCENARIOS)))
def scenario(request):
    w, lat, batch, opts = SCENARIOS[request.param]
    st = workload_stats(w)
    return w, lat, batch, opts, float(st.theta), float(st.slot_var)


def _mean_field_tau(lat, theta, r, batch, opts):
    return L.step_time(lat, L.t_attn(lat, batch * theta), r, batch, opts)


def test_mean_field_is_step_time_at_the_mean_load(scenario):
    _, lat, batch, opts, theta, _ = scenario
    tau = _mean_field_tau(lat, theta, RS, batch, opts)
    got = np.asarray(theory.mean_field_step_time(lat, theta, jnp.asarray(RS), batch, opts))
    np.testing.assert_allclose(got, tau, rtol=1e-15, atol=0)
    thr = np.asarray(theory.mean_field_throughput(lat, theta, jnp.asarray(RS), batch, opts))
    np.testing.assert_allclose(thr, L.throughput(lat, RS, batch, tau), rtol=1e-15, atol=0)
    opt = theory.mean_field_optimum(lat, theta, batch, opts, R_MAX)
    for c in opt.candidates:
        tau_c = _mean_field_tau(lat, theta, c.r, batch, opts)
        assert c.throughput == float(L.throughput(lat, c.r, batch, tau_c)), c


def _gaussian_reference(lat, theta, slot_var, r, batch, opts) -> float:
    """E[step_time(lat, mu + s X_r)] by quadrature, X_r = max of r standard normals."""
    mu = float(L.t_attn(lat, batch * theta))
    s = lat.alpha_attn * math.sqrt(batch * slot_var)
    g = float(L.other_stages(lat, r, batch, opts))
    if s == 0:
        return float(L.step_time_from_other(mu, g, opts))

    def integrand(x):
        density = r * stats.norm.pdf(x) * stats.norm.cdf(x) ** (r - 1)
        return float(L.step_time_from_other(mu + s * x, g, opts)) * density

    kink = min(max((g - mu) / s, -12.0), 12.0)
    parts = [(-12.0, kink), (kink, 12.0)]
    return sum(
        integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-13, limit=200)[0]
        for a, b in parts
        if b > a
    )


def test_gaussian_is_expected_step_time_of_the_gaussian_barrier(scenario):
    _, lat, batch, opts, theta, slot_var = scenario
    r = jnp.asarray(RS)
    tau = np.asarray(theory.gaussian_step_time(lat, theta, slot_var, r, batch, opts))
    ref = [_gaussian_reference(lat, theta, slot_var, int(k), batch, opts) for k in RS]
    np.testing.assert_allclose(tau, ref, rtol=1e-9, atol=0)
    thr = np.asarray(theory.gaussian_throughput(lat, theta, slot_var, r, batch, opts))
    np.testing.assert_allclose(thr, L.throughput(lat, RS, batch, tau), rtol=1e-15, atol=0)
    # the cruder form: the step time at the mean barrier mu + s m_r
    m_r = np.asarray(theory.expected_max_std_normal(r))
    attn = L.t_attn(lat, batch * theta) + lat.alpha_attn * math.sqrt(batch * slot_var) * m_r
    crude = np.asarray(
        theory.gaussian_step_time(lat, theta, slot_var, r, batch, opts, "max_of_means")
    )
    np.testing.assert_allclose(crude, L.step_time(lat, attn, RS, batch, opts), rtol=1e-15)


def _exact_reference(slot, lat, batch, opts) -> np.ndarray:
    """E[step_time(lat, t_attn(M_r))] summed over the law of the barrier max M_r."""
    wp = worker_load_pmf(slot, batch)
    t_a = L.t_attn(lat, wp.support)
    cdf = np.clip(np.cumsum(wp.pmf), 0.0, 1.0)
    out = []
    for r in RS:
        p_max = np.diff(np.concatenate([[0.0], cdf**r]))
        out.append(float(np.dot(p_max, L.step_time(lat, t_a, r, batch, opts))))
    return np.asarray(out)


def test_exact_is_expected_step_time_of_the_barrier_max(scenario):
    w, lat, batch, opts, _, _ = scenario
    slot = slot_load_pmf(w, max_bins=512)
    tau = exact_step_times(slot, lat, batch, R_MAX, opts)
    np.testing.assert_allclose(tau, _exact_reference(slot, lat, batch, opts), rtol=1e-9, atol=0)
    thr = exact_throughput(slot, lat, batch, R_MAX, opts)
    np.testing.assert_array_equal(thr, L.throughput(lat, RS, batch, tau))


@pytest.mark.parametrize("i", [0, 5, 10, 15])
def test_provision_curves_are_the_model_curves(i):
    w, lat, batch, opts = SCENARIOS[i]
    res = provision(w, lat, batch, r_max=R_MAX, opts=opts, slot_bins=512)
    st = workload_stats(w)
    theta, slot_var = float(st.theta), float(st.slot_var)
    np.testing.assert_array_equal(res.r, RS)
    for m in METHODS:
        thr = L.throughput(lat, RS, batch, res.step_time[m])
        np.testing.assert_allclose(res.throughput[m], thr, rtol=1e-15, atol=0)
        assert res.r_best[m] == int(np.argmax(res.throughput[m])) + 1 or m == "mean_field"
    np.testing.assert_allclose(
        res.step_time["mean_field"], _mean_field_tau(lat, theta, RS, batch, opts), rtol=1e-15
    )
    gauss = theory.gaussian_step_time(lat, theta, slot_var, jnp.asarray(RS), batch, opts)
    np.testing.assert_allclose(res.step_time["gaussian"], np.asarray(gauss), rtol=1e-15)
    slot = slot_load_pmf(w, max_bins=512)
    np.testing.assert_array_equal(
        res.step_time["exact"], exact_step_times(slot, lat, batch, R_MAX, opts)
    )
    assert res.to_json()["curve"][0]["exact"] == float(res.throughput["exact"][0])


# Monte Carlo and sweep paths: with every request (P, D = 1) every slot holds exactly P tokens,
# so every worker load is B P and the barrier is t_A(B P) exactly; each path must then give the
# latency module's step time and throughput (Monte Carlo kernels compute in float32).
DET_P, DET_B, DET_RMAX = 300, 16, 6
DET_LAT = Latency(0.02, 90.0, 0.35, 400.0, 0.25, 120.0, 1.0, 1.5)


def _deterministic_reference(opts):
    rs = np.arange(1, DET_RMAX + 1, dtype=np.float64)
    attn = L.t_attn(DET_LAT, float(DET_B * DET_P))
    tau = L.step_time(DET_LAT, attn, rs, DET_B, opts)
    return tau, L.throughput(DET_LAT, rs, DET_B, tau)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: f"{o.comm_scaling}-{o.overlap}")
@pytest.mark.parametrize("kernel", ["barrier", "fast"])
def test_monte_carlo_step_time_is_the_latency_model(opts, kernel):
    w = resolve_workload(f"deterministic:prompt={DET_P},decode=1")
    res = simulate(w, DET_LAT, DET_B, DET_RMAX, kernel=kernel, steps=256, replications=2, opts=opts)
    tau, thr = _deterministic_reference(opts)
    np.testing.assert_allclose(res.mean_tau, tau, rtol=2e-6)
    np.testing.assert_allclose(res.throughput, thr, rtol=2e-6)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: f"{o.comm_scaling}-{o.overlap}")
def test_sweep_columns_are_the_latency_model(opts, tmp_path):
    lat = dict(zip(Latency._fields, DET_LAT, strict=True))
    spec = parse_sweep_spec(
        {
            "name": "latency-model",
            "r_max": DET_RMAX,
            "methods": ["mean_field", "exact"],
            "batch": [DET_B],
            "output": str(tmp_path / "t.csv"),
            "workloads": {
                "family": [
                    {"family": "deterministic", "params": {"prompt": [DET_P], "decode": [1]}}
                ]
            },
            "latency": {
                "base": "paper-v1",
                "set": lat,
                "comm_scaling": opts.comm_scaling,
                "overlap": opts.overlap,
            },
        }
    )
    run_sweep(make_plan(spec), output=str(tmp_path / "t.csv"), progress=False)
    table = read_table(tmp_path / "t.csv")
    _, thr = _deterministic_reference(opts)
    for method in ("mean_field", "exact"):
        order = np.argsort(table["r"])
        np.testing.assert_array_equal(table["r"][order], np.arange(1, DET_RMAX + 1))
        got = np.asarray(table[f"tput_{method}"], dtype=np.float64)[order]
        np.testing.assert_allclose(got, thr, rtol=1e-9)

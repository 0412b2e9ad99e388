"""Elasticities of r* and throughput (afd_jax.studies.elasticity): implicit differentiation vs
central finite differences of re-solved optima, vs the mean-field closed form, and the scale
identities every elasticity set must satisfy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax import resolve_latency, resolve_workload, workload_stats
from afd_jax.model.theory import mean_field_optimum
from afd_jax.studies.elasticity import (
    INPUTS,
    elasticities,
    input_tangent,
    optimum_elasticities,
    round_elasticity,
)
from afd_jax.studies.optimize import make_scenario, solve_continuous, solve_continuous_batched

pytestmark = pytest.mark.slow  # solver compilations: ~20-40 s on 2 shared cores


@pytest.fixture(scope="module")
def solved():
    lat, opts = resolve_latency("paper-v1")
    st = workload_stats(resolve_workload("paper-v1"))
    scen = make_scenario(lat, st.theta, st.slot_var, 256.0, r_min=1.0, r_max=32.0)
    sol = solve_continuous(scen, opts=opts)
    return scen, sol, opts, elasticities(scen, sol, opts=opts)


def test_scale_identities(solved):
    """Scaling every stage time by s scales tau by s (throughput by 1/s, r* unchanged); scaling
    both costs by s scales throughput by 1/s (r* unchanged)."""
    _, _, _, el = solved
    times = ("attn_time", "ffn_time", "comm_time")
    assert sum(el["throughput"][k] for k in times) == pytest.approx(-1.0, abs=1e-6)
    assert sum(el["r_star"][k] for k in times) == pytest.approx(0.0, abs=1e-6)
    costs = ("cost_attn", "cost_ffn")
    assert sum(el["throughput"][k] for k in costs) == pytest.approx(-1.0, abs=1e-6)
    assert sum(el["r_star"][k] for k in costs) == pytest.approx(0.0, abs=1e-6)


def test_against_finite_differences_of_resolved_optima(solved):
    scen, sol, opts, el = solved
    h = 1e-4
    pert = []
    for name in INPUTS:
        tan = input_tangent(scen, name)
        for s in (1 + h, 1 - h):
            pert.append(jax.tree_util.tree_map(lambda a, t, s=s: a + (s - 1) * t, scen, tan))
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *pert)
    out = solve_continuous_batched(stacked, opts=opts)
    log_r = np.log(np.asarray(out.r)).reshape(len(INPUTS), 2)
    log_t = np.log(np.asarray(out.throughput)).reshape(len(INPUTS), 2)
    assert bool(np.all(np.asarray(out.converged)))
    for i, name in enumerate(INPUTS):
        fd_r = (log_r[i, 0] - log_r[i, 1]) / (2 * h)
        fd_t = (log_t[i, 0] - log_t[i, 1]) / (2 * h)
        assert el["r_star"][name] == pytest.approx(fd_r, rel=1e-3, abs=1e-4), name
        assert el["throughput"][name] == pytest.approx(fd_t, rel=1e-3, abs=1e-4), name


def test_mean_field_limit():
    """With v = 0 the smoothed optimum tends to the mean-field one: its r* elasticity in the
    Attention time is t_A / (t_A - beta_F) at the Attention/FFN crossing, and finite differences
    of the closed-form r* agree."""
    lat, opts = resolve_latency("paper-v1")
    theta, batch = 599.0, 256
    el, sol = optimum_elasticities(lat, theta, 0.0, batch, opts, 1.0, 32.0)
    mf = mean_field_optimum(lat, theta, batch, opts, 32)
    assert float(sol.r) == pytest.approx(mf.r_continuous, rel=1e-4)
    h = 1e-4

    def r_mf(s):
        scaled = lat._replace(alpha_attn=lat.alpha_attn * s, beta_attn=lat.beta_attn * s)
        return mean_field_optimum(scaled, theta, batch, opts, 32).r_continuous

    fd = (np.log(r_mf(1 + h)) - np.log(r_mf(1 - h))) / (2 * h)
    t_a = lat.alpha_attn * batch * theta + lat.beta_attn
    assert fd == pytest.approx(t_a / (t_a - lat.beta_ffn), rel=1e-6)
    assert el["r_star"]["attn_time"] == pytest.approx(fd, rel=2e-3)
    assert el["r_star"]["ffn_time"] == pytest.approx(-fd, rel=2e-3)


@pytest.mark.parametrize(
    "value,expected",
    [(1.2441, 1.2), (-0.0222, -0.02), (0.0049, 0.0), (0.137, 0.14), (12.71, 13.0), (-0.0, 0.0)],
)
def test_round_elasticity(value, expected):
    assert round_elasticity(value) == expected

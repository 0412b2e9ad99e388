"""Elasticities of the optimum: d ln r* / d ln p and d ln throughput* / d ln p, percent per
percent, for each input p (docs/plan.md).

The optimum is the continuous maximiser of :mod:`afd_jax.studies.optimize`'s smoothed
Gaussian-barrier throughput at a fixed B (its final temperature, where it is within
``T log 2 + T (1 + m_r)`` of the Gaussian model). An *input* is a direction in the scenario:
scaling it by ``s`` moves some leaves to ``s * leaf`` (or ``s^2 * leaf``):

* ``workload_scale``: every token count of the workload: theta -> s theta, v -> s^2 v;
* ``theta``: the mean slot load alone; ``batch``: B (the bounds move with it);
* ``attn_time`` / ``ffn_time`` / ``comm_time``: every coefficient of that stage (its time
  function scaled by s);
* ``cost_attn`` / ``cost_ffn``: the instance costs (GPUs, USD or W: whatever ``lat`` carries).

The tangents are :mod:`afd_jax.studies.directions`'. ``d ln r*/d ln p = d(log r*)/ds`` along
the tangent ``t`` by the implicit function theorem, one Jacobian-vector product per input (tables
included); throughput: ``d ln thr/d ln p = d_p ln thr . t + d_x ln thr . dx*/ds`` (the total
derivative, r* moving): :func:`afd_jax.studies.optimize.input_derivatives`, the compiled program
of the sensitivities.
Rounded by :func:`round_elasticity`.
"""

from __future__ import annotations

import math

import numpy as np

from afd_jax.model.latency import DEFAULT_OPTIONS, Latency, ModelOptions
from afd_jax.studies.directions import INPUTS, input_tangent
from afd_jax.studies.optimize import (
    DEFAULT_CONFIG,
    Scenario,
    Solution,
    SolverConfig,
    input_derivatives,
    make_scenario,
    solve_continuous,
)

__all__ = ["INPUTS", "elasticities", "input_tangent", "optimum_elasticities", "round_elasticity"]


def elasticities(
    scen: Scenario,
    sol: Solution,
    config: SolverConfig = DEFAULT_CONFIG,
    opts: ModelOptions = DEFAULT_OPTIONS,
) -> dict[str, dict[str, float]]:
    """``{"r_star": {input: e}, "throughput": {input: e}}`` (unrounded floats) at the converged
    optimum ``sol`` of ``scen`` (scalar leaves), for every input of :data:`INPUTS`; computed by
    the compiled program of :func:`afd_jax.studies.optimize.sensitivities` (no new compile after
    an ``optimize`` of the same shapes)."""
    e_r, e_thr = (np.asarray(a, np.float64) for a in input_derivatives(scen, sol, config, opts))
    return {
        "r_star": {name: float(v) for name, v in zip(INPUTS, e_r, strict=True)},
        "throughput": {name: float(v) for name, v in zip(INPUTS, e_thr, strict=True)},
    }


def optimum_elasticities(
    lat: Latency,
    theta: float,
    slot_var: float,
    batch: int,
    opts: ModelOptions,
    r_min: float = 1.0,
    r_max: float = 64.0,
    config: SolverConfig = DEFAULT_CONFIG,
) -> tuple[dict[str, dict[str, float]], Solution]:
    """Solve the continuous problem at a fixed B in [r_min, r_max] and return its
    :func:`elasticities` and the :class:`~afd_jax.studies.optimize.Solution`."""
    scen = make_scenario(lat, theta, slot_var, float(batch), r_min=r_min, r_max=r_max)
    sol = solve_continuous(scen, config, opts)
    return elasticities(scen, sol, config, opts), sol


def round_elasticity(value: float) -> float:
    """Two significant digits, never finer than 0.01 (values below 0.005 in size are 0.0).

    The optimum behind an elasticity is the smoothed Gaussian model's, which differs from the
    exact steady state by about a percent; more digits would not be supported."""
    if not math.isfinite(value):
        return value
    if abs(value) < 0.005:
        return 0.0
    digits = min(2, 1 - math.floor(math.log10(abs(value))))
    return round(value, digits) + 0.0

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

``d ln r*/d ln p = (dr*/dp . t) / r*`` with the implicit-function sensitivities
(:func:`afd_jax.studies.optimize.sensitivities`) and the tangent ``t``; throughput:
``d ln thr/d ln p = d_p ln thr . t + d_x ln thr . dx*/dp . t`` (the total derivative, r* moving).
Rounded by :func:`round_elasticity`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from afd_jax.model.latency import DEFAULT_OPTIONS, SCALAR_FIELDS, Latency, ModelOptions
from afd_jax.model.stages import AttnTable, TableStage
from afd_jax.studies.optimize import (
    DEFAULT_CONFIG,
    Scenario,
    Solution,
    SolverConfig,
    make_scenario,
    sensitivities,
    solve_continuous,
)
from afd_jax.studies.optimize import _smoothed_throughput as smoothed_throughput

__all__ = ["INPUTS", "elasticities", "input_tangent", "optimum_elasticities", "round_elasticity"]

INPUTS = (
    "workload_scale",
    "theta",
    "batch",
    "attn_time",
    "ffn_time",
    "comm_time",
    "cost_attn",
    "cost_ffn",
)
_STAGE_OF_INPUT = {"attn_time": "attn", "ffn_time": "ffn", "comm_time": "comm"}


def _stage_fields(stage: str) -> set[str]:
    """The Latency fields of one stage's time (not its cost), by name: those naming the stage
    (``alpha_attn``, ``beta_attn``; any other parameter of that stage's time function too)."""
    return {f for f in SCALAR_FIELDS if stage in f.split("_") and not f.startswith("cost")}


def _table_tangent(table):
    """d (s * table) / ds: the times and slopes, not the knots (nor the batches)."""
    if isinstance(table, AttnTable):
        return AttnTable(jnp.zeros_like(table.batches), tuple(map(_table_tangent, table.rows)))
    return TableStage(jnp.zeros_like(table.x), table.y, table.d)


def _stage_tangent(lat, zero_lat, stage: str):
    """The latency tangent of scaling one stage's time function by s at s = 1: its affine
    coefficients, or its table's times and slopes (the NaN pair a table replaces stays 0)."""
    tables = getattr(lat, "tables", None)
    table = getattr(tables, stage) if tables is not None else None
    if table is None:
        return zero_lat._replace(**{f: getattr(lat, f) for f in _stage_fields(stage)})
    return zero_lat._replace(tables=zero_lat.tables._replace(**{stage: _table_tangent(table)}))


def input_tangent(scen: Scenario, name: str) -> Scenario:
    """The scenario tangent ``d scen(s) / ds`` at s = 1 for input ``name`` of :data:`INPUTS`."""
    zero = jax.tree_util.tree_map(jnp.zeros_like, scen)
    lat = scen.latency
    if name in _STAGE_OF_INPUT:
        return zero._replace(latency=_stage_tangent(lat, zero.latency, _STAGE_OF_INPUT[name]))
    if name in ("cost_attn", "cost_ffn"):
        return zero._replace(latency=zero.latency._replace(**{name: getattr(lat, name)}))
    if name == "workload_scale":
        return zero._replace(theta=scen.theta, slot_var=2.0 * scen.slot_var)
    if name == "theta":
        return zero._replace(theta=scen.theta)
    if name == "batch":
        return zero._replace(batch=scen.batch, batch_min=scen.batch_min, batch_max=scen.batch_max)
    raise ValueError(f"unknown input {name!r}")


def _dot(a, b):
    """Sum over every leaf of a * b (b a tangent: where it is 0, a NaN of a counts as 0)."""
    prod = jax.tree_util.tree_map(lambda x, y: jnp.where(y == 0, 0.0, x * y), a, b)
    return sum(float(jnp.sum(v)) for v in jax.tree_util.tree_leaves(prod))


def _log_throughput(x, scen: Scenario, rel_temperature, opts: ModelOptions):
    return jnp.log(smoothed_throughput(scen, jnp.exp(x[0]), jnp.exp(x[1]), rel_temperature, opts))


def elasticities(
    scen: Scenario,
    sol: Solution,
    config: SolverConfig = DEFAULT_CONFIG,
    opts: ModelOptions = DEFAULT_OPTIONS,
) -> dict[str, dict[str, float]]:
    """``{"r_star": {input: e}, "throughput": {input: e}}`` (unrounded floats) at the converged
    optimum ``sol`` of ``scen`` (scalar leaves), for every input of :data:`INPUTS`."""
    dr, db = sensitivities(scen, sol, config, opts)
    x = jnp.stack([jnp.log(sol.r), jnp.log(sol.batch)])
    t_fin = jnp.asarray(config.temperature_final, dtype=x.dtype)
    gx, gp = jax.grad(_log_throughput, argnums=(0, 1))(x, scen, t_fin, opts)
    out = {"r_star": {}, "throughput": {}}
    for name in INPUTS:
        tan = input_tangent(scen, name)
        dlog_r = _dot(dr, tan) / float(sol.r)
        dlog_b = _dot(db, tan) / float(sol.batch)
        out["r_star"][name] = dlog_r
        out["throughput"][name] = _dot(gp, tan) + float(gx[0]) * dlog_r + float(gx[1]) * dlog_b
    return out


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

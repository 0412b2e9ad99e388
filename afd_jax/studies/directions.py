"""Input directions of a provisioning scenario: the tangent ``d scen(s) / ds`` at s = 1 when one
input is scaled by s (docs/plan.md). The elasticities (:mod:`afd_jax.studies.elasticity`) are the
derivatives of the optimum along them; :mod:`afd_jax.studies.optimize` computes those in the same
compiled program as its sensitivities.

* ``workload_scale``: every token count of the workload: theta -> s theta, v -> s^2 v;
* ``theta``: the mean slot load alone; ``batch``: B (the bounds move with it);
* ``attn_time`` / ``ffn_time`` / ``comm_time``: every coefficient of that stage (its time
  function scaled by s; a table's times and slopes);
* ``cost_attn`` / ``cost_ffn``: the instance costs.

Works on any NamedTuple with the fields of :class:`afd_jax.studies.optimize.Scenario`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from afd_jax.model.latency import SCALAR_FIELDS
from afd_jax.model.stages import AttnTable, TableStage, scale_stage

__all__ = ["INPUTS", "TABLE_STAGES", "input_tangent", "input_tangents", "scale_tables"]

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
TABLE_STAGES = ("attn", "ffn", "comm")
"""The order of the per-stage scales of :func:`scale_tables`."""
STAGE_INPUTS = tuple((INPUTS.index(name), stage) for name, stage in _STAGE_OF_INPUT.items())
"""(index in :data:`INPUTS`, stage) of the inputs that scale one stage's time function."""


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


def input_tangent(scen, name: str):
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


def input_tangents(scen):
    """Every tangent of :data:`INPUTS`, stacked: the leaves of ``scen`` with a leading axis
    ``len(INPUTS)``."""
    return jax.tree_util.tree_map(
        lambda *a: jnp.stack(a), *(input_tangent(scen, name) for name in INPUTS)
    )


def scale_tables(tables, scales):
    """``tables`` (:class:`afd_jax.model.latency.StageTables`) with stage i's time function times
    ``scales[i]`` (order :data:`TABLE_STAGES`; :func:`afd_jax.model.stages.scale_stage`).
    Differentiating in ``scales`` at 1 gives the stage-time directions of :func:`input_tangent`
    with one scalar per stage instead of a tangent per knot."""
    scaled = [getattr(tables, k) for k in TABLE_STAGES]
    scaled = [None if t is None else scale_stage(t, scales[i]) for i, t in enumerate(scaled)]
    return type(tables)(*scaled)

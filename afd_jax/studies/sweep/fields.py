"""The sweep's shared vocabulary: method, latency-field, regime and column names (docs/sweep.md).

Every part of the sweep (spec, plan, evaluate, table, plots) names methods and columns through
this module, so none of them imports another just for a name.
"""

from __future__ import annotations

from afd_jax.model.latency import SCALAR_FIELDS
from afd_jax.model.theory import REGIMES

__all__ = ["FORMATS", "LATENCY_FIELDS", "METHODS", "REGIMES", "columns", "row_methods"]

METHODS = ("mean_field", "gaussian", "exact", "mc", "optimize")
LATENCY_FIELDS = SCALAR_FIELDS  # 6 coefficients + cost_attn, cost_ffn (tables ride along)
FORMATS = ("csv", "parquet")


def row_methods(methods) -> list[str]:
    """The methods with a per-r throughput column ``tput_<method>`` (all but ``optimize``)."""
    return [m for m in methods if m != "optimize"]


def columns(methods, family_params) -> list[str]:
    """The table's columns, in order, for the (canonically ordered) methods and the family
    parameters of the workloads (docs/sweep.md, "The table")."""
    cols = ["scenario", "workload", *(f"wl_{p}" for p in family_params), "batch"]
    cols += [*LATENCY_FIELDS, "theta", "slot_std", "r", "regime"]
    for m in methods:
        if m != "optimize":
            cols.append(f"tput_{m}")
        if m == "mc":
            cols.append("tput_mc_stderr")
    cols += [f"r_best_{m}" for m in methods]
    if "optimize" in methods:
        cols.append("r_continuous_optimize")
    return cols

"""The sweep's shared vocabulary: method, latency-field, regime and column names (docs/sweep.md).

Every part of the sweep (spec, plan, evaluate, table, plots) names methods and columns through
this module, so none of them imports another just for a name.
"""

from __future__ import annotations

from afd_jax.model.latency import SCALAR_FIELDS, STAGES
from afd_jax.model.theory import REGIMES

__all__ = [
    "FORMATS",
    "LATENCY_FIELDS",
    "METHODS",
    "REGIMES",
    "SCALE_FIELDS",
    "SWEPT_FIELDS",
    "columns",
    "row_methods",
]

METHODS = ("mean_field", "gaussian", "exact", "mc", "optimize")
LATENCY_FIELDS = SCALAR_FIELDS  # 6 coefficients + cost_attn, cost_ffn (tables ride along)
SCALE_FIELDS = tuple(f"{s}_scale" for s in STAGES)
"""Multiplicative stage-time scales (default 1; affine or table stages alike)."""
SWEPT_FIELDS = LATENCY_FIELDS + SCALE_FIELDS
"""Every key of ``[latency.set]``, ``[latency.grid]`` and ``[latency.random]``."""
FORMATS = ("csv", "parquet")


def row_methods(methods) -> list[str]:
    """The methods with a per-r throughput column ``tput_<method>`` (all but ``optimize``)."""
    return [m for m in methods if m != "optimize"]


def columns(methods, family_params, scales: bool = False) -> list[str]:
    """The table's columns, in order, for the (canonically ordered) methods and the family
    parameters of the workloads (docs/sweep.md, "The table"); the stage scales after the
    latency fields when the spec names one (``scales``)."""
    cols = ["scenario", "workload", *(f"wl_{p}" for p in family_params), "batch"]
    scale_cols = SCALE_FIELDS if scales else ()
    cols += [*LATENCY_FIELDS, *scale_cols, "theta", "slot_std", "r", "regime"]
    for m in methods:
        if m != "optimize":
            cols.append(f"tput_{m}")
        if m == "mc":
            cols.append("tput_mc_stderr")
    cols += [f"r_best_{m}" for m in methods]
    if "optimize" in methods:
        cols.append("r_continuous_optimize")
    return cols

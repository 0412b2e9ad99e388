"""afd-jax: provisioning and Monte Carlo for Attention-FFN disaggregated LLM serving.

The public API is re-exported here (loaded lazily, so ``import afd_jax`` stays cheap);
implementation modules may change. See docs/architecture.md for the layers.

>>> import afd_jax
>>> w = afd_jax.resolve_workload("paper-v1")
>>> round(afd_jax.workload_stats(w).theta, 6)
599.0
"""

from __future__ import annotations

import importlib

from .errors import InputError
from .latency import DEFAULT_OPTIONS, Latency, ModelOptions
from .workload import (
    CopulaComponent,
    Marginal,
    ParametricWorkload,
    TraceWorkload,
    WorkloadStats,
)

__version__ = "0.1.0"

# public name -> module that defines it. The functions named like their module (simulate,
# optimize, calibrate) are imported from it: `from afd_jax.simulate import simulate`.
_LAZY = {
    "load_trace": "traces",
    "trace_stats": "statistics",
    "workload_stats": "statistics",
    "theta_confidence_interval": "statistics",
    "resolve_workload": "workloads",
    "list_presets": "workloads",
    "SlotLoadPMF": "slotload",
    "slot_load_pmf": "slotload",
    "make_sampler": "samplers",
    "resolve_latency": "latency_io",
    "mean_field_step_time": "theory",
    "mean_field_throughput": "theory",
    "mean_field_optimum": "theory",
    "gaussian_step_time": "theory",
    "gaussian_throughput": "theory",
    "worker_load_pmf": "exact",
    "exact_step_times": "exact",
    "exact_throughput": "exact",
    "SimulationResult": "simulate",
    "pool_simulate": "pool",
    "load_spec": "sweep",
    "make_plan": "sweep",
    "run_sweep": "sweep",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'afd_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_OPTIONS",
    "CopulaComponent",
    "InputError",
    "Latency",
    "Marginal",
    "ModelOptions",
    "ParametricWorkload",
    "TraceWorkload",
    "WorkloadStats",
    *_LAZY,
]

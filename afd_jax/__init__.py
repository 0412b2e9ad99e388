"""afd-jax: provisioning and Monte Carlo for Attention-FFN disaggregated LLM serving.

The public API is re-exported here (loaded lazily, so ``import afd_jax`` stays cheap);
implementation modules may change. See docs/architecture.md for the layers. The verbs:

* :func:`provision` -> :class:`ProvisionResult`: r by mean field, Gaussian barrier and exact
  steady state (``afd-jax provision``);
* :func:`simulate` / :func:`pool_simulate`: Monte Carlo of the bundle, stationary or finite
  request pool (``afd-jax simulate``);
* :func:`optimize` -> :class:`OptimizeResult`: r (and B) under constraints (``afd-jax optimize``);
* :func:`plan` -> :class:`PlanResult`: Pareto front of throughput per GPU (or per USD) against
  P99 time per output token, the best (r, B) under SLO, KV capacity and GPU budget
  (``afd-jax plan``);
* :func:`run_sweep`: scenario grids from a TOML spec (``afd-jax sweep``);
* :func:`calibrate`: latency coefficients from a measured profile (``afd-jax calibrate``);

plus the containers (workloads, :class:`Latency`, :class:`ModelOptions`, statistics) and the
model functions they are built on.

>>> import afd_jax
>>> w = afd_jax.resolve_workload("paper-v1")
>>> round(afd_jax.workload_stats(w).theta, 6)
599.0
"""

from __future__ import annotations

import importlib

from afd_jax.errors import InputError
from afd_jax.model.latency import DEFAULT_OPTIONS, Latency, ModelOptions
from afd_jax.workload.containers import (
    CopulaComponent,
    Marginal,
    ParametricWorkload,
    TraceWorkload,
    WorkloadStats,
)

__version__ = "0.1.0"

# public name -> module that defines it. The functions named like their module (simulate,
# optimize, calibrate) are imported from it: `from afd_jax.montecarlo.simulate import simulate`.
_LAZY = {
    # the verbs
    "provision": "studies.provision",
    "ProvisionResult": "studies.provision",
    "simulate": "montecarlo.simulate",
    "pool_simulate": "montecarlo.pool",
    "optimize": "studies.optimize",
    "OptimizeResult": "studies.optimize",
    "plan": "studies.plan",
    "PlanResult": "studies.plan",
    "run_sweep": "studies.sweep",
    "calibrate": "model.calibrate",
    # workloads and their statistics
    "load_trace": "workload.traces",
    "trace_stats": "workload.statistics",
    "workload_stats": "workload.statistics",
    "theta_confidence_interval": "workload.statistics",
    "resolve_workload": "workload.specs",
    "list_presets": "workload.specs",
    "SlotLoadPMF": "workload.slotload",
    "slot_load_pmf": "workload.slotload",
    # the model
    "resolve_latency": "model.latency_io",
    "mean_field_step_time": "model.theory",
    "mean_field_throughput": "model.theory",
    "mean_field_optimum": "model.theory",
    "gaussian_step_time": "model.theory",
    "gaussian_throughput": "model.theory",
    "worker_load_pmf": "model.exact",
    "TableLatency": "model.latency",
    "table_latency": "model.latency",
    "table_stage": "model.stages",
    "attn_table": "model.stages",
    "exact_step_times": "model.exact",
    "exact_throughput": "model.exact",
    # Monte Carlo and studies
    "make_sampler": "montecarlo.samplers",
    "SimulationResult": "montecarlo.simulate",
    "Dynamics": "montecarlo.dynamics",
    "load_spec": "studies.sweep",
    "make_plan": "studies.sweep",
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

"""afd-jax: provisioning and Monte Carlo for Attention-FFN disaggregated LLM serving.

The public API is re-exported here; implementation modules may change.
"""

from .errors import InputError
from .latency import Latency, ModelOptions
from .workload import (
    CopulaComponent,
    Marginal,
    ParametricWorkload,
    TraceWorkload,
    WorkloadStats,
)

__version__ = "0.1.0"

__all__ = [
    "CopulaComponent",
    "InputError",
    "Latency",
    "Marginal",
    "ModelOptions",
    "ParametricWorkload",
    "TraceWorkload",
    "WorkloadStats",
]

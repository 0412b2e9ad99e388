"""Pure JAX kernels (installed as ``afd_jax.kernels``): samplers, slot trajectories, barrier
maxima and the finite request pool, behind one contract (:mod:`.contract`: ``init`` /
``segment``, state apart from info). Un-jitted and composable; drivers in ``afd_jax`` own the jit
boundary. Nothing here imports ``afd_jax``."""

from .contract import Kernel, SegmentInfo, SegmentParams
from .copula import CopulaSampler
from .sampling import (
    DRAWS,
    AliasSampler,
    TableSampler,
    sample_requests,
    sample_slot_load,
    sample_stationary,
    table_sampler,
)
from .step import StepModel, kahan_add, step_times

__all__ = [
    "DRAWS",
    "AliasSampler",
    "CopulaSampler",
    "Kernel",
    "SegmentInfo",
    "SegmentParams",
    "StepModel",
    "TableSampler",
    "kahan_add",
    "sample_requests",
    "sample_slot_load",
    "sample_stationary",
    "step_times",
    "table_sampler",
]

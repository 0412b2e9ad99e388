"""Pure JAX kernels (installed as ``afd_jax.kernels``): samplers, slot trajectories and barrier
maxima. Un-jitted and composable; drivers in ``afd_jax`` own the jit boundary. Nothing here
imports ``afd_jax``."""

from .copula import CopulaSampler
from .sampling import (
    TableSampler,
    register_sampler,
    sample_requests,
    sample_slot_load,
    sample_stationary,
    table_sampler,
)
from .step import StepModel, bundle_step_stats, step_times

__all__ = [
    "CopulaSampler",
    "StepModel",
    "TableSampler",
    "bundle_step_stats",
    "register_sampler",
    "sample_requests",
    "sample_slot_load",
    "sample_stationary",
    "step_times",
    "table_sampler",
]

"""Pure JAX kernels (installed as ``afd_jax.kernels``): samplers, slot trajectories, barrier
maxima and the finite request pool, behind one contract (:mod:`.contract`: ``init`` /
``segment``, state apart from info). Un-jitted and composable; drivers in ``afd_jax`` own the jit
boundary. Nothing here imports ``afd_jax``. The names below load their module (and JAX) on first
use, so that :mod:`.options` is importable without JAX."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DRAWS": "sampling",
    "AliasSampler": "sampling",
    "CopulaSampler": "copula",
    "Kernel": "contract",
    "LoadAliasSampler": "sampling",
    "SegmentInfo": "contract",
    "ProductSampler": "sampling",
    "SegmentParams": "contract",
    "StepModel": "step",
    "TableSampler": "sampling",
    "kahan_add": "step",
    "load_alias_sampler": "sampling",
    "sample_requests": "sampling",
    "sample_slot_load": "sampling",
    "sample_stationary": "sampling",
    "step_times": "step",
    "table_sampler": "sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

"""Named options shared by the library and the CLI's parsers, importable without JAX (so that
``afd-jax COMMAND --help`` and a rejected flag start in a fraction of a second). Pure Python;
the modules that use these names import them from here."""

from __future__ import annotations

PRECISIONS = ("float32", "float64")
"""Float dtypes of the kernels' step-time summaries (``precision=``): float32 is the default
(every number as before), float64 needs ``jax_enable_x64`` (the CLI enables it)."""

OBJECTIVES = {"per_gpu": "tokens_per_s_per_gpu", "per_dollar": "tokens_per_dollar"}
"""``afd-jax plan`` objectives and the front column each ranks by."""

DEFAULT_BATCHES = (8, 16, 32, 64, 128, 256)
"""Batch sizes ``afd-jax plan`` searches unless told otherwise."""

DYNAMICS_KEYS = (
    "routing",
    "routing_d",
    "lookahead",
    "slot_slack",
    "kv_capacity",
    "microbatches",
    "jitter_cv",
    "straggler",
    "experts",
    "expert_skew",
)
"""Option names of :func:`afd_jax.montecarlo.dynamics.dynamics_options` (the sweep's ``[mc]``
keys; the CLI's flags with - for _)."""

__all__ = ["DEFAULT_BATCHES", "DYNAMICS_KEYS", "OBJECTIVES", "PRECISIONS"]

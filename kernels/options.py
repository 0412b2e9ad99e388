"""The kernels' named options, importable without JAX (the CLI lists them in ``--help`` before
any kernel is loaded). No imports at all."""

from __future__ import annotations

ROUTINGS = ("in-place", "balanced", "power-of-d", "lookahead")
"""Request routing of the dynamics kernel (:class:`~.dynamics.Dynamics`, docs/dynamics.md)."""

__all__ = ["ROUTINGS"]

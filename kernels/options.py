"""The kernels' named options, importable without JAX (the CLI lists them in ``--help`` before
any kernel is loaded). No imports at all."""

from __future__ import annotations

ROUTINGS = ("in-place", "balanced", "power-of-d", "lookahead")
"""Request routing of the dynamics kernel (:class:`~.dynamics.Dynamics`, docs/dynamics.md)."""

KERNELS = ("barrier", "trajectory", "fast")
"""The steps window's kernels (``simulate(kernel=)``, ``--kernel``, the sweep's ``[mc]``)."""

INITS = ("stationary", "cold")
"""Starts of a trajectory: slots in the stationary law, or all fresh (the paper's v1)."""

__all__ = ["INITS", "KERNELS", "ROUTINGS"]

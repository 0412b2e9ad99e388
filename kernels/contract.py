"""The one kernel contract (as blackjax): a kernel is built for its static configuration
(shapes, lengths, switches) and exposes

    state = kernel.init(key, params)
    state, info = kernel.segment(key, state, params)

with the carried ``state`` kept apart from the per-segment ``info`` (a pytree the driver
summarises). ``params`` is a pytree of traced arguments (sampler, coefficients, counters). Kernels
are pure and un-jitted; a driver vmaps ``segment`` over replications and owns the jit boundary,
so any kernel built on this contract runs under the one chunk loop of
``afd_jax.montecarlo.spine`` without a new driver. Constructors are cached, so the same
configuration gives the same (hashable) :class:`Kernel`: one compile per configuration.

Kernels of the steps window (barrier snapshots, step-by-step trajectories, fast renewal
trajectories) take :class:`SegmentParams` and return :class:`SegmentInfo`. No imports from afd_jax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax


class Kernel(NamedTuple):
    """name: a label; init(key, params) -> state; segment(key, state, params) -> (state, info).
    ``enlarge``: for kernels whose static sizes may fall short (the fast and step kernels'
    requests per slot and segment), a no-argument callable giving the same kernel with more
    room; else None."""

    name: str
    init: Callable
    segment: Callable
    enlarge: Callable | None = None


class SegmentParams(NamedTuple):
    """Traced arguments of a steps-window segment: the sampler pytree and ``t0`` (int32, the
    absolute step of the segment's first step). ``batch``: None, or (int32) the real slots per
    worker of a state padded along B to a shape bucket (the fast kernel; padded slots carry no
    load). ``workers``: None, or (int32) ``(first, total)``: the state holds the workers
    ``first .. first + r - 1`` of a bundle of ``total`` workers (one replication whose workers
    are split over devices; the fast and step kernels draw every slot's requests by its index
    in the whole bundle, so the split does not change them)."""

    sampler: Any
    t0: jax.Array
    batch: jax.Array | None = None
    workers: tuple | None = None


class SegmentInfo(NamedTuple):
    """Per-segment output of a steps-window kernel: ``loads`` int32[length, r_max], the worker
    loads of every step; ``covered`` bool scalar, False when the segment is invalid and must be
    rerun with ``kernel.enlarge()`` (the random streams do not depend on the kernel's sizes)."""

    loads: jax.Array
    covered: jax.Array


__all__ = ["Kernel", "SegmentInfo", "SegmentParams"]

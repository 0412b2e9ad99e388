"""Slot trajectories stepped one decode step at a time (docs/model.md 1, 4).

``r_max x B`` slots, each holding a request (P, D) at age k in 0..D-1; its load is P + k (the
sampler already includes any ``load_offset``). Per step every worker's load is the int32 sum of
its B slots (summarised by :func:`kernels.barrier.summarise_steps`), then every slot ages by
one and a slot whose request finished (age == D) takes a fresh request at age 0.

Randomness is counter-based: the fresh draws of absolute step ``t`` use
``fold_in(key_stream, t)``, so a run split into segments of any length gives the same numbers.
Pure and un-jitted; lengths and switches static, coefficients traced. No imports from afd_jax.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr

from .contract import Kernel, SegmentInfo
from .sampling import sample_requests, sample_stationary

INITS = ("stationary", "cold")


class SlotState(NamedTuple):
    """State of ``r_max x B`` slots, int32[r_max, B] each: prompt, decode, age (0..decode-1).
    ``drawn``: fresh requests consumed so far per slot (the request counter of the fast
    kernel; the step-by-step kernel leaves it at 0)."""

    prompt: jax.Array
    decode: jax.Array
    age: jax.Array
    drawn: jax.Array


def init_slots(key, sampler, shape, init: str) -> SlotState:
    """Initial slot state. ``init`` (static): "stationary" draws (P, D, age) from the stationary
    law (length-biased request, uniform age); "cold" gives every slot a fresh request at age 0
    (the paper's v1 simulator)."""
    if init == "stationary":
        prompt, decode, age = sample_stationary(key, sampler, shape)
    elif init == "cold":
        prompt, decode = sample_requests(key, sampler, shape)
        age = jnp.zeros(shape, jnp.int32)
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return SlotState(prompt, decode, age, jnp.zeros(shape, jnp.int32))


def advance(key, state: SlotState, sampler) -> SlotState:
    """One decode step: age + 1; finished slots take a fresh request (key = the step's key)."""
    age = state.age + 1
    done = age >= state.decode
    prompt, decode = sample_requests(key, sampler, state.age.shape)
    return SlotState(
        jnp.where(done, prompt, state.prompt),
        jnp.where(done, decode, state.decode),
        jnp.where(done, jnp.zeros_like(age), age),
        state.drawn,
    )


def trajectory_segment(key_stream, state: SlotState, t0, sampler, *, length: int):
    """Run absolute steps t0 .. t0 + length - 1 (``length`` static; t0 int32, traced).

    Returns ``(state after the segment, worker loads int32[length, r_max])``; the load of a
    step is taken before the slots age. Summarise with :func:`kernels.barrier.summarise_steps`.
    """

    def body(carry, i):
        worker = (carry.prompt + carry.age).sum(axis=-1, dtype=jnp.int32)
        return advance(jr.fold_in(key_stream, t0 + i), carry, sampler), worker

    return jax.lax.scan(body, state, jnp.arange(length, dtype=jnp.int32))


@cache
def trajectory_kernel(shape: tuple, init: str, length: int) -> Kernel:
    """The step-by-step kernel under the contract of :mod:`kernels.contract`: ``init(key,
    params)`` = :func:`init_slots` of ``shape`` (r_max, B); ``segment(key_stream, state,
    params)`` = :func:`trajectory_segment` of ``length`` steps from ``params.t0``."""

    def init_fn(key, params):
        return init_slots(key, params.sampler, shape, init)

    def segment(key_stream, state, params):
        state, loads = trajectory_segment(
            key_stream, state, params.t0, params.sampler, length=length
        )
        return state, SegmentInfo(loads, jnp.asarray(True))

    return Kernel("trajectory", init_fn, segment)


__all__ = [
    "INITS",
    "SlotState",
    "advance",
    "init_slots",
    "trajectory_kernel",
    "trajectory_segment",
]

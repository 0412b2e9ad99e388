"""Slot trajectories stepped one decode step at a time (docs/model.md 1, 4).

``r_max x B`` slots, each holding a request (P, D) at age k in 0..D-1; its load is P + k (the
sampler already includes any ``load_offset``). Per step every worker's load is the int32 sum of
its B slots (summarised by :func:`kernels.barrier.summarise_steps`), then every slot ages by
one and a slot whose request finished (age == D) takes a fresh request at age 0. The kernel
carries each slot as its load and its steps left (:class:`LoadState`); :class:`SlotState` and
:func:`advance` are the same step on (P, D, age), for the dynamics kernel, which needs them.

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
from .sampling import sample_requests, sample_stationary, slot_load

INITS = ("stationary", "cold")


class SlotState(NamedTuple):
    """State of ``r_max x B`` slots, int32[r_max, B] each: prompt, decode, age (0..decode-1).
    ``drawn``: fresh requests consumed so far per slot (the request counter of the fast
    kernel; :func:`init_slots` starts it at 0, :func:`advance` leaves it as it is). The
    fast and dynamics kernels carry it; the step-by-step kernel carries a :class:`LoadState`."""

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


class LoadState(NamedTuple):
    """The trajectory kernel's carry: per slot the load ``prompt + age`` and the steps left
    ``decode - age`` (int32[r_max, B] each): two arrays read and written per step instead of
    three; the loads are those of :class:`SlotState` exactly."""

    load: jax.Array
    left: jax.Array


def load_state(state: SlotState) -> LoadState:
    """The :class:`LoadState` of a :class:`SlotState` (its request counter dropped)."""
    return LoadState(slot_load(state), state.decode - state.age)


def _load_step(key, st: LoadState, sampler):
    """:func:`advance` on a :class:`LoadState`: the same draws and the same loads (the two
    are checked step by step in tests/test_kernels.py)."""
    left = st.left - 1
    done = left <= 0
    prompt, decode = sample_requests(key, sampler, st.load.shape)
    return LoadState(jnp.where(done, prompt, st.load + 1), jnp.where(done, decode, left))


def trajectory_segment(key_stream, st: LoadState, t0, sampler, *, length: int, unroll: int = 1):
    """Run absolute steps t0 .. t0 + length - 1 (``length`` static; t0 int32, traced).

    Returns ``(state after the segment, worker loads int32[length, r_max])``; the load of a
    step is taken before the slots age. Summarise with :func:`kernels.barrier.summarise_steps`.
    The step keys are derived before the loop; ``unroll`` (static, a divisor of ``length``)
    steps per loop iteration, each step's state materialised (fused across steps, XLA
    recomputed the draws); faster on a GPU, where each iteration has a fixed cost
    (docs/benchmarks.md, run 6). The numbers do not depend on it.
    """
    if unroll < 1 or length % unroll:
        raise ValueError(f"unroll must divide the segment length {length}, got {unroll}")
    steps = jnp.arange(length, dtype=jnp.int32)
    keys = jax.vmap(lambda i: jr.fold_in(key_stream, t0 + i))(steps)

    def body(carry, ks):
        out = []
        for j in range(unroll):
            out.append(carry.load.sum(axis=-1, dtype=jnp.int32))
            carry = _load_step(ks[j], carry, sampler)
            if unroll > 1:
                carry = jax.lax.optimization_barrier(carry)
        return carry, jnp.stack(out)

    st, loads = jax.lax.scan(body, st, keys.reshape((length // unroll, unroll)))
    return st, loads.reshape((length,) + loads.shape[2:])


@cache
def trajectory_kernel(shape: tuple, init: str, length: int, unroll: int = 1) -> Kernel:
    """The step-by-step kernel under the contract of :mod:`kernels.contract`: ``init(key,
    params)`` = :func:`init_slots` of ``shape`` (r_max, B) as a :class:`LoadState`;
    ``segment(key_stream, state, params)`` = :func:`trajectory_segment` of ``length`` steps
    from ``params.t0``, ``unroll`` of them per loop iteration (a divisor of ``length``)."""

    def init_fn(key, params):
        return load_state(init_slots(key, params.sampler, shape, init))

    def segment(key_stream, state, params):
        state, loads = trajectory_segment(
            key_stream, state, params.t0, params.sampler, length=length, unroll=unroll
        )
        return state, SegmentInfo(loads, jnp.asarray(True))

    return Kernel("trajectory", init_fn, segment)


__all__ = [
    "INITS",
    "SlotState",
    "LoadState",
    "advance",
    "init_slots",
    "load_state",
    "trajectory_kernel",
    "trajectory_segment",
]

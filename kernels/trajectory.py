"""Slot trajectories stepped one decode step at a time (docs/model.md 1, 4).

``r_max x B`` slots, each holding a request (P, D) at age k in 0..D-1; its load is P + k (the
sampler already includes any ``load_offset``). Per step every worker's load is the int32 sum of
its B slots (summarised by :func:`kernels.barrier.summarise_steps`), then every slot ages by
one and a slot whose request finished (age == D) takes a fresh request at age 0. The kernel
carries each slot as its load, its steps left and its request counter (:class:`LoadState`);
:class:`SlotState` and :func:`advance` are the same step on (P, D, age), for the dynamics
kernel, which needs them.

Randomness is counter-based per slot (:mod:`.streams`): the n-th fresh request a slot takes is
request n of its own stream, the stream the fast kernel draws from, so the two kernels give
the same loads bit for bit, and a run split into segments of any length gives the same
numbers. A segment draws each slot's next K requests before its loop (K static, a margin over
the renewals a segment needs; a slot that needs more makes the segment uncovered and the
driver reruns it with ``kernel.enlarge()``): the loop itself only gathers, where hashing a
fresh request for every slot at every step (about 1 in E[D] of them used) was most of its
work (docs/cpu-speed.md, round 17). Pure and un-jitted; lengths and switches static,
coefficients traced. No imports from afd_jax.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .contract import Kernel, SegmentInfo
from .options import INITS
from .sampling import sample_requests, sample_stationary, slot_load
from .streams import fresh_requests, next_requests, slot_layout


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


def advance(key_stream, state: SlotState, sampler, slot_ids=None) -> SlotState:
    """One decode step: age + 1; a finished slot takes its next request (request ``drawn`` of
    its stream, :func:`~.streams.fresh_requests`; ``slot_ids`` as there) and counts it."""
    return take_next(state, *next_requests(key_stream, state.drawn, sampler, slot_ids))


def take_next(state: SlotState, prompt, decode) -> SlotState:
    """:func:`advance` given each slot's next request (prompt, decode), however drawn."""
    age = state.age + 1
    done = age >= state.decode
    return SlotState(
        jnp.where(done, prompt, state.prompt),
        jnp.where(done, decode, state.decode),
        jnp.where(done, jnp.zeros_like(age), age),
        state.drawn + done.astype(jnp.int32),
    )


def drawn_ahead(key_stream, drawn, sampler, n_requests: int, slot_ids=None):
    """Each slot's next ``n_requests`` requests (K, static; requests ``drawn ..`` of its
    stream, :func:`~.streams.fresh_requests`), for a loop that then only gathers them:
    returns ``next_of(taken) -> (prompt, decode)``, every slot's request ``drawn + taken``
    (``taken``: the requests it took since; clipped to the K drawn, so a loop whose slots
    take more than K must report itself uncovered: ``taken > K`` at its end)."""
    ahead = fresh_requests(key_stream, drawn, sampler, n_requests, slot_ids)
    return gather_next(ahead)


def gather_next(ahead):
    """``next_of`` of :func:`drawn_ahead` over requests already drawn: ``ahead`` = (prompt,
    decode) [K, *slots]."""
    n_requests, shape = ahead[0].shape[0], ahead[0].shape[1:]
    flat = [x.reshape(n_requests, -1) for x in ahead]
    pos = jnp.arange(flat[0].shape[1], dtype=jnp.int32).reshape(shape)

    def next_of(taken):
        k = jnp.minimum(taken, n_requests - 1)
        return tuple(x[k, pos] for x in flat)

    return next_of


class LoadState(NamedTuple):
    """The trajectory kernel's carry: per slot the load ``prompt + age``, the steps left
    ``decode - age`` and the request counter ``drawn`` (int32[r_max, B] each); the loads are
    those of :class:`SlotState` exactly."""

    load: jax.Array
    left: jax.Array
    drawn: jax.Array


def load_state(state: SlotState) -> LoadState:
    """The :class:`LoadState` of a :class:`SlotState`."""
    return LoadState(slot_load(state), state.decode - state.age, state.drawn)


PACKED_LEFT_LIMIT = 1 << 24
"""Steps left below which a slot's steps left and requests taken share one uint32 word in the
loop (``packed``): 24 bits of steps left, 8 of requests taken."""
_MAX_PACKED_REQUESTS = 254  # taken saturates at 255, so `covered` (taken <= K) stays exact


def trajectory_segment(
    key_stream, st: LoadState, sampler, *, length: int, n_requests: int, unroll: int = 1,
    workers=None, packed: bool = False,
):  # fmt: skip
    """Run the next ``length`` steps (static) with each slot's next ``n_requests`` requests
    (K, static) drawn before the loop.

    Returns ``(state after the segment, worker loads int32[length, r_max], covered)``; the load
    of a step is taken before the slots age; ``covered`` (bool scalar) is False when some slot
    needed more than K requests (the results are then invalid: rerun with a larger K; the
    requests do not depend on K). Summarise with :func:`kernels.barrier.summarise_steps`.
    Each step is :func:`advance` on a :class:`LoadState`: a finished slot gathers its next
    request from the K drawn ahead (index: the requests it took in the segment so far).
    ``unroll`` (static, a divisor of ``length``) steps per loop iteration, each step's state
    materialised (fused across steps, XLA recomputed earlier steps); faster on a GPU, where
    each iteration has a fixed cost (docs/benchmarks.md, run 6). ``workers``: None, or
    (first, total) traced int32 when the state holds workers ``first ..`` of a bundle of
    ``total`` (:func:`~.streams.slot_layout`): the slots take the requests they take in the
    whole bundle. ``packed`` (static) with K <= 254: the loop carries each slot's steps left
    and requests taken in one uint32 word (two arrays instead of three: 1.2x on CPU,
    docs/cpu-speed.md, round 18); a D or steps left of :data:`PACKED_LEFT_LIMIT` or more
    then makes the segment uncovered (the rerun doubles K, up to the plain carry beyond 254),
    so drivers pass it where no D can reach the limit. The numbers do not depend on
    ``unroll``, K, ``packed`` or the segment length.
    """
    if unroll < 1 or length % unroll:
        raise ValueError(f"unroll must divide the segment length {length}, got {unroll}")
    if n_requests < 1:
        raise ValueError(f"n_requests must be at least 1, got {n_requests}")
    shape = st.load.shape
    slot_ids, _ = slot_layout(shape, None, workers)
    ahead = fresh_requests(key_stream, st.drawn, sampler, n_requests, slot_ids)
    next_of = gather_next(ahead)
    carry = _Plain if not packed or n_requests > _MAX_PACKED_REQUESTS else _Packed

    def body(c, _):
        out = []
        for _step in range(unroll):
            out.append(c[0].sum(axis=-1, dtype=jnp.int32))
            c = carry.step(c, next_of)
            if unroll > 1:
                c = jax.lax.optimization_barrier(c)
        return c, jnp.stack(out)

    end, loads = jax.lax.scan(body, carry.start(st), None, length // unroll)
    load, left, taken = carry.end(end)
    covered = jnp.all(taken <= n_requests)
    if carry is _Packed:  # a D or steps left too long for 24 bits: rerun (plain from K > 254)
        fits = _below_limit(ahead[1]) & _below_limit(st.left)
        covered = covered & fits
    state = LoadState(load, left, st.drawn + taken)
    return state, loads.reshape((length,) + loads.shape[2:]), covered


def _below_limit(x):
    """Whether every value of int32 ``x`` is in 0 .. PACKED_LEFT_LIMIT - 1 (compared as
    uint32, so a negative one does not fit either)."""
    return (x.astype(jnp.uint32) < jnp.uint32(PACKED_LEFT_LIMIT)).all()


class _Plain:
    """The loop's carry as (load, steps left, requests taken), int32 each."""

    @staticmethod
    def start(st: LoadState):
        return st.load, st.left, jnp.zeros_like(st.drawn)

    @staticmethod
    def step(c, next_of):
        load, left, taken = c
        left = left - 1
        done = left <= 0
        prompt, decode = next_of(taken)
        return (
            jnp.where(done, prompt, load + 1),
            jnp.where(done, decode, left),
            taken + done.astype(jnp.int32),
        )

    @staticmethod
    def end(c):
        return c


class _Packed:
    """The loop's carry as (load int32, word uint32): steps left in the low 24 bits, requests
    taken in the high 8 (saturating at 255). A step is :meth:`_Plain.step` bit for bit: done
    when the steps left were at most 1, else the word minus 1 (steps left >= 2: no borrow)."""

    _LEFT = 0xFFFFFF
    _SHIFT = 24

    @staticmethod
    def start(st: LoadState):
        return st.load, st.left.astype(jnp.uint32)

    @staticmethod
    def step(c, next_of):
        load, word = c
        done = (word & jnp.uint32(_Packed._LEFT)) <= 1
        taken = word >> _Packed._SHIFT
        prompt, decode = next_of(taken.astype(jnp.int32))
        fresh = decode.astype(jnp.uint32) | (jnp.minimum(taken + 1, 255) << _Packed._SHIFT)
        return jnp.where(done, prompt, load + 1), jnp.where(done, fresh, word - 1)

    @staticmethod
    def end(c):
        load, word = c
        left = (word & jnp.uint32(_Packed._LEFT)).astype(jnp.int32)
        return load, left, (word >> _Packed._SHIFT).astype(jnp.int32)


def trajectory_kernel(
    shape: tuple, init: str, length: int, n_requests: int, unroll: int = 1, packed: bool = False
) -> Kernel:
    """The step-by-step kernel under the contract of :mod:`kernels.contract`: ``init(key,
    params)`` = :func:`init_slots` of ``shape`` (r_max, B) as a :class:`LoadState`;
    ``segment(key_stream, state, params)`` = :func:`trajectory_segment` of ``length`` steps
    with K = ``n_requests`` requests drawn ahead per slot, ``unroll`` steps per loop iteration
    (a divisor of ``length``) and ``packed`` as there; ``enlarge()`` doubles K. The same
    configuration gives the same :class:`Kernel`."""
    return _trajectory_kernel(tuple(shape), init, length, n_requests, unroll, bool(packed))


@cache
def _trajectory_kernel(shape, init, length, n_requests, unroll, packed) -> Kernel:
    """:func:`trajectory_kernel`, cached on its positional arguments."""

    def init_fn(key, params):
        return load_state(init_slots(key, params.sampler, shape, init))

    def segment(key_stream, state, params):
        kw = dict(length=length, n_requests=n_requests, unroll=unroll, workers=params.workers)
        kw["packed"] = packed
        state, loads, covered = trajectory_segment(key_stream, state, params.sampler, **kw)
        return state, SegmentInfo(loads, covered)

    def enlarge():
        return trajectory_kernel(shape, init, length, 2 * n_requests, unroll, packed)

    return Kernel("trajectory", init_fn, segment, enlarge)


__all__ = [
    "INITS",
    "PACKED_LEFT_LIMIT",
    "SlotState",
    "LoadState",
    "advance",
    "drawn_ahead",
    "gather_next",
    "init_slots",
    "load_state",
    "take_next",
    "trajectory_kernel",
    "trajectory_segment",
]

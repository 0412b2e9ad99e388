"""Fast trajectory kernel: work proportional to the number of requests, not slot-steps.

Exactly the model of :mod:`kernels.trajectory` (same slot state, same initial laws, same
measurement), computed per segment of ``L`` steps as renewal sequences:

* each slot continues its current request (P_0, D_0) that started at local time ``s_0 = -age``
  and then runs fresh requests k = 1..K starting at ``s_k = s_{k-1} + D_{k-1}``;
* a request contributes the load ``P + (t - s)`` on ``[s, s + D)``. Every slot holds exactly one
  request at every step, so a worker's load is ``T_j(t) = C_j(t) + B t`` with
  ``C_j(t) = sum over active requests of (P - s)``: one scatter per request of the change
  ``c_k - c_{k-1}`` (``c = P - s``) at its start into an int32[r_max, L + 1] difference array,
  then a cumulative sum over t. The driver checks ``B * (max slot load + L + 1) < 2**31``.
* the state at the end of the segment is the request active at local time L.

Randomness is counter-based per request: the n-th fresh request of slot i comes from the
Threefry-2x32 block ``(n, 0)`` keyed by the slot key ``fold_in(key_stream, i)`` (alias tables;
other samplers: the key ``fold_in(slot_key, n)``), so the numbers do not depend on the segment
length, on K or on how replications are chunked. ``K`` (static) must cover the segment: the
kernel returns a flag, and the driver redoes the segment with a larger K when some slot falls short.
Pure and un-jitted. No imports from afd_jax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr

from .sampling import AliasSampler, alias_requests_from_bits, sample_requests
from .trajectory import SlotState

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32 with 20 rounds (Random123; Salmon et al. 2011): the block cipher behind
    ``jax.random``, written out unrolled.

    k0, k1: the key words, x0, x1: the count words, uint32 arrays (broadcasting). Returns the
    two output words. Bit-identical to ``jax.extend.random.threefry_2x32`` (checked in
    tests/test_kernels.py, with the Random123 known-answer vectors); JAX lowers that one on CPU
    as a rolled loop that materialises the state every 4 rounds, about 6x slower here.
    """
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def request_bits(slot_words, counters):
    """Two uint32 random words per request from Threefry-2x32, counter-based.

    slot_words: uint32[S, 2], the threefry key words of each slot's key; counters: uint32[K, S]
    (request numbers n). Request n of slot i is the Threefry-2x32 block of the count pair
    ``(n, 0)`` under the key ``slot_words[i]``: its two output words, i.e.
    ``jax.extend.random.threefry_2x32(slot_words[i], [n, 0])``. Returns (bits0, bits1)
    uint32[K, S], each a function of (slot key, n) only.
    """
    k0, k1 = slot_words[:, 0], slot_words[:, 1]
    zero = jnp.zeros_like(k0)

    # one request index per scan step: the while loop materialises the bits, which XLA would
    # otherwise fuse into (and recompute for) every gather that consumes them
    def body(_, c):
        return None, threefry2x32(k0, k1, c, zero)

    return jax.lax.scan(body, None, counters)[1]


def fresh_requests(key_stream, drawn, sampler, n_requests: int):
    """Requests ``drawn .. drawn + n_requests - 1`` of every slot, request index leading.

    drawn: int32[r_max, B] request counters. Request n of slot i is a function of the slot key
    ``fold_in(key_stream, i)`` and of n only. An :class:`AliasSampler` (the hot path) draws
    from the two output words of one Threefry-2x32 block (:func:`request_bits`); other
    samplers draw with the key ``fold_in(slot_key, n)``.
    Returns (prompt, decode) int32[K, r_max, B] (K = ``n_requests``, static).
    """
    shape = drawn.shape
    n_slots = drawn.size
    slot_ids = jnp.arange(n_slots, dtype=jnp.int32)
    slot_keys = jax.vmap(jr.fold_in, in_axes=(None, 0))(key_stream, slot_ids)
    counters = drawn.reshape(1, -1) + jnp.arange(n_requests, dtype=jnp.int32)[:, None]  # [K, S]
    if isinstance(sampler, AliasSampler):
        words = jr.key_data(slot_keys)[:, :2].astype(jnp.uint32)  # threefry key: 2 words
        bits0, bits1 = request_bits(words, counters.astype(jnp.uint32))
        prompt, decode = alias_requests_from_bits(sampler, bits0, bits1)
    else:
        fold = jax.vmap(jax.vmap(jr.fold_in, in_axes=(0, 0)), in_axes=(None, 0))
        keys = fold(slot_keys, counters)  # [K, S]
        draw = jax.vmap(jax.vmap(lambda k: sample_requests(k, sampler, ())))
        prompt, decode = draw(keys)
    out = (n_requests,) + shape
    return prompt.reshape(out), decode.reshape(out)


def _cumsum0(x):
    """Inclusive int32 prefix sum over axis 0 (exact; a parallel scan, several times faster
    than ``jnp.cumsum`` on XLA:CPU)."""
    return jax.lax.associative_scan(jnp.add, x, axis=0)


def fast_segment(key_stream, state: SlotState, sampler, *, length: int, n_requests: int):
    """Run the next ``length`` steps with K = ``n_requests`` fresh requests per slot (static).

    Same contract as :func:`kernels.trajectory.trajectory_segment` (B is the slot axis of the
    state). Returns ``(state, worker loads int32[length, r_max], covered)``; ``covered`` (bool
    scalar) is False when some slot's K requests end before the segment does (the results are
    then invalid and the driver reruns with a larger K: the request stream does not depend on
    K, so the rerun is reproducible).

    One ``lax.scan`` over the K fresh requests (vectors over all r_max * B slots) gives each
    request's start ``s_k = s_{k-1} + D_{k-1}``, its scatter position and change
    ``c_k - c_{k-1}`` (``c = P - s``: the load at local time t is ``c + t``), and picks the
    request active at local time L. The difference array is laid out ``[L + 1, r_max]`` so
    that its prefix sum runs over the leading axis.
    """
    r_max, batch = state.prompt.shape
    p_new, d_new = fresh_requests(key_stream, state.drawn, sampler, n_requests)  # [K, r, B]
    n_slots = r_max * batch
    rows = jnp.repeat(jnp.arange(r_max, dtype=jnp.int32), batch)  # worker of each slot
    cur_p, cur_d, cur_age = (x.reshape(n_slots) for x in state[:3])
    rem0 = cur_d - cur_age  # steps left of the current request, >= 1
    still = rem0 > length  # the current request is still active at local time L

    def body(carry, request):
        end_prev, c_prev, act_p, act_d, act_s, n_ended = carry
        p, d = request
        start = end_prev
        end = start + d
        c = p - start
        active = (start <= length) & (end > length)
        out = (jnp.minimum(start, length) * jnp.int32(r_max) + rows, c - c_prev)
        carry = (
            end,
            c,
            jnp.where(active, p, act_p),
            jnp.where(active, d, act_d),
            jnp.where(active, start, act_s),
            n_ended + (end <= length).astype(jnp.int32),
        )
        return carry, out

    c0 = cur_p + cur_age  # current request: c = P - (-age)
    init = (rem0, c0, cur_p, cur_d, -cur_age, jnp.where(still, 0, 1).astype(jnp.int32))
    (end_k, _, act_p, act_d, act_s, n_ended), (flat, delta) = jax.lax.scan(
        body, init, (p_new.reshape(n_requests, n_slots), d_new.reshape(n_requests, n_slots))
    )
    covered = jnp.all(end_k > length)

    # slot constant c_0 from t = 0, then c_k - c_{k-1} from the start of request k (>= 1);
    # starts at or beyond L land in the spare row L
    diff = jnp.zeros(((length + 1) * r_max,), jnp.int32)
    diff = diff.at[flat.reshape(-1)].add(delta.reshape(-1), mode="promise_in_bounds")
    base = c0.reshape(r_max, batch).sum(axis=-1, dtype=jnp.int32)
    t_local = jnp.arange(length, dtype=jnp.int32)[:, None]
    worker_loads = _cumsum0(diff.reshape(length + 1, r_max))[:length] + (
        base[None, :] + jnp.int32(batch) * t_local
    )  # [L, r_max]

    shape = (r_max, batch)
    new_state = SlotState(
        act_p.reshape(shape),
        act_d.reshape(shape),
        (jnp.int32(length) - act_s).reshape(shape),
        state.drawn + n_ended.reshape(shape),
    )
    return new_state, worker_loads, covered


__all__ = ["fast_segment", "fresh_requests", "request_bits", "threefry2x32"]

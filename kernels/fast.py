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

Randomness is counter-based per request: the n-th fresh request of slot i uses
``fold_in(fold_in(key_stream, i), n)``, so the numbers do not depend on the segment length, on
K or on how replications are chunked. ``K`` (static) must cover the segment: the kernel returns a
flag, and the driver redoes the segment with a larger K when some slot falls short.
Pure and un-jitted. No imports from afd_jax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr

from .sampling import AliasSampler, alias_requests_from_bits, mix32, sample_requests
from .trajectory import SlotState


def fresh_requests(key_stream, drawn, sampler, n_requests: int):
    """Requests ``drawn .. drawn + n_requests - 1`` of every slot.

    drawn: int32[r_max, B] request counters. Request n of slot i is a function of the slot key
    ``fold_in(key_stream, i)`` and of n only. Other samplers draw with the key
    ``fold_in(slot_key, n)``; an :class:`AliasSampler` (the hot path) draws from two 32-bit
    words of a keyed integer hash of n (two rounds of the ``lowbias32`` mixer per word, keyed
    by the 64 bits of the threefry slot key), several times cheaper than a threefry hash per
    request and of ample quality for picking table rows.
    Returns (prompt, decode) int32[r_max, B, K].
    """
    shape = drawn.shape
    slot_ids = jnp.arange(drawn.size, dtype=jnp.int32)
    slot_keys = jax.vmap(jr.fold_in, in_axes=(None, 0))(key_stream, slot_ids)
    counters = drawn.reshape(-1, 1) + jnp.arange(n_requests, dtype=jnp.int32)[None, :]
    if isinstance(sampler, AliasSampler):
        words = jr.key_data(slot_keys)  # [S, 2] (threefry: 2 words; other impls: more)
        k0, k1 = words[:, 0:1], words[:, 1:2]
        c = counters.astype(jnp.uint32)
        bits0 = mix32(mix32(c ^ k0) + k1)
        bits1 = mix32(mix32(c ^ k1) + (k0 ^ jnp.uint32(0x9E3779B9)))
        prompt, decode = alias_requests_from_bits(sampler, bits0, bits1)
    else:
        fold = jax.vmap(jax.vmap(jr.fold_in, in_axes=(None, 0)))
        keys = fold(slot_keys, counters)  # [S, K]
        draw = jax.vmap(jax.vmap(lambda k: sample_requests(k, sampler, ())))
        prompt, decode = draw(keys)
    return prompt.reshape(shape + (n_requests,)), decode.reshape(shape + (n_requests,))


def fast_segment(key_stream, state: SlotState, sampler, *, length: int, n_requests: int):
    """Run the next ``length`` steps with K = ``n_requests`` fresh requests per slot (static).

    Same contract as :func:`kernels.trajectory.trajectory_segment` (B is the slot axis of the
    state). Returns ``(state, worker loads int32[length, r_max], covered)``; ``covered`` (bool
    scalar) is False when some slot's K requests end before the segment does (the results are
    then invalid and the driver reruns with a larger K: the request stream does not depend on
    K, so the rerun is reproducible).
    """
    r_max, batch = state.prompt.shape
    p_new, d_new = fresh_requests(key_stream, state.drawn, sampler, n_requests)
    rem0 = state.decode - state.age  # steps left of the current request, >= 1
    ends_new = rem0[..., None] + jnp.cumsum(d_new, axis=-1, dtype=jnp.int32)
    starts_new = ends_new - d_new
    prompt = jnp.concatenate([state.prompt[..., None], p_new], axis=-1)  # [r_max, B, K+1]
    decode = jnp.concatenate([state.decode[..., None], d_new], axis=-1)
    start = jnp.concatenate([-state.age[..., None], starts_new], axis=-1)
    end = start + decode
    covered = jnp.all(end[..., -1] > length)

    c = prompt - start  # load of a request at local time t is c + t
    # slot constant c_0 from t = 0, then c_k - c_{k-1} from the start of request k (>= 1);
    # starts at or beyond L land in the spare bin L
    rows = jnp.broadcast_to(jnp.arange(r_max, dtype=jnp.int32)[:, None, None], starts_new.shape)
    delta = c[..., 1:] - c[..., :-1]
    diff = jnp.zeros((r_max, length + 1), jnp.int32)
    diff = diff.at[rows, jnp.minimum(starts_new, length)].add(delta)
    base = c[..., 0].sum(axis=-1, dtype=jnp.int32)
    t_local = jnp.arange(length, dtype=jnp.int32)
    worker = jnp.cumsum(diff, axis=-1, dtype=jnp.int32)[:, :length] + (
        base[:, None] + jnp.int32(batch) * t_local[None, :]
    )
    worker_loads = worker.T  # [L, r_max]

    # the request active at local time L: index j = number of requests ended by then
    j = jnp.sum(end <= length, axis=-1, dtype=jnp.int32)[..., None]
    new_state = SlotState(
        jnp.take_along_axis(prompt, j, axis=-1)[..., 0],
        jnp.take_along_axis(decode, j, axis=-1)[..., 0],
        jnp.int32(length) - jnp.take_along_axis(start, j, axis=-1)[..., 0],
        state.drawn + j[..., 0],
    )
    return new_state, worker_loads, covered


__all__ = ["fast_segment", "fresh_requests"]

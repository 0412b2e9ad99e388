"""Per-slot request streams: the n-th fresh request of slot i, a function of (stream key, i, n)
only. The fast kernel (renewals), the step-by-step trajectory kernel and the dynamics kernel
(in place; routed: the empty slots' next requests) all draw their fresh requests here, so the
first three give the same slots the same requests (their loads agree bit for bit:
tests/test_simulate.py, tests/test_dynamics.py), whatever the segment length, the number
of requests drawn ahead or how replications and workers are split.

Request n of slot i is the Threefry-2x32 block of the count pair ``(n, 0)`` keyed by the slot
key ``fold_in(key_stream, i)`` (alias tables: its two output words); the samplers of
:data:`~.sampling.WORD_DRAWS` take the blocks ``b n .. b n + b - 1``; any other sampler draws
with the key ``fold_in(slot_key, n)``. No imports from afd_jax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr

from .sampling import WORD_DRAWS, AliasSampler, alias_requests_from_bits, sample_requests
from .threefry import threefry2x32


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


def block_counters(n, blocks: int) -> list:
    """Threefry counters (uint32) of request ``n``'s blocks, b n .. b n + b - 1: the layout
    :func:`fresh_requests` and the fast kernel's request scan share."""
    base = n.astype(jnp.uint32) * jnp.uint32(blocks)
    return [base + jnp.uint32(j) for j in range(blocks)]


def fresh_requests(key_stream, drawn, sampler, n_requests: int, slot_ids=None):
    """Requests ``drawn .. drawn + n_requests - 1`` of every slot, request index leading.

    drawn: int32[r_max, B] request counters. Request n of slot i is a function of the slot key
    ``fold_in(key_stream, i)`` and of n only. An :class:`AliasSampler` (the hot path) draws
    from the two output words of one Threefry-2x32 block (:func:`request_bits`), the samplers
    of :data:`~.sampling.WORD_DRAWS` (parametric workloads) from blocks b n .. b n + b - 1
    (b = their ``blocks``); other samplers draw with the key ``fold_in(slot_key, n)``.
    ``slot_ids``: int32[r_max * B], each slot's index i (default: its position).
    Returns (prompt, decode) int32[K, r_max, B] (K = ``n_requests``, static).
    """
    shape = drawn.shape
    n_slots = drawn.size
    if slot_ids is None:
        slot_ids = jnp.arange(n_slots, dtype=jnp.int32)
    counters = drawn.reshape(1, -1) + jnp.arange(n_requests, dtype=jnp.int32)[:, None]  # [K, S]
    if isinstance(sampler, AliasSampler):
        words = jnp.stack(slot_words(key_stream, slot_ids), axis=1)
        bits0, bits1 = request_bits(words, counters.astype(jnp.uint32))
        prompt, decode = alias_requests_from_bits(sampler, bits0, bits1)
    elif type(sampler) in WORD_DRAWS:  # blocks b n .. b n + b - 1 of request n
        wd = WORD_DRAWS[type(sampler)]
        words = jnp.stack(slot_words(key_stream, slot_ids), axis=1)
        pairs = [request_bits(words, c) for c in block_counters(counters, wd.blocks(sampler))]
        prompt, decode = wd.from_words(sampler, pairs)
    else:
        slot_keys = jax.vmap(jr.fold_in, in_axes=(None, 0))(key_stream, slot_ids)
        fold = jax.vmap(jax.vmap(jr.fold_in, in_axes=(0, 0)), in_axes=(None, 0))
        keys = fold(slot_keys, counters)  # [K, S]
        draw = jax.vmap(jax.vmap(lambda k: sample_requests(k, sampler, ())))
        prompt, decode = draw(keys)
    out = (n_requests,) + shape
    return prompt.reshape(out), decode.reshape(out)


def next_requests(key_stream, drawn, sampler, slot_ids=None):
    """Every slot's next request, request ``drawn`` of its stream: (prompt, decode) shaped
    like ``drawn`` (:func:`fresh_requests` of one request, drawn where a loop needs it each
    step)."""
    prompt, decode = fresh_requests(key_stream, drawn, sampler, 1, slot_ids)
    return prompt[0], decode[0]


def slot_words(key_stream, slot_ids, cipher=threefry2x32):
    """The threefry key words of the slot keys ``fold_in(key_stream, i)`` (i >= 0): the cipher
    of the count pair (0, i) under the stream key, as ``jax.random`` computes it
    (tests/test_kernels.py), with the unrolled cipher. ``cipher``: :func:`threefry2x32` (the
    two words uint32[S] each) or :func:`kernels.threefry.threefry2x32_pair` (one complex64
    pair per slot)."""
    k = jr.key_data(key_stream).astype(jnp.uint32)
    ids = slot_ids.astype(jnp.uint32)
    return cipher(k[0], k[1], jnp.zeros_like(ids), ids)


def slot_layout(shape, real_batch, workers=None):
    """(slot index i of every slot int32[S], real bool[S] or None) of an (r_max, B) layout
    whose first ``real_batch`` slots per worker are real (None: all). Real slot (j, b) has the
    index j * real_batch + b, as in the unpadded layout; padded ones come after all of those.
    ``workers``: None, or (first, total) when the layout holds workers ``first ..`` of a
    bundle of ``total`` (traced int32): j is then the worker's index in the bundle."""
    r_max, batch = shape
    first, total = (0, r_max) if workers is None else workers
    j = first + jnp.arange(r_max, dtype=jnp.int32)[:, None]
    b = jnp.arange(batch, dtype=jnp.int32)[None, :]
    if real_batch is None:
        return (j * batch + b).reshape(-1), None
    real = jnp.broadcast_to(b < real_batch, shape)
    ids = jnp.where(real, j * real_batch + b, total * batch + j * batch + b)
    return ids.astype(jnp.int32).reshape(-1), real.reshape(-1)


__all__ = [
    "block_counters",
    "fresh_requests",
    "next_requests",
    "request_bits",
    "slot_layout",
    "slot_words",
]

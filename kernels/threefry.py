"""Threefry-2x32 written out for XLA:CPU: the block cipher behind ``jax.random`` and the random
bits of the samplers.

JAX lowers its Threefry on CPU as a rolled loop that materialises the cipher state every four
rounds; the unrolled form here fuses into one loop over the counters and computes the same bits
2 to 6 times faster (docs/cpu-speed.md). No imports from afd_jax.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32 with 20 rounds (Random123; Salmon et al. 2011), unrolled.

    k0, k1: the key words, x0, x1: the count words, uint32 arrays (broadcasting). Returns the
    two output words. Bit-identical to ``jax.extend.random.threefry_2x32`` (checked in
    tests/test_kernels.py, with the Random123 known-answer vectors).
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


def threefry2x32_pair(k0, k1, x0, x1):
    """:func:`threefry2x32` with its two words as one complex64 (their bits moved, never
    computed on), for a loop carry; :func:`unpack_pair` gives the words back.

    XLA fuses each output of an elementwise computation on its own, so a carry of the two
    words as two arrays recomputes all 20 rounds for each: twice the work. One array of pairs
    is written by one fusion, which hashes each block once (docs/cpu-speed.md, round 7). The
    pair must be materialised (a loop carry or loop operand): a consumer that fuses it would
    recompute the rounds once per word again.
    """
    y0, y1 = threefry2x32(k0, k1, x0, x1)
    f32 = jnp.float32
    return lax.complex(lax.bitcast_convert_type(y0, f32), lax.bitcast_convert_type(y1, f32))


def unpack_pair(pair):
    """The two uint32 words of a :func:`threefry2x32_pair`."""
    u32 = jnp.uint32
    return lax.bitcast_convert_type(pair.real, u32), lax.bitcast_convert_type(pair.imag, u32)


def random_bits(key, shape: tuple):
    """``jax.random.bits(key, shape, uint32)``, bit for bit, from the unrolled cipher.

    With JAX's non-partitionable Threefry (the Monte Carlo drivers run in that mode) the n
    words are the cipher of the counters 0..n-1, split in two halves: word i < n/2 is the first
    output of block (i, i + ceil(n/2)), word i + ceil(n/2) its second (an odd n pads the
    counters with a 0). Any other mode or key implementation: ``jax.random.bits`` itself.
    """
    shape = tuple(shape)
    n = math.prod(shape)
    k = _unrolled_key(key, n)
    if k is None:
        return jr.bits(key, shape, dtype=jnp.uint32)
    half = -(-n // 2)
    count = jnp.arange(2 * half, dtype=jnp.uint32)
    count = jnp.where(count < jnp.uint32(n), count, jnp.uint32(0))
    y0, y1 = threefry2x32(k[0], k[1], count[:half], count[half:])
    return jnp.concatenate([y0, y1])[:n].reshape(shape)


def _is_threefry(key) -> bool:
    """A typed key of JAX's Threefry-2x32 (raw uint32 keys and other implementations: no)."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return typed and str(jr.key_impl(key)) == "threefry2x32"


def _unrolled_key(key, n: int):
    """The key's two uint32 words when ``jax.random.bits`` of ``n`` words is the split layout
    of :func:`random_bits` (a typed Threefry key, the non-partitionable mode), else None."""
    unrolled = _is_threefry(key) and not jax.config.jax_threefry_partitionable and 0 < n < 2**32 - 1
    return jr.key_data(key).astype(jnp.uint32) if unrolled else None


def block_words(key, shape: tuple, offset: int = 0):
    """Two uint32 words per element of ``shape``, both outputs of one Threefry-2x32 block:
    element e (row-major) gets the block of counter (offset + e, 0) under the key (``offset``
    static: a draw may be taken in parts, each with its own offset), so each block feeds
    exactly one element and a consumer of both words hashes it once (one fusion computes the
    rounds once; :func:`random_bits` pairs counter i with i + n/2, which costs two blocks per
    element where the two words go to one element). Element e's words do not depend on
    ``shape``: a draw of n elements is the first n of any longer one.

    Needs a Threefry key (typed, either partitionable mode); any other key implementation
    gets the two halves of ``jax.random.bits(key, (2,) + shape)`` instead.
    """
    shape = tuple(shape)
    n = math.prod(shape)
    if not (_is_threefry(key) and 0 < offset + n < 2**32):
        if offset:
            raise ValueError("block_words: an offset needs a Threefry key and offset + n < 2^32")
        bits = jr.bits(key, (2,) + shape, dtype=jnp.uint32)
        return bits[0], bits[1]
    k = jr.key_data(key).astype(jnp.uint32)
    count = jnp.arange(n, dtype=jnp.uint32).reshape(shape) + jnp.uint32(offset)
    return threefry2x32(k[0], k[1], count, jnp.zeros_like(count))


def block_parts(key, shape: tuple, parts: int):
    """The words of ``block_words(key, (parts,) + shape)`` as ``parts`` pairs, each drawn by
    its own :func:`block_words` call with an offset (the same words: XLA:CPU took 3x longer
    when the slices of one draw were fused into their consumers); None where offsets do not
    apply (a key that is not Threefry, 2^32 words or more)."""
    shape = tuple(shape)
    m = math.prod(shape)
    if not (_is_threefry(key) and 0 < parts * m < 2**32):
        return None
    return [block_words(key, shape, offset=j * m) for j in range(parts)]


def three_words_by_halves(key, shape: tuple):
    """The words of ``random_bits(key, (3,) + shape)`` (``shape[0]`` even), each block hashed
    once: ``(first, second)``, the three words (w0, w1, w2) of every element of the first and
    of the second half of ``shape``'s axis 0. None where :func:`random_bits` falls back to
    ``jax.random.bits``.

    With m elements and h = m / 2, the 3m words are the 1.5m blocks' outputs (word i < 1.5m
    the first output of block i, word 1.5m + i its second), and elements q and h + q (q < h)
    use exactly the blocks q, h + q and m + q: q takes (y0(q), y0(m + q), y1(h + q)) and
    h + q takes (y0(h + q), y1(q), y1(m + q)). Computed together, the two elements hash 3
    blocks instead of 6: word by word, ``random_bits`` hashes one block per word.
    """
    shape = tuple(shape)
    if not shape or shape[0] % 2:
        return None
    m = math.prod(shape)
    k = _unrolled_key(key, 3 * m)
    if k is None:
        return None
    h, half = m // 2, 3 * m // 2
    q = jnp.arange(h, dtype=jnp.uint32).reshape((shape[0] // 2,) + shape[1:])

    def block(j):
        return threefry2x32(k[0], k[1], j, j + jnp.uint32(half))

    a, b, c = block(q), block(q + jnp.uint32(h)), block(q + jnp.uint32(m))
    return (a[0], c[0], b[1]), (b[0], a[1], c[1])


__all__ = [
    "block_parts",
    "block_words",
    "random_bits",
    "three_words_by_halves",
    "threefry2x32",
    "threefry2x32_pair",
    "unpack_pair",
]

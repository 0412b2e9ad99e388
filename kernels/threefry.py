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
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)  # raw uint32 keys: jax.random
    unrolled = (
        typed
        and not jax.config.jax_threefry_partitionable
        and str(jr.key_impl(key)) == "threefry2x32"
        and 0 < n < 2**32 - 1
    )
    if not unrolled:
        return jr.bits(key, shape, dtype=jnp.uint32)
    k = jr.key_data(key).astype(jnp.uint32)
    half = -(-n // 2)
    count = jnp.arange(2 * half, dtype=jnp.uint32)
    count = jnp.where(count < jnp.uint32(n), count, jnp.uint32(0))
    y0, y1 = threefry2x32(k[0], k[1], count[:half], count[half:])
    return jnp.concatenate([y0, y1])[:n].reshape(shape)


__all__ = ["random_bits", "threefry2x32", "threefry2x32_pair", "unpack_pair"]

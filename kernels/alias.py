"""Walker alias tables of integer values, the O(1) draw shared by the samplers
(:mod:`.sampling`, :mod:`.copula`): built on the host with NumPy (float64 weights), drawn from
two uint32 words per draw. No imports from afd_jax."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _alias_table(weight):
    """Walker/Vose alias table of float64 weights (host, NumPy): (prob float64, alias int64)."""
    n = weight.shape[0]
    p = weight / weight.sum() * n
    prob = np.ones(n, np.float64)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if p[i] < 1.0]
    large = [i for i in range(n) if p[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = p[s], g
        p[g] = p[g] + p[s] - 1.0
        (small if p[g] < 1.0 else large).append(g)
    return prob, alias


def alias_thresholds(weight):
    """Walker alias table of float64 weights with its acceptance probabilities as the 24-bit
    integer thresholds every alias draw compares with: (threshold int64, alias int64)."""
    prob, alias = _alias_table(weight)
    return np.minimum(np.round(prob * 2**24), 2**24).astype(np.int64), alias


def value_alias_rows(values, weights, size: int = 2) -> np.ndarray:
    """Walker alias table of a law on int32 ``values`` with float64 ``weights`` (host, NumPy):
    int32[n, 4] rows ``(threshold, value_k, value of alias(k), 0)``, ``threshold =
    round(prob_k * 2**24)``; zero weights dropped, n the power of two >= max(2, ``size``, the
    values kept) (padding columns weigh 0 and always defer to their alias). Drawn by
    :func:`value_alias_pick`."""
    values = np.asarray(values, np.int64)
    weights = np.asarray(weights, np.float64)
    keep = weights > 0
    values, w = values[keep], weights[keep]
    if not values.size or values.min() < 0 or values.max() >= 2**31:
        raise ValueError("an alias table needs positive mass on int32 values")
    n = 1 << max(1, (max(int(size), values.size) - 1).bit_length())
    values = np.concatenate([values, np.zeros(n - values.size, np.int64)])
    w = np.concatenate([w, np.zeros(n - w.size)])
    thr, alias = alias_thresholds(w)
    return np.stack([thr, values, values[alias], np.zeros(n, np.int64)], axis=1).astype(np.int32)


def value_alias_pick(table, word0, word1, row=None):
    """Values (int32) drawn from alias tables of :func:`value_alias_rows` with two uint32 words
    per draw: the column from the top log2(n) bits of ``word0`` (exactly uniform: n is a power
    of two), kept when the top 24 bits of ``word1`` are below its threshold, else its alias.
    ``table``: int32[n, 4], or [K, n, 4] with ``row`` (int32, the words' shape) naming each
    draw's table. One row gather per draw."""
    n = table.shape[-2]
    col = (word0 >> jnp.uint32(33 - n.bit_length())).astype(jnp.int32)
    if table.ndim == 3:
        col = col + row * jnp.int32(n)
        table = table.reshape(-1, table.shape[-1])
    r = jnp.take(table, col, axis=0, mode="clip")
    keep = (word1 >> jnp.uint32(8)).astype(jnp.int32) < r[..., 0]
    return jnp.where(keep, r[..., 1], r[..., 2])


def unit24(word):
    """A float32 uniform in [0, 1) on the grid of 2**-24 from the top 24 bits of a uint32."""
    return (word >> jnp.uint32(8)).astype(jnp.float32) * jnp.float32(2.0**-24)


def cdf_pick(cdf, u):
    """Index k with cdf[k-1] <= u < cdf[k] (inverse-CDF lookup), clipped to the table; int32."""
    idx = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(idx, cdf.shape[0] - 1).astype(jnp.int32)


def pick_component(cdf, word, shape):
    """A mixture component (int32 of ``shape``) from cumulative weights ``cdf`` [K] and a
    uint32 word per draw (its top 24 bits); ``word`` is not read when K = 1."""
    if cdf.shape[0] == 1:
        return jnp.zeros(shape, jnp.int32)
    return cdf_pick(cdf, unit24(word))


__all__ = [
    "alias_thresholds",
    "cdf_pick",
    "pick_component",
    "unit24",
    "value_alias_pick",
    "value_alias_rows",
]

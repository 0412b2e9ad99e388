"""Pure-JAX samplers of requests and of the stationary slot state.

A sampler is a pytree (NamedTuple) of arrays describing a workload law. Two functions work on
every sampler kind:

* ``sample_requests(key, sampler, shape) -> (prompt, decode)``: fresh i.i.d. requests (int32).
* ``sample_stationary(key, sampler, shape) -> (prompt, decode, age)``: the stationary slot state
  (docs/model.md 4): a request drawn with probability proportional to D (length bias), and a uniform
  age in 0..D-1. The slot load is ``prompt + age``.

Dispatch is on the Python type of the sampler (static under ``jit``), through one table built at
the end of this module (:data:`DRAWS`: every sampler kind and its draw functions, in one place).
One more kind draws slot loads only: :class:`LoadAliasSampler`, the law pi itself as an alias
table (``sample_slot_load``; the barrier sampler's draw).
No imports from afd_jax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .alias import alias_thresholds, cdf_pick, pick_component, value_alias_pick, value_alias_rows
from .copula import CopulaSampler, copula_blocks, copula_from_words
from .threefry import block_parts, block_words, random_bits, three_words_by_halves


class TableSampler(NamedTuple):
    """A finite table of request atoms (P_k, D_k) with weights.

    prompt, decode: int32[n]; cdf_request, cdf_length_biased: float32[n], the cumulative
    normalised weights w_k and w_k D_k (last entry 1). Rows with D = 0 have zero length-biased
    weight and must have zero request weight too (they never hold a slot).
    """

    prompt: jax.Array
    decode: jax.Array
    cdf_request: jax.Array
    cdf_length_biased: jax.Array


def table_sampler(prompt, decode, weight=None) -> TableSampler:
    """Build a :class:`TableSampler` (host-side, NumPy in float64, stored float32).

    Rows with decode == 0 get zero weight. ``weight`` defaults to uniform over rows.
    """
    prompt = np.asarray(prompt, dtype=np.int64)
    decode = np.asarray(decode, dtype=np.int64)
    w = np.ones(prompt.shape, np.float64) if weight is None else np.asarray(weight, np.float64)
    w = np.where(decode > 0, w, 0.0)
    keep = w > 0
    prompt, decode, w = prompt[keep], decode[keep], w[keep]
    cdf_req = np.cumsum(w) / w.sum()
    wl = w * decode
    cdf_lb = np.cumsum(wl) / wl.sum()
    cdf_req[-1] = cdf_lb[-1] = 1.0
    return TableSampler(
        jnp.asarray(prompt, jnp.int32),
        jnp.asarray(decode, jnp.int32),
        jnp.asarray(cdf_req, jnp.float32),
        jnp.asarray(cdf_lb, jnp.float32),
    )


def _uniform_age(key, decode):
    """Uniform integer in 0..decode-1 (decode >= 1), int32."""
    u = jr.uniform(key, decode.shape, dtype=jnp.float32)
    age = jnp.floor(u * decode.astype(jnp.float32)).astype(jnp.int32)
    return jnp.clip(age, 0, decode - 1)


def _table_requests(key, s: TableSampler, shape):
    idx = cdf_pick(s.cdf_request, jr.uniform(key, shape, dtype=jnp.float32))
    return s.prompt[idx], s.decode[idx]


def _table_lb_requests(key, s: TableSampler, shape):
    idx = cdf_pick(s.cdf_length_biased, jr.uniform(key, shape, dtype=jnp.float32))
    return s.prompt[idx], s.decode[idx]


class AliasSampler(NamedTuple):
    """A finite table of request atoms drawn by Walker's alias method (O(1) per draw).

    prompt, decode: int32[n], the atoms. ``req_table`` / ``lb_table``: int32[n, 5] (or
    wider, zero-padded: :func:`aligned_rows`) for the request law and the length-biased law
    (weights w_k and w_k D_k); row k holds ``(threshold, P_k, D_k, P_alias(k), D_alias(k))``.
    A draw takes a uniform column k and keeps atom k when a 24-bit uniform integer is below
    ``threshold = round(prob_k * 2**24)``, else takes its alias. One packed row gather per
    draw. Same laws as :class:`TableSampler` (acceptance probabilities rounded to 2**-24).
    """

    prompt: jax.Array
    decode: jax.Array
    req_table: jax.Array
    lb_table: jax.Array


def _packed(prompt, decode, weight):
    thr, alias = alias_thresholds(weight)
    return jnp.asarray(
        np.stack([thr, prompt, decode, prompt[alias], decode[alias]], axis=1), jnp.int32
    )


def alias_sampler(prompt, decode, weight=None, size=None) -> AliasSampler:
    """Build an :class:`AliasSampler` (host-side, float64 weights; rows with decode == 0 or
    zero weight are dropped). ``weight`` defaults to uniform over rows. ``size``: pad the table
    with zero-weight rows to this many rows (fixed shapes avoid recompiling for every table;
    zero-weight columns always defer to their alias, so the laws are unchanged)."""
    prompt = np.asarray(prompt, dtype=np.int64)
    decode = np.asarray(decode, dtype=np.int64)
    w = np.ones(prompt.shape, np.float64) if weight is None else np.asarray(weight, np.float64)
    keep = (w > 0) & (decode > 0)
    prompt, decode, w = prompt[keep], decode[keep], w[keep]
    if size is not None and size > prompt.shape[0]:
        pad = size - prompt.shape[0]
        prompt = np.concatenate([prompt, np.zeros(pad, np.int64)])
        decode = np.concatenate([decode, np.ones(pad, np.int64)])
        w = np.concatenate([w, np.zeros(pad)])
    return AliasSampler(
        jnp.asarray(prompt, jnp.int32),
        jnp.asarray(decode, jnp.int32),
        _packed(prompt, decode, w),
        _packed(prompt, decode, w * decode),
    )


def aligned_rows(s, width: int = 8):
    """``s`` with the rows of its alias tables padded with zeros to ``width`` int32 (8: 32
    bytes, so a row never straddles two memory sectors or cache lines); the draws only read
    the first 5 words, so they are the same. Other samplers come back as they are. The
    driver uses it where it was faster (``afd_jax.montecarlo.simulate._wide_rows``;
    docs/benchmarks.md, run 8)."""
    if not isinstance(s, AliasSampler) or s.req_table.shape[1] >= width:
        return s
    pad = ((0, 0), (0, width - s.req_table.shape[1]))
    return s._replace(req_table=jnp.pad(s.req_table, pad), lb_table=jnp.pad(s.lb_table, pad))


def alias_pick(table, bits0, bits1):
    """Alias draw from two uint32 words: column ``bits0 mod n`` (modulo bias <= n / 2**32),
    keep it if the top 24 bits of ``bits1`` are below its threshold. Returns (prompt, decode)
    int32. One gather of a packed row per draw (its first 5 words are read)."""
    n = table.shape[0]
    col = (bits0 % jnp.uint32(n)).astype(jnp.int32)
    row = jnp.take(table, col, axis=0, mode="clip")
    keep = (bits1 >> jnp.uint32(8)).astype(jnp.int32) < row[..., 0]
    return jnp.where(keep, row[..., 1], row[..., 3]), jnp.where(keep, row[..., 2], row[..., 4])


def alias_requests_from_bits(s: AliasSampler, bits0, bits1):
    """Fresh requests (prompt, decode) int32 from two uint32 arrays of random words."""
    return alias_pick(s.req_table, bits0, bits1)


def _alias_requests(key, s: AliasSampler, shape):
    bits = random_bits(key, (2,) + tuple(shape))
    return alias_pick(s.req_table, bits[0], bits[1])


def _alias_lb_requests(key, s: AliasSampler, shape):
    bits = random_bits(key, (2,) + tuple(shape))
    return alias_pick(s.lb_table, bits[0], bits[1])


def _alias_stationary(key, s: AliasSampler, shape):
    """Stationary state from one draw of 3 words: length-biased column, accept, age."""
    bits = random_bits(key, (3,) + tuple(shape))
    return _alias_stationary_from_bits(s, bits[0], bits[1], bits[2])


def _alias_stationary_from_bits(s: AliasSampler, w0, w1, w2):
    """The stationary (P, D, age) of three uint32 words: length-biased column, accept, age."""
    prompt, decode = alias_pick(s.lb_table, w0, w1)
    u = (w2 >> jnp.uint32(8)).astype(jnp.float32) * jnp.float32(2.0**-24)
    age = jnp.clip(jnp.floor(u * decode.astype(jnp.float32)).astype(jnp.int32), 0, decode - 1)
    return prompt, decode, age


class LoadAliasSampler(NamedTuple):
    """The stationary slot-load law pi itself (docs/model.md 4) as a Walker alias table: all
    the barrier sampler needs (loads, not requests), from one Threefry block per slot.

    table: int32[n, 4] (:func:`value_alias_rows` of the loads; acceptance probabilities
    rounded to 2**-24, as :class:`AliasSampler`), drawn by :func:`value_alias_pick`. Built on
    the host by :func:`load_alias_sampler` from a float64 pmf.
    """

    table: jax.Array


def load_alias_sampler(start: int, pmf, width: int = 1) -> LoadAliasSampler:
    """Build a :class:`LoadAliasSampler` of the pmf of loads ``start + width * i`` (host,
    NumPy float64; zero-mass loads dropped, the table padded to a power of two >= 2)."""
    pmf = np.asarray(pmf, np.float64)
    loads = int(start) + int(width) * np.arange(pmf.size, dtype=np.int64)
    return LoadAliasSampler(jnp.asarray(value_alias_rows(loads, pmf)))


class ProductSampler(NamedTuple):
    """A mixture of K components whose P and D are independent (a parametric workload whose
    components all have rank correlation 0, or a single-valued marginal): an alias table per
    component and marginal (:func:`value_alias_rows`), O(1) per draw, one Threefry block per
    marginal (:func:`product_blocks`).

    comp_cdf, comp_cdf_lb: float32[K] cumulative weights w_k and w_k E_k[D] (last 1);
    prompt_table: int32[K, NP, 4]; decode_table, decode_lb_table: int32[K, ND, 4], the laws
    of D and of the length-biased D (pmf(d) d / E_k[D]). Built on the host by
    ``afd_jax.montecarlo.samplers.make_sampler``. The same laws as :class:`.CopulaSampler`'s
    tables of the same workload, up to rounding (2**-24 per acceptance threshold here, float32
    CDFs there).
    """

    comp_cdf: jax.Array
    comp_cdf_lb: jax.Array
    prompt_table: jax.Array
    decode_table: jax.Array
    decode_lb_table: jax.Array


def product_blocks(s: ProductSampler) -> int:
    """Threefry blocks per request: D's two words, P's two words, and a word for the
    component when there are several (static)."""
    return 2 if s.comp_cdf.shape[0] == 1 else 3


def product_from_words(s: ProductSampler, words, length_biased: bool = False):
    """(prompt, decode) int32 from :func:`product_blocks` pairs of uint32 words per request
    (``words[j] = (w0, w1)``): D from pair 0, P from pair 1, the component from the top 24
    bits of pair 2's first word (mixtures only). ``length_biased`` (static): component and D
    with probability proportional to D."""
    (d0, d1), (p0, p1) = words[0], words[1]
    word = words[2][0] if len(words) > 2 else None
    comp = pick_component(s.comp_cdf_lb if length_biased else s.comp_cdf, word, d0.shape)
    decode = value_alias_pick(s.decode_lb_table if length_biased else s.decode_table, d0, d1, comp)
    return value_alias_pick(s.prompt_table, p0, p1, comp), decode


class WordDraw(NamedTuple):
    """A sampler kind that draws each request from a fixed number of Threefry blocks:
    ``blocks(s)`` (static) and ``from_words(s, pairs, length_biased)`` -> (prompt, decode)
    from ``pairs[j] = (w0, w1)``. Fresh requests of the fast, step and dynamics kernels take
    the blocks of their slots' counters (``kernels.streams.fresh_requests``); starts and the
    barrier's request draw take them from :func:`~.threefry.block_words`."""

    blocks: Callable
    from_words: Callable


WORD_DRAWS = {
    ProductSampler: WordDraw(product_blocks, product_from_words),
    CopulaSampler: WordDraw(copula_blocks, copula_from_words),
}
"""The sampler kinds drawn from words (those of :data:`DRAWS` that are not alias tables of
requests or inverse-CDF tables)."""


def _words_draw(length_biased: bool):
    def draw(key, s, shape):
        wd = WORD_DRAWS[type(s)]
        b, shape = wd.blocks(s), tuple(shape)
        pairs = block_parts(key, shape, b)
        if pairs is None:
            w0, w1 = block_words(key, (b,) + shape)
            pairs = [(w0[j], w1[j]) for j in range(b)]
        return wd.from_words(s, pairs, length_biased)

    return draw


def slot_load_halves(key, sampler, shape):
    """:func:`sample_slot_load` of ``shape`` (axis 0 even) as its two halves along axis 0,
    drawn together so that each random block is hashed once
    (:func:`~.threefry.three_words_by_halves`): the same numbers, half the hashing. None for
    the samplers and key modes where that does not apply (then draw with
    :func:`sample_slot_load`)."""
    if type(sampler) is LoadAliasSampler:
        return _load_alias_halves(key, sampler, tuple(shape))
    if type(sampler) is not AliasSampler:
        return None
    words = three_words_by_halves(key, tuple(shape))
    if words is None:
        return None
    return tuple(slot_load(_alias_stationary_from_bits(sampler, *w)) for w in words)


def _load_alias_halves(key, sampler: LoadAliasSampler, shape: tuple):
    """The two halves along axis 0 of ``sample_slot_load(key, sampler, shape)``, each from its
    own counters (:func:`~.threefry.block_parts`); None where that does not apply (odd axis
    0, a key that is not Threefry, 2^32 draws or more)."""
    if not shape or shape[0] % 2:
        return None
    parts = block_parts(key, (shape[0] // 2,) + shape[1:], 2)
    return None if parts is None else tuple(value_alias_pick(sampler.table, *w) for w in parts)


def slot_load(state):
    """The load ``prompt + age`` of slots given as (prompt, decode, age, ...) arrays."""
    return state[0] + state[2]


class Draws(NamedTuple):
    """The draw functions of one sampler kind: ``requests(key, s, shape)`` fresh (P, D);
    ``length_biased(key, s, shape)`` (P, D) with probability proportional to D; ``stationary``
    (optional) the stationary (P, D, age) in one draw, else length-biased request + uniform age."""

    requests: Callable
    length_biased: Callable
    stationary: Callable | None = None


DRAWS = {
    TableSampler: Draws(_table_requests, _table_lb_requests),
    AliasSampler: Draws(_alias_requests, _alias_lb_requests, _alias_stationary),
    CopulaSampler: Draws(_words_draw(False), _words_draw(True)),
    ProductSampler: Draws(_words_draw(False), _words_draw(True)),
}
"""Every sampler kind and its draws: the one dispatch table (a new kind is added here)."""


def sample_requests(key, sampler, shape):
    """Fresh i.i.d. requests: returns (prompt, decode), int32 arrays of ``shape``."""
    return DRAWS[type(sampler)].requests(key, sampler, tuple(shape))


def sample_stationary(key, sampler, shape):
    """Stationary slot state: (prompt, decode, age) int32, age uniform in 0..decode-1 of a
    length-biased request. The load ``prompt + age`` has law pi (docs/model.md 4)."""
    draws = DRAWS[type(sampler)]
    if draws.stationary is not None:
        return draws.stationary(key, sampler, tuple(shape))
    k_req, k_age = jr.split(key)
    prompt, decode = draws.length_biased(k_req, sampler, tuple(shape))
    return prompt, decode, _uniform_age(k_age, decode)


def sample_slot_load(key, sampler, shape):
    """Draw stationary slot loads (int32) from pi: a :class:`LoadAliasSampler` directly (the
    two words of one block per load, :func:`~.threefry.block_words`), any other sampler as
    the load of :func:`sample_stationary`."""
    if type(sampler) is LoadAliasSampler:
        return value_alias_pick(sampler.table, *block_words(key, tuple(shape)))
    return slot_load(sample_stationary(key, sampler, shape))

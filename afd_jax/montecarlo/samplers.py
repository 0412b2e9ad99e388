"""Host workload -> JAX sampler pytree: the one sampler factory of every Monte Carlo driver
(and ``load_alias_for``: pi as an alias table of loads, the barrier kernel's draw).

``make_sampler(w, load_offset=0, draw="table")`` returns a pytree accepted by
``afd_jax.kernels.sample_requests`` / ``sample_stationary`` / ``sample_slot_load``:

* :class:`~afd_jax.workload.containers.TraceWorkload` -> ``TableSampler`` over the rows
  (``prompt + load_offset``, ``decode``); rows with D = 0 get zero weight. ``draw="alias"``:
  the same law as an ``AliasSampler`` (O(1) draws, table padded to a power of two >= 1024: few
  shapes, few compiles), the one the trajectory and fast kernels use.
* :class:`~afd_jax.workload.containers.ParametricWorkload` with P and D independent in every
  component (rank correlation 0) -> :class:`~afd_jax.kernels.sampling.ProductSampler`: alias
  tables of each component's marginals (O(1) draws), mixture weights w_k and length-biased
  weights w_k E_k[D]; with a correlated component (or a marginal of more than
  :data:`PRODUCT_TABLE_MAX` atoms) -> :class:`~afd_jax.kernels.copula.CopulaSampler`: alias
  and CDF tables of D, P's thresholds in the latent normal's scale with their guide table
  (float32, int32 values), the same weights.
  Prompt values are shifted by ``load_offset``.

``load_offset`` is added to the prompt so that ``prompt + age`` is the slot load of
docs/model.md 1 (``P + k + load_offset``). Built with NumPy in float64, stored in float32/int32.

>>> from afd_jax.workload import families
>>> s = make_sampler(families.independent(families.geometric(10, min=0), families.geometric(5)))
>>> type(s).__name__
'ProductSampler'
"""

from __future__ import annotations

import collections
import math

import jax.numpy as jnp
import numpy as np
from scipy.special import ndtri

from afd_jax.errors import InputError
from afd_jax.kernels.copula import CopulaSampler, guided_rows
from afd_jax.kernels.sampling import (
    AliasSampler,
    LoadAliasSampler,
    ProductSampler,
    TableSampler,
    alias_sampler,
    load_alias_sampler,
    table_sampler,
    value_alias_rows,
)
from afd_jax.workload.containers import ParametricWorkload, TraceWorkload, content_digest
from afd_jax.workload.families import gaussian_corr
from afd_jax.workload.slotload import needs_quadrature, slot_load_pmf, unit_span

__all__ = [
    "DRAW_METHODS",
    "LOAD_ALIAS_MAX",
    "PRODUCT_TABLE_MAX",
    "QUADRATURE_MIN_SLOT_STEPS",
    "as_alias",
    "decode_moments",
    "load_alias_for",
    "make_sampler",
    "max_slot_load",
    "prompt_law",
    "reuse_for",
    "table_size",
]

DRAW_METHODS = ("table", "alias")

_INT32_MAX = np.iinfo(np.int32).max


def _cdf32(pmf: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(np.asarray(pmf, np.float64))
    cdf /= cdf[-1]
    cdf = cdf.astype(np.float32)
    cdf[-1] = 1.0
    return cdf


def _normal_thresholds(pmf: np.ndarray) -> np.ndarray:
    """z_i = Phi^-1(F(i)) of a pmf in float64, rounded to float32 (+inf from the last atom
    on, and wherever F rounds to 1): the copula's prompt thresholds (kernels.copula)."""
    cdf = np.cumsum(np.asarray(pmf, np.float64))
    cdf /= cdf[-1]
    z = ndtri(np.minimum(cdf, 1.0))
    z[-1] = np.inf
    return z.astype(np.float32)


def _pad(rows: list[np.ndarray], fill_last: bool, pad_value, dtype) -> np.ndarray:
    n = max(r.size for r in rows)
    out = np.empty((len(rows), n), dtype)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
        out[i, r.size :] = r[-1] if fill_last else pad_value
    return out


PRODUCT_TABLE_MAX = 1 << 20
"""The most atoms of a marginal that get an alias table (16 B a row; its host build is a Python
loop, 0.7 s at 2^20): an independent parametric workload's marginals
(:class:`ProductSampler`), a copula workload's D; wider ones are drawn from their CDFs by a
binary search."""


def _copula_sampler(w: ParametricWorkload, load_offset: int) -> CopulaSampler:
    weights = np.asarray(w.weights, np.float64)
    mean_d = np.array([c.decode.mean() for c in w.components])
    pv, pz, dv, dc, dlb, rho = [], [], [], [], [], []
    for c in w.components:
        p = c.prompt.values.astype(np.int64) + int(load_offset)
        d = c.decode.values.astype(np.int64)
        if p.max() + d.max() > _INT32_MAX:
            raise InputError("prompt + decode exceed int32", field="workload")
        pv.append(p)
        pz.append(_normal_thresholds(c.prompt.pmf))
        dv.append(d)
        dc.append(_cdf32(c.decode.pmf))
        dlb.append(_cdf32(c.decode.pmf * d.astype(np.float64)))
        rho.append(gaussian_corr(c.rank_corr))
    n_d = max(x.size for x in dv)
    if n_d <= PRODUCT_TABLE_MAX:  # D by alias tables of the atoms' indices
        comps = w.components
        alias = [
            value_alias_rows(np.arange(c.decode.values.size), c.decode.pmf, n_d) for c in comps
        ]
        lb = [
            value_alias_rows(np.arange(c.decode.values.size), c.decode.pmf * c.decode.values, n_d)
            for c in comps
        ]
    else:  # too many atoms to tabulate: D by the CDFs' binary search
        alias = lb = [np.zeros((0, 4), np.int32)] * len(dv)
    prompt_z, guide, steps = guided_rows(pz)
    return CopulaSampler(
        comp_cdf=jnp.asarray(_cdf32(weights), jnp.float32),
        comp_cdf_lb=jnp.asarray(_cdf32(weights * mean_d), jnp.float32),
        rho=jnp.asarray(np.array(rho, np.float32), jnp.float32),
        prompt_values=jnp.asarray(_pad(pv, True, 0, np.int32), jnp.int32),
        prompt_z=jnp.asarray(prompt_z, jnp.float32),
        prompt_guide=jnp.asarray(guide, jnp.int32),
        prompt_steps=jnp.asarray(steps, jnp.int32),
        decode_values=jnp.asarray(_pad(dv, True, 0, np.int32), jnp.int32),
        decode_cdf=jnp.asarray(_pad(dc, False, 2.0, np.float32), jnp.float32),
        decode_cdf_lb=jnp.asarray(_pad(dlb, False, 2.0, np.float32), jnp.float32),
        decode_alias=jnp.asarray(np.stack(alias)),
        decode_lb_alias=jnp.asarray(np.stack(lb)),
    )


_LOAD_ALIAS: collections.OrderedDict = collections.OrderedDict()  # (digest, offset) -> table
_PRODUCT: collections.OrderedDict = collections.OrderedDict()  # (digest, offset) -> sampler
_COPULA: collections.OrderedDict = collections.OrderedDict()  # (digest, offset) -> sampler
_TRACE_SAMPLERS: collections.OrderedDict = collections.OrderedDict()  # (.., draw) -> sampler
_BUILT_KEPT = 4


def _built_once(store: collections.OrderedDict, w, load_offset: int, build, tag=None):
    """``build()`` once per workload content, load offset and ``tag`` (the
    :data:`_BUILT_KEPT` latest kept per store): a sweep calls ``simulate`` once per scenario
    with the same workload, and a workload's arrays changed in place make a new one (the key
    is :func:`~afd_jax.workload.containers.content_digest`)."""
    key = (content_digest(w), int(load_offset), tag)
    if key in store:
        store.move_to_end(key)
        return store[key]
    store[key] = value = build()
    while len(store) > _BUILT_KEPT:
        store.popitem(last=False)
    return value


def _product_sampler(w: ParametricWorkload, load_offset: int) -> ProductSampler | None:
    """Alias tables of every component's marginals when P and D are independent in every
    component (no copula quadrature) and no marginal has more than PRODUCT_TABLE_MAX atoms;
    else None. Built once per workload content and offset (0.1 s for ``paper-v1``)."""
    comps = w.components
    if (
        needs_quadrature(w)
        or max(max(c.prompt.values.size, c.decode.values.size) for c in comps) > PRODUCT_TABLE_MAX
    ):
        return None

    def build():
        weights = np.asarray(w.weights, np.float64)
        mean_d = np.array([c.decode.mean() for c in comps])
        n_p = max(int((c.prompt.pmf > 0).sum()) for c in comps)
        n_d = max(int((c.decode.pmf > 0).sum()) for c in comps)
        off = int(load_offset)
        for c in comps:
            if int(c.prompt.values.max()) + off + int(c.decode.values.max()) > _INT32_MAX:
                raise InputError("prompt + decode exceed int32", field="workload")

        def tables(marginal, weight, n: int, shift: int = 0):
            rows = [value_alias_rows(marginal(c).values + shift, weight(c), n) for c in comps]
            return jnp.asarray(np.stack(rows))

        return ProductSampler(
            comp_cdf=jnp.asarray(_cdf32(weights), jnp.float32),
            comp_cdf_lb=jnp.asarray(_cdf32(weights * mean_d), jnp.float32),
            prompt_table=tables(lambda c: c.prompt, lambda c: c.prompt.pmf, n_p, off),
            decode_table=tables(lambda c: c.decode, lambda c: c.decode.pmf, n_d),
            decode_lb_table=tables(
                lambda c: c.decode, lambda c: c.decode.pmf * c.decode.values, n_d
            ),
        )

    return _built_once(_PRODUCT, w, load_offset, build)


def table_size(n: int) -> int:
    """Alias tables are padded to a power of two (>= 1024): fewer shapes, fewer compiles."""
    return max(1024, 1 << max(0, (int(n) - 1).bit_length()))


def as_alias(sampler):
    """A TableSampler becomes the equivalent AliasSampler (O(1) draws); others pass through."""
    if isinstance(sampler, TableSampler):
        cdf = np.asarray(sampler.cdf_request, np.float64)
        w = np.diff(cdf, prepend=0.0)
        return alias_sampler(
            np.asarray(sampler.prompt), np.asarray(sampler.decode), w, size=table_size(w.size)
        )
    return sampler


def _trace_sampler(w: TraceWorkload, load_offset: int, draw: str):
    """The sampler of a trace, built once per content, offset and draw (:func:`_built_once`):
    the alias table of a 20,000-request trace takes 80 ms of host time (a Python loop),
    several times a short simulate call's work, and a sweep's mc method calls simulate once
    per scenario with the same trace."""

    def build():
        prompt = np.asarray(w.prompt, np.int64)
        return _build_trace_sampler(prompt, np.asarray(w.decode, np.int64), load_offset, draw)

    return _built_once(_TRACE_SAMPLERS, w, load_offset, build, tag=draw)


def _build_trace_sampler(prompt, decode, load_offset: int, draw: str):
    if draw == "alias":
        keep = decode > 0
        return alias_sampler(prompt + load_offset, decode, size=table_size(int(keep.sum())))
    if not np.any(decode > 0):
        raise InputError("every decode length is 0: no slot is ever held", field="decode")
    if (prompt + decode).max() + load_offset > _INT32_MAX:
        raise InputError("prompt + decode exceed int32", field="workload")
    return table_sampler(prompt + int(load_offset), decode)


def make_sampler(w, load_offset: int = 0, draw: str = "table"):
    """JAX sampler pytree of a workload (see the module docstring). ``load_offset`` in {0, 1};
    ``draw``: "table" (inverse CDF) or "alias" (Walker alias), for trace workloads (a
    parametric workload gives a ProductSampler or a CopulaSampler either way). A sampler
    pytree passes through (``draw="alias"`` turns a TableSampler into the equivalent
    AliasSampler; load_offset is the caller's)."""
    if int(load_offset) != load_offset or load_offset < 0:
        raise InputError(f"load_offset must be a non-negative integer, got {load_offset!r}")
    if draw not in DRAW_METHODS:
        raise ValueError(f"draw must be one of {DRAW_METHODS}, got {draw!r}")
    if isinstance(w, TraceWorkload):
        return _trace_sampler(w, int(load_offset), draw)
    if isinstance(w, ParametricWorkload):
        product = _product_sampler(w, int(load_offset))
        if product is not None:
            return product
        return _built_once(_COPULA, w, load_offset, lambda: _copula_sampler(w, int(load_offset)))
    if isinstance(w, TableSampler | AliasSampler | CopulaSampler | ProductSampler):
        return as_alias(w) if draw == "alias" else w
    raise TypeError(f"expected a TraceWorkload or ParametricWorkload, got {type(w).__name__}")


LOAD_ALIAS_MAX = 1 << 20
"""The most loads (unit lattice points of pi) a :class:`LoadAliasSampler` is built for: its
table (16 B a row, padded to a power of two) stays within 32 MiB and its host build (a Python
loop, 0.7 s at 2^20) short."""

QUADRATURE_MIN_SLOT_STEPS = 1 << 28
"""The fewest slot-steps of a barrier run for which pi of a copula workload is computed for
the table (:func:`load_alias_for`): its quadrature took 0.1 to 5 s on the 2-core CPU (5.1 s
for the reproduction's `copula`, 459,000 loads), while its copula draw of requests runs at
about 1.5e7 slot-steps/s there (18 s for 2^28 slot-steps; pi's table about 3.5e8)."""


def load_alias_for(
    w, load_offset: int = 0, slot_steps: int | None = None
) -> LoadAliasSampler | None:
    """The barrier sampler's draw of a workload: its stationary slot-load law pi
    (:func:`~afd_jax.workload.slotload.slot_load_pmf` on the unit lattice, float64) as an
    alias table of loads (:class:`LoadAliasSampler`), one Threefry block per slot. None (the
    driver then draws a length-biased request and a uniform age per slot: the same law) when
    pi spans more than :data:`LOAD_ALIAS_MAX` loads, when ``w`` is a sampler pytree, or when
    pi needs the copula quadrature and the run has fewer than
    :data:`QUADRATURE_MIN_SLOT_STEPS` ``slot_steps`` (its draws would cost less than pi).
    Built once per workload content and offset."""
    if not isinstance(w, TraceWorkload | ParametricWorkload) or unit_span(w) > LOAD_ALIAS_MAX:
        return None
    small = slot_steps is not None and slot_steps < QUADRATURE_MIN_SLOT_STEPS
    if small and isinstance(w, ParametricWorkload) and needs_quadrature(w):
        return None

    def build():
        pm = slot_load_pmf(w, int(load_offset), max_bins=LOAD_ALIAS_MAX)
        return load_alias_sampler(pm.start, pm.pmf)

    return _built_once(_LOAD_ALIAS, w, load_offset, build)


def decode_moments(sampler) -> tuple[float, float] | None:
    """Mean and standard deviation of the decode length D of a sampler's request law (float64,
    host). An :class:`AliasSampler`, exactly: column k is drawn with probability 1/n and kept
    with probability threshold_k / 2**24, else its alias; a :class:`ProductSampler`, the
    mixture of its decode tables, the same way. A :class:`CopulaSampler` (correlated
    parametric workloads): from its float32 CDFs, component k with weight w_k and decode
    value j with F_k(j) - F_k(j - 1) (it draws D from alias tables of the float64 pmf: the
    same law to ~1e-7; the moments only plan the fast kernel's request counts). None for
    other samplers."""
    if isinstance(sampler, CopulaSampler):
        tables = (sampler.comp_cdf, sampler.decode_cdf, sampler.decode_values)  # what it reads
        return reuse_for(_MOMENTS, tables, lambda: _copula_moments(sampler))
    if isinstance(sampler, ProductSampler):
        tables = (sampler.comp_cdf, sampler.decode_table)
        return reuse_for(_MOMENTS, tables, lambda: _product_moments(sampler))
    if not isinstance(sampler, AliasSampler):
        return None

    def moments():
        return _mean_sd(*_alias_moments(np.asarray(sampler.req_table, np.int64), 2, 4))

    return reuse_for(_MOMENTS, (sampler.req_table,), moments)


_MOMENTS: dict = {}


def _alias_moments(t: np.ndarray, value: int, alias: int) -> tuple[float, float]:
    """E[X], E[X^2] of the law of an alias table's rows ``t`` (columns: threshold, ``value``,
    ``alias`` value): column k with probability 1/n, kept with threshold_k / 2**24."""
    keep = t[:, 0] / float(1 << 24)
    x, x_alias = t[:, value].astype(np.float64), t[:, alias].astype(np.float64)
    first = float(np.mean(keep * x + (1.0 - keep) * x_alias))
    return first, float(np.mean(keep * x * x + (1.0 - keep) * x_alias * x_alias))


def _mean_sd(first: float, second: float) -> tuple[float, float]:
    return first, math.sqrt(max(second - first * first, 0.0))


def _product_moments(s: ProductSampler) -> tuple[float, float]:
    """:func:`decode_moments` of a ProductSampler: the mixture of its decode alias tables."""
    weights = np.diff(np.asarray(s.comp_cdf, np.float64), prepend=0.0)
    parts = np.array([_alias_moments(t, 1, 2) for t in np.asarray(s.decode_table, np.int64)])
    first, second = weights @ parts / weights.sum()
    return _mean_sd(float(first), float(second))


def _copula_moments(s: CopulaSampler) -> tuple[float, float]:
    """:func:`decode_moments` of a CopulaSampler: the mixture of its decode tables."""
    weights = np.diff(np.asarray(s.comp_cdf, np.float64), prepend=0.0)
    cdf = np.minimum(np.asarray(s.decode_cdf, np.float64), 1.0)  # padded columns hold 2.0
    pmf = np.diff(cdf, prepend=0.0, axis=1)
    d = np.asarray(s.decode_values, np.float64)
    mean = float(weights @ (pmf * d).sum(axis=1) / weights.sum())
    return _mean_sd(mean, float(weights @ (pmf * d * d).sum(axis=1) / weights.sum()))


def reuse_for(store: dict, objects, make, size: int = 4):
    """``make()``, or what it gave before for the very same ``objects`` (compared by
    identity): repeated runs with one sampler compute per-sampler facts once. The ``size``
    latest entries per ``store`` (runs may alternate between, say, a sampler and its copy on
    other devices), holding the objects themselves, so that no id is reused meanwhile."""
    objects = tuple(objects)
    entries = store.setdefault("entries", [])
    for i, (seen, value) in enumerate(entries):
        if len(seen) == len(objects) and all(a is b for a, b in zip(seen, objects, strict=True)):
            entries.insert(0, entries.pop(i))
            return value
    entries.insert(0, (objects, make()))
    del entries[size:]
    return entries[0][1]


def prompt_law(source, load_offset: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """The law of a fresh request's ``P + load_offset`` as (values int64, probabilities
    float64; values may repeat): a trace's rows with D >= 1, equally likely; a parametric
    workload's mixture of prompt pmfs. None for a sampler pytree."""
    off = int(load_offset)
    if isinstance(source, TraceWorkload):
        p = np.asarray(source.prompt, np.int64)[np.asarray(source.decode) > 0] + off
        return p, np.full(p.size, 1.0 / max(p.size, 1))
    if isinstance(source, ParametricWorkload):
        weights = np.asarray(source.weights, np.float64) / np.sum(source.weights)
        values = [np.asarray(c.prompt.values, np.int64) + off for c in source.components]
        probs = [wk * c.prompt.pmf for wk, c in zip(weights, source.components, strict=True)]
        return np.concatenate(values), np.concatenate(probs)
    return None


def max_slot_load(source, load_offset: int = 0, given: int | None = None) -> int:
    """The largest possible slot load ``P + D - 1`` (+ load_offset) of a workload or a table
    sampler (for the int32 overflow checks), at least ``given``. Raises InputError for a
    workload without a request of D >= 1, or a sampler whose largest load is unknown and no
    ``given``."""
    off = int(load_offset)
    if isinstance(source, TraceWorkload):
        d = np.asarray(source.decode, np.int64)
        p = np.asarray(source.prompt, np.int64)
        keep = d > 0
        if not keep.any():
            raise InputError("workload has no request with D >= 1", field="workload")
        m = int((p[keep] + d[keep] - 1).max()) + off
    elif isinstance(source, ParametricWorkload):
        m = max(
            int(c.prompt.values[c.prompt.pmf > 0].max())
            + int(c.decode.values[c.decode.pmf > 0].max())
            - 1
            for c in source.components
        )
        m += off
    elif given is not None:
        return int(given)
    elif isinstance(source, TableSampler | AliasSampler):
        return int(np.max(np.asarray(source.prompt, np.int64) + np.asarray(source.decode) - 1))
    else:
        raise InputError("pass max_slot_load= for a sampler that is not a TableSampler")
    return m if given is None else max(m, int(given))

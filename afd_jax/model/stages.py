"""Stage objects: affine and measured-table stage latencies (docs/model.md 2.1).

A stage maps a token count x to a time (us). Two kinds:

* :class:`AffineStage` ``t(x) = alpha x + beta``;
* :class:`TableStage`, a measured table ``(x_i, t_i)``, strictly increasing x, non-decreasing
  t > 0, interpolated by the monotone cubic Hermite rule of Fritsch and Carlson (PCHIP): C1,
  monotone between the knots, exact on collinear knots. Beyond the ends the time is linear with
  the end slope (C1 there too, so gradients and root finding stay well defined).
* :class:`AttnTable`, the Attention stage measured per batch B: one :class:`TableStage` of the
  worker's KV load T per batch, linear interpolation in B between adjacent tables (linear
  extrapolation with the end pair beyond them; the entry points reject a B outside the tables,
  :func:`check_batch`).

Every function is written once for NumPy and JAX (``xp`` dispatch: NumPy in -> NumPy out, no JAX
dispatch; JAX in -> JAX out, jit/vmap/grad). The Hermite slopes are computed when a table is
built (:func:`table_stage`), in the array library of the knots, so gradients with respect to the
knot times flow through them when the table is built under JAX.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # JAX is imported only by callers that use JAX arrays
    import jax

__all__ = [
    "AffineStage",
    "AttnTable",
    "TableStage",
    "max_slope",
    "attn_table",
    "check_batch",
    "eval_stage",
    "invert_stage",
    "is_affine",
    "pchip_slopes",
    "scale_stage",
    "slope_stage",
    "stage_knots",
    "table_stage",
]


class AffineStage(NamedTuple):
    """A stage whose time is affine in its token count: ``t(x) = alpha * x + beta`` (us)."""

    alpha: float
    beta: float


class TableStage(NamedTuple):
    """A measured stage: knots ``x`` (tokens, strictly increasing), times ``y`` (us) and the
    PCHIP slopes ``d`` (us per token) at the knots; each float[n], n >= 2."""

    x: jax.Array
    y: jax.Array
    d: jax.Array


class AttnTable(NamedTuple):
    """Attention measured per batch: ``batches`` float[nb] (strictly increasing) and one
    :class:`TableStage` of the worker load T per batch (``rows``, a tuple of length nb)."""

    batches: jax.Array
    rows: tuple


def _jax_loaded():
    """The ``jax`` module if it is loaded, else None: without JAX loaded there are no JAX arrays,
    so NumPy-only callers (``afd-jax theta``) never import it."""
    return sys.modules.get("jax")


def _xp(*xs):
    """``jax.numpy`` when any leaf of ``xs`` is a JAX array, else NumPy."""
    jax = _jax_loaded()
    if jax is None:
        return np
    leaves = jax.tree_util.tree_leaves(xs)
    return jax.numpy if any(isinstance(x, jax.Array) for x in leaves) else np


def is_affine(stage) -> bool:
    """True for an :class:`AffineStage` (the fast path, bit for bit the affine formulas)."""
    return isinstance(stage, AffineStage)


def pchip_slopes(x, y):
    """Fritsch-Carlson slopes at the knots (float[n], n >= 2): interior weighted harmonic mean
    of the neighbouring secants (0 where they differ in sign or one is 0), one-sided
    three-point ends limited to keep monotonicity (scipy's ``PchipInterpolator`` rule)."""
    xp = _xp(x, y)
    h = xp.diff(x)
    delta = xp.diff(y) / h
    if x.shape[0] == 2:
        return xp.concatenate([delta, delta])
    h0, h1, d0, d1 = h[:-1], h[1:], delta[:-1], delta[1:]
    w1, w2 = 2 * h1 + h0, h1 + 2 * h0
    same = d0 * d1 > 0
    safe0, safe1 = xp.where(same, d0, 1.0), xp.where(same, d1, 1.0)
    inner = xp.where(same, (w1 + w2) / (w1 / safe0 + w2 / safe1), 0.0)

    def end(h0, h1, d0, d1):
        d = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        d = xp.where(d * d0 <= 0, 0.0, d)
        return xp.where((d0 * d1 <= 0) & (xp.abs(d) > xp.abs(3 * d0)), 3 * d0, d)

    first = end(h[0], h[1], delta[0], delta[1])
    last = end(h[-1], h[-2], delta[-1], delta[-2])
    return xp.concatenate([xp.reshape(first, (1,)), inner, xp.reshape(last, (1,))])


def table_stage(x, y) -> TableStage:
    """A :class:`TableStage` from knots (NumPy float64 unless JAX arrays are given)."""
    xp = _xp(x, y)
    x, y = xp.asarray(x, dtype=float), xp.asarray(y, dtype=float)
    return TableStage(x, y, pchip_slopes(x, y))


def attn_table(batches, rows) -> AttnTable:
    """An :class:`AttnTable` from batches and ``[(kv_tokens, time_us), ...]`` per batch."""
    return AttnTable(np.asarray(batches, dtype=float), tuple(table_stage(x, y) for x, y in rows))


def _search(knots, x, xp):
    """``searchsorted(knots, x, side="right")``; under JAX by comparing with every knot (a few
    fused comparisons instead of a loop: tables are short, and the compiled optimiser holds
    dozens of table evaluations). Knots padded with +inf are never counted."""
    if xp is np:
        return np.searchsorted(knots, x, side="right")
    return xp.searchsorted(knots, x, side="right", method="compare_all")


def _take(a, k, xp):
    """``a[..., k]``: along the last axis of ``a`` (k integer, shaped like ``a[..., 0]`` or any
    shape for a 1-D ``a``). Under JAX as a one-hot
    sum (a fused select and reduce; its derivative a select, not a scatter): the same value, as
    only one term is not 0."""
    if xp is np:
        if a.ndim == 1:
            return a[k]
        return np.take_along_axis(a, np.broadcast_to(k, a.shape[:-1])[..., None], -1)[..., 0]
    k = xp.asarray(k)
    n = a.shape[-1]
    shape = xp.broadcast_shapes(a.shape, (*k.shape, n))  # explicit: strict rank promotion
    knot = xp.broadcast_to(xp.arange(n, dtype=k.dtype), shape)
    hit = knot == xp.broadcast_to(k[..., None], shape)
    return xp.sum(xp.where(hit, xp.broadcast_to(a, shape), 0.0), axis=-1)


def _segment(stage: TableStage, x, xp, n=None):
    """Interval index k (clipped to 0..n-2), its width h and local coordinate t of x; ``n``: the
    number of knots in use (default all; fewer when the row is padded, see
    :func:`_hermite_rows`)."""
    n = stage.x.shape[0] if n is None else n
    k = xp.clip(_search(stage.x, x, xp) - 1, 0, n - 2)
    x0 = _take(stage.x, k, xp)
    h = _take(stage.x, k + 1, xp) - x0
    return k, h, (x - x0) / h


def _like(stage: TableStage, x, xp):
    """The stage's arrays and x in one array library and floating dtype (that of a floating
    JAX x, else the table's)."""
    dtype = stage.x.dtype
    if xp is not np and xp.issubdtype(xp.result_type(x), xp.floating):
        dtype = xp.result_type(x)
    stage = TableStage(*(xp.asarray(a, dtype=dtype) for a in stage))
    return stage, xp.asarray(x, dtype=dtype)


def _ends(stage: TableStage, xp, n=None):
    """(x, y, d) at the first and at the last knot in use (``n`` knots, default all)."""
    first = (stage.x[0], stage.y[0], stage.d[0])
    if n is None:
        return first, (stage.x[-1], stage.y[-1], stage.d[-1])
    return first, tuple(_take(a, n - 1, xp) for a in stage)


def _hermite(stage: TableStage, x, derivative: bool, n=None):
    """PCHIP value (or slope) of one table at x; ``n`` knots in use (default all)."""
    xp = _xp(stage, x)
    stage, x = _like(stage, x, xp)
    k, h, t = _segment(stage, x, xp, n)
    y0, y1 = _take(stage.y, k, xp), _take(stage.y, k + 1, xp)
    d0, d1 = _take(stage.d, k, xp) * h, _take(stage.d, k + 1, xp) * h
    if derivative:
        inside = (6 * t - 6) * t * (y0 - y1) + (3 * t - 4) * t * d0 + d0 + (3 * t - 2) * t * d1
        inside = inside / h
    else:
        s = 1 - t
        inside = (1 + 2 * t) * s * s * y0 + t * s * s * d0
        inside = inside + t * t * ((3 - 2 * t) * y1 - s * d1)
    (x_lo, y_lo, d_lo), (x_hi, y_hi, d_hi) = _ends(stage, xp, n)
    if derivative:
        below, above = d_lo + 0 * x, d_hi + 0 * x
    else:
        below = y_lo + d_lo * (x - x_lo)
        above = y_hi + d_hi * (x - x_hi)
    return xp.where(x < x_lo, below, xp.where(x > x_hi, above, inside))


def _batch_weights(batches, batch, xp):
    """(i, w): the pair of tables (i, i + 1) around ``batch`` and the weight of table i + 1."""
    nb = batches.shape[0]
    if nb == 1:
        return 0, 0.0
    i = xp.clip(_search(batches, batch, xp) - 1, 0, nb - 2)
    b0 = _take(batches, i, xp)
    return i, (batch - b0) / (_take(batches, i + 1, xp) - b0)


def _hermite_rows(rows, x, derivative: bool):
    """JAX: :func:`_hermite` of every row at x as one vmapped evaluation (rows padded to a
    common length: knots +inf, times and slopes repeated, never read), the same numbers as row
    by row; float[rows, *x.shape]."""
    jax = _jax_loaded()
    jnp = jax.numpy
    width = max(row.x.shape[0] for row in rows)

    def pad(a, value):
        a = jnp.asarray(a)
        return jnp.concatenate([a, jnp.full((width - a.shape[0],), value, dtype=a.dtype)])

    stacked = TableStage(
        *(jnp.stack([pad(r.x, jnp.inf) for r in rows]),)
        + tuple(jnp.stack([pad(getattr(r, f), getattr(r, f)[-1]) for r in rows]) for f in "yd")
    )
    sizes = [row.x.shape[0] for row in rows]
    if len(set(sizes)) == 1:  # no padding: the last knot is a static index
        return jax.vmap(lambda st: _hermite(st, x, derivative))(stacked)
    n = jnp.asarray(sizes, dtype=jnp.int32)  # the dtype of searchsorted
    return jax.vmap(lambda st, m: _hermite(st, x, derivative, m))(stacked, n)


def _attn(stage: AttnTable, x, batch, derivative: bool):
    if batch is None:
        raise ValueError("an Attention table needs the batch B")
    xp = _xp(stage, x, batch)
    shape = xp.shape(x * batch)
    if xp is np or len(stage.rows) == 1:
        values = xp.stack([xp.broadcast_to(_hermite(r, x, derivative), shape) for r in stage.rows])
    else:
        values = _hermite_rows(stage.rows, x, derivative)
        values = xp.broadcast_to(values, (len(stage.rows), *shape))
    if len(stage.rows) == 1:
        return values[0]
    batches = xp.asarray(stage.batches, dtype=values.dtype)
    i, w = _batch_weights(batches, xp.asarray(batch, dtype=values.dtype), xp)
    lo, hi = (_take(xp.moveaxis(values, 0, -1), j, xp) for j in (i, i + 1))
    return lo + w * (hi - lo)


def eval_stage(stage, x, batch=None):
    """Time (us) of a table stage at token count x (``batch`` for an :class:`AttnTable`)."""
    if isinstance(stage, AttnTable):
        return _attn(stage, x, batch, derivative=False)
    return _hermite(stage, x, derivative=False)


def slope_stage(stage, x, batch=None):
    """dt/dx (us per token) of any stage at x: ``alpha`` for an affine stage."""
    if is_affine(stage):
        return stage.alpha + 0 * x
    if isinstance(stage, AttnTable):
        return _attn(stage, x, batch, derivative=True)
    return _hermite(stage, x, derivative=True)


def stage_knots(stage, batch=None):
    """JAX: the token counts where a table stage's second derivative may jump, float[..., K]:
    a :class:`TableStage`'s knots; an :class:`AttnTable`'s at ``batch``, the knots of the two
    rows it interpolates (a shorter row repeats its last knot), shaped like ``batch`` with one
    more axis. None for an affine stage (no knots). The Gaussian barrier's quadrature starts a
    panel at each (``theory._tail_integral``)."""
    if is_affine(stage):
        return None
    jnp = _jax_loaded().numpy
    if isinstance(stage, TableStage):
        return jnp.asarray(stage.x)
    width = max(row.x.shape[0] for row in stage.rows)
    knots = jnp.stack(
        [
            jnp.concatenate([row.x, jnp.repeat(row.x[-1:], width - row.x.shape[0])])
            for row in stage.rows
        ]
    )  # [nb, width]
    if len(stage.rows) == 1:
        return knots[0]
    batch = jnp.asarray(batch, dtype=knots.dtype)
    i, _ = _batch_weights(jnp.asarray(stage.batches, dtype=knots.dtype), batch, jnp)
    pair = [_take(knots.T, (i + j)[..., None], jnp) for j in (0, 1)]
    return jnp.concatenate(pair, axis=-1)


def max_slope(stage) -> float:
    """The largest dt/dx of a stage anywhere (a Lipschitz constant; NumPy, float): ``alpha``
    when affine; for a table, the exact maximum of each interval's quadratic derivative (at its
    ends or its vertex) and the end slopes used beyond the table; for per-batch Attention
    tables, the largest over the rows (interpolation in B mixes two rows convexly)."""
    if is_affine(stage):
        return float(stage.alpha)
    if isinstance(stage, AttnTable):
        return max(max_slope(row) for row in stage.rows)
    x, y, d = (np.asarray(a, dtype=np.float64) for a in stage)
    delta = np.diff(y) / np.diff(x)
    d0, d1 = d[:-1], d[1:]
    # p'(t) = 6 t (1 - t) delta + d0 (3t^2 - 4t + 1) + d1 (3t^2 - 2t) on t in [0, 1]
    a2 = 3 * (d0 + d1) - 6 * delta
    a1 = 6 * delta - 4 * d0 - 2 * d1
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.clip(np.where(a2 != 0, -a1 / (2 * a2), 0.0), 0.0, 1.0)
    inside = a2 * vertex**2 + a1 * vertex + d0
    return float(max(d.max(), inside.max()))


def scale_stage(stage, scale):
    """The stage with every time multiplied by ``scale`` (> 0): ``(s alpha, s beta)`` when
    affine; a table's knot times and slopes times s (PCHIP is linear in them, so the scaled
    table is ``s`` times the table everywhere, extrapolation included); per-batch Attention
    tables row by row. ``scale`` is a number, or an array shaped like the coefficients (affine)
    or like a table's leading axes (tables broadcast over scenarios)."""
    if is_affine(stage):
        return AffineStage(stage.alpha * scale, stage.beta * scale)
    if isinstance(stage, AttnTable):
        return AttnTable(stage.batches, tuple(scale_stage(row, scale) for row in stage.rows))
    xp = _xp(stage, scale)
    s = xp.asarray(scale)[..., None]
    return TableStage(stage.x, stage.y * s, stage.d * s)


def _stop_gradient(x):
    jax = _jax_loaded()
    return jax.lax.stop_gradient(x) if jax is not None and isinstance(x, jax.Array) else x


def invert_stage(time_fn, slope_fn, target, lo, hi, iterations: int = 60):
    """The x in [lo, hi] with ``time_fn(x) = target`` for a non-decreasing ``time_fn``
    (``lo`` when ``time_fn(lo) >= target``, ``hi`` when ``time_fn(hi) <= target``).

    Bisection for ``iterations`` halvings (gradient stopped), then one Newton step, so that the
    derivative of the root is the implicit-function one ``-d(time - target) / slope``
    (no step where the slope is 0 or the root sits at an end). NumPy or JAX (jit/vmap/grad).
    """
    xp = _xp(target, lo, hi)
    a, b = _stop_gradient(lo + 0 * target), _stop_gradient(hi + 0 * target)
    goal = _stop_gradient(target)

    def halve(_, ab):
        a, b = ab
        mid = 0.5 * (a + b)
        up = time_fn(mid) >= goal
        return xp.where(up, a, mid), xp.where(up, mid, b)

    if xp is not np:
        a, b = _jax_loaded().lax.fori_loop(0, iterations, halve, (a, b))
    else:
        for i in range(iterations):
            a, b = halve(i, (a, b))
    root = 0.5 * (a + b)
    slope = slope_fn(root)
    ok = (slope > 0) & (root > lo + 0 * root) & (root < hi + 0 * root)
    step = xp.where(ok, (time_fn(root) - target) / xp.where(ok, slope, 1.0), 0.0)
    return root - step


def check_batch(stage, batch, where: str | None = None) -> None:
    """InputError unless every B in ``batch`` lies within the batches of an Attention table
    (a single table: B must equal its batch). No-op for other stages."""
    if not isinstance(stage, AttnTable):
        return
    from afd_jax.errors import InputError

    have = np.asarray(stage.batches, dtype=float)
    bs = np.atleast_1d(np.asarray(batch, dtype=float))
    bad = bs[(bs < have[0]) | (bs > have[-1])]
    if bad.size:
        listed = ", ".join(f"{b:g}" for b in have)
        raise InputError(
            f"batch B={bad[0]:g} is outside the Attention tables (batches: {listed}); "
            "B between two tables is interpolated linearly, beyond them it is not measured",
            path=where,
            field="batch",
        )

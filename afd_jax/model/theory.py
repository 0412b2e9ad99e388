"""Closed-form provisioning (docs/model.md 5): mean-field regimes and the Gaussian barrier, in JAX.

Notation (time unit: microseconds; B = slots per Attention instance, r = Attention instances
per FFN instance, continuous r >= 1 allowed everywhere):

* mean Attention time  ``tA_bar = t_A(B theta) = alpha_A * (B theta) + beta_A``
* other stages         ``G(r) = max(t_C(r), t_F(r))`` (pipelined) or ``t_C(r) + t_F(r)`` (serial)
* mean-field step      ``tau_bar(r) = max(tA_bar, G(r))`` (pipelined) or ``tA_bar + G(r)`` (serial)

Stage times, G(r), the step time and the throughput are those of :mod:`afd_jax.model.latency`
(docs/model.md 2-3); this module adds the barrier laws on top.
* Gaussian barrier     worker load ~ N(B theta, B v) i.i.d. across the r workers, so with
  ``mu_A = tA_bar``, ``s_A = alpha_A sqrt(B v)``, ``z = (G - mu_A) / s_A``::

      E[tau] = G + s_A * int_z^inf (1 - Phi(x)^r) dx          (pipelined)
      E[tau] = mu_A + s_A * m_r + G                           (serial)

  with ``m_r = E[max of r standard normals]``.

* throughput per instance (per unit cost) ``1e6 * r B / ((r c_A + c_F) E[tau])`` tokens/s.

Every JAX function here is pure and jit-able: :class:`~afd_jax.model.latency.Latency`, ``theta``,
``slot_var``, ``r`` and ``batch`` are traced (differentiable) arguments, broadcasting
elementwise; :class:`~afd_jax.model.latency.ModelOptions` and ``method`` are static. Computation
happens in the floating dtype of the array inputs (float64 under ``jax_enable_x64`` when the
inputs are float64, float32 otherwise); Python scalars are weakly typed and never upcast.

The integral ``int_a^inf (1 - Phi^r)`` is done by a fixed composite Gauss-Legendre rule
(``_PANELS`` = 8 panels x ``_NODES`` = 12 nodes, 96 evaluations) on ``[clip(a, lo_r, hi_r),
hi_r]``, where the window ``[lo_r, hi_r]`` depends on r only: ``Phi(lo_r)^r = eps`` and
``r (1 - Phi(hi_r)) = eps`` with ``eps = 2**-8`` times the dtype's machine epsilon (2**-60 in
float64). Below ``lo_r`` the integrand is 1 to within eps (that part is added exactly,
``lo_r - a``), above ``hi_r`` it is below eps and decays like a Gaussian tail, so the
truncation costs below ``2 eps`` (about 2e-18 in float64). The window is 9 to 18 standard
deviations wide for 1 <= r <= 1000, so each panel spans at most 2.3 of them. The integrand is
evaluated as ``-expm1(r * log Phi(x))`` with ``q = erfc(|x| / sqrt 2) / 2`` (one erfc per
node) and ``log Phi = log q`` for x < 0, ``log1p(-q)`` for x >= 0, accurate in both tails.
Error bound (float64, measured against the former 24 x 16-node rule on [a, 12] and against
scipy ``quad``, tests/test_theory.py): below 1e-14 absolute for r <= 64 and 4e-12 for
r <= 1000, any a; the step time to 1e-12 relative. The window is held constant under
differentiation (``stop_gradient``): it moves the limits only where the integrand is 1 or 0.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from afd_jax.model.latency import (
    DEFAULT_OPTIONS,
    Latency,
    ModelOptions,
    comm_tokens,
    host_latency,
    is_affine,
    other_stages,
    stage_slope,
    step_time,
    step_time_from_other,
    t_attn,
    t_comm,
    t_ffn,
    throughput,
)
from afd_jax.model.stages import invert_stage, stage_knots

__all__ = [
    "REGIMES",
    "Candidate",
    "MeanFieldOptimum",
    "expected_max_std_normal",
    "gaussian_optimum_continuous",
    "gaussian_step_time",
    "gaussian_step_time_jit",
    "gaussian_throughput",
    "gaussian_throughput_jit",
    "mean_attention_time",
    "mean_field_optimum",
    "mean_field_regime",
    "mean_field_step_time",
    "mean_field_step_time_jit",
    "mean_field_throughput",
    "mean_field_throughput_jit",
    "mean_field_throughput_host",
    "regime_segments",
    "tail_by_node",
]

REGIMES = ("attention", "communication", "ffn")

_LOWER = -12.0  # a point below every window lo_r (r >= 1); used by expected_max_std_normal
_UPPER = 12.0  # upper end of the table path's integral (1 - Phi(12)^r < 1e-30 r)
_PANELS = 8
_NODES = 12
_TABLE_PANELS, _TABLE_NODES = 16, 8  # the table path: [a, _UPPER], also cut at the knots of t_A


def _float_dtype(*xs):
    """The floating dtype of the array inputs (Python scalars are weak and ignored)."""
    dtypes = []
    for x in jax.tree_util.tree_leaves(xs):
        if isinstance(x, int | float) and not isinstance(x, bool):
            continue
        dt = jnp.asarray(x).dtype
        if jnp.issubdtype(dt, jnp.floating):
            dtypes.append(dt)
    if not dtypes:
        return jnp.asarray(1.0).dtype  # float64 under x64, float32 otherwise
    return max(dtypes, key=lambda d: jnp.dtype(d).itemsize)


def _cast(dtype, *xs):
    return tuple(jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dtype), x) for x in xs)


def _window(r):
    """[lo_r, hi_r] outside which 1 - Phi(x)^r is 1 (below) or 0 (above) to within eps."""
    log_eps = math.log(float(jnp.finfo(r.dtype).eps) * 2.0**-8)
    lo = ndtri(jnp.exp(log_eps / r))
    hi = -ndtri(jnp.exp(log_eps - jnp.log(r)))
    return jax.lax.stop_gradient(lo), jax.lax.stop_gradient(hi)


def _panel_rule(dtype, panels: int, nodes: int):
    """Local coordinates t in [0, 1] and weights w (summing to 1) of the Gauss-Legendre nodes of
    ``panels`` equal panels of [0, 1], ``nodes`` per panel, panel-major: [panels * nodes]."""
    gl_x, gl_w = (jnp.asarray(v, dtype=dtype) for v in np.polynomial.legendre.leggauss(nodes))
    k = jnp.arange(panels, dtype=dtype)
    t = ((k[:, None] + 0.5 * (gl_x[None, :] + 1.0)) / panels).reshape(-1)
    w = jnp.broadcast_to(gl_w[None, :] * (0.5 / panels), (panels, nodes)).reshape(-1)
    return t, w


def _panel_nodes(start, length, panels: int, nodes: int):
    """Gauss-Legendre nodes x [..., panels*nodes] on the equal panels of [start, start+length]
    and their weights (summing to 1 over the interval; multiply by ``length``)."""
    t, w = _panel_rule(start.dtype, panels, nodes)
    lead = (1,) * start.ndim
    return start[..., None] + length[..., None] * t.reshape(lead + (-1,)), w.reshape(lead + (-1,))


def _one_minus_phi_r(x, r):
    """1 - Phi(x)^r elementwise (x, r broadcast): one erfc per node, accurate in both tails
    (``log Phi = log q`` for x < 0, ``log1p(-q)`` for x >= 0, q the smaller tail)."""
    q = 0.5 * jax.lax.erfc(jnp.abs(x) * (1.0 / math.sqrt(2.0)))
    log_phi = jnp.where(x < 0, jnp.log(q), jnp.log1p(-q))
    return -jnp.expm1(r * log_phi)


_BY_NODE = contextvars.ContextVar("afd_jax_tail_by_node", default=False)


@contextlib.contextmanager
def tail_by_node():
    """Gaussian tails traced inside this block run node by node on CPU
    (:func:`_node_by_node_sum`): the same numbers to within an ulp of each quadrature sum,
    2.4x (float64) to 5x (float32) the evaluations per second on large batches, for about
    0.5 s more compile time per program and 5x the temporary memory (one array per node).
    The choice is made when a function is traced: a jitted function keeps the layout of its
    first trace, inside or outside the block. The sweep's Gaussian kernel traces inside it;
    small evaluations (provision, the optimiser, the reproduction) do not."""
    token = _BY_NODE.set(True)
    try:
        yield
    finally:
        _BY_NODE.reset(token)


def _barrier_excess(z, r):
    """int_z^inf (1 - Phi(x)^r) dx for any real z and r > 0, elementwise (z, r broadcast).

    ``max(lo_r - z, 0)`` plus ``_PANELS`` x ``_NODES`` Gauss-Legendre nodes on
    ``[clip(z, lo_r, hi_r), hi_r]`` (module docstring: window and error bound)."""
    z, r = jnp.broadcast_arrays(z, r)
    lo, hi = _window(r)
    start = jnp.clip(z, lo, hi)
    length = hi - start
    by_node = _BY_NODE.get() and jax.default_backend() == "cpu"
    tail_sum = _tail_sum_cpu if by_node else _tail_sum
    return jnp.maximum(lo - z, 0.0) + length * tail_sum(start, length, r)


def _tail_sum(start, length, r):
    """sum_j w_j (1 - Phi(x_j)^r) over the ``_PANELS`` x ``_NODES`` nodes x_j of [start,
    start + length]: one elementwise kernel over [..., nodes] (accelerators, derivatives)."""
    x, w = _panel_nodes(start, length, _PANELS, _NODES)
    return _fixed_order_sum(_one_minus_phi_r(x, r[..., None]) * w)


@jax.custom_jvp
def _tail_sum_cpu(start, length, r):
    """:func:`_tail_sum` on CPU, node by node (:func:`_node_by_node_sum`); its derivatives
    are those of :func:`_tail_sum`, to the bit (a differentiated scan compiles slowly)."""
    return _node_by_node_sum(start, length, r)


@_tail_sum_cpu.defjvp
def _tail_sum_cpu_jvp(primals, tangents):
    return jax.jvp(_tail_sum, primals, tangents)


def _node_by_node_sum(start, length, r):
    """:func:`_tail_sum` with each node's term computed as one array shaped like ``start`` (a
    scan over the nodes, one panel's nodes unrolled per iteration) and the terms stacked on a
    leading axis, then the same pairwise sum.

    XLA:CPU vectorises these whole-array loops; it does not vectorise the one fused loop over
    [..., nodes] with the node axis minor, which took 2.6x as long in the sweep's Gaussian
    kernel (docs/benchmarks.md). Every term is the same to the bit; the sums can differ by an
    ulp, because XLA:CPU may fuse the wide layout's weight multiply into the first pairwise add
    as an FMA (tests/test_theory.py bounds the difference). Each element depends on its own
    inputs only, so either layout gives the same bits for every chunk size and device count."""
    t, w = _panel_rule(start.dtype, _PANELS, _NODES)

    def term(_, tw):
        return None, _one_minus_phi_r(start + length * tw[0], r) * tw[1]

    terms = jax.lax.scan(term, None, (t, w), unroll=_NODES)[1]  # [nodes, ...]
    return _fixed_order_sum(terms, axis=0)


def _tail_integral(a, r, weight, knots):
    """int_a^U (1 - Phi(x)^r) w(x) dx for a <= U = ``_UPPER`` (a, r broadcast), ``weight``
    mapping the nodes x [..., k] to w(x): the table path, whose integrand has the kinks of
    t_A' at ``knots`` (standardised, [..., K]). Panels: ``_TABLE_PANELS`` equal ones over the
    range, each also cut at the knots inside it (the others fall on an end: empty panels),
    ``_TABLE_NODES`` Gauss-Legendre nodes each, so every panel's integrand is smooth and the
    rule is exact to rounding (a knot inside a panel left up to 6e-5 relative)."""
    a, r = jnp.broadcast_arrays(a, r)
    length = _UPPER - a
    t = jnp.arange(_TABLE_PANELS + 1, dtype=a.dtype).reshape((1,) * a.ndim + (-1,))
    edges = a[..., None] + length[..., None] * (t / _TABLE_PANELS)
    inside = jnp.clip(jnp.broadcast_to(knots, a.shape + knots.shape[-1:]), a[..., None], _UPPER)
    edges = jnp.sort(jnp.concatenate([edges, inside], axis=-1), axis=-1)
    lo, width = edges[..., :-1, None], jnp.diff(edges, axis=-1)[..., None]
    t, w = _panel_rule(a.dtype, 1, _TABLE_NODES)  # one panel's nodes on [0, 1]
    lead = (1,) * (width.ndim - 1)  # explicit ranks: no implicit rank promotion
    x = (lo + width * t.reshape(lead + (-1,))).reshape(*a.shape, -1)
    w = (width * w.reshape(lead + (-1,))).reshape(*a.shape, -1)
    return _fixed_order_sum(_one_minus_phi_r(x, r[..., None]) * weight(x) * w)


def _fixed_order_sum(x, axis: int = -1):
    """Sum over ``axis`` by halving (then a left-to-right tail): elementwise adds in a fixed
    order, so the rounding does not depend on how XLA lays out or vectorises a reduce (the
    same bits on every device count and chunk shape)."""
    part = partial(jax.lax.slice_in_dim, axis=axis)
    while x.shape[axis] % 2 == 0:
        half = x.shape[axis] // 2
        x = part(x, 0, half) + part(x, half, 2 * half)
    total = jax.lax.index_in_dim(x, 0, axis, keepdims=False)
    for i in range(1, x.shape[axis]):
        total = total + jax.lax.index_in_dim(x, i, axis, keepdims=False)
    return total


def expected_max_std_normal(r):
    """m_r = E[max of r i.i.d. standard normals] for continuous r >= 1 (m_1 = 0, m_2 = 1/sqrt(pi)).

    m_r = L + int_L^inf (1 - Phi^r) dx - int_-inf^L Phi^r dx with L = -12 (last term < 1e-33).
    """
    dtype = _float_dtype(r)
    (r,) = _cast(dtype, r)
    lower = jnp.full(jnp.shape(r), _LOWER, dtype=dtype)
    return _LOWER + _barrier_excess(lower, r)


def mean_attention_time(lat: Latency, theta, batch):
    """tA_bar = t_A(B theta): the Attention time at the mean worker load B theta."""
    return t_attn(lat, batch * theta, batch)


def mean_field_step_time(lat: Latency, theta, r, batch, opts: ModelOptions = DEFAULT_OPTIONS):
    """tau_bar(r) = max(tA_bar, G(r)) (pipelined) or tA_bar + G(r) (serial); broadcasts in r."""
    dtype = _float_dtype(lat, theta, r, batch)
    lat, theta, r, batch = _cast(dtype, lat, theta, r, batch)
    return step_time(lat, mean_attention_time(lat, theta, batch), r, batch, opts)


def mean_field_throughput(lat: Latency, theta, r, batch, opts: ModelOptions = DEFAULT_OPTIONS):
    """1e6 r B / ((r c_A + c_F) tau_bar(r)) tokens/s per instance (per unit cost)."""
    dtype = _float_dtype(lat, theta, r, batch)
    lat, theta, r, batch = _cast(dtype, lat, theta, r, batch)
    return throughput(lat, r, batch, mean_field_step_time(lat, theta, r, batch, opts))


def gaussian_step_time(
    lat: Latency,
    theta,
    slot_var,
    r,
    batch,
    opts: ModelOptions = DEFAULT_OPTIONS,
    method: str = "tail",
):
    """E[tau(r)] under the Gaussian barrier (docs/model.md 5).

    method="tail" (default): ``G + s_A * int_z^inf (1 - Phi(x)^r) dx`` (pipelined), exact for
    Gaussian loads. method="max_of_means": ``max(mu_A + s_A m_r, G)``, the cruder form that puts
    the max outside the expectation. Serial overlap: ``mu_A + s_A m_r + G`` for both methods.
    With ``slot_var = 0`` both reduce to the mean field. Arguments broadcast elementwise;
    ``opts`` and ``method`` are static.
    """
    if method not in ("tail", "max_of_means"):
        raise ValueError(f"method must be 'tail' or 'max_of_means', got {method!r}")
    dtype = _float_dtype(lat, theta, slot_var, r, batch)
    lat, theta, slot_var, r, batch = _cast(dtype, lat, theta, slot_var, r, batch)
    if not is_affine(lat.attn):
        return _gaussian_table_step_time(lat, theta, slot_var, r, batch, opts, method)
    mu = mean_attention_time(lat, theta, batch)
    bv = batch * slot_var
    s = jnp.where(bv > 0, lat.alpha_attn * jnp.sqrt(jnp.where(bv > 0, bv, 1.0)), 0.0)
    g = other_stages(lat, r, batch, opts)
    positive = s > 0
    s_safe = jnp.where(positive, s, 1.0)
    if opts.overlap == "serial" or method == "max_of_means":
        m_r = expected_max_std_normal(r)
        attn = mu + jnp.where(positive, s, 0.0) * m_r
        return step_time_from_other(attn, g, opts)
    z = jnp.where(positive, (g - mu) / s_safe, 0.0)
    tail = g + s_safe * _barrier_excess(z, r)
    return jnp.where(positive, tail, step_time_from_other(mu, g, opts))


def _gaussian_table_step_time(lat, theta, slot_var, r, batch, opts, method):
    """E[tau] under the Gaussian barrier for any non-decreasing t_A (an Attention table).

    Worker loads N(m, s^2), m = B theta, s^2 = B v; with ``a(x) = t_A(m + s x)`` and the
    standardised root ``z`` of ``a(z) = G`` in [L, U] (:func:`invert_stage`)::

        E[tau] = G + max(a(L) - G, 0) + int_z^U a'(x) (1 - Phi(x)^r) dx      (pipelined)
        E[t_A(M_r)] = a(L) + int_L^U a'(x) (1 - Phi(x)^r) dx                  (serial, max_of_means)

    For an affine t_A, ``a'(x) = alpha_A s`` and this is the affine formula."""
    mean, bv = batch * theta, batch * slot_var
    positive = bv > 0
    s = jnp.sqrt(jnp.where(positive, bv, 1.0))
    g = other_stages(lat, r, batch, opts)

    def attn_at(x, ex=lambda a: a):
        return t_attn(lat, ex(mean) + ex(s) * x, ex(batch))

    def slope_at(x, ex=lambda a: a):
        return stage_slope(lat.attn, ex(mean) + ex(s) * x, ex(batch)) * ex(s)

    def weight(x):
        return slope_at(x, lambda a: jnp.broadcast_to(a, x.shape[:-1])[..., None])

    shape = jnp.broadcast_shapes(jnp.shape(g), jnp.shape(mean), jnp.shape(s), jnp.shape(r))
    g = jnp.broadcast_to(g, shape)
    lower = jnp.full(shape, _LOWER, dtype=g.dtype)
    a_low = attn_at(lower)
    knots = stage_knots(lat.attn, batch).astype(g.dtype)  # loads -> standardised x
    knots = (knots - jnp.asarray(mean)[..., None]) / jnp.asarray(s)[..., None]
    mean_only = step_time_from_other(t_attn(lat, mean, batch), g, opts)
    if opts.overlap == "serial" or method == "max_of_means":
        attn = a_low + _tail_integral(lower, r, weight, knots)
        return jnp.where(positive, step_time_from_other(attn, g, opts), mean_only)
    z = invert_stage(attn_at, slope_at, g, lower, jnp.full(shape, _UPPER, dtype=g.dtype))
    tail = g + jnp.maximum(a_low - g, 0.0) + _tail_integral(z, r, weight, knots)
    return jnp.where(positive, tail, mean_only)


def gaussian_throughput(
    lat: Latency,
    theta,
    slot_var,
    r,
    batch,
    opts: ModelOptions = DEFAULT_OPTIONS,
    method: str = "tail",
):
    """1e6 r B / ((r c_A + c_F) E[tau(r)]) tokens/s with the Gaussian-barrier E[tau]."""
    dtype = _float_dtype(lat, theta, slot_var, r, batch)
    lat, theta, slot_var, r, batch = _cast(dtype, lat, theta, slot_var, r, batch)
    return throughput(
        lat, r, batch, gaussian_step_time(lat, theta, slot_var, r, batch, opts, method)
    )


gaussian_throughput_jit = jax.jit(gaussian_throughput, static_argnames=("opts", "method"))
"""``jax.jit(gaussian_throughput)`` with ``opts``/``method`` static: new coefficient values,
theta, slot_var or r of the same shape/dtype reuse the compiled code."""

gaussian_step_time_jit = jax.jit(gaussian_step_time, static_argnames=("opts", "method"))
"""``jax.jit(gaussian_step_time)``, static like :data:`gaussian_throughput_jit`."""

mean_field_throughput_jit = jax.jit(mean_field_throughput, static_argnames="opts")
"""``jax.jit(mean_field_throughput)`` (``opts`` static): for table latencies, whose many small
operations are slow op by op."""

mean_field_step_time_jit = jax.jit(mean_field_step_time, static_argnames="opts")
"""``jax.jit(mean_field_step_time)`` (``opts`` static)."""


def gaussian_optimum_continuous(
    lat: Latency,
    theta: float,
    slot_var: float,
    batch: int,
    opts: ModelOptions = DEFAULT_OPTIONS,
    r_max: int = 64,
    method: str = "tail",
    grid: int = 2001,
) -> float:
    """Host helper: the continuous r in [1, r_max] maximising the Gaussian throughput.

    A uniform grid of ``grid`` points, then two zooms (each ``grid`` points over the two grid
    cells around the best point): resolution ``(r_max - 1) / grid**3``.
    """
    lo, hi = 1.0, float(r_max)
    best = lo
    for _ in range(3):
        rs = np.linspace(lo, hi, grid)
        tp = np.asarray(
            gaussian_throughput_jit(lat, theta, slot_var, jnp.asarray(rs), batch, opts, method)
        )
        i = int(np.nanargmax(tp))
        best = float(rs[i])
        step = (hi - lo) / (grid - 1)
        lo, hi = max(1.0, best - step), min(float(r_max), best + step)
    return best


# --------------------------------------------------------------------------------------------
# Mean-field optimum (host Python, float64)


class Candidate(NamedTuple):
    """A candidate ratio of docs/model.md 5: ``name``, continuous ``r`` (clipped to [1, r_max]),
    mean-field ``throughput`` there (tokens/s per instance or per unit cost)."""

    name: str
    r: float
    throughput: float


class MeanFieldOptimum(NamedTuple):
    """Result of :func:`mean_field_optimum`.

    r_continuous: the best candidate (the continuous argmax of the mean-field throughput on
    [1, r_max]); r_best: the better of its neighbouring integers; regime: "attention",
    "communication" or "ffn" (the stage that stops the throughput from growing at
    r_continuous); candidates: every point considered, with its throughput.
    """

    r_continuous: float
    r_best: int
    regime: str
    candidates: tuple[Candidate, ...]


def _stage_lines(lat: Latency, theta: float, batch: float, opts: ModelOptions):
    """Each mean-field stage time as (slope, intercept) in r (floats): where the candidates of
    :func:`mean_field_optimum` lie. Stage times themselves come from :mod:`.latency`."""
    ta = float(mean_attention_time(lat, theta, batch))
    if opts.comm_scaling == "aggregate":
        comm = (float(lat.alpha_comm) * batch, float(lat.beta_comm))
    else:
        comm = (0.0, float(t_comm(lat, 1.0, batch, opts)))
    ffn = (float(lat.alpha_ffn) * batch, float(lat.beta_ffn))
    return {"attention": (0.0, ta), "communication": comm, "ffn": ffn}


def _host_stage_times(lat: Latency, theta: float, r: float, batch: float, opts: ModelOptions):
    """Mean-field stage times at r (host floats), keyed like :data:`REGIMES`."""
    return {
        "attention": float(mean_attention_time(lat, theta, batch)),
        "communication": float(t_comm(lat, r, batch, opts)),
        "ffn": float(t_ffn(lat, r, batch)),
    }


def mean_field_regime(
    lat: Latency, theta: float, r: float, batch: int, opts: ModelOptions = DEFAULT_OPTIONS
) -> str:
    """The stage with the largest mean-field time at r (ties: attention, communication, ffn)."""
    times = _host_stage_times(_host(lat), float(theta), float(r), float(batch), opts)
    top = max(times.values())
    for k in REGIMES:
        if times[k] >= top * (1 - 1e-12):
            return k
    return "attention"  # pragma: no cover


def mean_field_throughput_host(
    lat: Latency, theta: float, r: float, batch: float, opts: ModelOptions = DEFAULT_OPTIONS
) -> float:
    """:func:`mean_field_throughput` at one r in host float64 (inf where tau_bar = 0)."""
    lat, theta, r, batch = _host(lat), float(theta), float(r), float(batch)
    tau = float(step_time(lat, mean_attention_time(lat, theta, batch), r, batch, opts))
    return float(throughput(lat, r, batch, tau)) if tau > 0 else math.inf


def _host(lat: Latency) -> Latency:
    return host_latency(lat)


def _candidate_points(lines: dict, opts: ModelOptions, r_max: int, ca: float, cf: float):
    """(name, continuous r) of every point where the mean-field throughput may peak."""
    ta = lines["attention"][1]
    raw: list[tuple[str, float]] = [("grid_min", 1.0), ("grid_max", float(r_max))]
    if opts.overlap == "serial":
        a = sum(s[0] for s in lines.values())
        b = sum(s[1] for s in lines.values())
        if a > 0:
            raw.append(("peak_serial", math.sqrt(max(cf * b / (ca * a), 0.0))))
        return raw
    for stage, short in (("ffn", "ffn"), ("communication", "comm")):
        a, b = lines[stage]
        if a > 0:
            raw.append((f"balance_{short}", (ta - b) / a))
            raw.append((f"peak_{short}", math.sqrt(max(cf * b / (ca * a), 0.0))))
    (ac, bc), (af, bf) = lines["communication"], lines["ffn"]
    if af != ac:
        raw.append(("crossover_comm_ffn", (bc - bf) / (af - ac)))
    if opts.comm_scaling == "per_worker" and af > 0:
        r_a = (ta - bf) / af
        r_c = (bc - bf) / af
        r_peak = math.sqrt(max(cf * bf / (ca * af), 0.0))
        raw.append(("paper_v1_rule", max(r_a, r_c, r_peak)))
    return raw


def _log_slope(lat: Latency, theta: float, rs: np.ndarray, batch: float, opts: ModelOptions):
    """d/dr log of the mean-field throughput, ``1/r - c_A/(r c_A + c_F) - tau'(r)/tau(r)``
    (one-sided where tau has a kink), float64 NumPy."""
    ta = float(mean_attention_time(lat, theta, batch))
    t_c, t_f = t_comm(lat, rs, batch, opts), t_ffn(lat, rs, batch)
    d_f = stage_slope(lat.ffn, rs * batch) * batch
    d_c = stage_slope(lat.comm, comm_tokens(rs, batch, opts)) * batch
    d_c = d_c if opts.comm_scaling == "aggregate" else 0.0 * d_c
    if opts.overlap == "serial":
        d_tau, tau = d_c + d_f, ta + t_c + t_f
    else:
        d_g = np.where(t_c > t_f, d_c, d_f)
        tau = np.maximum(ta, np.maximum(t_c, t_f))
        d_tau = np.where(np.maximum(t_c, t_f) > ta, d_g, 0.0)
    ca, cf = lat.cost_attn, lat.cost_ffn
    return 1.0 / rs - ca / (rs * ca + cf) - d_tau / tau


def _table_candidate_points(lat: Latency, theta: float, batch: float, opts, r_max: int):
    """Candidates of a model with a table FFN or communication stage: the balance points
    ``t_s(r) = tA_bar`` (root finding, each stage monotone in r) and every local maximum of the
    throughput, where ``d log throughput / dr`` changes sign from + to - on a grid of
    :data:`_TABLE_GRID` points, refined by bisection (a kink or a smooth peak alike)."""
    ta = float(mean_attention_time(lat, theta, batch))
    raw: list[tuple[str, float]] = [("grid_min", 1.0), ("grid_max", float(r_max))]
    lo, hi = np.float64(1.0), np.float64(r_max)
    stages = {"ffn": (lambda r: t_ffn(lat, r, batch), lat.ffn)}
    if opts.comm_scaling == "aggregate":
        stages["comm"] = (lambda r: t_comm(lat, r, batch, opts), lat.comm)
    for short, (fn, stage) in stages.items():
        if fn(lo) < ta < fn(hi):
            slope = lambda r, st=stage: stage_slope(st, r * batch) * batch  # noqa: E731
            root = invert_stage(fn, slope, ta, lo, hi)
            raw.append((f"balance_{short}", float(root)))
    rs = np.linspace(1.0, float(r_max), _TABLE_GRID)
    h = _log_slope(lat, theta, rs, batch, opts)
    turn = np.flatnonzero((h[:-1] > 0) & (h[1:] <= 0))
    a, b = rs[turn], rs[turn + 1]
    for _ in range(60):  # bisection: the log slope is > 0 left of each maximum
        mid = 0.5 * (a + b)
        up = _log_slope(lat, theta, mid, batch, opts) > 0
        a, b = np.where(up, mid, a), np.where(up, b, mid)
    for r in 0.5 * (a + b):
        raw.append((f"peak_{mean_field_regime(lat, theta, float(r), batch, opts)}", float(r)))
    return raw


_TABLE_GRID = 2049


def mean_field_optimum(
    lat: Latency,
    theta: float,
    batch: int,
    opts: ModelOptions = DEFAULT_OPTIONS,
    r_max: int = 64,
) -> MeanFieldOptimum:
    """Continuous and integer mean-field optimum over r in [1, r_max] (docs/model.md 5).

    tau_bar is piecewise linear in r, so the throughput ``r / ((r c_A + c_F) tau_bar)`` is
    increasing on constant pieces and unimodal on a linear piece ``a r + b`` with peak
    ``sqrt(c_F b / (c_A a))``. Its maximum is therefore at a candidate: the balance points
    ``(tA_bar - beta_s) / (alpha_s B)`` of every growing stage s, the peaks
    ``sqrt(c_F beta_s / (c_A alpha_s B))``, the C/F crossover and the grid ends 1, r_max
    (serial overlap: one linear piece, its peak and the ends). With ``per_worker``
    communication the paper's v1 rule ``max{r_A, r_C, r_peak}`` is also listed. The integer
    choice compares floor and ceil of the continuous optimum.

    Regime: pipelined, the stage binding just below r_continuous (just above when it is 1):
    "attention" when the optimum is the balance point or the attention-bound end, otherwise the
    growing stage whose peak (or crossover) it is. Serial: the largest stage at r_continuous.
    """
    lat = _host(lat)
    theta, batch, r_max = float(theta), float(batch), int(r_max)
    if is_affine(lat.ffn) and is_affine(lat.comm):
        lines = _stage_lines(lat, theta, batch, opts)
        points = _candidate_points(lines, opts, r_max, lat.cost_attn, lat.cost_ffn)
    else:
        points = _table_candidate_points(lat, theta, batch, opts, r_max)
    candidates = []
    for name, r in points:
        if not math.isfinite(r):
            continue
        r = min(max(r, 1.0), float(r_max))
        candidates.append(
            Candidate(name, r, mean_field_throughput_host(lat, theta, r, batch, opts))
        )
    # Best candidate; ties go to the smaller r (fewer instances for the same throughput).
    r_cont = max(candidates, key=lambda c: (c.throughput, -c.r)).r
    lo, hi = max(1, math.floor(r_cont)), min(r_max, math.ceil(r_cont))
    t_lo = mean_field_throughput_host(lat, theta, float(lo), batch, opts)
    t_hi = mean_field_throughput_host(lat, theta, float(hi), batch, opts)
    r_best = lo if t_lo >= t_hi else hi
    if opts.overlap == "pipelined":
        eps = 1e-7 * max(1.0, r_cont)
        probe = r_cont - eps if r_cont - eps >= 1.0 else r_cont + eps
    else:
        probe = r_cont
    regime = mean_field_regime(lat, theta, probe, batch, opts)
    return MeanFieldOptimum(r_cont, int(r_best), regime, tuple(candidates))


def regime_segments(
    lat: Latency, theta: float, batch: int, opts: ModelOptions, r_max: int, points: int = 4001
) -> list[tuple[float, float, str]]:
    """[(r_from, r_to, regime)] partition of [1, r_max] by the binding mean-field stage."""
    rs = np.linspace(1.0, float(r_max), points)
    labels = [mean_field_regime(lat, theta, float(r), batch, opts) for r in rs]
    out = []
    start = 0
    for i in range(1, len(rs) + 1):
        if i == len(rs) or labels[i] != labels[start]:
            out.append((float(rs[start]), float(rs[min(i, len(rs) - 1)]), labels[start]))
            start = i
    return out

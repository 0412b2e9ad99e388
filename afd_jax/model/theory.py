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
(``_PANELS`` panels x ``_NODES`` nodes) on ``[max(z, L), U]`` with ``L = -12``, ``U = 12``: below
``L`` the integrand is 1 to within ``Phi(-12)^r < 2e-33`` (r >= 1), above ``U`` it is below
``r * 2e-33``. The integrand is evaluated as ``-expm1(r * log Phi(x))`` with ``log Phi`` from
``log_ndtr`` for x < 0 and ``log1p(-ndtr(-x))`` for x > 0, accurate in both tails.
Panels are at most 1 standard deviation wide, where a 16-node rule is exact to rounding
(tests/test_theory.py checks 1e-10 relative against scipy ``quad``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, ndtr

from afd_jax.model.latency import (
    DEFAULT_OPTIONS,
    Latency,
    ModelOptions,
    other_stages,
    step_time,
    step_time_from_other,
    t_attn,
    t_comm,
    t_ffn,
    throughput,
)

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
    "mean_field_throughput",
    "mean_field_throughput_host",
    "regime_segments",
]

REGIMES = ("attention", "communication", "ffn")

_LOWER = -12.0
_UPPER = 12.0
_PANELS = 24
_NODES = 16
_GL_X, _GL_W = np.polynomial.legendre.leggauss(_NODES)  # nodes/weights on [-1, 1], float64


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


def _tail_integral(a, r):
    """int_a^U (1 - Phi(x)^r) dx for a <= U, elementwise (a, r broadcast); fixed quadrature.

    Nodes: ``_PANELS`` equal panels of [a, U], ``_NODES`` Gauss-Legendre nodes each."""
    dtype = a.dtype
    gl_x = jnp.asarray(_GL_X, dtype=dtype)
    gl_w = jnp.asarray(_GL_W, dtype=dtype)
    k = jnp.arange(_PANELS, dtype=dtype)
    # local coordinate in [0, 1] of every node: (k + (x + 1) / 2) / PANELS, shape (PANELS*NODES,)
    t = ((k[:, None] + 0.5 * (gl_x[None, :] + 1.0)) / _PANELS).reshape(-1)
    w = jnp.broadcast_to(gl_w[None, :] * (0.5 / _PANELS), (_PANELS, _NODES)).reshape(-1)
    a_, r_ = jnp.broadcast_arrays(a, r)
    lead = (1,) * a_.ndim
    t, w = t.reshape(lead + (-1,)), w.reshape(lead + (-1,))
    length = _UPPER - a_
    x = a_[..., None] + length[..., None] * t
    # log Phi(x): log_ndtr is accurate for x < 0; for x > 0 use log1p of the survival function
    # (log_ndtr loses relative precision in 1 - Phi around x = 5..8).
    log_left = log_ndtr(jnp.minimum(x, 0.0))
    log_right = jnp.log1p(-ndtr(-jnp.maximum(x, 0.0)))
    log_phi = jnp.where(x < 0, log_left, log_right)
    f = -jnp.expm1(r_[..., None] * log_phi)
    return length * _pairwise_sum(f * w)


def _pairwise_sum(x):
    """Sum over the last axis in one fixed pairwise order, written as elementwise adds of
    halves (zero-padded to a power of two). A ``jnp.sum`` reduction is free to be vectorised
    differently for different leading shapes (a sweep chunk of 150 scenarios vs 1), which
    changed the last bit of the Gaussian throughput with the chunk size; these adds cannot
    be reordered, so every scenario gets the same bits whatever it is batched with."""
    n = x.shape[-1]
    size = 1 << (n - 1).bit_length()
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - n)])
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def _barrier_excess(z, r):
    """int_z^inf (1 - Phi(x)^r) dx for any real z (r >= 1)."""
    a = jnp.clip(z, _LOWER, _UPPER)
    return jnp.maximum(_LOWER - z, 0.0) + _tail_integral(a, r)


def expected_max_std_normal(r):
    """m_r = E[max of r i.i.d. standard normals] for continuous r >= 1 (m_1 = 0, m_2 = 1/sqrt(pi)).

    m_r = L + int_L^inf (1 - Phi^r) dx - int_-inf^L Phi^r dx with L = -12 (last term < 1e-33).
    """
    dtype = _float_dtype(r)
    (r,) = _cast(dtype, r)
    lower = jnp.full(jnp.shape(r), _LOWER, dtype=dtype)
    return _LOWER + _tail_integral(lower, r)


def mean_attention_time(lat: Latency, theta, batch):
    """tA_bar = t_A(B theta): the Attention time at the mean worker load B theta."""
    return t_attn(lat, batch * theta)


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
    return Latency(*(float(v) for v in lat))


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
    lines = _stage_lines(lat, theta, batch, opts)
    candidates = []
    for name, r in _candidate_points(lines, opts, r_max, lat.cost_attn, lat.cost_ffn):
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

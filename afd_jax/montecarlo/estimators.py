"""Host-side float64 estimators shared by every Monte Carlo driver (docs/model.md 3).

* the step-time histogram: :data:`N_BINS` log-spaced bins over a range that covers every
  possible tau (:func:`tau_bins`, :func:`stage_bounds`), and percentiles read from it
  (:func:`percentiles`, linear within a bin in log tau);
* means with standard errors and confidence quantiles: i.i.d. samples, replication means
  (t quantile) or up to :data:`N_BATCHES` batch means of one long run, each batch at least
  :data:`BATCH_IACTS` integrated autocorrelation times long (:func:`mean_se`,
  :func:`batch_means`, :func:`iact`, :func:`ci_quantile`);
* idle fractions and the barrier share as ratios of sums over the measured steps
  (:func:`stream_idle` for a stream of full slots, :func:`pool_idle` for a draining pool);
* the int32 guard :data:`INT32_LIMIT` (compensated sums live in the kernels:
  ``afd_jax.kernels.kahan_add``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.special

from afd_jax.model.latency import (
    Latency,
    bundle_idle_fraction,
    host_latency,
    is_affine,
    maximum,
    t_attn,
)

N_BINS = 4096
"""Log-spaced step-time bins of every driver's histogram."""
N_BATCHES = 20
"""Batch means of a single replication, at most."""
BATCH_IACTS = 5.0
"""A batch of a single replication spans at least this many integrated autocorrelation times
of its series (:func:`iact`): shorter batches are correlated, and their spread understates the
SE (20 fixed batches of 100 steps gave 2.7x too small an SE where a request lives about 1,000
steps, a review of session 26)."""
INT32_LIMIT = 2**31
"""Worker loads and token counts are int32: drivers refuse runs that could reach this."""


def stage_bounds(lows, highs, serial: bool) -> tuple[float, float]:
    """Bounds of tau from the bounds of its stages (in order): their sum (serial, added left to
    right) or their max (pipelined), docs/model.md 2."""
    if serial:
        lo, hi = lows[0], highs[0]
        for a, b in zip(lows[1:], highs[1:], strict=True):
            lo, hi = lo + a, hi + b
        return lo, hi
    return max(lows), max(highs)


def tau_bins(lo: float, hi: float) -> tuple[float, float]:
    """(log_lo, inv_w) of :data:`N_BINS` log bins spanning [lo, hi] with a small margin: bin k
    holds ``log_lo + k / inv_w <= log tau < log_lo + (k + 1) / inv_w``."""
    hi = max(hi, 1e-30) * 1.001
    lo = max(lo, hi * 1e-9, 1e-30) * 0.999
    log_lo, log_hi = math.log(lo), math.log(hi)
    return log_lo, N_BINS / max(log_hi - log_lo, 1e-9)


def attn_time_max(lat: Latency, batch: int, max_slot_load: int) -> float:
    """Largest Attention time: every slot of a worker at the largest slot load."""
    return float(t_attn(host_latency(lat), float(batch) * max_slot_load, float(batch)))


def fixed_step_r(lat: Latency, slots: int, max_slot_load: int, other, serial: bool):
    """The r (1-based, a tuple) whose step time cannot vary: pipelined, the Attention time of
    the fullest worker (``slots`` slots at the largest load) below the other stages' time
    ``other`` [r_max] (G(r), maybe float32: a margin over its rounding); serial, only an
    Attention time that does not grow with the load. A zero-width interval there is exact."""
    other = np.asarray(other, dtype=np.float64)
    hi = attn_time_max(lat, slots, max_slot_load)
    if serial:
        fixed = np.full(other.shape, hi == attn_time_max(lat, slots, 0))
    else:
        fixed = hi < other * (1 - 1e-6)
    return tuple(int(r) for r in np.flatnonzero(fixed) + 1)


def _quantiles(flat: np.ndarray, log_lo: float, inv_w: float, qs) -> np.ndarray:
    """float64[n, len(qs)] from n histograms [n, n_bins], vectorised over the histograms (the
    host cost of a short run must not grow with r_max): bin j is the first whose cumulative
    count reaches q * total, interpolated linearly inside it."""
    # integer prefix sums, kept integer (exact; the float64 values below equal those of a
    # float64 cumsum of the counts, < 2**53): no float64 copy of the whole histogram, which
    # made this the largest host cost of a short run
    c = np.cumsum(flat, axis=1, dtype=np.int64)
    total = c[:, -1].astype(np.float64)
    rows = np.arange(c.shape[0])
    out = np.full((c.shape[0], len(qs)), np.nan)
    for i, q in enumerate(qs):
        target = q * total
        j = np.minimum((c < target[:, None]).sum(axis=1), c.shape[1] - 1)
        prev = np.where(j > 0, c[rows, np.maximum(j - 1, 0)].astype(np.float64), 0.0)
        frac = (target - prev) / np.maximum(c[rows, j].astype(np.float64) - prev, 1.0)
        x = log_lo + (j + frac) / inv_w
        out[:, i] = [math.exp(v) for v in x]  # libm exp, as before (same bits)
    out[total <= 0] = np.nan
    return out


def percentiles(hist: np.ndarray, log_lo: float, inv_w: float, qs=(0.5, 0.9, 0.99)):
    """Percentiles of tau from histogram counts int64[..., n_bins] (one histogram per leading
    index): float64[len(qs), ...] (NaN where a histogram is empty)."""
    hist = np.asarray(hist)
    flat = hist.reshape(-1, hist.shape[-1])
    out = _quantiles(flat, log_lo, inv_w, qs)
    return out.T.reshape((len(qs),) + hist.shape[:-1])


def ci_quantile(level: float, dof: int | None = None) -> float:
    """Two-sided quantile of a confidence interval at ``level``: normal (``dof`` None) or
    Student t with ``dof`` degrees of freedom. (``scipy.special``'s inverse CDFs, which are
    what ``scipy.stats.norm.ppf`` / ``t.ppf`` evaluate, without the ~1.5 s import of
    ``scipy.stats``.)"""
    if dof is None:
        return float(scipy.special.ndtri(0.5 + level / 2))
    return float(scipy.special.stdtrit(dof, 0.5 + level / 2))


def mean_se(totals, counts, level, iid_sq=None):
    """Mean over all counted steps and its standard error; returns (mean, se, quantile).

    ``iid_sq`` given: i.i.d. samples (totals, sums of squares over ``counts`` samples, normal
    quantile). Else ``totals[k]`` / ``counts[k]`` are the means m_i of k independent groups
    (replications or batches) of n_i steps: SE from their spread weighted by size,
    ``sqrt(sum_i n_i (m_i - mean)^2 / ((k - 1) n))``, t quantile with k - 1 dof. With equal n_i
    that is the SD of the means over sqrt(k); weighted, a short last batch (a partial block)
    no longer counts as much as a full one (at 385 steps, three blocks and one step,
    the SE was 1.4x the one at 384 steps)."""
    n = counts.sum()
    mean = totals.sum(axis=0) / n
    if iid_sq is not None:
        var = np.maximum(iid_sq.sum(axis=0) / n - mean**2, 0.0) * n / max(n - 1, 1)
        return mean, np.sqrt(var / n), ci_quantile(level)
    k = counts.shape[0]
    sizes = counts.reshape((-1,) + (1,) * (totals.ndim - 1))
    spread = (sizes * (totals / sizes - mean) ** 2).sum(axis=0) / (k - 1)
    return mean, np.sqrt(spread / n), ci_quantile(level, k - 1)


def sample_mean_se(samples: np.ndarray, level: float):
    """Mean over the last axis of independent samples, its SE and the t quantile (NaN SE and
    quantile for a single sample)."""
    k = samples.shape[-1]
    mean = samples.mean(axis=-1)
    if k >= 2:
        return mean, samples.std(axis=-1, ddof=1) / math.sqrt(k), ci_quantile(level, k - 1)
    return mean, np.full_like(mean, np.nan), np.nan


def iact(x: np.ndarray) -> float:
    """Integrated autocorrelation time (in samples, >= 1) of the series ``x`` [m] or of the
    columns of ``x`` [m, c] (their largest; constant columns count 1): ``1 + 2 sum_k rho(k)``
    over lags k = 1..W, with Sokal's window, the first W >= 5 tau(W) (W = m - 1 if none)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    m = x.shape[0]
    if m < 3:
        return 1.0
    x = x - x.mean(axis=0)
    var = (x * x).mean(axis=0)
    x = x[:, var > 0]
    if x.shape[1] == 0:
        return 1.0
    f = np.fft.rfft(x, n=2 * m, axis=0)
    acov = np.fft.irfft(f * np.conj(f), n=2 * m, axis=0)[:m] / m
    tau = 1.0 + 2.0 * np.cumsum(acov[1:] / acov[0], axis=0)  # tau[W - 1]: window W
    window = np.arange(1, m)[:, None] >= 5.0 * tau
    w = np.where(window.any(axis=0), window.argmax(axis=0), m - 2)
    return float(max(1.0, tau[w, np.arange(tau.shape[1])].max()))


class BatchMeans(NamedTuple):
    """Per-batch ``totals`` and ``counts`` of one replication, and ``long_enough``: whether
    at least two batches of :data:`BATCH_IACTS` autocorrelation times fit (else two batches
    were formed anyway and their SE is too small: the drivers say so)."""

    totals: np.ndarray
    counts: np.ndarray
    long_enough: bool
    iact_steps: float


def batch_means(block_vals, block_counts, n_batches=N_BATCHES):
    """Split the measured blocks into contiguous batches: as many as fit (at most
    ``n_batches``) of at least :data:`BATCH_IACTS` times the blocks' :func:`iact` (two when
    fewer fit, ``long_enough`` False); a :class:`BatchMeans`, or None when fewer than two
    blocks have steps."""
    vals = np.concatenate(block_vals, axis=0)
    cnt = np.concatenate(block_counts, axis=0)
    keep = cnt > 0
    vals, cnt = vals[keep], cnt[keep]
    m = vals.shape[0]
    if m < 2:
        return None
    sizes = cnt.reshape((-1,) + (1,) * (vals.ndim - 1))
    tau = iact(vals / sizes)  # in blocks
    fit = int(m // max(1.0, math.ceil(BATCH_IACTS * tau)))
    nb = max(2, min(n_batches, fit))
    edges = np.linspace(0, m, nb + 1).astype(int)
    tot = np.stack([vals[a:b].sum(axis=0) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    c = np.array([cnt[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return BatchMeans(tot, c, fit >= 2, tau * float(cnt.max()))


class IdleFractions(NamedTuple):
    """Per-r ratios of sums over the measured steps (docs/model.md 3): idle_attn =
    sum (tau - t_A,j) / (r sum tau); idle_ffn = sum (tau - t_F) / sum tau; idle_bundle =
    (sum_j (tau - t_A,j) + tau - t_F) / ((r + 1) tau); barrier_share = sum_j (max_i t_A,i -
    t_A,j) / (r sum tau)."""

    idle_attn: np.ndarray
    idle_ffn: np.ndarray
    idle_bundle: np.ndarray
    barrier_share: np.ndarray


def stream_idle(lat: Latency, batch, r, s_tau, s_load_cum, s_max_attn, n_steps, t_ffn_r):
    """Idle fractions of a stream of full slots (steps window), float64 per r: ``s_tau`` sum
    of tau, ``s_load_cum`` sum of sum_{j<=r} T_j, ``s_max_attn`` sum of max_{j<=r} t_A,j,
    ``t_ffn_r`` t_F(r) per step (every step has r B tokens). With a table Attention stage the
    kernels sum t_A,j instead of T_j (``kernels.barrier.StepSums``): alpha_A = 1, beta_A = 0."""
    a_attn, b_attn = float(lat.alpha_attn), float(lat.beta_attn)
    if not is_affine(lat.attn):
        a_attn, b_attn = 1.0, 0.0
    sum_attn = a_attn * s_load_cum + b_attn * r * n_steps
    # clipped at 0: where a stage is busy every step its float32 sums fall ~1e-7 short
    attn_idle = maximum(r * s_tau - sum_attn, 0.0)
    ffn_idle = maximum(s_tau - n_steps * t_ffn_r, 0.0)
    return IdleFractions(
        idle_attn=attn_idle / (r * s_tau),
        idle_ffn=ffn_idle / s_tau,
        idle_bundle=bundle_idle_fraction(attn_idle, ffn_idle, r, s_tau),
        barrier_share=maximum(r * s_max_attn - sum_attn, 0.0) / (r * s_tau),
    )


def pool_idle(lat: Latency, r, s_tau, s_load, s_max_load, n_steps, s_ffn):
    """Idle fractions of a draining pool, float64 per r, from float32 Kahan sums: ``s_load``
    sum of sum_{j<r} T_j, ``s_max_load`` sum of max_j T_j, ``s_ffn`` sum of t_F. Clipped at 0:
    where tau == t_F every step the float32 sum of tau can fall 1e-7 short. With a table
    Attention stage the kernel sums t_A(T_j) and t_A(max_j T_j): alpha_A = 1, beta_A = 0."""
    a_attn, b_attn = float(lat.alpha_attn), float(lat.beta_attn)
    if not is_affine(lat.attn):
        a_attn, b_attn = 1.0, 0.0
    idle_attn = np.maximum(0.0, 1.0 - (a_attn * s_load + r * b_attn * n_steps) / (r * s_tau))
    idle_ffn = np.maximum(0.0, 1.0 - s_ffn / s_tau)
    return IdleFractions(
        idle_attn=idle_attn,
        idle_ffn=idle_ffn,
        idle_bundle=bundle_idle_fraction(r * idle_attn, idle_ffn, r, 1.0),
        barrier_share=a_attn * (r * s_max_load - s_load) / (r * s_tau),
    )


__all__ = [
    "BATCH_IACTS",
    "INT32_LIMIT",
    "N_BATCHES",
    "BatchMeans",
    "N_BINS",
    "IdleFractions",
    "attn_time_max",
    "batch_means",
    "ci_quantile",
    "fixed_step_r",
    "iact",
    "mean_se",
    "percentiles",
    "pool_idle",
    "sample_mean_se",
    "stage_bounds",
    "stream_idle",
    "tau_bins",
]

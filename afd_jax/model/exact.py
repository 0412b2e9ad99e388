"""Exact steady state (docs/model.md 5, beyond the paper), float64 NumPy.

In stationarity the B slots of a worker are independent with law pi, so a worker's load has the
law pi^{*B} (B-fold convolution, done by FFT), the r workers are independent too, and the barrier
``M_r = max_j T_j`` has CDF ``F_B(w)^r``. For a non-decreasing ``h`` on the lattice
``w_0 < w_1 < ...``::

    E[h(M_r)] = h(w_0) + sum_{i >= 1} (h(w_i) - h(w_{i-1})) * Pr(M_r >= w_i)
    Pr(M_r >= w_i) = 1 - F_B(w_{i-1})^r = -expm1(r * log1p(-S_B(w_{i-1})))

with the survival function ``S_B`` summed from the upper tail (accurate where F_B is near 1).
``h(w) = max(G(r), t_A(w))`` (pipelined) or ``E[t_A(M_r)] + G(r)`` (serial), the step time of
:func:`afd_jax.model.latency.step_time_from_other` with ``G(r)`` from
:func:`afd_jax.model.latency.other_stages`. One pass over the lattice per r gives ``E[tau(r)]``
for every r = 1..r_max; the throughput is :func:`afd_jax.model.latency.throughput`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.fft

from afd_jax.errors import InputError
from afd_jax.memory import require
from afd_jax.model.latency import (
    DEFAULT_OPTIONS,
    AffineStage,
    Latency,
    ModelOptions,
    host_latency,
    maximum,
    other_stages,
    stage_time,
    step_time_from_other,
    t_attn,
    throughput,
)
from afd_jax.model.stages import max_slope
from afd_jax.workload.slotload import SlotLoadPMF

__all__ = [
    "binning_error_bound",
    "exact_barrier_attention_times",
    "exact_step_times",
    "exact_throughput",
    "host_latency",
    "MaxLawTables",
    "max_exceedance",
    "max_law_curve_step_times",
    "max_law_step_times",
    "max_law_tables",
    "other_stage_times",
    "trim_fft_noise",
    "require_worker_load",
    "worker_load_pmf",
]


def binning_error_bound(lat: Latency, batch: int, width: int, mean_step_time) -> np.ndarray:
    """Relative bound on the error of the exact throughput caused by a slot-load lattice of
    ``width`` tokens (float64, shaped like ``mean_step_time``; 0 when width = 1).

    Binning moves every slot load by less than one width (mass split between the two
    neighbouring lattice points, :func:`afd_jax.workload.slotload.coarsen`), so a coupling moves
    each worker's load by less than ``B * width`` and, the step time being 1-Lipschitz in the
    Attention time, ``|E[tau] - E[tau_binned]| < L_A * B * width =: s`` with L_A the largest
    slope of t_A (``alpha_attn``; for a table :func:`afd_jax.model.stages.max_slope`). The
    throughput is proportional to 1 / E[tau], so its relative error is below
    ``s / (E[tau_binned] - s)``
    (infinite when s >= E[tau_binned]: the lattice says nothing)."""
    tau = np.asarray(mean_step_time, dtype=np.float64)
    shift = max_slope(host_latency(lat).attn) * int(batch) * int(width) if width > 1 else 0.0
    with np.errstate(divide="ignore"):
        return np.where(tau > shift, shift / np.maximum(tau - shift, 0.0), np.inf)


def require_worker_load(n_slot_bins: int, batch: int) -> None:
    """InputError (afd_jax.memory) when the FFT of :func:`worker_load_pmf` for a slot law on
    ``n_slot_bins`` lattice points and ``batch`` slots exceeds the memory budget: input,
    spectrum, its power, output and a clipped copy, about five float64 arrays of the FFT size."""
    n_out = int(batch) * (max(int(n_slot_bins), 2) - 1) + 1
    # next_fast_len takes a C ssize_t; far past any memory the length itself is the estimate
    size = scipy.fft.next_fast_len(n_out, real=True) if n_out < 2**40 else n_out
    require(
        5 * 8 * size, f"the worker-load law of B = {batch} slots", "lower --batch or --slot-bins"
    )


def worker_load_pmf(slot_pmf: SlotLoadPMF, batch: int) -> SlotLoadPMF:
    """Law of a worker's load, the sum of ``batch`` i.i.d. slot loads (pi convolved B times).

    FFT of length >= B (n - 1) + 1, raised to the B-th power, inverted; tiny negative round-off
    values are clipped to 0, the result renormalised, zero ends trimmed. The lattice width is
    preserved and ``start`` becomes ``B * start``. Float64; cost O(B n log(B n)).
    """
    batch = int(batch)
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}", field="batch")
    p = np.asarray(slot_pmf.pmf, dtype=np.float64)
    nz = np.nonzero(p > 0)[0]
    if nz.size == 0:
        raise InputError("slot-load pmf has no mass")
    lo, hi = int(nz[0]), int(nz[-1])
    p = p[lo : hi + 1] / p[lo : hi + 1].sum()
    start = slot_pmf.start + slot_pmf.width * lo
    if batch == 1 or p.shape[0] == 1:
        out = p if batch == 1 else np.ones(1)
    else:
        n_out = batch * (p.shape[0] - 1) + 1
        size = scipy.fft.next_fast_len(n_out, real=True)
        require_worker_load(p.shape[0], batch)
        spec = scipy.fft.rfft(p, size)
        out = scipy.fft.irfft(spec**batch, size)[:n_out]
        out = np.clip(out, 0.0, None)
        out /= out.sum()
    return SlotLoadPMF(start=int(batch * start), width=int(slot_pmf.width), pmf=out)


def other_stage_times(lat: Latency, r_max: int, batch: int, opts: ModelOptions) -> np.ndarray:
    """G(r) for r = 1..r_max, float64 (:func:`afd_jax.model.latency.other_stages`)."""
    r = np.arange(1, int(r_max) + 1, dtype=np.float64)
    return other_stages(host_latency(lat), r, float(batch), opts)


def _expectation(values: np.ndarray, exceed: np.ndarray) -> float:
    """E[h(M)] = h(w_0) + sum_i (h(w_i) - h(w_{i-1})) Pr(M >= w_i) for h on the lattice."""
    return values[0] + np.dot(np.diff(values), exceed)


def exact_step_times(
    slot_pmf: SlotLoadPMF,
    lat: Latency,
    batch: int,
    r_max: int,
    opts: ModelOptions = DEFAULT_OPTIONS,
    worker_pmf: SlotLoadPMF | None = None,
) -> np.ndarray:
    """E[tau(r)] for r = 1..r_max (float64, shape (r_max,)) in the exact steady state.

    ``slot_pmf`` is the stationary per-slot load law pi; pass ``worker_pmf`` (from
    :func:`worker_load_pmf`) to reuse a convolution already done.
    """
    r_max = int(r_max)
    if r_max < 1:
        raise InputError(f"r_max must be >= 1, got {r_max}", field="r_max")
    wp = worker_pmf if worker_pmf is not None else worker_load_pmf(slot_pmf, batch)
    p = wp.pmf
    w = wp.start + wp.width * np.arange(p.shape[0], dtype=np.float64)
    t_a = t_attn(host_latency(lat), w, float(batch))
    # survival S(w_{i-1}) = Pr(T > w_{i-1}) = sum_{j >= i} p_j, for i = 1..n-1
    tail = np.cumsum(p[::-1])[::-1]
    surv_prev = np.clip(tail[1:], 0.0, 1.0)
    with np.errstate(divide="ignore"):
        log_f_prev = np.log1p(-surv_prev)  # log F(w_{i-1}); -inf where F = 0
    g = other_stage_times(lat, r_max, batch, opts)
    out = np.empty(r_max, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in range(r_max):
            r = k + 1
            exceed = -np.expm1(r * log_f_prev)  # Pr(M_r >= w_i), i = 1..n-1
            if opts.overlap == "pipelined":  # E[max(t_A(M_r), G)]
                out[k] = _expectation(step_time_from_other(t_a, g[k], opts), exceed)
            else:  # E[t_A(M_r)] + G
                out[k] = step_time_from_other(_expectation(t_a, exceed), g[k], opts)
    return out


def exact_throughput(
    slot_pmf: SlotLoadPMF,
    lat: Latency,
    batch: int,
    r_max: int,
    opts: ModelOptions = DEFAULT_OPTIONS,
    worker_pmf: SlotLoadPMF | None = None,
) -> np.ndarray:
    """Throughput per instance (per unit cost), tokens/s, for r = 1..r_max:
    ``1e6 r B / ((r c_A + c_F) E[tau(r)])``."""
    tau = exact_step_times(slot_pmf, lat, batch, r_max, opts, worker_pmf=worker_pmf)
    r = np.arange(1, int(r_max) + 1, dtype=np.float64)
    return throughput(host_latency(lat), r, float(batch), tau)


def exact_barrier_attention_times(
    worker_pmf: SlotLoadPMF, lat: Latency, r_max: int, batch: int
) -> np.ndarray:
    """E[t_A(M_r)], the mean barrier Attention time, for r = 1..r_max (float64, shape (r_max,)),
    for workers of batch B (``worker_pmf`` the law of one worker's load at that B):
    the expectation formula of the module docstring with h = t_A (non-decreasing) and the
    exceedances of :func:`max_exceedance`. r = 1 gives E[t_A(T)] of one worker, so the barrier
    share of docs/model.md 3 is ``(E[t_A(M_r)] - E[t_A(T)]) / E[tau(r)]``."""
    p = np.asarray(worker_pmf.pmf, dtype=np.float64)
    t_a = t_attn(host_latency(lat), worker_pmf.support, float(batch))
    if p.shape[0] == 1:
        return np.full(int(r_max), float(t_a[0]))
    exceed = max_exceedance(p, int(r_max))
    return np.array([_expectation(t_a, row) for row in exceed])


# ----------------------------------------------------------------------------------------------
# Max-law tables: E[tau(r)] for many Attention coefficient scenarios of one (workload, B) at once
# ----------------------------------------------------------------------------------------------


class MaxLawTables(NamedTuple):
    """Max-law tables of the worker load for one (workload, B) group (float64, docs/model.md 5).

    With the worker-load lattice ``w_i = start + width * i`` (i < n) and survival
    ``S(w) = Pr(T > w)`` summed from the upper tail (as in :func:`exact_step_times`):
    ``exceed[r-1, i] = Pr(M_r >= w_i) = -expm1(r log1p(-S(w_{i-1})))`` for i = 0..n (1 at i = 0,
    0 at i = n) and ``upper[r-1, k] = sum_{i >= k} Pr(M_r = w_i) w_i`` (0 at k = n); both
    float64[r_max, n + 1]. Build with :func:`max_law_tables`; evaluate with
    :func:`max_law_step_times`.
    """

    start: float
    width: float
    exceed: np.ndarray
    upper: np.ndarray

    @property
    def n(self) -> int:
        """Number of lattice points."""
        return self.exceed.shape[1] - 1

    @property
    def mean_max(self) -> np.ndarray:
        """E[M_r] for r = 1..r_max, float64[r_max]."""
        return self.upper[:, 0]


def trim_fft_noise(worker_pmf: SlotLoadPMF, noise_floor: float = 1e-14) -> SlotLoadPMF:
    """Drop the FFT round-off tails of a worker-load law (:func:`worker_load_pmf`).

    The FFT convolution leaves round-off of ~1e-15 * max(pmf) on every lattice point, far beyond
    the real support (B = 256: ~900k points instead of ~50k). Keep the range between the first and
    last point above ``noise_floor * max(pmf)`` and lump each dropped tail's mass (kept only if
    <= 1e-10) onto the nearest kept point: E[h] moves by at most that mass times
    r_max * (h(w_max) - h(w_min)). ``noise_floor = 0`` keeps everything.
    """
    pmf = np.asarray(worker_pmf.pmf, dtype=np.float64)
    if not (noise_floor > 0 and pmf.size > 2):
        return worker_pmf
    above = np.flatnonzero(pmf > noise_floor * pmf.max())
    lo, hi = int(above[0]), int(above[-1]) + 1
    low_mass, high_mass = pmf[:lo].sum(), pmf[hi:].sum()
    lo, low_mass = (lo, low_mass) if low_mass <= 1e-10 else (0, 0.0)
    hi, high_mass = (hi, high_mass) if high_mass <= 1e-10 else (pmf.size, 0.0)
    if not (hi - lo >= 2 and (lo > 0 or hi < pmf.size)):
        return worker_pmf
    kept = pmf[lo:hi].copy()
    kept[0] += low_mass
    kept[-1] += high_mass
    return SlotLoadPMF(
        start=worker_pmf.start + worker_pmf.width * lo, width=worker_pmf.width, pmf=kept
    )


def max_exceedance(pmf: np.ndarray, r_max: int) -> np.ndarray:
    """``Pr(M_r >= w_i) = -expm1(r log1p(-S(w_{i-1})))`` for r = 1..r_max, i = 1..n-1
    (float64[r_max, n - 1]; the survival ``S`` summed from the upper tail of ``pmf``)."""
    tail = np.cumsum(pmf[::-1])[::-1]  # Pr(T >= w_i)
    surv_prev = np.clip(tail[1:], 0.0, 1.0)  # Pr(T > w_{i-1}), i = 1..n-1
    r = np.arange(1, int(r_max) + 1, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.expm1(r * np.log1p(-surv_prev)[None, :])


def max_law_tables(worker_pmf: SlotLoadPMF, r_max: int, noise_floor: float = 1e-14) -> MaxLawTables:
    """The :class:`MaxLawTables` of a worker-load law (after :func:`trim_fft_noise`)."""
    worker_pmf = trim_fft_noise(worker_pmf, noise_floor)
    pmf = np.asarray(worker_pmf.pmf, dtype=np.float64)
    require(  # exceed, mass, their products and cumulative sums: six [r_max, n + 1] tables
        48 * int(r_max) * (pmf.shape[0] + 1),
        f"the law of the barrier for r = 1..{r_max} on {pmf.shape[0]} lattice points",
        "lower --r-max, --batch or --slot-bins",
    )
    start, width = float(worker_pmf.start), float(worker_pmf.width)
    w = start + width * np.arange(pmf.shape[0], dtype=np.float64)
    r_max = int(r_max)
    exceed = np.concatenate(
        [np.ones((r_max, 1)), max_exceedance(pmf, r_max), np.zeros((r_max, 1))], axis=1
    )  # [r_max, n + 1]
    mass = exceed[:, :-1] - exceed[:, 1:]  # Pr(M_r = w_i)
    up = np.cumsum((mass * w[None, :])[:, ::-1], axis=1)[:, ::-1]
    upper = np.concatenate([up, np.zeros((r_max, 1))], axis=1)  # [r_max, n + 1]
    return MaxLawTables(start, width, exceed, upper)


def max_law_step_times(
    tables: MaxLawTables, alpha_attn, beta_attn, other, opts: ModelOptions = DEFAULT_OPTIONS
) -> np.ndarray:
    """E[tau] float64[n_s, r_max] for Attention coefficients (a, b): float64[n_s] and the other
    stages G(r): float64[n_s, r_max], O(1) per entry (docs/model.md 5).

    Pipelined: ``E[max(G, a M_r + b)] = G Pr(M_r < w_k) + a sum_{i>=k} Pr(M_r = w_i) w_i
    + b Pr(M_r >= w_k)`` with ``k`` the first lattice index where ``a w_k + b >= G``
    (``max(G, b)`` when a = 0); serial: ``a E[M_r] + b + G``. The same sum as
    :func:`exact_step_times`, for every scenario at once.
    """
    a2, b2 = alpha_attn[:, None], beta_attn[:, None]
    if opts.overlap != "pipelined":
        attn = stage_time(AffineStage(a2, b2), tables.mean_max[None, :])
        return step_time_from_other(attn, other, opts)
    pos = a2 > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        thr = (other - b2) / np.where(pos, a2, 1.0)  # a w + b >= G  <=>  w >= thr
        k = np.ceil((thr - tables.start) / tables.width)
    k = np.clip(np.nan_to_num(k, nan=0.0, posinf=tables.n, neginf=0.0), 0, tables.n)
    k = k.astype(np.int64)
    rows = np.arange(other.shape[1])[None, :]
    q = tables.exceed[rows, k]
    tau = other * (1.0 - q) + a2 * tables.upper[rows, k] + b2 * q
    return np.where(pos, tau, maximum(other, b2))


def max_law_curve_step_times(
    tables: MaxLawTables, attn_times: np.ndarray, other, opts: ModelOptions = DEFAULT_OPTIONS
) -> np.ndarray:
    """E[tau] float64[n_s, r_max] for one non-decreasing Attention time ``attn_times``
    (float64[n], t_A at the lattice points ``start + width * i``: a table stage) shared by
    the scenarios, and their other stages G(r): float64[n_s, r_max].

    Pipelined: ``E[max(G, t_A(M_r))] = G Pr(M_r < w_k) + sum_{i>=k} Pr(M_r = w_i) t_A(w_i)``
    with ``k`` the first lattice index where ``t_A(w_k) >= G``; serial: ``E[t_A(M_r)] + G``
    (:func:`max_law_step_times` for an affine stage, the same sum)."""
    mass = tables.exceed[:, :-1] - tables.exceed[:, 1:]  # Pr(M_r = w_i)
    up = np.cumsum((mass * attn_times[None, :])[:, ::-1], axis=1)[:, ::-1]
    upper = np.concatenate([up, np.zeros((up.shape[0], 1))], axis=1)  # [r_max, n + 1]
    if opts.overlap != "pipelined":
        return step_time_from_other(upper[None, :, 0], other, opts)
    k = np.searchsorted(attn_times, other, side="left")
    rows = np.arange(other.shape[1])[None, :]
    return other * (1.0 - tables.exceed[rows, k]) + upper[rows, k]

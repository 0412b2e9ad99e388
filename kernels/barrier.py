"""Steady-state barrier sampler and the per-step summaries shared by all Monte Carlo kernels.

Barrier sampler (docs/model.md 5, "exact steady state"): in stationarity the slots are independent
with law pi, so one step of an r_max-worker bundle is a snapshot of ``r_max x B`` i.i.d. slot
loads. A worker's load is ``T_j = sum_b load[j, b]`` (int32) and the barrier for every
r = 1..r_max is the cumulative max over workers (common random numbers across r):
``tau(r) = max(alpha_A * max_{j<=r} T_j + beta_A, G(r))`` (pipelined) or ``... + G(r)`` (serial).

Every kernel summarises its steps with :func:`summarise_steps` into :class:`StepSums`: sums over
fixed blocks of :data:`BLOCK` steps (never a running sum in a scan carry) in the float dtype of
the driver's :class:`~.step.StepModel` (float32 by default, float64 when asked); the driver adds
the blocks in float64 (on the device or on the host). Kernels are pure and un-jitted; shapes
and switches are static, coefficients and samplers are traced. No imports from afd_jax.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .contract import Kernel, SegmentInfo
from .sampling import sample_slot_load, slot_load_halves
from .step import StepModel, attn_times, step_times

BLOCK = 128
"""Steps (or snapshots) per summation block: the fixed granularity of float32 sums and of the
counter-based keys of the barrier sampler. Independent of the chunk size."""


class TauHistogram(NamedTuple):
    """Log-spaced bins of the step time for percentiles: bin ``k`` holds
    ``exp(log_lo + k / inv_width) <= tau < exp(log_lo + (k + 1) / inv_width)`` (first and last
    bins also catch everything below/above). log_lo, inv_width: scalars (traced) of the
    StepModel's float dtype."""

    log_lo: jax.Array
    inv_width: jax.Array


class StepSums(NamedTuple):
    """Block sums of one run of steps. ``nb`` = number of blocks; floats in the StepModel's
    dtype (float32 or float64) unless stated.

    tau, tau_sq, max_attn: [nb, r_max] sums over the valid steps of tau(r), tau(r)^2 and the
    barrier Attention time max_{j<=r} t_A,j. worker_load: [nb, r_max] sums of each worker's
    load T_j (with a table Attention stage, ``model.attn_grid``: of its Attention time
    t_A(T_j) instead, so the idle sums below stay linear with alpha_A = 1, beta_A = 0). The
    idle sums follow on the host (float64) because they are linear in T_j:
    sum_{j<=r} (tau - t_A,j) = r tau - alpha_A sum_{j<=r} T_j - r beta_A, barrier wait
    r max_{j<=r} t_A,j - sum_{j<=r} t_A,j, FFN idle tau - t_F(r).
    slot_load, slot_load_sq: [nb] sums of the mean slot load of the step (over all r_max x B
    slots) and of its square. count: int32[nb] valid steps per block. hist: int32[r_max, n_bins]
    counts of tau(r) per log bin.
    """

    tau: jax.Array
    tau_sq: jax.Array
    max_attn: jax.Array
    worker_load: jax.Array
    slot_load: jax.Array
    slot_load_sq: jax.Array
    count: jax.Array
    hist: jax.Array


def block_sum(x):
    """Sums over consecutive blocks of BLOCK rows: x [nb * BLOCK, ...] -> [nb, ...].

    An explicit pairwise tree of elementwise adds (a fixed order), so the float32 result of a
    block is bit-identical whatever the number of blocks or replications in the call (a
    ``sum`` reduction may be vectorised differently for different shapes)."""
    y = x.reshape((-1, BLOCK) + x.shape[1:])
    while y.shape[1] > 1:
        y = y[:, 0::2] + y[:, 1::2]
    return y[:, 0]


def tau_histogram(tau, valid, hist: TauHistogram, n_bins: int):
    """Counts int32[r_max, n_bins] of tau [n, r_max] per log bin over the valid [n] steps."""
    r_max = tau.shape[1]
    idx = jnp.floor((jnp.log(tau) - hist.log_lo) * hist.inv_width)
    idx = jnp.clip(idx, 0, n_bins - 1).astype(jnp.int32)
    cols = jnp.broadcast_to(jnp.arange(r_max, dtype=jnp.int32)[None, :], idx.shape)
    return (
        jnp.zeros((r_max, n_bins), jnp.int32)
        .at[cols, idx]
        .add(jnp.broadcast_to(valid.astype(jnp.int32)[:, None], idx.shape))
    )


def summarise_steps(
    worker_loads,
    valid,
    model: StepModel,
    hist: TauHistogram,
    *,
    batch: int,
    serial: bool,
    n_bins: int,
    real=None,
) -> StepSums:
    """Block sums of the step statistics.

    worker_loads: int32[n, r_max] (n a multiple of BLOCK), valid: bool[n] (steps that count).
    ``batch`` (B), ``serial`` and ``n_bins`` are static. ``real``: None, or traced int32
    (workers, B) of a kernel padded to a shape bucket: the columns beyond ``workers`` are
    padding, left out of the mean slot load (over workers x B real slots), and every
    statistic of r <= workers is the same as without them (the driver drops the rest). Per
    step and r: the barrier
    ``M_r = max_{j<=r} T_j`` (cumulative max over workers: common random numbers across r),
    ``max_attn = alpha_A M_r + beta_A``, ``tau = max(max_attn, G(r))`` (pipelined) or
    ``max_attn + G(r)`` (serial). Float arithmetic in ``model.other.dtype`` (the histogram
    ``hist`` comes in the same dtype): nothing here fixes the precision.
    """
    dtype = model.other.dtype  # the run's float dtype: float32, or float64 when asked
    loads = worker_loads.astype(dtype)
    w = valid.astype(dtype)
    # exact running max; a parallel scan is ~3x faster than lax.cummax on XLA:CPU
    max_load = jax.lax.associative_scan(jnp.maximum, loads, axis=1)
    max_attn = attn_times(model, max_load)  # t_A non-decreasing: max_j t_A(T_j) = t_A(M_r)
    tau = step_times(max_attn, model.other.reshape(1, -1), serial)

    def bsum(x):
        return block_sum(x * w[:, None])

    mean_load = _mean_slot_load(loads, batch, real)
    counts = tau_histogram(tau, valid, hist, n_bins)
    return StepSums(
        tau=bsum(tau),
        tau_sq=bsum(tau * tau),
        max_attn=bsum(max_attn),
        worker_load=bsum(loads if model.attn_grid is None else attn_times(model, loads)),
        slot_load=block_sum(mean_load * w),
        slot_load_sq=block_sum(mean_load * mean_load * w),
        count=block_sum(valid.astype(jnp.int32)),
        hist=counts,
    )


def _mean_slot_load(loads, batch: int, real):
    """Per step, the summed worker loads over the (workers x B) real slots (in the loads'
    float dtype, summed over the workers in order: padded workers at the end add exact
    zeros)."""
    dtype = loads.dtype
    if real is None:
        return loads.sum(axis=-1) / jnp.asarray(loads.shape[-1] * batch, dtype)
    workers, real_batch = real
    keep = jnp.arange(loads.shape[-1], dtype=jnp.int32) < workers
    slots = (workers * real_batch).astype(dtype)
    return jnp.where(keep, loads, jnp.zeros((), dtype)).sum(axis=-1) / slots


def barrier_loads(key, sampler, *, r_max: int, batch: int, halves: bool = False):
    """Worker loads of BLOCK independent stationary snapshots of ``r_max x B`` slots.

    key: the block's key (the driver derives it by ``fold_in`` from the replication and block
    index, so results do not depend on how blocks are grouped into chunks). Slot loads
    int32[BLOCK, r_max, B] ~ pi; returns the worker loads int32[BLOCK, r_max] (sums over B;
    the driver checks B * max slot load < 2**31). Summarise with :func:`summarise_steps`.

    ``halves`` (static): draw the first and the second half of the snapshots together
    (:func:`~.sampling.slot_load_halves`, each random block hashed once instead of twice) and
    sum both over B in one variadic reduction, so one loop computes both: the same numbers.
    Faster on CPU, slower on an H200 (docs/cpu-speed.md, round 13; docs/benchmarks.md, run
    6), so the driver asks for it on CPU only. Request alias samplers in the drivers' Threefry
    mode, and alias tables of pi (:class:`~.sampling.LoadAliasSampler`, the driver's draw for
    workloads: one block per slot, each half from its own counters; 2.2x the request draw's
    rate on CPU, docs/cpu-speed.md, round 15); other samplers draw word by word either way.
    """
    shape = (BLOCK, r_max, batch)
    pair = slot_load_halves(key, sampler, shape) if halves else None
    if pair is None:
        return sample_slot_load(key, sampler, shape).sum(axis=-1, dtype=jnp.int32)
    zero = jnp.int32(0)
    sums = jax.lax.reduce(pair, (zero, zero), lambda x, y: (x[0] + y[0], x[1] + y[1]), (2,))
    return jnp.concatenate(sums)


def summarise_rows(loads, valid, model: StepModel, hist: TauHistogram, **kw) -> StepSums:
    """:func:`summarise_steps` of several rows (replications, or blocks of snapshots) at once:
    loads int32[rows, L, r_max], valid bool[rows, L] (L a multiple of BLOCK); ``kw``: the
    keyword arguments of :func:`summarise_steps` (batch, serial, n_bins, real). Returns
    StepSums with block rows [rows, L // BLOCK, ...] and the histogram summed over all rows."""
    rows, length, r_max = loads.shape
    flat = loads.reshape(rows * length, r_max)
    sums = summarise_steps(flat, valid.reshape(-1), model, hist, **kw)
    nb = length // BLOCK
    out = jax.tree_util.tree_map(
        lambda x: x.reshape((rows, nb) + x.shape[1:]), sums._replace(hist=None)
    )
    return out._replace(hist=sums.hist)


@cache
def barrier_kernel(r_max: int, batch: int, halves: bool = False) -> Kernel:
    """The barrier sampler under the contract of :mod:`kernels.contract`: stateless (``init``
    gives ``()``); ``segment(key, (), params)`` draws one block of BLOCK snapshots
    (:func:`barrier_loads`, with its ``halves`` option; the key is the block's key)."""

    def init_fn(key, params):
        return ()

    def segment(key, state, params):
        loads = barrier_loads(key, params.sampler, r_max=r_max, batch=batch, halves=halves)
        return state, SegmentInfo(loads, jnp.asarray(True))

    return Kernel("barrier", init_fn, segment)

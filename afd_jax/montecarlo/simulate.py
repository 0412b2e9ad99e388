"""Monte Carlo driver: the jit boundary, chunking, counter-based keys, float64 estimators.

``simulate(workload_or_sampler, lat, batch, r_max, kernel=...)`` runs one of three kernels
(``afd_jax.kernels``) for an ``r_max``-worker bundle and reports, for every r = 1..r_max (the
bundle of workers 1..r, common random numbers), the mean step time ``E[tau(r)]`` with its Monte
Carlo standard error, the throughput per instance ``1e6 r B / ((r c_A + c_F) E[tau])`` tokens/s
with a confidence interval, idle fractions (MODEL.md 3), the barrier share and step-time
percentiles.

* ``kernel="barrier"``: ``steps * replications`` i.i.d. stationary snapshots. SE from the
  i.i.d. snapshots.
* ``kernel="trajectory"``: slots stepped one decode step at a time (``lax.scan``).
* ``kernel="fast"``: the same model via renewal sequences (work ~ number of requests).
  For both trajectory kernels, ``warmup`` steps are discarded and ``steps`` measured per
  replication; the SE comes from the spread of the replication means (t-quantile CI) when
  ``replications >= 2``, from :data:`N_BATCHES` batch means otherwise.

Keys: ``key_rep = fold_in(key(seed), replication)``; barrier snapshots come in blocks of
``BLOCK`` keyed ``fold_in(key_rep, block)``; trajectories use ``fold_in(key_rep, 0)`` for the
initial state and ``fold_in(key_rep, 1)`` as the stream (per-step or per-request counters).
Chunk sizes (snapshot blocks, replications per call, steps per call) come from
``memory_budget_bytes`` and never change the numbers. Float32 block sums over BLOCK steps are
added in float64 on the host.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from afd_jax.errors import InputError
from afd_jax.kernels import barrier as KB
from afd_jax.kernels import fast as KF
from afd_jax.kernels import sampling as KS
from afd_jax.kernels import step as KStep
from afd_jax.kernels import trajectory as KT
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.workload.containers import ParametricWorkload, TraceWorkload

# Per-r step diagnostics every simulator reports (MODEL.md 3; `results` rows of the CLI JSON).
STEP_DIAGNOSTICS = (
    "idle_attn",
    "idle_ffn",
    "idle_bundle",
    "barrier_share",
    "step_p50",
    "step_p90",
    "step_p99",
)

KERNELS = ("barrier", "trajectory", "fast")
INITS = ("stationary", "cold")
N_BINS = 4096
N_BATCHES = 20
INT32_LIMIT = 2**31
DEFAULT_MEMORY_BUDGET = 1 << 30
_DEFAULT_OPTS = ModelOptions()
_TARGET_SLOT_STEPS_PER_CALL = 1 << 28  # progress granularity of the trajectory kernels
_FAST_MAX_SEGMENT = 1 << 15


@dataclass(frozen=True)
class SimulationResult:
    """Per-r arrays (float64, shape (r_max,), index r - 1) and run facts.

    mean_tau, se_tau: E[tau(r)] (us) and its MC standard error. throughput, ci_low, ci_high:
    tokens/s per instance (per unit cost) and the confidence interval at ``level``. idle_attn:
    fraction of Attention time idle, sum_j (tau - t_A,j) / (r tau); idle_ffn: (tau - t_F)/tau;
    idle_bundle: (sum_j (tau - t_A,j) + tau - t_F) / ((r + 1) tau); barrier_share: barrier wait
    sum_j (max_i t_A,i - t_A,j) / (r tau) (all ratios of sums over the measured steps).
    step_p50/p90/p99: step-time percentiles. mean_slot_load (scalar) and its SE: the average
    load over all r_max x B slots (equals theta in steady state).
    """

    r: np.ndarray
    mean_tau: np.ndarray
    se_tau: np.ndarray
    throughput: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    idle_attn: np.ndarray
    idle_ffn: np.ndarray
    idle_bundle: np.ndarray
    barrier_share: np.ndarray
    step_p50: np.ndarray
    step_p90: np.ndarray
    step_p99: np.ndarray
    mean_slot_load: float
    se_slot_load: float
    kernel: str
    init: str
    batch: int
    r_max: int
    steps: int
    warmup: int
    replications: int
    seed: int
    level: float
    slot_steps: int
    wall_seconds: float
    device: str

    @property
    def r_best(self) -> int:
        return int(np.argmax(self.throughput)) + 1

    @property
    def slot_steps_per_second(self) -> float:
        return self.slot_steps / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def results_table(self) -> list[dict]:
        keys = ("throughput", "ci_low", "ci_high", *STEP_DIAGNOSTICS, "mean_tau", "se_tau")
        return [
            {"r": int(r), **{k: float(getattr(self, k)[i]) for k in keys}}
            for i, r in enumerate(self.r)
        ]

    def to_json(self) -> dict:
        return {
            "kernel": self.kernel,
            "init": self.init,
            "batch": self.batch,
            "r_max": self.r_max,
            "steps": self.steps,
            "warmup": self.warmup,
            "replications": self.replications,
            "seed": self.seed,
            "level": self.level,
            "results": self.results_table(),
            "r_best": self.r_best,
            "mean_slot_load": self.mean_slot_load,
            "se_slot_load": self.se_slot_load,
            "slot_steps": self.slot_steps,
            "wall_seconds": self.wall_seconds,
            "slot_steps_per_second": self.slot_steps_per_second,
            "device": self.device,
        }


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"


# ---------------------------------------------------------------- inputs


def _sampler_and_max_load(source, opts: ModelOptions, max_slot_load):
    """Sampler pytree and the largest possible slot load (for the overflow check)."""
    off = int(opts.load_offset)
    if isinstance(source, TraceWorkload):
        d = np.asarray(source.decode, np.int64)
        p = np.asarray(source.prompt, np.int64)
        keep = d > 0
        if not keep.any():
            raise InputError("workload has no request with D >= 1", field="workload")
        max_load = int((p[keep] + d[keep] - 1).max()) + off
        sampler = KS.alias_sampler(p + off, d, size=_table_size(int(keep.sum())))
    elif isinstance(source, ParametricWorkload):
        max_load = (
            max(
                int(c.prompt.values[c.prompt.pmf > 0].max())
                + int(c.decode.values[c.decode.pmf > 0].max())
                - 1
                for c in source.components
            )
            + off
        )
        sampler = _make_sampler(source, off)
    else:
        sampler = _as_alias(source)
        if max_slot_load is not None:
            max_load = int(max_slot_load)
        elif isinstance(sampler, KS.TableSampler | KS.AliasSampler):
            max_load = int(
                np.max(np.asarray(sampler.prompt, np.int64) + np.asarray(sampler.decode) - 1)
            )
        else:
            raise InputError("pass max_slot_load= for a sampler that is not a TableSampler")
    if max_slot_load is not None:
        max_load = max(max_load, int(max_slot_load))
    return sampler, max_load


def _table_size(n: int) -> int:
    """Alias tables are padded to a power of two (>= 1024): fewer shapes, fewer compiles."""
    return max(1024, 1 << max(0, (int(n) - 1).bit_length()))


def _as_alias(sampler):
    """A TableSampler becomes the equivalent AliasSampler (O(1) draws); others pass through."""
    if isinstance(sampler, KS.TableSampler):
        cdf = np.asarray(sampler.cdf_request, np.float64)
        w = np.diff(cdf, prepend=0.0)
        return KS.alias_sampler(
            np.asarray(sampler.prompt), np.asarray(sampler.decode), w, size=_table_size(w.size)
        )
    return sampler


def _make_sampler(w, load_offset: int):
    try:
        from afd_jax.montecarlo.samplers import make_sampler
    except ImportError:
        make_sampler = None
    if make_sampler is not None:
        return make_sampler(w, load_offset=load_offset)
    if isinstance(w, TraceWorkload):
        return KS.table_sampler(np.asarray(w.prompt) + load_offset, w.decode)
    raise InputError("parametric workloads need afd_jax.montecarlo.samplers (not available)")


def step_model(lat: Latency, batch: int, r_max: int, opts: ModelOptions) -> KStep.StepModel:
    """StepModel (float32) with G(r) and t_F(r) for r = 1..r_max computed in float64."""
    r = np.arange(1, r_max + 1, dtype=np.float64)
    b = float(batch)
    tf = float(lat.alpha_ffn) * r * b + float(lat.beta_ffn)
    x = r * b if opts.comm_scaling == "aggregate" else np.full_like(r, b)
    tc = float(lat.alpha_comm) * x + float(lat.beta_comm)
    other = np.maximum(tc, tf) if opts.overlap == "pipelined" else tc + tf
    return KStep.StepModel(
        jnp.asarray(lat.alpha_attn, jnp.float32),
        jnp.asarray(lat.beta_attn, jnp.float32),
        jnp.asarray(other, jnp.float32),
        jnp.asarray(tf, jnp.float32),
    )


def _histogram(lat, batch, max_load, model: KStep.StepModel, serial: bool):
    """Log bins spanning every possible tau."""
    other = np.asarray(model.other, np.float64)
    a, b = float(lat.alpha_attn), float(lat.beta_attn)
    hi_attn = a * batch * max_load + b
    lo = (b + other.min()) if serial else max(b, other.min())
    hi = (hi_attn + other.max()) if serial else max(hi_attn, other.max())
    hi = max(hi, 1e-30) * 1.001
    lo = max(lo, hi * 1e-9, 1e-30) * 0.999
    log_lo, log_hi = math.log(lo), math.log(hi)
    inv_w = N_BINS / max(log_hi - log_lo, 1e-9)
    return KB.TauHistogram(jnp.asarray(log_lo, jnp.float32), jnp.asarray(inv_w, jnp.float32)), (
        log_lo,
        inv_w,
    )


def _percentiles(hist: np.ndarray, log_lo: float, inv_w: float, qs=(0.5, 0.9, 0.99)):
    """Percentiles per r from int64[r_max, n_bins] counts (linear within a bin in log tau)."""
    out = np.full((len(qs), hist.shape[0]), np.nan)
    for i in range(hist.shape[0]):
        c = np.cumsum(hist[i].astype(np.float64))
        if c[-1] <= 0:
            continue
        for k, q in enumerate(qs):
            target = q * c[-1]
            j = int(np.searchsorted(c, target, side="left"))
            prev = c[j - 1] if j > 0 else 0.0
            frac = (target - prev) / max(c[j] - prev, 1.0)
            out[k, i] = math.exp(log_lo + (j + frac) / inv_w)
    return out


# ---------------------------------------------------------------- jitted entry points


def _summarise_reps(loads, t0, warmup, t_end, n_real, model, hist, *, batch, serial):
    """loads int32[reps, L, r_max] -> StepSums with block rows [reps, L // BLOCK, ...] and the
    histogram summed over the first ``n_real`` replications (the rest are padding copies)."""
    reps, length, r_max = loads.shape
    t = t0 + jnp.arange(length, dtype=jnp.int32)
    real = jnp.arange(reps, dtype=jnp.int32) < n_real
    valid = real[:, None] & ((t >= warmup) & (t < t_end))[None, :]
    sums = KB.summarise_steps(
        loads.reshape(reps * length, r_max),
        valid.reshape(-1),
        model,
        hist,
        batch=batch,
        serial=serial,
        n_bins=N_BINS,
    )
    nb = length // KB.BLOCK
    rows = jax.tree_util.tree_map(
        lambda x: x.reshape((reps, nb) + x.shape[1:]), sums._replace(hist=None)
    )
    return rows._replace(hist=sums.hist)


@jax.jit
def _rep_keys(base, reps, tag):
    """Keys fold_in(fold_in(base, rep), tag) (jitted on its own: compiled once, shared)."""
    return jax.vmap(lambda i: jr.fold_in(jr.fold_in(base, i), tag))(reps)


@jax.jit
def _block_keys(base, reps, blocks):
    return jax.vmap(lambda i, b: jr.fold_in(jr.fold_in(base, i), b))(reps, blocks)


@partial(jax.jit, static_argnames=("r_max", "batch", "serial"))
def _barrier_chunk(keys, n_valid, sampler, model, hist, *, r_max, batch, serial):
    return KB.barrier_blocks(
        keys,
        n_valid,
        sampler,
        model,
        hist,
        r_max=r_max,
        batch=batch,
        serial=serial,
        n_bins=N_BINS,
    )


@partial(jax.jit, static_argnames=("shape", "init"))
def _init_chunk(keys, sampler, *, shape, init):
    return jax.vmap(lambda k: KT.init_slots(k, sampler, shape, init))(keys)


@partial(jax.jit, static_argnames=("length", "batch", "serial"))
def _trajectory_chunk(
    keys, states, t0, sampler, model, hist, warmup, t_end, n_real, *, length, batch, serial
):
    seg = partial(KT.trajectory_segment, length=length)
    states, loads = jax.vmap(seg, in_axes=(0, 0, None, None))(keys, states, t0, sampler)
    sums = _summarise_reps(
        loads, t0, warmup, t_end, n_real, model, hist, batch=batch, serial=serial
    )
    return states, sums


@partial(jax.jit, static_argnames=("length", "n_requests", "batch", "serial"))
def _fast_chunk(
    keys,
    states,
    t0,
    sampler,
    model,
    hist,
    warmup,
    t_end,
    n_real,
    *,
    length,
    n_requests,
    batch,
    serial,
):
    seg = partial(KF.fast_segment, length=length, n_requests=n_requests)
    states, loads, covered = jax.vmap(seg, in_axes=(0, 0, None))(keys, states, sampler)
    sums = _summarise_reps(
        loads, t0, warmup, t_end, n_real, model, hist, batch=batch, serial=serial
    )
    return states, sums, jnp.all(covered)


@partial(jax.jit, static_argnames=("n",))
def _pilot_decode(key, sampler, *, n):
    _, d = KS.sample_requests(key, sampler, (n,))
    d = d.astype(jnp.float32)
    return d.mean(), d.std()


# ---------------------------------------------------------------- accumulation


class _Acc:
    """Float64 host accumulators per replication (and per block for batch means)."""

    def __init__(self, n_rep: int, r_max: int, keep_blocks: bool):
        z = partial(np.zeros, dtype=np.float64)
        self.tau, self.tau_sq = z((n_rep, r_max)), z((n_rep, r_max))
        self.max_attn, self.worker_load = z((n_rep, r_max)), z((n_rep, r_max))
        self.load, self.load_sq, self.count = z(n_rep), z(n_rep), z(n_rep)
        self.hist = np.zeros((r_max, N_BINS), np.int64)
        self.keep_blocks = keep_blocks
        self.block_tau, self.block_load, self.block_count = [], [], []

    def add(self, reps: np.ndarray, sums, n_real: int):
        """sums: StepSums with a leading axis over the chunk's rows ([rows, nb, ...])."""
        s = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), sums._replace(hist=None))
        rows = slice(0, n_real)
        for name, dst in (
            ("tau", self.tau),
            ("tau_sq", self.tau_sq),
            ("max_attn", self.max_attn),
            ("worker_load", self.worker_load),
        ):
            np.add.at(dst, reps[rows], getattr(s, name)[rows].sum(axis=1))
        np.add.at(self.load, reps[rows], s.slot_load[rows].sum(axis=1))
        np.add.at(self.load_sq, reps[rows], s.slot_load_sq[rows].sum(axis=1))
        np.add.at(self.count, reps[rows], s.count[rows].sum(axis=1))
        self.hist += np.asarray(sums.hist, np.int64)
        if self.keep_blocks:
            self.block_tau.append(s.tau[0])
            self.block_load.append(s.slot_load[0])
            self.block_count.append(s.count[0])


def _mean_se(totals, counts, level, iid_sq=None):
    """Mean over all counted steps and its SE; returns (mean, se, quantile)."""
    import scipy.stats

    n = counts.sum()
    mean = totals.sum(axis=0) / n
    if iid_sq is not None:  # i.i.d. samples
        var = np.maximum(iid_sq.sum(axis=0) / n - mean**2, 0.0) * n / max(n - 1, 1)
        return mean, np.sqrt(var / n), float(scipy.stats.norm.ppf(0.5 + level / 2))
    k = counts.shape[0]
    means = totals / counts.reshape((-1,) + (1,) * (totals.ndim - 1))
    se = means.std(axis=0, ddof=1) / math.sqrt(k)
    return mean, se, float(scipy.stats.t.ppf(0.5 + level / 2, k - 1))


def _batch_means(block_vals, block_counts, n_batches):
    """Split the measured blocks into contiguous batches; per-batch (totals, counts)."""
    vals = np.concatenate(block_vals, axis=0)
    cnt = np.concatenate(block_counts, axis=0)
    keep = cnt > 0
    vals, cnt = vals[keep], cnt[keep]
    nb = min(n_batches, vals.shape[0])
    if nb < 2:
        return None
    edges = np.linspace(0, vals.shape[0], nb + 1).astype(int)
    tot = np.stack([vals[a:b].sum(axis=0) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    c = np.array([cnt[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return tot, c


# ---------------------------------------------------------------- driver


def simulate(
    workload_or_sampler,
    lat: Latency,
    batch: int,
    r_max: int,
    *,
    kernel: str = "barrier",
    steps: int = 4096,
    warmup: int = 0,
    replications: int = 8,
    init: str = "stationary",
    seed: int = 0,
    opts: ModelOptions = _DEFAULT_OPTS,
    level: float = 0.95,
    memory_budget_bytes: int | None = None,
    max_slot_load: int | None = None,
    segment_steps: int | None = None,
    replications_per_call: int | None = None,
    progress: bool = False,
) -> SimulationResult:
    """Monte Carlo estimate of the per-r step time and throughput of an r_max-worker bundle.

    Args:
      workload_or_sampler: a TraceWorkload / ParametricWorkload, or a sampler pytree (then
        ``max_slot_load`` is needed unless it is a TableSampler).
      lat, opts: latency coefficients and model switches; batch B; r_max workers.
      kernel: "barrier" (i.i.d. stationary snapshots: ``steps`` per replication), "trajectory"
        or "fast" (``warmup`` + ``steps`` decode steps per replication, ``init`` start).
      memory_budget_bytes: sizes the chunks (default 1 GiB on CPU, 8 GiB on an accelerator).
        ``segment_steps`` / ``replications_per_call``
        override the automatic chunk sizes (results are the same whatever they are).
      progress: tqdm bar on stderr (only when stderr is a terminal).

    Raises InputError on bad sizes or when B * max slot load (plus the segment for "fast")
    could overflow int32.
    """
    if memory_budget_bytes is None:
        memory_budget_bytes = DEFAULT_MEMORY_BUDGET * (
            1 if jax.devices()[0].platform == "cpu" else 8
        )
    with _rng_mode():
        return _simulate(**locals())


def _rng_mode():
    """Threefry in its non-partitionable form inside the driver: the same bits on every
    device count here (one device per run), and XLA compiles it several times faster on CPU
    than the partitionable form (seconds per kernel). Fixed, so results stay reproducible."""
    ctx = getattr(jax, "threefry_partitionable", None)
    return ctx(False) if ctx is not None else contextlib.nullcontext()


def _simulate(
    workload_or_sampler,
    lat,
    batch,
    r_max,
    *,
    kernel,
    steps,
    warmup,
    replications,
    init,
    seed,
    opts,
    level,
    memory_budget_bytes,
    max_slot_load,
    segment_steps,
    replications_per_call,
    progress,
):
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {', '.join(KERNELS)}", field="kernel")
    if init not in INITS:
        raise InputError(f"init must be one of {', '.join(INITS)}", field="init")
    for name, v, lo in (
        ("batch", batch, 1),
        ("r_max", r_max, 1),
        ("steps", steps, 1),
        ("replications", replications, 1),
        ("warmup", warmup, 0),
    ):
        if not isinstance(v, int | np.integer) or v < lo:
            raise InputError(f"must be an integer >= {lo}, got {v!r}", field=name)
    if not 0 < level < 1:
        raise InputError(f"must be in (0, 1), got {level}", field="level")
    batch, r_max, steps, warmup, replications = map(
        int, (batch, r_max, steps, warmup, replications)
    )
    if kernel == "barrier" and (warmup or init != "stationary"):
        raise InputError(
            "the barrier kernel samples the steady state: no warmup or cold init", field="kernel"
        )
    sampler, max_load = _sampler_and_max_load(workload_or_sampler, opts, max_slot_load)
    if batch * max_load >= INT32_LIMIT:
        raise InputError(
            f"B * max slot load = {batch} * {max_load} could overflow int32 worker loads; use a "
            "smaller batch (or a workload with shorter requests)",
            field="batch",
        )
    serial = opts.overlap == "serial"
    model = step_model(lat, batch, r_max, opts)
    hist, (log_lo, inv_w) = _histogram(lat, batch, max_load, model, serial)
    slots = r_max * batch
    t_start = time.perf_counter()
    bar = _progress_bar(progress, kernel)
    base = jr.key(seed)

    if kernel == "barrier":
        acc = _Acc(1, r_max, keep_blocks=False)
        n_blocks_rep = -(-steps // KB.BLOCK)
        per_block = KB.BLOCK * slots * 48
        chunk = max(1, min(memory_budget_bytes // per_block, n_blocks_rep * replications))
        if replications_per_call:
            chunk = int(replications_per_call)
        work_rep = np.repeat(np.arange(replications), n_blocks_rep)
        work_blk = np.tile(np.arange(n_blocks_rep), replications)
        n_work = work_rep.size
        for c0 in range(0, n_work, chunk):
            idx = np.minimum(np.arange(c0, c0 + chunk), n_work - 1)
            n_real = min(chunk, n_work - c0)
            blk = work_blk[idx]
            nv = np.minimum(KB.BLOCK, steps - blk * KB.BLOCK).astype(np.int32)
            nv[n_real:] = 0
            keys = _block_keys(
                base, jnp.asarray(work_rep[idx], jnp.int32), jnp.asarray(blk, jnp.int32)
            )
            sums = _barrier_chunk(
                keys,
                jnp.asarray(nv),
                sampler,
                model,
                hist,
                r_max=r_max,
                batch=batch,
                serial=serial,
            )
            sums = jax.tree_util.tree_map(lambda x: x[None], sums._replace(hist=None))._replace(
                hist=sums.hist
            )
            acc.add(np.zeros(1, np.int64), sums, 1)
            _tick(bar, int(nv.sum()) * slots)
        n = acc.count
        mean_tau, se_tau, q = _mean_se(acc.tau, n, level, iid_sq=acc.tau_sq)
        load_mean, load_se, _ = _mean_se(acc.load, n, level, iid_sq=acc.load_sq)
        slot_steps = steps * replications * slots
    else:
        acc = _run_trajectories(
            kernel,
            sampler,
            model,
            hist,
            base,
            batch,
            r_max,
            steps,
            warmup,
            replications,
            init,
            serial,
            max_load,
            memory_budget_bytes,
            segment_steps,
            replications_per_call,
            bar,
        )
        if replications >= 2:
            mean_tau, se_tau, q = _mean_se(acc.tau, acc.count, level)
            load_mean, load_se, _ = _mean_se(acc.load, acc.count, level)
        else:
            bm = _batch_means(acc.block_tau, acc.block_count, N_BATCHES)
            bl = _batch_means(acc.block_load, acc.block_count, N_BATCHES)
            if bm is None:
                mean_tau = acc.tau.sum(axis=0) / acc.count.sum()
                se_tau, q = np.full(r_max, np.nan), np.nan
                load_mean, load_se = float(acc.load.sum() / acc.count.sum()), float("nan")
            else:
                mean_tau, se_tau, q = _mean_se(bm[0], bm[1], level)
                load_mean, load_se, _ = _mean_se(bl[0], bl[1], level)
        slot_steps = (steps + warmup) * replications * slots
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_start

    r = np.arange(1, r_max + 1)
    cost = r * float(lat.cost_attn) + float(lat.cost_ffn)
    scale = 1e6 * r * batch / cost
    tot_tau = acc.tau.sum(axis=0)
    # idle sums from linear block sums (MODEL.md 3), float64
    n_steps = acc.count.sum()
    a_attn, b_attn = float(lat.alpha_attn), float(lat.beta_attn)
    sum_attn = a_attn * np.cumsum(acc.worker_load.sum(axis=0)) + b_attn * r * n_steps
    attn_idle = r * tot_tau - sum_attn
    t_ffn = float(lat.alpha_ffn) * r * batch + float(lat.beta_ffn)
    ffn_idle = tot_tau - n_steps * t_ffn
    pct = _percentiles(acc.hist, log_lo, inv_w)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo_tau, hi_tau = mean_tau - q * se_tau, mean_tau + q * se_tau
        return SimulationResult(
            r=r,
            mean_tau=mean_tau,
            se_tau=se_tau,
            throughput=scale / mean_tau,
            ci_low=scale / hi_tau,
            ci_high=np.where(lo_tau > 0, scale / lo_tau, np.inf),
            idle_attn=attn_idle / (r * tot_tau),
            idle_ffn=ffn_idle / tot_tau,
            idle_bundle=(attn_idle + ffn_idle) / ((r + 1) * tot_tau),
            barrier_share=np.maximum(r * acc.max_attn.sum(axis=0) - sum_attn, 0.0) / (r * tot_tau),
            step_p50=pct[0],
            step_p90=pct[1],
            step_p99=pct[2],
            mean_slot_load=float(np.asarray(load_mean)),
            se_slot_load=float(np.asarray(load_se)),
            kernel=kernel,
            init=init,
            batch=batch,
            r_max=r_max,
            steps=steps,
            warmup=warmup,
            replications=replications,
            seed=int(seed),
            level=level,
            slot_steps=int(slot_steps),
            wall_seconds=wall,
            device=device_name(),
        )


def _fast_requests(length: int, mean_d: float, sd_d: float) -> int:
    """Fresh requests per slot that cover ``length`` steps with a wide margin."""
    m = max(mean_d, 1.0)
    n = length / m
    k = int(math.ceil(n + 5.0 * (sd_d / m) * math.sqrt(n + 1.0) + 4.0))
    # round up to 8 values per octave (<= 12.5 % extra work, few distinct shapes to compile)
    step = 1 << max(0, (k - 1).bit_length() - 4)
    return max(8, -(-k // step) * step)


def _run_trajectories(
    kernel,
    sampler,
    model,
    hist,
    base,
    batch,
    r_max,
    steps,
    warmup,
    replications,
    init,
    serial,
    max_load,
    budget,
    segment_steps,
    reps_per_call,
    bar,
):
    slots = r_max * batch
    total = warmup + steps
    total_blocks = -(-total // KB.BLOCK)
    mean_d = sd_d = 0.0
    if kernel == "fast":
        md, sd = _pilot_decode(jr.key(12345), sampler, n=1 << 16)
        mean_d, sd_d = float(md), float(sd)
    # chunk sizes: replications per call from the memory budget, steps per call from it too
    if segment_steps:
        length = KB.BLOCK * max(1, -(-int(segment_steps) // KB.BLOCK))
    elif kernel == "trajectory":
        blocks = max(1, _TARGET_SLOT_STEPS_PER_CALL // (slots * KB.BLOCK * max(1, replications)))
        length = KB.BLOCK * min(total_blocks, blocks)
    else:
        max_blocks = _FAST_MAX_SEGMENT // KB.BLOCK
        n_seg = -(-total_blocks // max_blocks)
        length = KB.BLOCK * -(-total_blocks // n_seg)  # equal segments, little padding

    def mem_per_rep(length):
        stats = length * r_max * 4 * 24
        if kernel == "trajectory":
            return slots * 64 + stats
        return slots * (_fast_requests(length, mean_d, sd_d) + 1) * 64 + stats

    if kernel == "fast" and not segment_steps:
        while length > KB.BLOCK and mem_per_rep(length) > budget:
            blocks = length // KB.BLOCK
            n_seg = -(-total_blocks // max(1, blocks // 2))
            length = KB.BLOCK * -(-total_blocks // n_seg)
    if kernel == "fast" and batch * (max_load + length + 1) >= INT32_LIMIT:
        raise InputError(
            f"B * (max slot load + segment) = {batch} * ({max_load} + {length}) could overflow "
            "int32 in the fast kernel; use a smaller batch or the trajectory kernel",
            field="batch",
        )
    chunk = (
        int(reps_per_call)
        if reps_per_call
        else max(1, min(replications, budget // mem_per_rep(length)))
    )
    n_req = _fast_requests(length, mean_d, sd_d) if kernel == "fast" else 0
    acc = _Acc(replications, r_max, keep_blocks=replications == 1)
    for c0 in range(0, replications, chunk):
        reps = np.arange(c0, min(c0 + chunk, replications))
        n_real = reps.size
        reps_p = np.concatenate([reps, np.full(chunk - n_real, reps[-1])])
        reps_j = jnp.asarray(reps_p, jnp.int32)
        states = _init_chunk(_rep_keys(base, reps_j, 0), sampler, shape=(r_max, batch), init=init)
        k_stream = _rep_keys(base, reps_j, 1)
        for t0 in range(0, total, length):
            args = (
                k_stream,
                states,
                jnp.int32(t0),
                sampler,
                model,
                hist,
                jnp.int32(warmup),
                jnp.int32(total),
                jnp.int32(n_real),
            )
            if kernel == "trajectory":
                states, sums = _trajectory_chunk(*args, length=length, batch=batch, serial=serial)
            else:
                while True:
                    new_states, sums, covered = _fast_chunk(
                        *args, length=length, n_requests=n_req, batch=batch, serial=serial
                    )
                    if bool(covered):
                        break
                    n_req *= 2
                states = new_states
            acc.add(reps_p, sums, n_real)
            _tick(bar, n_real * slots * min(length, total - t0))
    return acc


def _progress_bar(progress: bool, kernel: str):
    if not progress or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=f"simulate[{kernel}]", unit="slot-step", unit_scale=True, file=sys.stderr)


def _tick(bar, n):
    if bar is not None:
        bar.update(n)


__all__ = ["KERNELS", "SimulationResult", "device_name", "simulate", "step_model"]

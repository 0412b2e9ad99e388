"""Monte Carlo driver of the steps window: the jit boundary, chunking, float64 estimators.

``simulate(workload_or_sampler, lat, batch, r_max, kernel=...)`` runs one of three kernels
(``afd_jax.kernels``, all on the contract of ``afd_jax.kernels.contract``) for an
``r_max``-worker bundle through the chunk loop of :mod:`afd_jax.montecarlo.spine`, and reports,
for every r = 1..r_max (the bundle of workers 1..r, common random numbers), the mean step time
``E[tau(r)]`` with its Monte Carlo standard error, the throughput per instance
``1e6 r B / ((r c_A + c_F) E[tau])`` tokens/s with a confidence interval, idle fractions
(docs/model.md 3), the barrier share and step-time percentiles, as a
:class:`~afd_jax.montecarlo.result.MonteCarloResult`.

* ``kernel="barrier"``: ``steps * replications`` i.i.d. stationary snapshots. SE from the
  i.i.d. snapshots.
* ``kernel="trajectory"``: slots stepped one decode step at a time (``lax.scan``).
* ``kernel="fast"``: the same model via renewal sequences (work ~ number of requests).
  For both trajectory kernels, ``warmup`` steps are discarded and ``steps`` measured per
  replication; the SE comes from the spread of the replication means (t-quantile CI) when
  ``replications >= 2``, from :data:`~afd_jax.montecarlo.estimators.N_BATCHES` batch means
  otherwise.

Keys: ``key_rep = fold_in(key(seed), replication)``; barrier snapshots come in blocks of
``BLOCK`` keyed ``fold_in(key_rep, block)``; trajectories use ``fold_in(key_rep, 0)`` for the
initial state and ``fold_in(key_rep, 1)`` as the stream key of the slots' request streams
(request n of each slot, ``afd_jax.kernels.streams``). Chunk sizes (snapshot blocks,
replications per call, steps per call) come from ``memory_budget_bytes`` and never change the
numbers. Float32 block sums over BLOCK steps are added in float64: on the device for
trajectory and fast runs of several replications (``spine.block_totals``), else on the host.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from afd_jax.errors import InputError, check_level, check_seed
from afd_jax.kernels import barrier as KB
from afd_jax.kernels import sampling as KS
from afd_jax.kernels.barrier import barrier_kernel
from afd_jax.kernels.contract import SegmentParams
from afd_jax.kernels.fast import fast_kernel, padded_init
from afd_jax.kernels.options import INITS, KERNELS
from afd_jax.kernels.step import StepModel
from afd_jax.kernels.trajectory import PACKED_LEFT_LIMIT, trajectory_kernel
from afd_jax.memory import available_cores, require
from afd_jax.model import latency as L
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.latency_io import validate_latency, validate_options
from afd_jax.montecarlo import estimators as E
from afd_jax.montecarlo.checkpoint import run_checkpoint
from afd_jax.montecarlo.dynamics import Dynamics, DynRun, simulate_dynamics
from afd_jax.montecarlo.result import STEP_DIAGNOSTICS, MonteCarloResult
from afd_jax.montecarlo.samplers import (
    decode_moments,
    load_alias_for,
    make_sampler,
    max_slot_load,
    prompt_law,
    reuse_for,
)
from afd_jax.montecarlo.spine import (
    ATTN_GRID,
    Chunk,
    Progress,
    RowMesh,
    Window,
    attn_grid,
    block_keys,
    device_name,
    float_dtype,
    replication_chunks,
    rng_mode,
    run_chunks,
    segment_chunk,
    segment_split,
    start_chunk,
    start_split,
)
from afd_jax.workload.containers import ParametricWorkload, TraceWorkload

SimulationResult = MonteCarloResult
"""The result of :func:`simulate` (the one Monte Carlo result type)."""

DEFAULT_MEMORY_BUDGET = 1 << 30
_DEFAULT_OPTS = ModelOptions()
_TARGET_SLOT_STEPS_PER_CALL = 1 << 28  # progress granularity of the trajectory kernels
_ACCELERATOR_UNROLL = 4
"""Requests per loop iteration of the fast kernel's scans on an accelerator (on CPU: 1). On
an H200, 64 replications x 20,000 steps: 20.6 ms unrolled 4, 24.6 ms not unrolled, 27.8 ms
unrolled 2 (fastest of two alternating passes; docs/benchmarks.md)."""
_ACCELERATOR_STEP_UNROLL = 8
"""Steps per loop iteration of the trajectory kernel on an accelerator (on CPU: 1), each
step's state materialised (docs/benchmarks.md, run 6: faster than 1, 2 or 4 on an H200;
plain scan unrolling, which fused the steps, was slower). A divisor of every segment length
(a multiple of BLOCK)."""
_PACK_STEP_CARRY = True
"""The step kernel's loop carries each slot's steps left and requests taken in one uint32 word
where they fit (``kernels.trajectory.trajectory_segment``'s ``packed``: 1.2x to 1.35x on CPU,
docs/cpu-speed.md, round 18; the same numbers). ``experiments/bench_kernels.py
--plain-carry`` turns it off, for the A/B on a GPU."""
_BARRIER_HALVES_BACKENDS = ("cpu",)
"""Backends on which the barrier kernel draws both halves of its snapshots together
(``kernels.barrier.barrier_loads``' ``halves``: faster on CPU, slower on an H200 in round 13;
the same numbers either way). ``experiments/bench_kernels.py --barrier-halves`` turns it on
everywhere, for the A/B on a GPU."""
_FAST_MAX_SEGMENT = 1 << 14  # longer: the summaries leave the cache (docs/cpu-speed.md)
_SPLIT_MIN_STEPS = 2500  # one replication from here on: workers split over CPU devices


class StepsRun(NamedTuple):
    """The validated configuration of one steps-window run (sizes are Python ints)."""

    kernel: str
    batch: int
    r_max: int
    steps: int
    warmup: int
    replications: int
    init: str
    seed: int
    level: float
    serial: bool
    budget: int
    segment_steps: int | None
    reps_per_call: int | None
    precision: str = "float32"
    shape_buckets: bool = True

    @property
    def slots(self) -> int:
        return self.r_max * self.batch


class StepsSetup(NamedTuple):
    """What every chunk of a run shares: sampler pytree, StepModel, histogram bins (traced
    float32 and the float64 (log_lo, inv_w)), base key and the largest slot load."""

    sampler: object
    model: StepModel
    hist: KB.TauHistogram
    bins: tuple
    base: jax.Array
    max_load: int


# ---------------------------------------------------------------- inputs


def _check_run(kernel, batch, r_max, steps, warmup, replications, init, level) -> None:
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
    check_level(level)
    if kernel == "barrier" and (warmup or init != "stationary"):
        raise InputError(
            "the barrier kernel samples the steady state: no warmup or cold init", field="kernel"
        )


def _require_memory(kernel, batch, r_max, steps, warmup, replications) -> None:
    """Before any work: the smallest chunk (one block of snapshots, one replication's slots)
    and host arrays that grow with the run (barrier: two int64 indices per snapshot block;
    trajectories: the int32 step counter, and the per-block sums of a single replication)
    against the memory budget."""
    slots = int(batch) * int(r_max)
    least = slots * (KB.BLOCK * 48 if kernel == "barrier" else 64)
    require(least, f"one chunk of {r_max} x {batch} slots", "lower --batch or --r-max")
    sums = 8 * int(replications) * (4 * int(r_max) + 3)  # StepAccumulator's float64 sums
    require(sums, f"the sums of {replications} replications", "lower --replications")
    n_blocks = -(-(int(steps) + int(warmup)) // KB.BLOCK)
    hint = "lower --steps or --replications"
    if kernel == "barrier":
        require(16 * n_blocks * replications, f"the block index of {steps} snapshots", hint)
        return
    if steps + warmup >= E.INT32_LIMIT:
        raise InputError(
            f"warmup + steps = {steps + warmup} exceeds the int32 step counter of the "
            "trajectory kernels (< 2^31); use --kernel barrier or fewer --steps",
            field="steps",
        )
    if replications == 1:
        require(8 * (r_max + 2) * n_blocks, f"the block sums of {steps} steps", hint)


def _sampler_and_max_load(source, opts: ModelOptions, given):
    """Alias (or copula) sampler pytree and the largest possible slot load."""
    off = int(opts.load_offset)
    if isinstance(source, TraceWorkload | ParametricWorkload):
        max_load = max_slot_load(source, off, given)
        return make_sampler(source, off, draw="alias"), max_load
    sampler = make_sampler(source, draw="alias")
    return sampler, max_slot_load(sampler, given=given)


def step_model(
    lat: Latency,
    batch: int,
    r_max: int,
    opts: ModelOptions,
    max_load: int | None = None,
    dtype=jnp.float32,
) -> StepModel:
    """StepModel (``dtype``: float32, or float64 for ``precision="float64"``) with G(r) and
    t_F(r) for r = 1..r_max computed in float64 (``afd_jax.model.latency``); a table Attention
    stage travels as an :func:`attn_grid` (``max_load``, the largest slot load, is then
    required)."""
    lat = L.host_latency(lat)
    r = np.arange(1, r_max + 1, dtype=np.float64)
    grid = None
    if not L.is_affine(lat.attn):
        if max_load is None:
            raise ValueError("a table Attention stage needs max_load")
        grid = attn_grid(lat, batch, max_load, dtype)
    return StepModel(
        jnp.asarray(lat.alpha_attn, dtype),
        jnp.asarray(lat.beta_attn, dtype),
        jnp.asarray(L.other_stages(lat, r, batch, opts), dtype),
        jnp.asarray(L.t_ffn(lat, r, batch), dtype),
        grid,
    )


_ALIGNED: dict = {}  # samplers with 8-word alias rows, per sampler


def _wide_rows(run: StepsRun) -> bool:
    """Whether the run draws from 8-word alias rows (``kernels.sampling.aligned_rows``; the
    same draws): the fast kernel everywhere, the barrier kernel's request draw (where pi is
    not drawn from its own table) on accelerators (its word-by-word draw; on CPU its paired
    draw was slower with them), never the step-by-step kernel (slower with them on both).
    Measured: docs/benchmarks.md, run 8."""
    return run.kernel == "fast" or (run.kernel == "barrier" and jax.default_backend() != "cpu")


def _placed(run: StepsRun, setup: StepsSetup, mesh: RowMesh) -> StepsSetup:
    """The run's constants (sampler, step model, histogram bins, base key) on every device of
    ``mesh``, as part of the setup: each call of the chunk functions then finds them there,
    and ``wall_seconds`` times the Monte Carlo work, not their placement (0.4 to 1 ms for two
    CPU devices, a large share of a short single replication; docs/cpu-speed.md)."""
    sampler = setup.sampler
    if _wide_rows(run):
        leaves = jax.tree_util.tree_leaves(sampler)
        sampler = reuse_for(_ALIGNED, leaves, lambda: KS.aligned_rows(sampler))
    sampler = mesh.replicate(sampler, keep=True)
    model, hist, base = mesh.replicate((_bucket_model(run, setup.model), setup.hist, setup.base))
    return setup._replace(sampler=sampler, model=model, hist=hist, base=base)


def _bucket_model(run: StepsRun, model: StepModel) -> StepModel:
    """The step model of the fast kernel's shape bucket (:func:`_shapes`): G(r) and t_F(r)
    of the padded workers repeat the last real r (unused, dropped by :func:`_real_workers`)."""
    if run.kernel != "fast" or not run.shape_buckets:
        return model
    pad = partial(np.pad, pad_width=(0, bucket_size(run.r_max) - run.r_max), mode="edge")
    return model._replace(other=pad(model.other), t_ffn=pad(model.t_ffn))


def _histogram(lat, batch, max_load, model: StepModel, serial: bool):
    """Log bins spanning every possible tau: (TauHistogram, (log_lo, inv_w))."""
    other = np.asarray(model.other, np.float64)
    lows = (float(L.t_attn(L.host_latency(lat), 0.0, float(batch))), other.min())
    highs = (E.attn_time_max(lat, batch, max_load), other.max())
    log_lo, inv_w = E.tau_bins(*E.stage_bounds(lows, highs, serial))
    dtype = model.other.dtype
    hist = KB.TauHistogram(jnp.asarray(log_lo, dtype), jnp.asarray(inv_w, dtype))
    return hist, (log_lo, inv_w)


def check_int32(batch: int, max_load: int) -> None:
    """InputError when B * (largest slot load) could overflow the kernels' int32 worker loads."""
    if int(batch) * int(max_load) >= E.INT32_LIMIT:
        raise InputError(
            f"B * max slot load = {batch} * {max_load} could overflow int32 worker loads; "
            "use a smaller batch (or a workload with shorter requests)",
            field="batch",
        )


def preflight(source, batch: int, r_max: int, opts: ModelOptions = _DEFAULT_OPTS, **run) -> None:
    """Every check :func:`simulate` makes before its work, without doing it (a sweep validates
    its Monte Carlo scenarios before writing any state): argument ranges, memory, int32.
    ``run``: kernel, steps, warmup, replications, init as in :func:`simulate`."""
    kw = dict(kernel="barrier", steps=4096, warmup=0, replications=8, init="stationary")
    kw.update(run)
    _check_run(kw["kernel"], batch, r_max, kw["steps"], kw["warmup"], kw["replications"],
               kw["init"], 0.95)  # fmt: skip
    _require_memory(kw["kernel"], batch, r_max, kw["steps"], kw["warmup"], kw["replications"])
    check_int32(batch, max_slot_load(source, int(opts.load_offset)))


def _setup(source, lat, opts, run: StepsRun, given) -> StepsSetup:
    loads = None
    if run.kernel == "barrier":  # pi itself where it fits a table: one block per slot
        work = run.steps * run.replications * run.slots
        loads = load_alias_for(source, int(opts.load_offset), work)
    if loads is None:
        sampler, max_load = _sampler_and_max_load(source, opts, given)
    else:  # no request sampler needed
        sampler, max_load = loads, max_slot_load(source, int(opts.load_offset), given)
    check_int32(run.batch, max_load)
    model = step_model(lat, run.batch, run.r_max, opts, max_load, float_dtype(run.precision))
    hist, bins = _histogram(lat, run.batch, max_load, model, run.serial)
    return StepsSetup(sampler, model, hist, bins, jr.key(run.seed), max_load)


# ---------------------------------------------------------------- accumulation


class StepAccumulator:
    """Float64 host sums of the kernels' float32 block sums, per replication (and per block
    for batch means)."""

    def __init__(self, n_rep: int, r_max: int, keep_blocks: bool):
        z = partial(np.zeros, dtype=np.float64)
        self.tau, self.tau_sq = z((n_rep, r_max)), z((n_rep, r_max))
        self.max_attn, self.worker_load = z((n_rep, r_max)), z((n_rep, r_max))
        self.load, self.load_sq, self.count = z(n_rep), z(n_rep), z(n_rep)
        self.hist = None  # int32 or int64 [r_max, n_bins] counts, from the first add
        self.keep_blocks = keep_blocks
        self.block_tau, self.block_load, self.block_count = [], [], []

    _STATE = ("tau", "tau_sq", "max_attn", "worker_load", "load", "load_sq", "count", "hist")
    _BLOCKS = ("block_tau", "block_load", "block_count")

    def state(self) -> dict:
        """The sums as a nest of arrays (a checkpoint's, :mod:`.checkpoint`)."""
        return {k: getattr(self, k) for k in self._STATE + self._BLOCKS}

    def load_state(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])
        for k in self._BLOCKS:
            setattr(self, k, list(state[k]))

    def add(self, reps: np.ndarray, sums, n_real: int):
        """sums: StepSums with a leading axis over the chunk's rows ([rows, nb, ...]); the
        first ``n_real`` rows are the distinct replications ``reps``. Block sums are added
        in float64, histogram counts exactly."""
        idx, s = reps[:n_real], {}
        for name in sums._fields:  # slot_load and slot_load_sq go to load and load_sq
            if name != "hist":
                s[name] = np.asarray(getattr(sums, name)[:n_real], np.float64)
                getattr(self, name.replace("slot_", ""))[idx] += s[name].sum(axis=1)
        # int32 counts while no bin can reach 2**31 (a bin counts at most every valid step so
        # far), then int64: no fresh 2 MB int64 array per call (its page faults cost ~1 ms)
        hist = np.asarray(sums.hist)
        if self.hist is None:
            self.hist = hist  # the fetched counts (never written: a sum is a new array)
        else:
            wide = self.count.sum() >= E.INT32_LIMIT or self.hist.dtype == np.int64
            self.hist = np.add(self.hist, hist, dtype=np.int64 if wide else hist.dtype)
        if self.keep_blocks:
            self.block_tau.append(s["tau"][0])
            self.block_load.append(s["slot_load"][0])
            self.block_count.append(s["count"][0])


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
    shape_buckets: bool = True,
    progress: bool = False,
    dynamics: Dynamics | None = None,
    precision: str = "float32",
    checkpoint=None,
) -> MonteCarloResult:
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
      shape_buckets: the fast kernel runs with r_max and B padded to :func:`bucket_size`
        (nearby r_max and B share one compiled program; the padding carries no load and is
        dropped, the numbers are bit-identical to ``False``, which compiles for the exact
        shape).
      progress: tqdm bar on stderr (only when stderr is a terminal).
      dynamics: None (today's model) or a :class:`~afd_jax.kernels.dynamics.Dynamics`: the
        dynamics kernel (routing, KV capacity, micro-batches, noise, expert imbalance;
        docs/dynamics.md) runs instead of ``kernel`` (``afd_jax.montecarlo.dynamics``).
      precision: "float32" (default) or "float64": the float dtype of the kernels' step
        times and block sums (``afd_jax.kernels.barrier.summarise_steps``); float64 needs
        ``jax_enable_x64`` (InputError otherwise). The random streams are the same.
      checkpoint: a file path: the run's sums are saved there as chunks of replications (or
        of snapshot blocks) finish, and a rerun of the same run resumes from it, to the same
        numbers (:mod:`.checkpoint`; one process only). The result's ``checkpoint`` says how
        many chunks were found done.

    Raises InputError on bad sizes or when B * max slot load (plus the segment for "fast")
    could overflow int32.
    """
    if dynamics is not None:
        kernel = "trajectory"  # the dynamics kernel steps slots one decode step at a time
    _check_run(kernel, batch, r_max, steps, warmup, replications, init, level)
    check_seed("seed", seed)
    float_dtype(precision)
    validate_latency(lat, batch=batch)
    validate_options(opts)
    _require_memory(kernel, batch, r_max, steps, warmup, replications)
    if memory_budget_bytes is None:
        on_cpu = jax.devices()[0].platform == "cpu"
        memory_budget_bytes = DEFAULT_MEMORY_BUDGET * (1 if on_cpu else 8)
    run = StepsRun(
        kernel,
        *map(int, (batch, r_max, steps, warmup, replications)),
        init,
        int(seed),
        level,
        opts.overlap == "serial",
        int(memory_budget_bytes),
        segment_steps,
        replications_per_call,
        precision,
        bool(shape_buckets),
    )
    if dynamics is not None:
        return _simulate_dynamics(
            workload_or_sampler, lat, run, opts, dynamics, max_slot_load, progress, checkpoint
        )
    with rng_mode():
        return _simulate_steps(
            workload_or_sampler, lat, run, opts, max_slot_load, progress, checkpoint
        )


def _simulate_steps(source, lat, run: StepsRun, opts, given, progress, checkpoint):
    """The steps window's run of a validated ``run``: its setup and mesh, the checkpoint (its
    inputs: the latency, the sampler, the step model and the histogram bins), the barrier or
    trajectory driver, the result."""
    setup = _setup(source, lat, opts, run, given)
    mesh = _mesh(run)
    ckpt = run_checkpoint(checkpoint, mesh, dict(window="steps", run=run, opts=opts),
                          latency=lat, workload=setup.sampler, step_model=setup.model,
                          step_time_bins=setup.bins)  # fmt: skip
    setup = _placed(run, setup, mesh)
    t_start = time.perf_counter()
    bar = Progress(progress, f"simulate[{run.kernel}]")
    if run.kernel == "barrier":
        acc = _run_barrier(run, setup, bar, mesh, ckpt)
    else:
        acc = _run_trajectories(run, setup, bar, mesh, ckpt)
    bar.close()
    res = _result(lat, run, setup, acc, time.perf_counter() - t_start)
    return dataclasses.replace(
        res, devices=mesh.n, processes=mesh.processes, checkpoint=ckpt and ckpt.info()
    )


def _mesh(run: StepsRun) -> RowMesh:
    """Replications over every device. One replication of at least :data:`_SPLIT_MIN_STEPS`
    steps of the fast kernel, or of any length of the step kernel, on CPU in a single process
    has its workers split over the devices (:func:`~afd_jax.montecarlo.spine.segment_split`,
    when they divide its worker count, padded for the fast kernel; the numbers are the same):
    the fast kernel on 2 cores 1.05x faster at 2,500 steps and 1.2x from 3,000, while at 2,000
    steps the exchange costs what it saves (docs/cpu-speed.md); the step kernel 2.9x at 2,000
    steps (round 17).
    Otherwise one replication is one row on one device (XLA:CPU runs parts of it on several
    threads)."""
    if run.kernel == "barrier" or run.replications > 1:
        return RowMesh()
    padded = run.kernel == "fast" and run.shape_buckets  # the step kernel is never padded
    workers = bucket_size(run.r_max) if padded else run.r_max
    n_local = jax.local_device_count()
    long_enough = run.kernel == "trajectory" or run.warmup + run.steps >= _SPLIT_MIN_STEPS
    if (
        long_enough
        and jax.default_backend() == "cpu"
        and jax.process_count() == 1
        and n_local > 1
        and workers % n_local == 0
    ):
        return RowMesh(split=True)
    return RowMesh(1)


def _simulate_dynamics(source, lat, run: StepsRun, opts, dynamics, given, progress, checkpoint):
    """The dynamics kernel with the same sampler, sizes and chunking options."""
    check_kv_capacity(source, dynamics.kv_capacity, int(opts.load_offset))
    sampler, max_load = _sampler_and_max_load(source, opts, given)
    drun = DynRun(run, opts, dynamics)
    return simulate_dynamics(sampler, max_load, lat, drun, progress, checkpoint)


KV_NEVER_ADMITTED = 1e-12
"""The largest share of requests a KV capacity may leave with no room even in an empty worker
(the parametric families cut their tails at 1e-15; a run draws far fewer than 1e12 requests)."""


def check_kv_capacity(source, capacity: int, load_offset: int = 0) -> None:
    """InputError when a workload's prompts exceed a KV capacity with probability above
    :data:`KV_NEVER_ADMITTED`: such a request fits no worker, so in place it holds its slot
    for good (the run's throughput would fall with its length, towards zero) and routed it
    ends the routing of every step that draws it (docs/dynamics.md). The error names the
    smallest capacity that leaves at most that share. A sampler pytree is not checked (its
    prompts are not at hand)."""
    law = prompt_law(source, load_offset) if capacity > 0 else None
    if law is None:
        return
    values, probs = law
    share = float(probs[values > capacity].sum())
    if share <= KV_NEVER_ADMITTED:
        return
    uniq, which = np.unique(values, return_inverse=True)
    mass = np.bincount(which.ravel(), weights=probs, minlength=uniq.size)
    # Pr(P > uniq[i]) as sums of the tail itself (1 - a cumsum left ~1e-12 of round-off)
    above = np.append(np.cumsum(mass[::-1])[::-1][1:], 0.0)
    need = int(uniq[np.argmax(above <= KV_NEVER_ADMITTED)])
    raise InputError(
        f"{share:.3g} of the requests have prompts above {capacity} tokens (load offset "
        "included) and could never be admitted (in place each would hold its slot for good); "
        f"raise the capacity to at least {need} tokens (the largest prompt: {int(values.max())}),"
        " or cap the prompts (filter the trace; a family's prompt_max=)",
        field="kv-capacity",
    )


def _run_barrier(run: StepsRun, setup: StepsSetup, bar: Progress, mesh: RowMesh, ckpt=None):
    """Blocks of i.i.d. snapshots, grouped into chunks of blocks (all into one accumulator
    row: the snapshots are i.i.d. across replications)."""
    acc = StepAccumulator(1, run.r_max, keep_blocks=False)
    n_blocks_rep = -(-run.steps // KB.BLOCK)
    chunk = mesh.round_up(_barrier_chunk(run, n_blocks_rep, mesh.n))
    work_rep = np.repeat(np.arange(run.replications), n_blocks_rep)
    work_blk = np.tile(np.arange(n_blocks_rep), run.replications)
    halves = jax.default_backend() in _BARRIER_HALVES_BACKENDS
    kernel = barrier_kernel(run.r_max, run.batch, halves=halves)
    params = SegmentParams(setup.sampler, jnp.int32(0))

    def chunks():
        n_work = work_rep.size
        for c0 in range(0, n_work, chunk):
            idx = np.minimum(np.arange(c0, c0 + chunk), n_work - 1)
            blk = work_blk[idx]
            nv = np.minimum(KB.BLOCK, run.steps - blk * KB.BLOCK).astype(np.int32)
            nv[min(chunk, n_work - c0) :] = 0
            yield Chunk(idx, chunk, (0,), (work_rep[idx], blk, nv))

    def advance(c: Chunk, t0, state):
        reps, blk, nv = mesh.put(tuple(np.asarray(x, np.int32) for x in c.data))
        keys = block_keys(setup.base, reps, blk)
        window = Window(jnp.int32(0), jnp.int32(0), nv, jnp.int32(c.n_real))
        kw = dict(kernel=kernel, batch=run.batch, serial=run.serial, groups=mesh.n)
        _, sums, _ = segment_chunk(keys, state, params, window, setup.model, setup.hist, **kw)
        return state, sums  # on the device: fetched by record, after the next dispatch

    def record(c: Chunk, t0, sums):
        sums = mesh.fetch(sums)
        # the chunk's blocks are one row of the accumulator: [1, blocks, ...]
        rows = jax.tree_util.tree_map(
            lambda x: x.reshape((1, -1) + x.shape[2:]), sums._replace(hist=None)
        )
        acc.add(np.zeros(1, np.int64), rows._replace(hist=sums.hist), 1)
        bar.tick(int(c.data[2].sum()) * run.slots)

    ckpt = ckpt and ckpt.attach(acc.state, acc.load_state)
    run_chunks(chunks(), lambda c: (), advance, record, ckpt)
    return acc


def _barrier_chunk(run: StepsRun, n_blocks_rep: int, devices: int = 1) -> int:
    """Blocks of snapshots per call: from the memory budget (the slot draws take 48 B a slot
    on CPU; on an accelerator they are drawn and summed in one fusion, and chunks 4x larger
    ran the kernel 2x faster on an H200: smaller ones left the device waiting for the host,
    docs/benchmarks.md), as equal as possible over the fewest calls (:func:`_balanced`: 16
    blocks at most 10 per call are 2 calls of 8, not 10 + 6 padded to 10), or
    ``run.reps_per_call``; capped by :func:`_histogram_cap`."""
    per_block = KB.BLOCK * run.slots * (48 if jax.default_backend() == "cpu" else 12)
    most = max(1, run.budget // per_block)
    chunk = _balanced(n_blocks_rep * run.replications, most, devices)
    if run.reps_per_call:
        chunk = int(run.reps_per_call)
    return _histogram_cap(chunk, KB.BLOCK)


def _histogram_cap(rows: int, steps: int) -> int:
    """``rows`` rows of ``steps`` steps per call, fewer if needed so that the call's int32
    histogram, which counts up to rows * steps steps in one bin, stays below 2**30 (half the
    int32 limit: room for the rounding up to the device count)."""
    return max(1, min(int(rows), (E.INT32_LIMIT // 2) // int(steps)))


def bucket_size(n: int) -> int:
    """The shape bucket of ``n`` workers (r_max) or slots per worker (B) for the fast kernel:
    n rounded up to four values per octave (exact up to 8; then steps of 2 to 16, 4 to 32, 8
    to 64, 16 to 128...), so that runs with nearby r_max and B share one compiled program (and
    its persistent-cache entry) for at most 25 % more slots each. The padding never changes
    the numbers."""
    n = int(n)
    step = 1 << max(0, (n - 1).bit_length() - 3)
    return -(-n // step) * step


class _Shapes(NamedTuple):
    """The kernel of a trajectory run, the kernel that draws its initial state, the real
    (workers, B) when it is padded (else None), and its B (the StepModel of its worker count
    is the setup's: :func:`_bucket_model`)."""

    kernel: object
    init: object
    real: tuple | None
    batch: int


def _shapes(run: StepsRun, plan, mesh: RowMesh) -> _Shapes:
    """Trajectory kernel; fast kernel padded to (bucket_size(r_max), bucket_size(B)) unless
    ``run.shape_buckets`` is False (padded workers: G(r) and t_F(r) of the last real r, unused
    and dropped by :func:`_real_workers`), its random words paired when ``mesh`` keeps every
    core busy (:func:`_paired`); loops unrolled on accelerators (:data:`_ACCELERATOR_UNROLL`,
    :data:`_ACCELERATOR_STEP_UNROLL`)."""
    exact = (run.r_max, run.batch)
    on_cpu = jax.default_backend() == "cpu"
    if run.kernel == "trajectory":
        unroll = 1 if on_cpu else _ACCELERATOR_STEP_UNROLL
        kernel = trajectory_kernel(
            exact, run.init, plan.length, plan.n_requests, unroll, plan.packed
        )
        return _Shapes(kernel, kernel, None, run.batch)
    sizes = (run.init, plan.length, plan.n_requests, plan.n_bulk)
    carry = dict(paired=_paired(mesh), unroll=1 if on_cpu else _ACCELERATOR_UNROLL)
    if not run.shape_buckets:
        kernel = fast_kernel(exact, *sizes, **carry)
        return _Shapes(kernel, kernel, None, run.batch)
    shape = (bucket_size(run.r_max), bucket_size(run.batch))
    kernel = fast_kernel(shape, *sizes, **carry)
    return _Shapes(kernel, padded_init(shape, run.init, exact), exact, shape[1])


def _paired(mesh: RowMesh) -> bool:
    """Whether the fast kernel carries each request's two random words as one pair (one fusion
    hashes the block, ``kernels.fast.fast_segment``) rather than as two arrays (two fusions,
    each hashing it). On CPU the two fusions run at the same time on a core that the call
    leaves free: one device with a spare core ran the kernel alone 6 to 17 % faster with two
    arrays, while with both devices busy the pair was 11 to 15 % faster at 5,120 steps (a
    toss-up at 2,048; docs/cpu-speed.md, round 7). GPUs: two arrays (on an H200, 64
    replications x 20,000 steps took 24.6 ms with two arrays, 26.1 ms paired, fastest of two
    alternating passes; docs/benchmarks.md). Processes sharing a host each count only their
    own devices. The numbers are the same either way."""
    if jax.default_backend() != "cpu":
        return False
    here = mesh.n // mesh.processes  # this process's devices in the call
    return here >= available_cores()


def _device_totals(run: StepsRun, acc: StepAccumulator) -> bool:
    """Whether the segments return each replication's totals (``spine.block_totals``) rather
    than its blocks: when the blocks are not kept (several replications), they are float32
    and float64 is on (the same numbers either way, bit for bit; float64 blocks are added on
    the host, whose order the results then keep)."""
    return not acc.keep_blocks and run.precision == "float32" and jax.config.jax_enable_x64


def _real_workers(sums, r_max: int):
    """StepSums (NumPy) of a padded kernel cut to the first ``r_max`` workers."""
    cut = {f: getattr(sums, f)[..., :r_max] for f in ("tau", "tau_sq", "max_attn", "worker_load")}
    return sums._replace(hist=sums.hist[:r_max], **cut)


def _fast_requests(length: int, mean_d: float, sd_d: float) -> int:
    """K: fresh requests per slot that cover ``length`` steps in every slot of a call, a
    margin of 7 standard deviations of the renewal count. The count's upper tail is heavier
    than a normal one: with 5, 2.5e-6 of the slots of the Azure conversation trace fell short
    at 10,112 steps, so one call of 14 x 16,384 slots in two reran (docs/cpu-speed.md); the
    requests beyond the bulk (:func:`_bulk_requests`) run only in the tail's lanes, so the
    margin costs little. Rounded up to 8 values per octave (<= 12.5 % extra, few shapes)."""
    return max(8, _renewal_quantile(length, mean_d, sd_d, sigmas=7.0, extra=4.0, octave=8))


def _request_bytes(sampler, kernel: str = "fast") -> int:
    """Working memory per slot and request drawn ahead. The step kernel (``kernel`` =
    "trajectory") keeps each slot's next K requests and their draw: XLA's memory analysis of
    a segment (r_max = 64, B = 256, K = 16 and 64) gave 32 B per request for an alias table,
    28 for the product sampler, 48 for a table or copula sampler: 40 and 64 counted.
    The fast kernel's (an upper bound, measured on
    CPU with r_max = 100 and B = 8,000 against 32,000): about 12 B with an alias table (the
    hot path; 64 kept as the margin of the chunk plan) and about 100 B with the generic path of
    a table or copula sampler, whose requests are drawn up front with their uniforms,
    latents and search indices (a ProductSampler's, drawn up front from two or three blocks
    per request, is counted the same: an upper bound, not measured apart)."""
    if kernel == "trajectory":
        return 40 if isinstance(sampler, KS.AliasSampler | KS.ProductSampler) else 64
    return 64 if isinstance(sampler, KS.AliasSampler) else 128


def _bulk_requests(length: int, mean_d: float, sd_d: float) -> int:
    """K1: the requests every slot runs; the slots still short of ``length`` then run the rest
    of K gathered into S/16 lanes. Two standard deviations plus one: in NumPy renewal
    simulations of the three traces and the paper's workload (segments of 128 to 16,384
    steps) at most 1.6 % of the slots stay short, against the lanes' 6.25 %
    (tests/test_fast_tail.py). The former + 4 and 8 values per octave ran up to twice the
    requests the slots need at 2,048 steps (docs/cpu-speed.md, round 7). Rounded up to 16
    values per octave."""
    return _renewal_quantile(length, mean_d, sd_d, sigmas=2.0, extra=1.0, octave=16)


def _renewal_quantile(length, mean_d, sd_d, *, sigmas, extra, octave: int) -> int:
    """ceil(n + sigmas * SD + extra) for the renewal count of ``length`` steps (n = length /
    E[D], SD = (sd / mean) sqrt(n + 1)), rounded up to ``octave`` values per octave."""
    m = max(mean_d, 1.0)
    n = length / m
    k = max(1, int(math.ceil(n + sigmas * (sd_d / m) * math.sqrt(n + 1.0) + extra)))
    step = 1 << max(0, (k - 1).bit_length() - octave.bit_length())
    return -(-k // step) * step


def decode_mean_sd(sampler) -> tuple[float, float]:
    """Mean and SD of D for planning the requests drawn ahead: exact where
    ``samplers.decode_moments`` has them, else from 65,536 draws (:func:`_pilot_decode`)."""
    moments = decode_moments(sampler)  # exact for alias tables (trace workloads)
    if moments is None:
        moments = _pilot_decode(jr.key(12345), sampler, n=1 << 16)
    return float(moments[0]), float(moments[1])


def requests_ahead(sampler, length: int) -> tuple[int, int]:
    """(K, bytes per slot) of a step kernel's requests drawn ahead for ``length`` steps:
    :func:`_fast_requests`, and (K + 1) times :func:`_request_bytes` of the step kernel."""
    k = _fast_requests(length, *decode_mean_sd(sampler))
    return k, (k + 1) * _request_bytes(sampler, "trajectory")


@partial(jax.jit, static_argnames=("n",))
def _pilot_decode(key, sampler, *, n):
    _, d = KS.sample_requests(key, sampler, (n,))
    d = d.astype(jnp.float32)
    return d.mean(), d.std()


class _Plan(NamedTuple):
    """Chunk sizes of a trajectory run: steps per segment, replications per call, K; the fast
    kernel's bulk K; whether the step kernel packs its carry (``trajectory_segment``)."""

    length: int
    reps_per_call: int
    n_requests: int
    n_bulk: int | None = None
    packed: bool = False


def _segment_length(run: StepsRun) -> int:
    total_blocks = -(-(run.warmup + run.steps) // KB.BLOCK)
    if run.segment_steps:
        return KB.BLOCK * max(1, -(-int(run.segment_steps) // KB.BLOCK))
    if run.kernel == "trajectory":
        per_call = run.slots * KB.BLOCK * max(1, run.replications)
        blocks = max(1, _TARGET_SLOT_STEPS_PER_CALL // per_call)
        return KB.BLOCK * min(total_blocks, blocks)
    n_seg = -(-total_blocks // (_FAST_MAX_SEGMENT // KB.BLOCK))
    return KB.BLOCK * -(-total_blocks // n_seg)  # equal segments, little padding


def _plan(run: StepsRun, setup: StepsSetup, devices: int = 1) -> _Plan:
    """Replications per call from the memory budget; steps per call from it too. On CPU the
    spine runs a chunk's rows one after another on each of ``devices`` devices, so the kernel's
    working memory counts once per device and only the per-step statistics once per row."""
    total_blocks = -(-(run.warmup + run.steps) // KB.BLOCK)
    mean_d, sd_d = decode_mean_sd(setup.sampler)
    per_request = _request_bytes(setup.sampler, run.kernel)
    state = 64 if run.kernel == "trajectory" else 0  # its carry and per-step vectors

    def mem_per_rep(length):  # both kernels draw K requests per slot for a segment
        stats = length * run.r_max * 4 * 24
        k = _fast_requests(length, mean_d, sd_d)
        return run.slots * ((k + 1) * per_request + state) + stats

    length = _segment_length(run)
    if not run.segment_steps:
        while length > KB.BLOCK and mem_per_rep(length) > run.budget:
            blocks = length // KB.BLOCK
            n_seg = -(-total_blocks // max(1, blocks // 2))
            length = KB.BLOCK * -(-total_blocks // n_seg)
    other = "--kernel trajectory" if run.kernel == "fast" else "--kernel barrier"
    require(
        mem_per_rep(length),
        f"one segment of {run.r_max} x {run.batch} slots in the {run.kernel} kernel",
        f"lower --batch or --r-max, or use {other}",
    )
    if run.kernel == "fast" and run.batch * (setup.max_load + length + 1) >= E.INT32_LIMIT:
        raise InputError(
            f"B * (max slot load + segment) = {run.batch} * ({setup.max_load} + {length}) could "
            "overflow int32 in the fast kernel; use a smaller batch or the trajectory kernel",
            field="batch",
        )
    if run.reps_per_call:
        chunk = int(run.reps_per_call)
    elif jax.default_backend() == "cpu":
        stats = length * run.r_max * 4 * 24
        most = (run.budget - devices * (mem_per_rep(length) - stats)) // stats
        chunk = _balanced(run.replications, most, devices)
    else:
        chunk = _balanced(run.replications, run.budget // mem_per_rep(length), devices)
    chunk = _histogram_cap(chunk, length)
    n_req = _fast_requests(length, mean_d, sd_d)
    if run.kernel != "fast":
        # D <= max slot load + 1 (P + D - 1 with P >= 0, load offsets 0 or 1 from the CLI; a
        # longer D than that makes the segment uncovered and rerun, never wrong)
        packed = _PACK_STEP_CARRY and setup.max_load + 1 < PACKED_LEFT_LIMIT
        return _Plan(length, chunk, n_req, packed=packed)
    return _Plan(length, chunk, n_req, _bulk_requests(length, mean_d, sd_d))


def _balanced(replications: int, most: int, devices: int = 1) -> int:
    """Replications per call: a multiple of ``devices``, at most ``most`` (but >= one per
    device), as equal as possible over the fewest calls (32 replications, at most 12 per call
    on one device: 3 calls of 11, not 12 + 12 + 8 padded to 12)."""
    units = -(-replications // devices)
    per = max(1, min(units, most // devices))
    return devices * -(-units // -(-units // per))


class _Unstarted(NamedTuple):
    """A chunk of one segment whose start runs in the segment's program: the rows and the
    start's SegmentParams (:func:`~afd_jax.montecarlo.spine.start_split`)."""

    rows: np.ndarray
    params: SegmentParams


@dataclasses.dataclass
class _Segment:
    """A dispatched segment of a trajectory chunk: the chunk, its start step, the state it
    started from (kept for a rerun with a larger kernel), the state after it, its sums and
    ``covered`` (device values; :func:`_run_trajectories`; a rerun replaces the last three)."""

    chunk: Chunk
    t0: int
    before: object
    after: object
    sums: object
    covered: object


def _run_trajectories(run: StepsRun, setup: StepsSetup, bar: Progress, mesh: RowMesh, ckpt=None):
    """Replications in chunks, each stepped segment by segment; a segment (of either kernel)
    is redone with a larger K (``kernel.enlarge()``) when its requests fall short."""
    plan = _plan(run, setup, 1 if mesh.split else mesh.n)
    total = run.warmup + run.steps
    kernel, init_kernel, real, batch = _shapes(run, plan, mesh)
    current = [kernel]  # K only grows
    acc = StepAccumulator(run.replications, run.r_max, keep_blocks=run.replications == 1)
    chunk = mesh.round_up(plan.reps_per_call)
    sampler, model, hist, base = setup.sampler, setup.model, setup.hist, setup.base  # _placed
    totals = _device_totals(run, acc)
    t_end = mesh.put(np.full((chunk,), total, np.int32))  # every row runs to the end

    def start(c: Chunk):
        params = SegmentParams(sampler, np.int32(0))
        if mesh.split and len(c.segments) == 1:
            # one launch (start_split); with more segments segment_split compiles anyway,
            # and start_split would be one more program to compile (0.7 s)
            return _Unstarted(c.rows.astype(np.int32), params)
        rows = mesh.put(c.rows.astype(np.int32))
        return start_chunk(base, rows, params, kernel=init_kernel, sharding=mesh.states)

    def dispatch(c: Chunk, t0, before) -> _Segment:
        """Segment ``t0`` of chunk ``c`` from the state ``before`` with the current kernel,
        dispatched (not waited for)."""
        # host scalars (np.int32): no eager device op per argument
        params = SegmentParams(sampler, np.int32(t0))
        window = Window(np.int32(t0), np.int32(run.warmup), t_end, np.int32(c.n_real))
        if real is not None:
            params = params._replace(batch=np.int32(run.batch))
            window = window._replace(real=(np.int32(run.r_max), np.int32(run.batch)))
        kw = dict(kernel=current[0], batch=batch, serial=run.serial)
        data = (params, window, model, hist)
        if isinstance(before, _Unstarted):  # the started state is kept for a rerun
            k0, s0, new, sums, covered = start_split(
                base, *before, *data, init_kernel=init_kernel, mesh=mesh.mesh, **kw
            )
            before = (k0, s0)
        elif mesh.split:
            new, sums, covered = segment_split(*before, *data, mesh=mesh.mesh, **kw)
        else:
            new, sums, covered = segment_chunk(*before, *data, groups=mesh.n, totals=totals, **kw)
        return _Segment(c, t0, before, (before[0], new), sums, covered)

    def settle(seg: _Segment) -> bool:
        """Rerun ``seg`` in place with larger kernels until its requests cover it (waits for
        its ``covered``); whether it was rerun."""
        rerun = False
        while current[0].enlarge is not None and not bool(seg.covered):
            current[0] = current[0].enlarge()
            new = dispatch(seg.chunk, seg.t0, seg.before)
            seg.after, seg.sums, seg.covered = new.after, new.sums, new.covered
            rerun = True
        return rerun

    def advance(c: Chunk, t0, state):
        # ``state``: a start, or the segment before, unchecked: this segment is dispatched
        # from its end state before that one is known to be covered (so the device never
        # waits for the check); in the rare case it was not, both run again
        before = state.after if isinstance(state, _Segment) else state
        seg = dispatch(c, t0, before)
        if isinstance(state, _Segment) and settle(state):
            seg = dispatch(c, t0, state.after)
        return seg, seg

    def record(c: Chunk, t0, seg: _Segment):
        settle(seg)
        acc.add(c.rows, _real_workers(mesh.fetch(seg.sums), run.r_max), c.n_real)
        bar.tick(c.n_real * run.slots * min(plan.length, total - t0))

    run_chunks(
        replication_chunks(run.replications, chunk, total, plan.length),
        start,
        advance,
        record,
        ckpt and ckpt.attach(acc.state, acc.load_state),
    )
    return acc


# ---------------------------------------------------------------- estimates


class _Means(NamedTuple):
    mean_tau: np.ndarray
    se_tau: np.ndarray
    q: float
    load_mean: float
    load_se: float
    se_warning: str | None = None


def _means(run: StepsRun, acc: StepAccumulator) -> _Means:
    """E[tau(r)], the mean slot load and their SEs: i.i.d. snapshots (barrier), replication
    means, or batch means of a single replication."""
    warning = None
    if run.kernel == "barrier":
        mean_tau, se_tau, q = E.mean_se(acc.tau, acc.count, run.level, iid_sq=acc.tau_sq)
        load_mean, load_se, _ = E.mean_se(acc.load, acc.count, run.level, iid_sq=acc.load_sq)
    elif run.replications >= 2:
        mean_tau, se_tau, q = E.mean_se(acc.tau, acc.count, run.level)
        load_mean, load_se, _ = E.mean_se(acc.load, acc.count, run.level)
    else:
        bm = E.batch_means(acc.block_tau, acc.block_count)
        bl = E.batch_means(acc.block_load, acc.block_count)
        if bm is None:
            mean_tau = acc.tau.sum(axis=0) / acc.count.sum()
            se_tau, q = np.full(run.r_max, np.nan), np.nan
            load_mean, load_se = float(acc.load.sum() / acc.count.sum()), float("nan")
        else:
            mean_tau, se_tau, q = E.mean_se(bm.totals, bm.counts, run.level)
            load_mean, load_se, _ = E.mean_se(bl.totals, bl.counts, run.level)
            if not bm.long_enough:
                warning = _short_run_warning(run, bm.iact_steps)
    load_mean, load_se = float(np.asarray(load_mean)), float(np.asarray(load_se))
    return _Means(mean_tau, se_tau, q, load_mean, load_se, warning)


def _short_run_warning(run: StepsRun, iact_steps: float) -> str:
    """Why a single replication's SE is too small: its steps hold fewer than two batches of
    :data:`~afd_jax.montecarlo.estimators.BATCH_IACTS` autocorrelation times."""
    need = 2 * E.BATCH_IACTS * iact_steps
    return (
        f"one replication of {run.steps} steps is shorter than {need:,.0f} steps (two batches "
        f"of {E.BATCH_IACTS:g} autocorrelation times of the step time, ~{iact_steps:,.0f} "
        "steps each): its batch-means SE is too small; use --replications >= 2 or more --steps"
    )


def _result(lat, run: StepsRun, setup: StepsSetup, acc: StepAccumulator, wall: float):
    """The MonteCarloResult of a steps-window run (float64 host arithmetic)."""
    lat = L.host_latency(lat)
    m = _means(run, acc)
    r = np.arange(1, run.r_max + 1)
    scale = L.throughput(lat, r, run.batch, 1.0)  # tokens/s per instance at tau = 1 us
    n_steps = acc.count.sum()
    idle = E.stream_idle(
        lat,
        run.batch,
        r,
        acc.tau.sum(axis=0),
        np.cumsum(acc.worker_load.sum(axis=0)),
        acc.max_attn.sum(axis=0),
        n_steps,
        L.t_ffn(lat, r, run.batch),
    )
    pct = E.percentiles(acc.hist, *setup.bins)
    total = run.steps if run.kernel == "barrier" else run.steps + run.warmup
    with np.errstate(divide="ignore", invalid="ignore"):
        lo_tau, hi_tau = m.mean_tau - m.q * m.se_tau, m.mean_tau + m.q * m.se_tau
        throughput = scale / m.mean_tau
        ones = np.ones(run.r_max)
        return MonteCarloResult(
            r=r,
            throughput=throughput,
            throughput_unit=L.throughput_unit(lat),
            se_warning=m.se_warning,
            fixed_step_r=E.fixed_step_r(
                lat, run.batch, setup.max_load, setup.model.other, run.serial
            ),
            se=throughput * m.se_tau / m.mean_tau,
            ci_low=scale / hi_tau,
            ci_high=np.where(lo_tau > 0, scale / lo_tau, np.inf),
            kernel=run.kernel,
            init=run.init,
            batch=run.batch,
            replications=run.replications,
            seed=run.seed,
            level=run.level,
            window={"kind": "steps", "steps": run.steps, "warmup": run.warmup},
            slot_steps=int(total * run.replications * run.slots),
            wall_seconds=wall,
            device=device_name(),
            mean_tau=m.mean_tau,
            se_tau=m.se_tau,
            **{k: v for k, v in zip(STEP_DIAGNOSTICS[:4], idle, strict=True)},
            step_p50=pct[0],
            step_p90=pct[1],
            step_p99=pct[2],
            tokens=run.steps * r * run.batch * ones,
            steps=run.steps * ones,
            elapsed_us=run.steps * m.mean_tau,
            active_fraction=ones,
            mean_slot_load=m.load_mean,
            se_slot_load=m.load_se,
            precision=run.precision,
        )


__all__ = [
    "ATTN_GRID",
    "INITS",
    "KERNELS",
    "STEP_DIAGNOSTICS",
    "SimulationResult",
    "attn_grid",
    "bucket_size",
    "device_name",
    "simulate",
    "step_model",
]

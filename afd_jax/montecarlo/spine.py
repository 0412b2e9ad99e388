"""The spine of every Monte Carlo driver: the one chunk loop, the jitted chunk of a
steps-window kernel, counter-based keys, device and progress facts.

Any kernel built on the contract of ``afd_jax.kernels.contract`` (``init`` / ``segment``, state
apart from info) runs through :func:`run_chunks`: a driver cuts its work into chunks (groups of
replications, blocks of snapshots, bundle sizes r), each chunk starts a state and advances it
over its segments, and every segment's info is recorded. Steps-window kernels share one jitted
chunk function, :func:`segment_chunk` (vmap of ``kernel.segment`` over the chunk's rows, then
float32 block sums, ``afd_jax.kernels.barrier.summarise_rows``); a new kernel or policy plugs
in by building a :class:`~afd_jax.kernels.contract.Kernel`, without a new driver.

Keys: ``fold_in(fold_in(key(seed), replication), tag)`` (:func:`start_chunk`), or per block of
snapshots ``fold_in(fold_in(key(seed), replication), block)`` (:func:`block_keys`), so results do
not depend on how work is chunked.

Devices: the rows of a chunk are split over every device (:class:`RowMesh`: a 1-D
``jax.sharding`` mesh, axis ``"rows"``; chunk sizes are rounded up to a multiple of the device
count with padded rows that do not count). With ``jax.distributed`` initialised the mesh spans
every process's devices (each process runs the same driver code; results come back to every
process through :meth:`RowMesh.fetch`); inside :func:`local_devices_only` (the sweep, whose
processes work on different scenarios) it spans this process's devices. Every row is computed
on one device from its own key, so results are bit-identical whatever the device count.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from afd_jax.choices import PRECISIONS
from afd_jax.errors import InputError
from afd_jax.kernels.barrier import BLOCK, StepSums, summarise_rows
from afd_jax.kernels.step import AttnGrid
from afd_jax.model import latency as L
from afd_jax.model.latency import Latency
from afd_jax.montecarlo.estimators import N_BINS
from afd_jax.montecarlo.samplers import reuse_for


def float_dtype(precision: str):
    """The JAX float dtype of ``precision`` (one of :data:`PRECISIONS`); InputError for an
    unknown name, or for float64 while ``jax_enable_x64`` is off (JAX would silently give
    float32)."""
    if precision not in PRECISIONS:
        raise InputError(
            f"must be one of {', '.join(PRECISIONS)}, got {precision!r}", field="precision"
        )
    if precision == "float64" and not jax.config.jax_enable_x64:
        raise InputError(
            "float64 needs jax_enable_x64 (the CLI enables it; in Python: "
            'jax.config.update("jax_enable_x64", True) or a jax.enable_x64() scope)',
            field="precision",
        )
    return jnp.float64 if precision == "float64" else jnp.float32


ATTN_GRID = 65536
"""Intervals of the load grid on which a table Attention stage reaches the kernels: every
integer load when B * max slot load <= ATTN_GRID (exact), else uniform, read linearly."""


def attn_grid(
    lat: Latency, batch, max_load: int, dtype=jnp.float32, top: float | None = None
) -> AttnGrid:
    """The table Attention time of ``lat`` at B = ``batch`` (``afd_jax.model.latency``, float64)
    on a uniform grid over [0, top] (default B * max slot load; :data:`ATTN_GRID` intervals,
    width >= 1), stored in ``dtype``."""
    top = max(int(batch * max_load if top is None else top), 1)
    n = min(top, ATTN_GRID)
    width = top / n
    loads = width * np.arange(n + 1, dtype=np.float64)
    values = L.t_attn(L.host_latency(lat), loads, float(batch))
    return AttnGrid(
        jnp.asarray(0.0, dtype),
        jnp.asarray(1.0 / width, dtype),
        jnp.asarray(values, dtype),
    )


class Chunk(NamedTuple):
    """One unit of work of :func:`run_chunks`: ``rows`` (the replication or block index of each
    row, padded to the chunk size), ``n_real`` (rows that count), ``segments`` (the start step
    of each segment), ``data`` (anything the driver's callbacks need)."""

    rows: Any
    n_real: int
    segments: tuple
    data: Any = None


def run_chunks(
    chunks: Iterable[Chunk],
    start: Callable[[Chunk], Any],
    advance: Callable[[Chunk, Any, Any], tuple],
    record: Callable[[Chunk, Any, Any], None],
    checkpoint=None,
) -> None:
    """The one chunk loop: for every chunk, ``state = start(chunk)``, then for every segment
    ``state, info = advance(chunk, segment, state)`` and ``record(chunk, segment, info)``, in
    that order, each segment recorded once the next one has been dispatched: JAX dispatches
    asynchronously, so while the host fetches and records segment i the device already works
    on segment i + 1 (``advance`` should leave its results on the device and ``record`` fetch
    them; a fetch in ``advance`` makes the device wait for the host: on an H200 it idled
    most of a barrier kernel's call, docs/benchmarks.md). With a ``checkpoint``
    (:class:`~afd_jax.montecarlo.checkpoint.Checkpoint`) the chunks it holds are skipped and
    it is told of each chunk whose last segment is recorded, and of a Ctrl-C."""
    if checkpoint is not None:
        chunks = list(chunks)
        done = checkpoint.start(chunks)
        chunks = [(i, c) for i, c in enumerate(chunks) if i >= done]
    else:
        chunks = enumerate(chunks)

    def finish(i, chunk, seg, info):
        record(chunk, seg, info)
        if checkpoint is not None and seg == chunk.segments[-1]:
            checkpoint.finished(i)

    pending = None
    try:
        for i, chunk in chunks:
            state = start(chunk)
            for seg in chunk.segments:
                state, info = advance(chunk, seg, state)
                if pending is not None:
                    finish(*pending)
                pending = (i, chunk, seg, info)
        if pending is not None:
            finish(*pending)
    except KeyboardInterrupt:
        if checkpoint is not None:
            checkpoint.interrupted()  # the finished chunks not yet saved
        raise


def replication_chunks(replications: int, chunk: int, total: int, length: int):
    """Chunks of ``chunk`` replications (the last padded with copies of its last replication,
    which do not count), each run over segments of ``length`` steps up to ``total``."""
    for c0 in range(0, replications, chunk):
        reps = np.arange(c0, min(c0 + chunk, replications))
        reps_p = np.concatenate([reps, np.full(chunk - reps.size, reps[-1])])
        yield Chunk(reps_p, reps.size, tuple(range(0, total, length)))


class Window(NamedTuple):
    """Which steps of a chunk count (traced int32): step ``t0 + i`` of row k counts when
    ``k < n_real`` and ``warmup <= t0 + i < t_end[k]``. ``real``: None, or the real (workers,
    B) of a kernel padded to a shape bucket (``summarise_rows``)."""

    t0: jax.Array
    warmup: jax.Array
    t_end: jax.Array
    n_real: jax.Array
    real: tuple | None = None


def window_mask(window: Window, rows: int, length: int):
    """bool[rows, length]: which steps of a segment count (see :class:`Window`)."""
    index = jnp.arange(rows, dtype=jnp.int32)
    return jax.vmap(lambda row: row_mask(window, row, length))(index)


def row_mask(window: Window, row, length: int, t_end=None):
    """bool[length]: which steps of row ``row`` (traced) count (:func:`window_mask`);
    ``t_end``: the row's ``window.t_end[row]``, when the caller has it (a row of a sharded
    chunk indexing the whole ``t_end`` gathers it across the devices)."""
    t = window.t0 + jnp.arange(length, dtype=jnp.int32)
    t_end = window.t_end[row] if t_end is None else t_end
    return (row < window.n_real) & (t >= window.warmup) & (t < t_end)


@partial(jax.jit, static_argnames=("kernel", "sharding"))
def start_chunk(base, reps, params, *, kernel, sharding=None):
    """The start of a chunk of replications ``reps`` in one call: ``(stream keys, states)``,
    the states ``kernel.init`` from the keys ``fold_in(fold_in(base, rep), 0)`` and the stream
    keys ``fold_in(fold_in(base, rep), 1)`` (what the segments draw from). ``sharding``: the
    states' sharding, that of the states the chunk's segments return
    (:attr:`RowMesh.states`), so that every segment of a run calls one compiled program
    (otherwise a state field that does not depend on the rows, and with a row split by
    workers every field, comes out replicated, and the second segment compiles the segment
    again)."""

    def keys(tag):
        return jax.vmap(lambda i: jr.fold_in(jr.fold_in(base, i), tag))(reps)

    states = jax.vmap(lambda k: kernel.init(k, params))(keys(0))
    if sharding is not None:
        states = jax.lax.with_sharding_constraint(states, sharding)
    return keys(1), states


@partial(jax.jit, static_argnames=("kernel", "batch", "serial", "groups", "totals"))
def segment_chunk(
    keys, states, params, window: Window, model, hist, *, kernel, batch, serial, groups=1,
    totals=False,
):  # fmt: skip
    """One segment of a steps-window kernel for every row of a chunk, summarised: returns
    ``(states, StepSums with block rows [rows, L // BLOCK], covered)``; ``covered`` False
    means rerun the segment with ``kernel.enlarge()``. ``groups``: the device count of the
    rows' mesh (the rows form that many contiguous groups, one per device). ``totals``: each
    row's blocks added up on the device (:func:`block_totals`, [rows, 1]; needs x64)."""
    kw = dict(batch=batch, serial=serial, n_bins=N_BINS, real=window.real)
    finish = block_totals if totals else (lambda sums: sums)
    if jax.default_backend() != "cpu":  # one wide vmap: the work per step fills the device
        states, info = jax.vmap(lambda k, s: kernel.segment(k, s, params))(keys, states)
        valid = window_mask(window, *info.loads.shape[:2])
        sums = summarise_rows(info.loads, valid, model, hist, **kw)
        return states, finish(sums), jnp.all(info.covered)

    def row(k, s, i, t_end):  # one row's segment and summaries, while its loads are in cache
        s, info = kernel.segment(k, s, params)
        # the row's own t_end, mapped with it: indexing window.t_end by the row made two
        # collectives per row on several CPU devices (each row waited for the other device)
        valid = row_mask(window, i, info.loads.shape[0], t_end)
        sums = summarise_rows(info.loads[None], valid[None], model, hist, **kw)
        drop = partial(jax.tree_util.tree_map, lambda x: x[0])
        return s, drop(sums._replace(hist=None)), sums.hist, info.covered

    index = jnp.arange(keys.shape[0], dtype=jnp.int32)
    zero = jnp.zeros((model.other.shape[0], N_BINS), jnp.int32)  # [r_max, bins] counts
    states, sums, counts, covered = _map_rows(row, groups, zero, keys, states, index, window.t_end)
    return states, finish(sums._replace(hist=counts)), jnp.all(covered)


def block_totals(sums: StepSums) -> StepSums:
    """Each row's float32 block sums added up in float64 on the device ([rows, 1, ...]; the
    integer ones in their dtype), so that a run of several replications fetches a total per
    row instead of every block (the host's float64 sums of the blocks of 64 replications x
    20,000 steps took 5 to 6 ms on the 2-core CPU, about 40 % of the device time of that call
    on an H200, docs/benchmarks.md). Float32 values add up exactly in float64, in any order,
    while the sum of their magnitudes stays below 2**53 units of the lowest set bit among
    them (for example when they span at most 29 - log2(blocks) binary orders); then the
    totals equal the host's float64 sums of the blocks bit for bit. Runs with one or two
    slots per worker and segments of millions of steps can exceed it (tau^2 first), and may
    then differ in the last bit, as the host's sums of differently chunked runs already
    could. Needs ``jax_enable_x64``."""

    def total(x):
        wide = jnp.float64 if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype
        return x.sum(axis=1, keepdims=True, dtype=wide)

    return jax.tree_util.tree_map(total, sums._replace(hist=None))._replace(hist=sums.hist)


ROWS, SAME = PartitionSpec("rows"), PartitionSpec()
"""Specs of :func:`per_device`: split over the rows' devices, or the same on every one."""


def per_device(local, mesh: Mesh, in_specs, out_specs):
    """``local`` run by every device of ``mesh`` on its own rows (``shard_map``; ``in_specs``
    and ``out_specs`` of :data:`ROWS` and :data:`SAME`). For a kernel with a data-dependent
    loop (the dynamics kernel's routing ``while_loop``, the finite pool's window loop): as
    one ``vmap`` over rows sharded across the devices, XLA reduced the loop's condition
    across the devices at every iteration, so each device waited for the others at every
    step (the finite pool ran 9x slower on two CPU devices than on one, docs/scaling.md);
    here each device's loop stops on its own rows. Anything summed across the devices is
    the caller's ``psum``."""
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


SPLIT_WORKERS = PartitionSpec(None, "rows")
"""The states of a row split by workers (:func:`segment_split`): the worker axis over the
devices."""


@partial(jax.jit, static_argnames=("kernel", "batch", "serial", "mesh"))
def segment_split(
    keys, states, params, window: Window, model, hist, *, kernel, batch, serial, mesh
):
    """:func:`segment_chunk` of a chunk of ONE row whose workers are split over the devices
    of ``mesh`` (axis ``"rows"``; the states' worker axis sharded over it, everything else
    replicated): each device runs ``kernel.segment`` on its workers (with
    ``params.workers``, so every slot draws the requests it draws unsplit), the worker loads
    are exchanged so that each device holds all workers for a slice of whole blocks of steps
    (``all_to_all``), and each device summarises its blocks. The block sums are tree sums
    within a block and the histogram is integer, so the results are bit-identical to
    :func:`segment_chunk` of the same row; both cores work on a single replication."""
    n_dev = mesh.devices.size
    length = None

    def body(keys, states, params, window, model, hist):
        nonlocal length
        dev = jax.lax.axis_index("rows")
        r_loc = jax.tree_util.tree_leaves(states)[0].shape[1]  # [rows, r_local, B] leaves
        workers = (dev * r_loc, jnp.int32(r_loc * n_dev))
        state = jax.tree_util.tree_map(lambda x: x[0], states)
        state, info = kernel.segment(keys[0], state, params._replace(workers=workers))
        length = info.loads.shape[0]
        span = -(-length // (n_dev * BLOCK)) * BLOCK  # whole blocks of steps per device
        loads = jnp.pad(info.loads, ((0, span * n_dev - length), (0, 0)))
        loads = jax.lax.all_to_all(loads, "rows", 0, 1, tiled=True)  # [span, r_max]
        valid = window_mask(window, 1, span * n_dev) & (jnp.arange(span * n_dev) < length)
        valid = jax.lax.dynamic_slice_in_dim(valid, dev * span, span, axis=1)
        kw = dict(batch=batch, serial=serial, n_bins=N_BINS, real=window.real)
        sums = summarise_rows(loads[None], valid, model, hist, **kw)
        # one reduction for both (each is a rendezvous of the devices): the histogram and,
        # in an extra column, the count of devices with a slot short of the segment
        short = jnp.zeros_like(sums.hist[:, :1]).at[0, 0].set(1 - info.covered)
        total = jax.lax.psum(jnp.concatenate([sums.hist, short], axis=1), "rows")
        sums = sums._replace(hist=total[:, :-1])
        covered = total[0, -1] == 0
        return jax.tree_util.tree_map(lambda x: x[None], state), sums, covered

    workers = SPLIT_WORKERS
    blocks = StepSums(*([PartitionSpec(None, "rows")] * 7), PartitionSpec())
    mapped = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(
            PartitionSpec(),
            workers,
            PartitionSpec(),
            PartitionSpec(),
            PartitionSpec(),
            PartitionSpec(),
        ),  # fmt: skip
        out_specs=(workers, blocks, PartitionSpec()),
        check_vma=False,
    )
    states, sums, covered = mapped(keys, states, params, window, model, hist)
    nb = length // BLOCK
    cut = jax.tree_util.tree_map(lambda x: x[:, :nb], sums._replace(hist=None))
    return states, cut._replace(hist=sums.hist), covered


@partial(jax.jit, static_argnames=("init_kernel", "kernel", "batch", "serial", "mesh"))
def start_split(base, reps, start_params, params, window, model, hist, *, init_kernel, mesh, **kw):
    """:func:`start_chunk` and the first :func:`segment_split` of its row in one program (one
    launch): returns ``(keys, start states, states, sums, covered)`` (the start states for a
    rerun with ``kernel.enlarge()``); ``kw``: segment_split's kernel, batch and serial."""
    workers = NamedSharding(mesh, SPLIT_WORKERS)  # as segment_split returns them
    keys, start = start_chunk(base, reps, start_params, kernel=init_kernel, sharding=workers)
    states, sums, covered = segment_split(keys, start, params, window, model, hist, mesh=mesh, **kw)
    return keys, start, states, sums, covered


def _map_rows(f, groups: int, zero, *xs):
    """On CPU, ``f`` (returning ``(..., counts, last)``) over the leading (row) axis, one row
    after another within each of ``groups`` contiguous groups (one per device, ``vmap``
    across them, so a sharded row axis is never looped over; each row's per-step vectors stay
    in cache, so the cost per slot-step does not grow with the rows of a chunk). The integer
    ``counts`` (histograms, shaped like ``zero``) are summed over the rows in the loop carry
    (exact in any order); the other outputs are stacked per row."""
    split = partial(jax.tree_util.tree_map, lambda x: x.reshape((groups, -1) + x.shape[1:]))
    merge = partial(jax.tree_util.tree_map, lambda x: x.reshape((-1,) + x.shape[2:]))

    def group(*g):
        def step(total, a):
            *out, counts, last = f(*a)
            return total + counts, (*out, last)

        return jax.lax.scan(step, zero, g)

    counts, out = jax.vmap(group)(*split(xs))
    *stacked, last = merge(out)
    return (*stacked, counts.sum(axis=0, dtype=zero.dtype), last)  # int32 under x64 too


@jax.jit
def block_keys(base, reps, blocks):
    """Keys fold_in(fold_in(base, rep), block) of blocks of snapshots."""
    return jax.vmap(lambda i, b: jr.fold_in(jr.fold_in(base, i), b))(reps, blocks)


_SCOPE = {"local": False}


@contextlib.contextmanager
def local_devices_only():
    """Inside: :class:`RowMesh` uses this process's devices only (no cross-process work)."""
    old = _SCOPE["local"]
    _SCOPE["local"] = True
    try:
        yield
    finally:
        _SCOPE["local"] = old


_PLACED: dict = {}


class RowMesh:
    """A 1-D mesh (axis ``"rows"``) over every device of the run: all processes' devices, or
    this process's inside :func:`local_devices_only`."""

    def __init__(self, max_devices: int | None = None, split: bool = False):
        """``max_devices``: in a single process, use at most that many of the local devices
        (a run of fewer rows than devices would only compute padded rows on the others).
        ``split``: one row whose workers are split over this process's devices
        (:func:`segment_split`): row arrays are replicated, not split."""
        self.multi = jax.process_count() > 1 and not _SCOPE["local"] and not split
        devs = jax.devices() if self.multi else jax.local_devices()[: max_devices or None]
        self.n = len(devs)
        self.split = split
        self.processes = jax.process_count() if self.multi else 1
        self.mesh = Mesh(np.array(devs), ("rows",))
        self.sharding = NamedSharding(self.mesh, PartitionSpec(None if split else "rows"))
        # the chunk functions' states: rows split over the devices, or a split row's workers
        self.states = NamedSharding(self.mesh, SPLIT_WORKERS if split else PartitionSpec("rows"))

    def round_up(self, rows: int) -> int:
        """The smallest multiple of the device count >= rows (>= 1); 1 when split (the split
        mesh runs one row)."""
        if self.split:
            return 1
        return -(-max(1, int(rows)) // self.n) * self.n

    def put(self, tree):
        """Arrays with a leading axis of ``round_up`` rows, split over the devices (every
        process passes the same full array). Split (one row, replicated): the host arrays
        themselves, which the chunk functions take along with their replicated constants (a
        third of the cost of placing them first)."""
        if self.split:
            return tree
        if not self.multi:
            return jax.device_put(tree, self.sharding)

        def put_one(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.sharding, lambda i: x[i])

        return jax.tree_util.tree_map(put_one, tree)

    def replicate(self, tree, keep: bool = False):
        """Run constants (sampler, step model) on every device of a single-process mesh
        once, instead of a copy (or a host transfer) in every call; as they are across
        processes. ``keep``: remember the copy of this very tree (every array the same
        object) on these devices, so that repeated runs with one sampler place it once."""
        if self.multi:
            return tree
        sharding = NamedSharding(self.mesh, PartitionSpec())
        if not keep:
            return jax.device_put(tree, sharding)
        # the devices are objects too: a copy on other devices is not reused
        objects = (*jax.tree_util.tree_leaves(tree), *self.mesh.devices.flat)
        return reuse_for(_PLACED, objects, lambda: jax.device_put(tree, sharding))

    def fetch(self, tree):
        """NumPy copies of (possibly sharded) outputs, whole on every process."""
        if not self.multi:
            return jax.device_get(tree)
        from jax.experimental import multihost_utils

        return jax.tree_util.tree_map(
            lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree
        )


def device_name() -> str:
    """``platform:device kind`` of the first JAX device."""
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"


def rng_mode():
    """Threefry in its non-partitionable form inside the drivers: the same bits on every
    device count here (one device per run), and XLA compiles it several times faster on CPU
    than the partitionable form (seconds per kernel). Fixed, so results stay reproducible."""
    ctx = getattr(jax, "threefry_partitionable", None)
    return ctx(False) if ctx is not None else contextlib.nullcontext()


class Progress:
    """A tqdm bar on stderr (only when asked and stderr is a terminal); a no-op otherwise."""

    def __init__(self, enabled: bool, desc: str, unit: str = "slot-step"):
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(desc=desc, unit=unit, unit_scale=True, file=sys.stderr)

    def tick(self, n) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = [
    "ATTN_GRID",
    "PRECISIONS",
    "Chunk",
    "Progress",
    "RowMesh",
    "Window",
    "attn_grid",
    "block_keys",
    "device_name",
    "float_dtype",
    "local_devices_only",
    "per_device",
    "replication_chunks",
    "rng_mode",
    "row_mask",
    "run_chunks",
    "segment_chunk",
    "segment_split",
    "start_chunk",
    "start_split",
    "window_mask",
]

"""Monte Carlo driver of the dynamics kernel (docs/dynamics.md): routing, slot slack,
KV-capacity admission, micro-batch pipelining, Attention-time noise and stragglers, expert
imbalance, each an option of :func:`afd_jax.montecarlo.simulate.simulate` (``dynamics=``).

The kernel (``afd_jax.kernels.dynamics``) reports per step, per bundle and worker, the loads of
the m micro-batches, the occupied slots, the noise and the tokens per expert rank; this module
turns them into step times through ``afd_jax.model.latency`` (t_attn, t_comm, t_ffn,
other_stages, combine, step_time_from_other: the one home of those formulas), runs the chunk
loop of :mod:`afd_jax.montecarlo.spine` and reports a
:class:`~afd_jax.montecarlo.result.MonteCarloResult` with ``empty_slot_fraction``.

Per step and bundle size r (workers j < r of bundle ``b(r)``: 0 in place, r - 1 when routed),
with a_{j,i} = t_A(T_{j,i}) * eps_j the Attention time of micro-batch i on worker j and
A_i = max_j a_{j,i} (docs/model.md 12):

* m off: ``tau = step_time_from_other(A_1, combine(t_C(r), t_F(r B phi)))``;
* m >= 1, the ping-pong flow shop of Attention, communication and FFN over the m micro-batches
  (B/m slots each): ``a_i = a_{i-1} + A_i``, ``c_i = max(c_{i-1}, a_i) + t_C(r, B/m)``,
  ``f_i = max(f_{i-1}, c_i) + t_F(r, phi B/m)``, ``tau = f_m`` (m = 1: the serial step);
* phi = G max_g N_g / (k r B) >= 1, the most loaded expert rank over the mean (1 when off).

Barrier share: sum_i (r A_i - sum_j a_{j,i}) / (r tau); idle fractions from the busy times;
throughput ``latency.token_rate`` of the admitted tokens (r B minus the empty slots) over the
summed tau, its SE from the SE of E[tau] (the empty fraction's own noise is not included).
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from afd_jax.choices import DYNAMICS_KEYS
from afd_jax.errors import InputError
from afd_jax.kernels import barrier as KB
from afd_jax.kernels.contract import SegmentParams
from afd_jax.kernels.dynamics import (
    ROUTINGS,
    Dynamics,
    dynamics_kernel,
    fresh_prefix,
    uniform_ranks,
)
from afd_jax.kernels.step import AttnGrid, grid_times
from afd_jax.memory import current_budget
from afd_jax.model import latency as L
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.stages import check_batch
from afd_jax.montecarlo import estimators as E
from afd_jax.montecarlo.checkpoint import run_checkpoint
from afd_jax.montecarlo.result import MonteCarloResult
from afd_jax.montecarlo.spine import (
    ROWS,
    SAME,
    Chunk,
    Progress,
    RowMesh,
    Window,
    attn_grid,
    device_name,
    float_dtype,
    per_device,
    replication_chunks,
    rng_mode,
    row_mask,
    run_chunks,
    start_chunk,
)

_SUMS = ("tau", "tau_sq", "max_attn", "attn_busy", "wait", "ffn_busy", "empty")


class DynSums(NamedTuple):
    """Block sums [rows, nb, r_max] (float32) of tau, tau^2, the barrier Attention time
    sum_i A_i, the summed Attention busy time sum_{j,i} a_{j,i}, the barrier wait, the FFN
    busy time and the empty slots; slot_load, slot_load_sq, count [rows, nb]; hist [r_max,
    bins]."""

    tau: jax.Array
    tau_sq: jax.Array
    max_attn: jax.Array
    attn_busy: jax.Array
    wait: jax.Array
    ffn_busy: jax.Array
    empty: jax.Array
    slot_load: jax.Array
    slot_load_sq: jax.Array
    count: jax.Array
    hist: jax.Array


class DynTables(NamedTuple):
    """Measured (table) stages, sampled by the driver with ``afd_jax.model.latency`` (float64,
    stored in the run's float dtype): ``attn`` the Attention time of a micro-batch's load on a
    load grid (:class:`~afd_jax.kernels.step.AttnGrid`, at batch B/m); per r = 1..r_max,
    ``comm`` t_C(r, B/m), ``ffn`` t_F(r, B/m) and ``other`` G(r) (m off); ``ffn_grid`` t_F on a
    grid of the most loaded expert rank's tokens (expert imbalance; None when off)."""

    attn: AttnGrid
    comm: jax.Array
    ffn: jax.Array
    other: jax.Array
    ffn_grid: AttnGrid | None


class DynModel(NamedTuple):
    """Traced model of the summaries: Latency with fields of the run's float dtype (float32,
    or float64 on request), r = 1..r_max in that dtype, and ``tables`` (:class:`DynTables`)
    when a stage is measured (the stage times then come from them)."""

    lat: Latency
    r: jax.Array
    tables: DynTables | None = None


# ---------------------------------------------------------------- step times


def _per_r(x, cfg: Dynamics, r_max: int):
    """Per step x[L, nb, r_max, ...] -> [L, r, workers, ...] of bundle b(r), masked j < r."""
    idx = jnp.arange(r_max, dtype=jnp.int32) if cfg.routed else jnp.zeros(r_max, jnp.int32)
    mask = jnp.arange(r_max)[None, :] < jnp.arange(1, r_max + 1)[:, None]
    mask = mask.reshape((1,) + mask.shape + (1,) * (x.ndim - 3))
    return jnp.where(mask, x[:, idx], jnp.zeros((), x.dtype))


def _ffn_factor(info, cfg: Dynamics, r, batch: int):
    """phi [L, r]: most loaded expert rank over the mean (1 when expert routing is off)."""
    if info.ranks is None:
        return None
    tok = _per_r(info.ranks, cfg, r.shape[1]).sum(axis=2, dtype=jnp.int32)
    per_rank = jnp.asarray(cfg.expert_k * batch / cfg.expert_ranks, r.dtype) * r
    return tok.max(axis=-1).astype(r.dtype) / per_rank


def _attn_times(dm: DynModel, loads):
    """Attention time of int32 micro-batch loads (``latency.t_attn``, or the table's grid)."""
    if dm.tables is None:
        return L.t_attn(dm.lat, loads.astype(dm.r.dtype))
    return grid_times(dm.tables.attn, loads.astype(dm.r.dtype))


def _ffn_times(dm: DynModel, r, per_mb, phi):
    """t_F of the step's B/m tokens per worker (times phi): [L or 1, r]."""
    if dm.tables is None:
        return L.t_ffn(dm.lat, r, per_mb if phi is None else per_mb * phi)
    if phi is None:
        return dm.tables.ffn[None, :]
    return grid_times(dm.tables.ffn_grid, r * per_mb * phi)


def _other_times(dm: DynModel, r, batch: int, opts: ModelOptions):
    """G(r) of a step without micro-batches or expert imbalance: [1, r]."""
    if dm.tables is None:
        return L.other_stages(dm.lat, r, batch, opts)
    return dm.tables.other[None, :]


def _comm_times(dm: DynModel, r, tokens, opts: ModelOptions):
    """t_C(r) of ``tokens`` = B/m slots per worker: [1, r]."""
    if dm.tables is None:
        return L.t_comm(dm.lat, r, tokens, opts)
    return dm.tables.comm[None, :]


def tree_sum(x, axis: int):
    """Sum over ``axis`` by a pairwise tree of elementwise adds (zero-padded to a power of
    two): a fixed order, so the float32 result does not depend on how many rows are vmapped
    (a ``sum`` reduction may be vectorised differently for different shapes)."""
    y = jnp.moveaxis(x, axis, 0)
    n = 1 << max(0, (y.shape[0] - 1).bit_length())
    y = jnp.concatenate([y, jnp.zeros((n - y.shape[0],) + y.shape[1:], y.dtype)])
    while y.shape[0] > 1:
        y = y[0::2] + y[1::2]
    return y[0]


def flow_shop(attn, comm, ffn):
    """:func:`afd_jax.model.latency.microbatch_step_time` of attn [..., m] (A_i per
    micro-batch; comm and ffn broadcasting): the makespan of the m micro-batches."""
    return L.microbatch_step_time([attn[..., i] for i in range(attn.shape[-1])], comm, ffn)


def step_stages(info, dm: DynModel, *, batch: int, opts: ModelOptions, cfg: Dynamics):
    """Per step and r: (tau, sum_i A_i, attention busy, barrier wait, FFN busy, empty)."""
    r_max, dtype = dm.r.shape[0], dm.r.dtype
    r = dm.r[None, :]  # [1, r]: per step and r
    attn = _attn_times(dm, _per_r(info.loads, cfg, r_max))
    if info.noise is not None:
        attn = attn * _per_r(info.noise, cfg, r_max).astype(dtype)[..., None]
    mask = (jnp.arange(r_max, dtype=dtype)[None, :] < dm.r[:, None])[None, :, :, None]
    attn = jnp.where(mask, attn, jnp.zeros((), dtype))
    barrier = attn.max(axis=2)  # [L, r, m]
    busy = tree_sum(tree_sum(attn, 3), 2)
    m = max(cfg.microbatches, 1)
    per_mb = jnp.asarray(batch / m, dtype)
    phi = _ffn_factor(info, cfg, r, batch)
    ffn = _ffn_times(dm, r, per_mb, phi)
    if cfg.microbatches == 0:
        if phi is None:
            other = _other_times(dm, r, batch, opts)
        else:
            other = L.combine(opts, _comm_times(dm, r, batch, opts), ffn)
        tau = L.step_time_from_other(barrier[..., 0], other, opts)
    else:
        tau = flow_shop(barrier, _comm_times(dm, r, per_mb, opts), ffn)
    empty = (jnp.int32(batch) - _per_r(info.occupied, cfg, r_max)).sum(axis=2, dtype=jnp.int32)
    empty = empty - (r_max - jnp.arange(1, r_max + 1, dtype=jnp.int32))[None, :] * batch
    ffn_busy = jnp.broadcast_to(ffn * m, tau.shape)
    barrier_sum = tree_sum(barrier, 2)
    wait = r * barrier_sum - busy
    return tau, barrier_sum, busy, wait, ffn_busy, empty.astype(dtype)


def summarise_dynamics(info, valid, dm: DynModel, hist, *, batch, opts, cfg) -> DynSums:
    """Block sums of one row's segment (info with leading [L]; valid bool[L])."""
    stages = step_stages(info, dm, batch=batch, opts=opts, cfg=cfg)
    tau, dtype = stages[0], dm.r.dtype
    w = valid.astype(dtype)[:, None]
    sums = [KB.block_sum(x * w) for x in (tau, tau * tau, *stages[1:])]
    full = info.loads[:, -1 if cfg.routed else 0].sum(axis=(-1, -2), dtype=jnp.int32)
    load = full.astype(dtype) / jnp.asarray(dm.r.shape[0] * batch, dtype)
    return DynSums(
        *sums,
        KB.block_sum(load * w[:, 0]),
        KB.block_sum(load * load * w[:, 0]),
        KB.block_sum(valid.astype(jnp.int32)),
        KB.tau_histogram(tau, valid, hist, E.N_BINS),
    )


@partial(jax.jit, static_argnames=("kernel", "batch", "opts", "cfg", "mesh"))
def dynamics_chunk(
    keys, states, params, window: Window, dm, hist, *, kernel, batch, opts, cfg, mesh
):  # fmt: skip
    """One segment of the dynamics kernel for every row of a chunk, summarised, each device
    of ``mesh`` stepping its own rows (:func:`~afd_jax.montecarlo.spine.per_device`: the
    routing ``while_loop`` waits for no other device). Only the histogram is summed across
    the devices, once per call. Returns (states, sums, covered): ``covered`` bool[devices],
    whether ``kernel`` covered each device's rows (where not, ``kernel.enlarge()`` ran them
    again)."""

    def local(keys, states, params, window, dm, hist):
        def run(k, start):
            return jax.vmap(k.segment, in_axes=(0, 0, None))(keys, start, params)

        ran = run(kernel, states)
        covered = jnp.all(ran[1].covered)
        if kernel.enlarge is not None:  # drawn ahead or for a prefix: if short, rerun
            ran = jax.lax.cond(covered, lambda: ran, lambda: run(kernel.enlarge(), states))
        states, info = ran
        n_loc, length = info.loads.shape[:2]
        rows = jax.lax.axis_index("rows") * n_loc + jnp.arange(n_loc, dtype=jnp.int32)
        valid = jax.vmap(lambda i, t_end: row_mask(window, i, length, t_end))(rows, window.t_end)
        summ = partial(summarise_dynamics, dm=dm, hist=hist, batch=batch, opts=opts, cfg=cfg)
        sums = jax.vmap(summ)(info, valid)
        hist_sum = jax.lax.psum(sums.hist.sum(axis=0), "rows")
        return states, sums._replace(hist=hist_sum), covered[None]

    win = Window(SAME, SAME, ROWS, SAME)
    sums = DynSums(*([ROWS] * (len(DynSums._fields) - 1)), SAME)
    specs = (ROWS, ROWS, SAME, win, SAME, SAME)
    outs = (ROWS, sums, ROWS)
    return per_device(local, mesh, specs, outs)(keys, states, params, window, dm, hist)


# ---------------------------------------------------------------- inputs


MAX_JITTER_CV = 10.0
"""The largest Attention-time CV (a lognormal of CV 10 already puts half its mass below 1/10
of the mean); beyond, the step-time histogram's range (12 CVs above the slowest step) would
push the real steps below its lowest bin (a review: wrong percentiles at CV 1e10)."""
MAX_STRAGGLER = 1000.0
"""The largest straggler slow-down s, for the same reason (a review: s = 1e12 put every step
in the histogram's lowest bin, even with p = 0)."""
MAX_ROUTING_CHOICES = 1 << 12
"""The most candidates a router weighs per request: power-of-d's d (drawn per routed request)
and lookahead's k (k - 1 requests held back per bundle, scanned for each routed one). Beyond,
a step costs seconds and memory grows with it (a review: k = 1e7 took 5 GB, k = 2^31 hung or
overflowed int32); power-of-d with d >= r_max already weighs about every worker."""
MAX_EXPERT_SKEW = 100.0
"""The largest Zipf exponent of the expert routing (at 100 expert 0 takes all but 1e-30)."""
MAX_EXPERTS = 1 << 16
"""The most experts E (models route over 8 to 384); the routing's scores take memory per
token and step besides (:func:`_score_bytes`), checked against the memory budget
(:func:`check_experts_memory`)."""


def check_dynamics(cfg: Dynamics, batch: int | None) -> None:
    """InputError on a bad configuration (checked before any work; the sizes tied to B only
    when ``batch`` is given)."""

    def bad(msg, field):
        raise InputError(msg, field=field)

    if cfg.routing not in ROUTINGS:
        bad(f"must be one of {', '.join(ROUTINGS)}, got {cfg.routing!r}", "routing")
    if not 1 <= cfg.routing_d <= MAX_ROUTING_CHOICES:
        bad(f"must be in 1..{MAX_ROUTING_CHOICES}, got {cfg.routing_d}", "routing-d")
    if cfg.routing_d != Dynamics._field_defaults["routing_d"] and cfg.routing != "power-of-d":
        bad("only --routing power-of-d reads it", "routing-d")
    if not 1 <= cfg.lookahead <= MAX_ROUTING_CHOICES:
        bad(f"must be in 1..{MAX_ROUTING_CHOICES}, got {cfg.lookahead}", "lookahead")
    if cfg.lookahead != Dynamics._field_defaults["lookahead"] and cfg.routing != "lookahead":
        bad("only --routing lookahead reads it", "lookahead")
    if cfg.slot_slack < 0:
        bad(f"must be >= 0, got {cfg.slot_slack}", "slot-slack")
    if batch is not None and cfg.slot_slack >= batch:
        bad(f"must be in 0..B-1 = {batch - 1}, got {cfg.slot_slack}", "slot-slack")
    if cfg.slot_slack and not cfg.routed:
        bad("needs a load-aware --routing (in place every worker keeps B requests)", "slot-slack")
    if not 0 <= cfg.kv_capacity < E.INT32_LIMIT:  # a worker's load is an int32
        bad(f"must be in 0..2^31 - 1 tokens (0: no limit), got {cfg.kv_capacity}", "kv-capacity")
    if cfg.microbatches < 0:
        bad(f"must be >= 0 (0: off), got {cfg.microbatches}", "microbatches")
    if batch is not None and cfg.microbatches and batch % cfg.microbatches:
        bad(f"must divide B = {batch}, got {cfg.microbatches}", "microbatches")
    if not 0 <= cfg.jitter_cv <= MAX_JITTER_CV:
        bad(f"must be in [0, {MAX_JITTER_CV:g}], got {cfg.jitter_cv}", "jitter-cv")
    if not (0 <= cfg.straggler_p <= 1 and 1 <= cfg.straggler_s <= MAX_STRAGGLER):
        bad(
            f"needs 0 <= p <= 1 and 1 <= s <= {MAX_STRAGGLER:g}, got "
            f"{cfg.straggler_p},{cfg.straggler_s}",
            "straggler",
        )
    if not 0 <= cfg.expert_skew <= MAX_EXPERT_SKEW:
        bad(f"must be in [0, {MAX_EXPERT_SKEW:g}], got {cfg.expert_skew}", "expert-skew")
    if cfg.experts > MAX_EXPERTS:
        bad(f"E must be <= {MAX_EXPERTS}, got {cfg.experts}", "experts")
    if cfg.expert_skew and not cfg.experts:
        bad("needs --experts E,k,G (the skew of the routing over E experts)", "expert-skew")
    e, k, g = cfg.experts, cfg.expert_k, cfg.expert_ranks
    if (e, k, g) != (0, 1, 1) and not (1 <= k <= e and g >= 1 and e % g == 0):
        bad(f"need 1 <= k <= E and G >= 1 dividing E, got E={e} k={k} G={g}", "experts")


def dynamics_options(values: dict, prefix: str = "", path: str | None = None, dash=False):
    """A :class:`Dynamics` from option values (None when none is given): ``routing`` (str),
    ``routing_d``, ``lookahead``, ``slot_slack``, ``kv_capacity``, ``microbatches`` (ints),
    ``jitter_cv``, ``expert_skew`` (numbers), ``straggler`` [p, s] and ``experts`` [E, k, G].
    InputError names ``prefix + key`` (``-`` for ``_`` when ``dash``; and ``path``) on a wrong
    type or range; sizes tied to B are checked by :func:`check_dynamics` when B is known."""
    given = {k: v for k, v in values.items() if k in DYNAMICS_KEYS and v is not None}
    if not given:
        return None

    def err(key, msg):
        return InputError(msg, path=path, field=prefix + (key.replace("_", "-") if dash else key))

    def num(key, v, kind):
        if isinstance(v, bool) or not isinstance(v, kind):
            raise err(key, f"expected {'an integer' if kind is int else 'a number'}, got {v!r}")
        return v

    out = {}
    for key, v in given.items():
        if key == "routing":
            if v not in ROUTINGS:
                raise err(key, f"expected one of {', '.join(ROUTINGS)}, got {v!r}")
            out[key] = v
        elif key in ("straggler", "experts"):
            n = 2 if key == "straggler" else 3
            if not isinstance(v, list | tuple) or len(v) != n:
                raise err(key, f"expected {'p,s' if n == 2 else 'E,k,G'}, got {v!r}")
            if key == "straggler":
                out.update(straggler_p=float(num(key, v[0], int | float)))
                out.update(straggler_s=float(num(key, v[1], int | float)))
            else:
                e, k, g = (num(key, x, int) for x in v)
                out.update(experts=e, expert_k=k, expert_ranks=g)
        elif key in ("jitter_cv", "expert_skew"):
            out[key] = float(num(key, v, int | float))
        else:
            out[key] = num(key, v, int)
    cfg = Dynamics(**out)
    try:
        check_dynamics(cfg, batch=None)
    except InputError as e:
        raise err(e.field.replace("-", "_"), e.reason) from None
    return cfg


class _Acc:
    """Float64 host sums per replication [n_rep, r_max] and the histogram."""

    def __init__(self, n_rep: int, r_max: int):
        self.v = {k: np.zeros((n_rep, r_max)) for k in _SUMS}
        self.load, self.load_sq, self.count = np.zeros(n_rep), np.zeros(n_rep), np.zeros(n_rep)
        self.hist = np.zeros((r_max, E.N_BINS), np.int64)

    def state(self) -> dict:
        """The sums as a nest of arrays (a checkpoint's, :mod:`.checkpoint`)."""
        return {"v": self.v, "load": self.load, "load_sq": self.load_sq, "count": self.count,
                "hist": self.hist}  # fmt: skip

    def load_state(self, state: dict) -> None:
        self.v = dict(state["v"])
        self.load, self.load_sq, self.count = state["load"], state["load_sq"], state["count"]
        self.hist = state["hist"]

    def add(self, reps, sums: DynSums, n_real: int):
        rows = reps[:n_real]
        for k in _SUMS:
            np.add.at(self.v[k], rows, np.asarray(getattr(sums, k), np.float64)[:n_real].sum(1))
        for name in ("load", "load_sq", "count"):
            src = {"load": sums.slot_load, "load_sq": sums.slot_load_sq, "count": sums.count}
            np.add.at(getattr(self, name), rows, np.asarray(src[name], np.float64)[:n_real].sum(1))
        self.hist += np.asarray(sums.hist, np.int64)


# ---------------------------------------------------------------- driver


class DynRun(NamedTuple):
    """One run: ``run`` the validated steps-window configuration of
    :func:`afd_jax.montecarlo.simulate.simulate` (sizes, seed, level, chunking), ``opts`` the
    model switches, ``cfg`` the dynamics."""

    run: Any
    opts: ModelOptions
    cfg: Dynamics


def _segment_length(drun: DynRun, rows: int) -> int:
    """Steps per call: a multiple of BLOCK within the memory budget (never changes numbers)."""
    run, _, cfg = drun
    if run.segment_steps:
        return KB.BLOCK * max(1, -(-int(run.segment_steps) // KB.BLOCK))
    width = max(cfg.microbatches, cfg.expert_ranks if cfg.experts else 1, 1) + 2
    per_step = rows * run.r_max * run.r_max * width * 4 * 8
    total_blocks = -(-(run.warmup + run.steps) // KB.BLOCK)
    return KB.BLOCK * max(1, min(total_blocks, run.budget // (KB.BLOCK * per_step)))


def _microbatch_slots(batch: int, cfg: Dynamics) -> int:
    """The most slots of one micro-batch of a worker (B + slack slots, m micro-batches)."""
    return -(-(batch + cfg.slot_slack) // max(cfg.microbatches, 1))


def _histogram(lat: Latency, drun: DynRun, max_load: int):
    """Log bins from the shortest stage to a generous bound on tau (noise, phi, m)."""
    run, opts, cfg = drun
    lat = L.host_latency(lat)
    r = np.arange(1, run.r_max + 1, dtype=np.float64)
    other = L.other_stages(lat, r, run.batch, opts)
    noise = max(cfg.straggler_s, 1.0) * (1.0 + 12.0 * cfg.jitter_cv)
    phi = cfg.expert_ranks if cfg.experts else 1.0
    per_mb = run.batch / max(cfg.microbatches, 1)
    attn_hi = E.attn_time_max(lat, run.batch, max_load)
    if not L.is_affine(lat.attn):  # a micro-batch's table at B/m (slot slack included)
        top = _microbatch_slots(run.batch, cfg) * max_load
        attn_hi = max(attn_hi, float(L.t_attn(lat, float(top), per_mb)))
    hi = attn_hi * noise * max(cfg.microbatches, 1)
    hi = hi + float(np.max(L.t_comm(lat, r, run.batch, opts) + L.t_ffn(lat, r, run.batch)))
    lo = min(float(L.t_attn(lat, 0.0, per_mb)), float(other.min())) / 2.0
    return E.tau_bins(max(lo, 1e-6), hi * phi)


def _tables(lat: Latency, drun: DynRun, max_load: int, dtype) -> DynTables | None:
    """The :class:`DynTables` of a latency with a measured stage (None when all affine): every
    stage time from ``afd_jax.model.latency`` in float64, stored in ``dtype``."""
    if not L.has_tables(lat):
        return None
    run, opts, cfg = drun
    lat = L.host_latency(lat)
    m = max(cfg.microbatches, 1)
    per_mb = run.batch / m
    r = np.arange(1, run.r_max + 1, dtype=np.float64)
    top = _microbatch_slots(run.batch, cfg) * max_load
    ffn_grid = None
    if cfg.experts:  # r (B/m) phi = (G / (k m)) N, N the most loaded rank's tokens 0..k r B
        width = cfg.expert_ranks / (cfg.expert_k * m)
        x = width * np.arange(cfg.expert_k * run.r_max * run.batch + 1, dtype=np.float64)
        values = L.stage_time(lat.ffn, x)
        ffn_grid = AttnGrid(*(jnp.asarray(v, dtype) for v in (0.0, 1.0 / width, values)))
    return DynTables(
        attn_grid(lat, per_mb, max_load, dtype, top=top),
        jnp.asarray(L.t_comm(lat, r, per_mb, opts), dtype),
        jnp.asarray(L.t_ffn(lat, r, per_mb), dtype),
        jnp.asarray(L.other_stages(lat, r, run.batch, opts), dtype),
        ffn_grid,
    )


def _score_bytes(cfg: Dynamics, r_max: int, batch: int) -> int:
    """Bytes of the experts' routing scores of one replication's step, r_max B tokens: float32
    Gumbel scores with top_k's copies, 16 B per token and expert; uniform routing rank by rank
    (``uniform_ranks``), the G counts, their prefix sums and the picks' masks, 16 G + 8 B per
    token (0 without experts): at or above XLA:CPU's temporary buffers for one step, which a
    review measured at 16 B and about 14 G + 8 B (2026-12-05; 12 B and 8 G + 4 B before)."""
    if not cfg.experts:
        return 0
    per_token = 16 * cfg.expert_ranks + 8 if uniform_ranks(cfg) else 16 * cfg.experts
    return r_max * batch * per_token


def check_experts_memory(cfg: Dynamics, r_max: int, batch: int) -> None:
    """InputError when :func:`_score_bytes` exceed the memory budget in effect
    (``--memory-budget``; the chunk size is a softer target below it)."""
    need = _score_bytes(cfg, r_max, batch)
    if need > current_budget():
        raise InputError(
            f"E = {cfg.experts} experts: one replication's routing scores take "
            f"{need / 2**20:.0f} MiB per step at r_max = {r_max}, B = {batch}, above the memory "
            f"budget ({current_budget() / 2**20:.0f} MiB); raise --memory-budget or route over "
            "fewer experts",
            field="experts",
        )


def _rows_per_call(run, cfg: Dynamics, slots: int) -> int:
    """Replications per call within the chunk budget: 64 B per slot, and with experts the
    routing's scores of one step (:func:`check_experts_memory`); at least one."""
    check_experts_memory(cfg, run.r_max, run.batch)
    per_row = slots * 64 + _score_bytes(cfg, run.r_max, run.batch) + 1
    return int(run.reps_per_call or max(1, min(run.replications, run.budget // per_row)))


def _ahead(sampler, run, cfg: Dynamics, slots: int, chunk: int, length: int):
    """(rows per call, K): in place each slot's next K requests are drawn ahead per segment
    (``simulate.requests_ahead``), fewer rows per call where they would pass the budget; K = 0
    (a draw every step, the same numbers) when routed or when one row's would not fit."""
    from afd_jax.montecarlo.simulate import requests_ahead  # simulate imports this module

    if cfg.routed:
        return chunk, 0
    k, per_slot = requests_ahead(sampler, length)
    per_row = slots * (64 + per_slot) + _score_bytes(cfg, run.r_max, run.batch) + 1
    if per_row > run.budget:
        return chunk, 0
    return (chunk if run.reps_per_call else max(1, min(chunk, run.budget // per_row))), k


def _prefix(sampler, run, cfg: Dynamics):
    """Routed: the slots per bundle each step draws for, :func:`fresh_prefix` of the
    workload's E[D] (``simulate.decode_mean_sd``); None when not routed."""
    from afd_jax.montecarlo.simulate import decode_mean_sd  # simulate imports this module

    if not cfg.routed:
        return None
    return fresh_prefix(run.r_max, run.batch, cfg, decode_mean_sd(sampler)[0])


def run_dynamics(
    sampler, max_load: int, lat: Latency, drun: DynRun, bar: Progress, mesh, ckpt=None
):
    """The chunk loop over replications, split over the devices of ``mesh`` (a
    :class:`RowMesh`; the rows are independent, so the numbers are one device's): (host
    accumulator, bins, slot-steps)."""
    run, opts, cfg = drun
    slots = run.r_max * run.batch * (run.r_max if cfg.routed else 1)
    chunk = _rows_per_call(run, cfg, slots)
    length = _segment_length(drun, mesh.round_up(chunk))
    chunk, k = _ahead(sampler, run, cfg, slots, chunk, length)
    chunk = mesh.round_up(chunk)
    total = run.warmup + run.steps
    kernel = dynamics_kernel(
        run.r_max, run.batch, run.init, length, cfg, k, _prefix(sampler, run, cfg)
    )
    log_lo, inv_w = _histogram(lat, drun, max_load)
    dtype = float_dtype(run.precision)
    hist = KB.TauHistogram(jnp.asarray(log_lo, dtype), jnp.asarray(inv_w, dtype))
    scalars = (jnp.asarray(float(x), dtype) for x in lat[: len(L.SCALAR_FIELDS)])
    dm = DynModel(
        Latency(*scalars),
        jnp.arange(1, run.r_max + 1, dtype=dtype),
        _tables(lat, drun, max_load, dtype),
    )
    base = jax.random.key(run.seed)
    acc = _Acc(run.replications, run.r_max)
    sampler = mesh.replicate(sampler, keep=True)
    dm, hist, base = mesh.replicate((dm, hist, base))

    def start(c: Chunk):
        params = SegmentParams(sampler, np.int32(0))
        rows = mesh.put(np.asarray(c.rows, np.int32))
        return start_chunk(base, rows, params, kernel=kernel, sharding=mesh.states)

    t_end = mesh.put(np.full((chunk,), total, np.int32))  # every row runs to the end

    current, short = [kernel], [0]

    def advance(c: Chunk, t0, state):
        keys, states = state
        window = Window(np.int32(t0), np.int32(run.warmup), t_end, np.int32(c.n_real))
        states, sums, covered = dynamics_chunk(
            keys, states, SegmentParams(sampler, np.int32(t0)), window, dm, hist,
            kernel=current[0], batch=run.batch, opts=opts, cfg=cfg, mesh=mesh.mesh,
        )  # fmt: skip
        return (keys, states), (sums, covered)  # fetched by record, after the next dispatch

    def record(c: Chunk, t0, out):
        sums, covered = out
        acc.add(c.rows, mesh.fetch(sums), c.n_real)
        if cfg.routed and current[0].enlarge is not None and not mesh.fetch(covered).all():
            # the routed steps' prefix of fresh slots fell short: once (a cold start's
            # burst) the call ran again; twice (decodes shorter than it was planned for),
            # every slot is drawn for from now on rather than run each call twice
            short[0] += 1
            if short[0] == 2:
                current[0] = current[0].enlarge()
        bar.tick(c.n_real * slots * min(length, total - t0))

    chunks = replication_chunks(run.replications, chunk, total, length)
    run_chunks(chunks, start, advance, record, ckpt and ckpt.attach(acc.state, acc.load_state))
    return acc, (log_lo, inv_w), total * run.replications * slots


def _fixed_step_r(lat: Latency, drun: DynRun, max_load: int) -> tuple[int, ...]:
    """:func:`~afd_jax.montecarlo.estimators.fixed_step_r` of a run whose step is the plain
    one (no noise, expert ranks or micro-batches: those move it anyway), a worker holding up
    to B + slack slots; () otherwise."""
    run, opts, cfg = drun
    if cfg.noisy or cfg.experts or cfg.microbatches:
        return ()
    r = np.arange(1, run.r_max + 1, dtype=np.float64)
    other = L.other_stages(lat, r, float(run.batch), opts)
    slots = _microbatch_slots(run.batch, cfg)
    return E.fixed_step_r(lat, slots, max_load, other, opts.overlap == "serial")


def dynamics_result(lat: Latency, drun: DynRun, acc: _Acc, bins, slot_steps, wall, max_load):
    """MonteCarloResult (float64 host arithmetic) with ``empty_slot_fraction``."""
    run, opts, cfg = drun
    lat = L.host_latency(lat)
    r = np.arange(1, run.r_max + 1, dtype=np.float64)
    mean_tau, se_tau, q = E.mean_se(acc.v["tau"], acc.count, run.level)
    load_mean, load_se, _ = E.mean_se(acc.load, acc.count, run.level)
    s = {k: v.sum(axis=0) for k, v in acc.v.items()}
    n = acc.count.sum()
    tokens = n * r * run.batch - s["empty"]
    thr = L.token_rate(lat, r, tokens, s["tau"])
    attn_idle = np.maximum(r * s["tau"] - s["attn_busy"], 0.0)  # float32 sums: ~1e-7 short
    ffn_idle = np.maximum(s["tau"] - s["ffn_busy"], 0.0)
    pct = E.percentiles(acc.hist, *bins)
    ones = np.ones(run.r_max)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = se_tau / mean_tau
        return MonteCarloResult(
            r=r.astype(np.int64),
            throughput=thr,
            throughput_unit=L.throughput_unit(lat),
            fixed_step_r=_fixed_step_r(lat, drun, max_load),
            se=thr * rel,
            ci_low=thr / (1 + q * rel),
            ci_high=np.where(q * rel < 1, thr / (1 - q * rel), np.inf),
            kernel="dynamics",
            init=run.init,
            batch=run.batch,
            replications=run.replications,
            seed=run.seed,
            level=run.level,
            window={"kind": "steps", "steps": run.steps, "warmup": run.warmup},
            slot_steps=int(slot_steps),
            wall_seconds=wall,
            device=device_name(),
            mean_tau=mean_tau,
            se_tau=se_tau,
            idle_attn=attn_idle / (r * s["tau"]),
            idle_ffn=ffn_idle / s["tau"],
            idle_bundle=L.bundle_idle_fraction(attn_idle, ffn_idle, r, s["tau"]),
            barrier_share=s["wait"] / (r * s["tau"]),
            step_p50=pct[0],
            step_p90=pct[1],
            step_p99=pct[2],
            tokens=tokens / run.replications,
            steps=run.steps * ones,
            elapsed_us=s["tau"] / run.replications,
            active_fraction=tokens / (n * r * run.batch),
            mean_slot_load=float(load_mean),
            se_slot_load=float(load_se),
            empty_slot_fraction=s["empty"] / (n * r * run.batch),
            dynamics=cfg._asdict(),
            precision=run.precision,
        )


def simulate_dynamics(
    sampler, max_load: int, lat: Latency, drun: DynRun, progress=False, checkpoint=None
):
    """Run the dynamics kernel (``sampler`` a sampler pytree with its largest slot load).
    Replications >= 2 (the SE comes from the spread of the replication means). ``checkpoint``:
    a file to save to and resume from (:mod:`.checkpoint`)."""
    run, _, cfg = drun
    check_dynamics(cfg, run.batch)
    try:  # a table Attention stage is read at the micro-batch's B/m slots
        check_batch(lat.attn, run.batch / max(cfg.microbatches, 1))
    except InputError as e:
        field = "microbatches" if cfg.microbatches else "batch"
        raise InputError(f"{e.reason} (micro-batches of B/m slots)", field=field) from None
    if run.replications < 2:
        raise InputError("the dynamics kernel needs >= 2 replications", field="replications")
    if run.batch * max_load >= E.INT32_LIMIT:
        raise InputError(
            f"B * max slot load = {run.batch} * {max_load} could overflow int32", field="batch"
        )
    with rng_mode():
        t0 = time.perf_counter()
        bar = Progress(progress, "simulate[dynamics]")
        mesh = RowMesh(max_devices=run.replications)
        settings = dict(window="steps", run=run, opts=drun.opts, dynamics=drun.cfg)
        ckpt = run_checkpoint(
            checkpoint, mesh, settings, latency=lat, workload=sampler, max_slot_load=max_load
        )  # the step model's and the bins' range: derived, compared after the settings
        acc, bins, slot_steps = run_dynamics(sampler, max_load, lat, drun, bar, mesh, ckpt)
        bar.close()
        wall = time.perf_counter() - t0
        res = dynamics_result(lat, drun, acc, bins, slot_steps, wall, max_load)
        info = ckpt and ckpt.info()
        return dataclasses.replace(res, devices=mesh.n, processes=mesh.processes, checkpoint=info)


__all__ = [
    "DYNAMICS_KEYS",
    "DynRun",
    "Dynamics",
    "check_dynamics",
    "check_experts_memory",
    "dynamics_options",
    "flow_shop",
    "simulate_dynamics",
    "step_stages",
]

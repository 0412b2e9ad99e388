"""Driver of the finite-pool cold-start simulator (the paper's v1 simulator, docs/model.md 6).

``pool_simulate(workload, lat, batch, r_values, n_requests=10_000, completion_fraction=0.8)``
draws ``replications`` pools of ``N`` i.i.d. requests (pool ``i`` from
``fold_in(key(seed), i)``, in pool order; the same pools serve every r: common random
numbers), runs :func:`afd_jax.kernels.pool.pool_run` for every r (all slots fresh at t = 0,
refilled from the pool in slot order, idle once it is empty) until ``ceil(fraction * N)``
requests have completed, and reports per r

    throughput = 1e6 * tokens / ((r c_A + c_F) * elapsed)     tokens/s per instance

(``afd_jax.model.latency.token_rate``: tokens emitted and sum of tau over the window), its mean
over the pools with a t-quantile CI,
the mean active-slot fraction ``tokens / (steps r B)`` and the share of steps whose tau was the
barrier Attention time.

FFN and communication times use the nominal ``r B`` tokens by default (docs/model.md 2);
``ffn_tokens="active"`` charges only the active slots (see the kernel docstring).

``diagnostics=True`` runs the same kernel steps with an observer that also sums, per step, the
bundle's total and largest worker load and bins tau into a log-spaced histogram, and adds the
idle fractions, the barrier share and step-time percentiles (as
:mod:`afd_jax.montecarlo.simulate`; ratios of sums over all steps of all pools' windows,
:func:`afd_jax.montecarlo.estimators.pool_idle`):

    idle_attn = 1 - (alpha_A S_T + r beta_A steps) / (r S_tau)
    barrier_share = alpha_A (r S_M - S_T) / (r S_tau),    idle_ffn = 1 - S_F / S_tau

(``S_T = sum_steps sum_{j<r} T_j``, ``S_M = sum_steps max_j T_j``, ``S_F`` the sum of t_F:
``steps t_F(r B)`` nominal, ``alpha_F tokens + beta_F steps`` active). Tokens, steps and
attn_steps are the same integers as without diagnostics; elapsed agrees to float32 rounding.

The result is the one :class:`~afd_jax.montecarlo.result.MonteCarloResult` (``PoolResult`` is
its alias); every r is one chunk of the chunk loop of :mod:`afd_jax.montecarlo.spine`, run by
the kernel of ``afd_jax.kernels.pool.pool_kernel``.

Compilation: one ``jit`` of the pool loop (``vmap`` over pools) per static
``(N, B, r_pad, switches)``, ``r_pad`` the next power of two >= r; r is traced and the slots of
workers ``j >= r`` are masked, so r = 1..64 costs 7 compiles.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from afd_jax.errors import InputError, check_level, check_seed, positive_int
from afd_jax.kernels import pool as KP
from afd_jax.kernels import sampling as KS
from afd_jax.kernels.barrier import TauHistogram
from afd_jax.memory import require
from afd_jax.model import latency as L
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.latency_io import validate_latency, validate_options
from afd_jax.montecarlo import estimators as E
from afd_jax.montecarlo.checkpoint import run_checkpoint
from afd_jax.montecarlo.result import MonteCarloResult
from afd_jax.montecarlo.samplers import make_sampler
from afd_jax.montecarlo.spine import (
    ROWS,
    SAME,
    Chunk,
    RowMesh,
    attn_grid,
    device_name,
    float_dtype,
    per_device,
    run_chunks,
)
from afd_jax.workload.containers import ParametricWorkload, TraceWorkload

__all__ = ["PoolResult", "draw_pools", "pool_simulate", "r_bucket", "tau_range"]

PoolResult = MonteCarloResult
"""The result of :func:`pool_simulate` (the one Monte Carlo result type)."""

_DEFAULT_OPTS = ModelOptions()


def draw_pools(source, n_requests: int, replications: int, seed: int, load_offset: int = 0):
    """The request pools: (prompt, decode) int32[replications, N]; pool i is
    ``sample_requests(fold_in(key(seed), i), sampler, (N,))`` (prompt includes load_offset;
    the sampler of :func:`~afd_jax.montecarlo.samplers.make_sampler`, or ``source`` itself when
    it is a sampler pytree already: load_offset is then the caller's business)."""
    if isinstance(source, TraceWorkload | ParametricWorkload):
        sampler = make_sampler(source, load_offset=load_offset)
    else:
        sampler = source
    base = jr.key(int(seed))
    keys = jax.vmap(lambda i: jr.fold_in(base, i))(jnp.arange(replications, dtype=jnp.uint32))
    return _draw(keys, sampler, int(n_requests))


@partial(jax.jit, static_argnums=2)
def _draw(keys, sampler, n: int):
    return jax.vmap(lambda k: KS.sample_requests(k, sampler, (n,)))(keys)


def _pool_model(lat: Latency, batch: int, r_pad: int, max_load: int, dtype) -> KP.PoolModel:
    """The kernel's stage latencies in ``dtype``: affine coefficients, and for each measured
    stage its values from ``afd_jax.model.latency`` (float64): the Attention time on a load
    grid (:func:`~afd_jax.montecarlo.spine.attn_grid`), the FFN and communication times at
    every integer token count 0..r_pad B (the counts the kernel can meet)."""
    lat = L.host_latency(lat)
    model = KP.PoolModel(*(jnp.asarray(float(getattr(lat, k)), dtype) for k in L.COEFFICIENTS))
    tokens = np.arange(r_pad * batch + 1, dtype=np.float64)

    def values(stage):
        return None if L.is_affine(stage) else jnp.asarray(L.stage_time(stage, tokens), dtype)

    grid = None if L.is_affine(lat.attn) else attn_grid(lat, batch, max_load, dtype)
    return model._replace(attn_grid=grid, ffn=values(lat.ffn), comm=values(lat.comm))


@partial(jax.jit, static_argnames=("kernel", "mesh"))
def _pool_chunk(prompt, decode, n, r, target, model, bins, *, kernel, mesh):
    """``kernel.init`` then ``kernel.segment`` (the whole window) for every pool, vmapped over
    the leading (pool) axis of ``prompt`` / ``decode``, each device of ``mesh`` running its
    own pools (:func:`~afd_jax.montecarlo.spine.per_device`: the window's ``while_loop``
    waits for no other device)."""

    def local(prompt, decode, n, r, target, model, bins):
        def one(p, d):
            params = KP.PoolParams(p, d, n, r, target, model, bins)
            return kernel.segment(None, kernel.init(None, params), params)[1]

        return jax.vmap(one)(prompt, decode)

    specs = (ROWS, ROWS) + (SAME,) * 5
    return per_device(local, mesh, specs, ROWS)(prompt, decode, n, r, target, model, bins)


def tau_range(lat: Latency, batch: int, r: int, max_load: int, opts: ModelOptions):
    """(log_lo, inv_w) of log bins spanning every possible tau of a bundle of size r."""
    lat = L.host_latency(lat)
    lows = tuple(  # every stage at zero tokens (an idle worker still pays t_A(0))
        float(L.stage_time(stage, 0.0, batch=batch)) for stage in (lat.attn, lat.comm, lat.ffn)
    )
    highs = (
        E.attn_time_max(lat, batch, max_load),
        L.t_comm(lat, r, batch, opts),
        L.t_ffn(lat, r, batch),
    )
    return E.tau_bins(*E.stage_bounds(lows, highs, opts.overlap == "serial"))


def r_bucket(r: int) -> int:
    """Padded bundle size (the next power of two >= r): one compile per bucket."""
    return 1 << max(0, int(r) - 1).bit_length()


class _Pools(NamedTuple):
    """Validated pools: prompt, decode int32[replications, N_max] (device), n (pool size),
    target (completions ending the window), max_load (largest slot load)."""

    prompt: jax.Array
    decode: jax.Array
    n: int
    target: int
    max_load: int


def _check_args(batch, r_values, completion_fraction, ffn_tokens) -> None:
    if batch < 1 or not r_values or min(r_values) < 1:
        raise InputError("need batch >= 1 and every r >= 1", field="r")
    if not 0 < completion_fraction <= 1:
        raise InputError(
            f"completion fraction must be in (0, 1], got {completion_fraction}",
            field="completion_fraction",
        )
    if ffn_tokens not in KP.FFN_TOKENS:
        raise InputError(f"ffn_tokens must be one of {KP.FFN_TOKENS}", field="ffn_tokens")


def _pools(source, pools, n_requests, replications, seed, opts, batch, fraction) -> _Pools:
    """Draws (or takes) the pools and checks their sizes against int32."""
    if pools is None:
        if n_requests is None or n_requests < 1 or replications < 1:
            raise InputError("need n_requests >= 1 and replications >= 1", field="n_requests")
        # int32 prompt and decode on the device, their int64 copies and the draw on the host
        require(
            48 * int(n_requests) * int(replications),
            f"{replications} pools of {n_requests} requests",
            "lower --requests or --replications",
        )
        pools = draw_pools(source, n_requests, replications, seed, int(opts.load_offset))
    prompt, decode = (jnp.asarray(a, jnp.int32) for a in pools)
    n_max = prompt.shape[1]
    n = n_max if n_requests is None else int(n_requests)
    if not 1 <= n <= n_max:
        raise InputError(f"n_requests must be in 1..{n_max}", field="n_requests")
    p64 = np.asarray(prompt, np.int64)[:, :n]
    d64 = np.asarray(decode, np.int64)[:, :n]
    if d64.min() < 1:
        raise InputError("pool requests need D >= 1", field="decode")
    max_load = int((p64 + d64 - 1).max())
    if batch * max_load >= E.INT32_LIMIT or int(d64.sum(1).max()) >= E.INT32_LIMIT:
        raise InputError(
            "B * max slot load or the pool's total decode exceeds int32", field="batch"
        )
    target = max(1, math.ceil(fraction * n - 1e-9))
    return _Pools(prompt, decode, n, target, max_load)


def pool_simulate(
    workload_or_sampler,
    lat: Latency,
    batch: int,
    r_values,
    *,
    n_requests: int | None = 10_000,
    completion_fraction: float = 0.8,
    replications: int = 8,
    seed: int = 0,
    opts: ModelOptions = _DEFAULT_OPTS,
    ffn_tokens: str = "nominal",
    level: float = 0.95,
    pools=None,
    diagnostics: bool = False,
    progress: bool = False,
    precision: str = "float32",
    checkpoint=None,
) -> MonteCarloResult:
    """Cold-start finite-pool throughput for every r in ``r_values`` (module docstring).

    ``pools``: optional (prompt, decode) int32[replications, N_max] to use instead of drawing
    (prompt already offset); the first ``n_requests`` of each are the pool (default: all).
    Pools of different sizes drawn with the same seed are nested (prefixes of one stream), and
    compiled code depends on ``N_max`` only. ``diagnostics``: also idle fractions, barrier
    share and step-time percentiles (module docstring); ``progress``: one stderr line per r;
    ``precision``: float dtype of the kernel's times and sums ("float32" or "float64", which
    needs ``jax_enable_x64``). Measured (table) stages run as tables (``_pool_model``).
    ``checkpoint``: a file the results of each r are saved to as they finish, which a rerun
    of the same run resumes from (:mod:`.checkpoint`).
    Raises InputError for bad sizes or possible int32 overflow.
    """
    batch = positive_int("batch", batch)
    if not isinstance(r_values, list | tuple | range | np.ndarray) or not len(r_values):
        raise InputError(f"expected a sequence of r, got {r_values!r}", field="r_values")
    r_values = [positive_int("r_values", r) for r in r_values]
    _check_args(batch, r_values, completion_fraction, ffn_tokens)
    if pools is None:
        positive_int("n_requests", n_requests)
        positive_int("replications", replications)
    check_seed("seed", seed)
    check_level(level)
    dtype = float_dtype(precision)
    validate_latency(lat, batch=batch)
    validate_options(opts)
    t_start = time.perf_counter()
    pl = _pools(
        workload_or_sampler, pools, n_requests, replications, seed, opts, batch, completion_fraction
    )
    model = _pool_model(lat, batch, r_bucket(max(r_values)), pl.max_load, dtype)
    keys = ("tokens", "steps", "elapsed", "attn_steps", "load", "max", "ffn", "pct")
    sums = {k: [] for k in keys}
    mesh = RowMesh()
    n_pools = pl.prompt.shape[0]
    rows = _padded_rows(n_pools, mesh.round_up(n_pools))
    prompt, decode = mesh.put((np.asarray(pl.prompt)[rows], np.asarray(pl.decode)[rows]))

    def advance(c: Chunk, seg, state):
        r = c.data
        bins, host_bins, n_bins = None, None, 0
        if diagnostics:
            host_bins = tau_range(lat, batch, r, pl.max_load, opts)
            bins = TauHistogram(*(jnp.asarray(x, dtype) for x in host_bins))
            n_bins = E.N_BINS
        kernel = KP.pool_kernel(
            batch,
            r_bucket(r),
            opts.comm_scaling == "aggregate",
            opts.overlap == "serial",
            ffn_tokens,
            n_bins,
        )
        scalars = (jnp.asarray(x, jnp.int32) for x in (pl.n, r, pl.target))
        info = _pool_chunk(prompt, decode, *scalars, model, bins, kernel=kernel, mesh=mesh.mesh)
        return state, (info, host_bins)  # fetched by record, after the next dispatch

    def record(c: Chunk, seg, out):
        info, host_bins = out
        _record(sums, jax.tree_util.tree_map(lambda x: x[:n_pools], mesh.fetch(info)), host_bins)
        if progress:
            done = f"({len(sums['tokens'])}/{len(r_values)})"
            print(f"pool: r = {c.data} done {done}", file=sys.stderr)

    chunks = (Chunk(None, n_pools, (0,), r) for r in r_values)
    ckpt = _pool_checkpoint(
        checkpoint, mesh, lat, pl, sums, batch=batch, r=r_values, opts=opts, seed=int(seed),
        ffn_tokens=ffn_tokens, diagnostics=bool(diagnostics), precision=precision,
    )  # fmt: skip
    run_chunks(chunks, lambda c: None, advance, record, ckpt)
    wall = time.perf_counter() - t_start
    window = {"kind": "completions", "requests": pl.n, "fraction": float(completion_fraction)}
    res = _result(lat, batch, r_values, window, sums, ffn_tokens, level, seed, wall)
    return dataclasses.replace(
        res, devices=mesh.n, processes=mesh.processes, precision=precision,
        checkpoint=ckpt and ckpt.info(),
    )  # fmt: skip


def _pool_checkpoint(path, mesh: RowMesh, lat, pl: _Pools, sums: dict, **settings):
    """The run's :class:`~.checkpoint.Checkpoint` (None without a ``path``): its settings,
    the pools' size and target, and as inputs the latency, the pools and their largest slot
    load; its accumulator is ``sums`` (lists per r)."""
    settings.update(window="completions", requests=pl.n, target=pl.target)
    ckpt = run_checkpoint(
        path, mesh, settings, latency=lat, workload=(pl.prompt, pl.decode),
        max_slot_load=pl.max_load,
    )  # fmt: skip
    return ckpt and ckpt.attach(lambda: sums, sums.update)


def _padded_rows(n: int, padded: int) -> np.ndarray:
    """Row indices 0..n-1 padded to ``padded`` by repeating the last (the copies are dropped)."""
    return np.minimum(np.arange(padded), n - 1)


def _record(sums: dict, info, bins) -> None:
    """Per-pool results of one r (and its diagnostics sums) into host float64 lists."""
    if bins is not None:
        info, d = info
        sums["load"].append(np.asarray(d.load, np.float64))
        sums["max"].append(np.asarray(d.max_load, np.float64))
        sums["ffn"].append(np.asarray(d.ffn, np.float64))
        sums["pct"].append(E.percentiles(np.asarray(d.hist, np.int64).sum(axis=0), *bins))
    sums["tokens"].append(np.asarray(info.tokens, np.float64))
    sums["steps"].append(np.asarray(info.steps, np.float64))
    sums["elapsed"].append(np.asarray(info.elapsed, np.float64))
    sums["attn_steps"].append(np.asarray(info.attn_steps, np.float64))


def _result(lat, batch, r_values, window, sums, ffn_tokens, level, seed, wall):
    """The MonteCarloResult of a completions-window run (float64 host arithmetic)."""
    lat = L.host_latency(lat)
    tokens, steps = np.stack(sums["tokens"]), np.stack(sums["steps"])
    elapsed, attn = np.stack(sums["elapsed"]), np.stack(sums["attn_steps"])
    replications = tokens.shape[1]
    r_arr = np.asarray(r_values, np.int64)
    tp = L.token_rate(lat, r_arr[:, None], tokens, elapsed)
    mean, se, q = E.sample_mean_se(tp, level)
    extra = {}
    if sums["pct"]:
        extra = _diagnostics(lat, batch, r_arr, ffn_tokens, tokens, steps, elapsed, sums)
    steps_mean = steps.mean(1)
    slot_steps = int(round(float(np.sum(steps_mean * r_arr) * batch * replications)))
    return MonteCarloResult(
        r=r_arr,
        throughput=mean,
        throughput_unit=L.throughput_unit(lat),
        se=se,
        ci_low=mean - q * se,
        ci_high=mean + q * se,
        kernel="pool",
        init="cold",
        batch=batch,
        replications=int(replications),
        seed=int(seed),
        level=float(level),
        window=window,
        slot_steps=slot_steps,
        wall_seconds=wall,
        device=device_name(),
        mean_tau=elapsed.sum(1) / steps.sum(1),
        tokens=tokens.mean(1),
        steps=steps_mean,
        elapsed_us=elapsed.mean(1),
        active_fraction=(tokens / (steps * r_arr[:, None] * batch)).mean(1),
        attn_fraction=(attn / steps).mean(1),
        per_pool_throughput=tp,
        ffn_tokens=ffn_tokens,
        **extra,
    )


def _diagnostics(lat, batch, r_arr, ffn_tokens, tokens, steps, elapsed, sums) -> dict:
    """Idle fractions and barrier share (ratios of sums over all pools, float64) and the
    percentiles; arrays [len(r), replications] in, [len(r)] out."""
    n_steps = steps.sum(1)
    r = r_arr.astype(np.float64)
    if ffn_tokens == "nominal":
        s_ffn = n_steps * L.t_ffn(lat, r, batch)
    elif L.is_affine(lat.ffn):  # sum over steps of alpha_F (active slots) + beta_F
        s_ffn = lat.alpha_ffn * tokens.sum(1) + lat.beta_ffn * n_steps
    else:  # a table: the kernel's sum of t_F(active slots)
        s_ffn = np.stack(sums["ffn"]).sum(1)
    idle = E.pool_idle(
        lat,
        r,
        elapsed.sum(1),
        np.stack(sums["load"]).sum(1),
        np.stack(sums["max"]).sum(1),
        n_steps,
        s_ffn,
    )
    pct = np.asarray(sums["pct"], np.float64)
    return dict(
        **idle._asdict(),
        step_p50=pct[:, 0],
        step_p90=pct[:, 1],
        step_p99=pct[:, 2],
    )

"""Driver of the finite-pool cold-start simulator (the paper's v1 simulator, MODEL.md 6).

``pool_simulate(workload, lat, batch, r_values, n_requests=10_000, completion_fraction=0.8)``
draws ``replications`` pools of ``N`` i.i.d. requests (pool ``i`` from
``fold_in(key(seed), i)``, in pool order; the same pools serve every r: common random
numbers), runs :func:`afd_jax.kernels.pool.pool_run` for every r (all slots fresh at t = 0,
refilled from the pool in slot order, idle once it is empty) until ``ceil(fraction * N)``
requests have completed, and reports per r

    throughput = 1e6 * tokens / ((r c_A + c_F) * elapsed)     tokens/s per instance

(tokens emitted and sum of tau over the window), its mean over the pools with a t-quantile CI,
the mean active-slot fraction ``tokens / (steps r B)`` and the share of steps whose tau was the
barrier Attention time.

FFN and communication times use the nominal ``r B`` tokens by default (MODEL.md 2);
``ffn_tokens="active"`` charges only the active slots (see the kernel docstring).

``diagnostics=True`` runs the same kernel steps in a loop that also sums, per step, the bundle's
total and largest worker load and bins tau into a log-spaced histogram, and adds the idle
fractions, the barrier share and step-time percentiles (as :mod:`afd_jax.montecarlo.simulate`;
ratios of
sums over all steps of all pools' windows):

    idle_attn = 1 - (alpha_A S_T + r beta_A steps) / (r S_tau)
    barrier_share = alpha_A (r S_M - S_T) / (r S_tau),    idle_ffn = 1 - S_F / S_tau

(``S_T = sum_steps sum_{j<r} T_j``, ``S_M = sum_steps max_j T_j``, ``S_F`` the sum of t_F:
``steps t_F(r B)`` nominal, ``alpha_F tokens + beta_F steps`` active). Tokens, steps and
attn_steps are the same integers as without diagnostics; elapsed agrees to float32 rounding.

Compilation: one ``jit`` of the pool loop (``vmap`` over pools) per static
``(N, B, r_pad, switches)``, ``r_pad`` the next power of two >= r; r is traced and the slots of
workers ``j >= r`` are masked, so r = 1..64 costs 7 compiles.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.stats

from afd_jax.errors import InputError
from afd_jax.kernels import pool as KP
from afd_jax.kernels import sampling as KS
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.montecarlo.simulate import STEP_DIAGNOSTICS
from afd_jax.workload.containers import ParametricWorkload, TraceWorkload

__all__ = ["PoolResult", "draw_pools", "pool_simulate"]

N_BINS = 4096  # tau histogram bins (diagnostics)

_INT32_LIMIT = 2**31
_DEFAULT_OPTS = ModelOptions()


@dataclass(frozen=True)
class PoolResult:
    """Per-r results (arrays of shape (len(r),), float64 unless said): ``r`` int64;
    ``throughput`` (mean over pools, tokens/s per instance), ``se`` (its standard error),
    ``ci_low``/``ci_high``; ``tokens``, ``steps``, ``elapsed_us`` (means over pools);
    ``active_fraction`` (tokens / (steps r B)); ``attn_fraction`` (share of steps where the
    barrier Attention time set tau). ``per_pool_throughput``: float64[len(r), replications].
    With ``diagnostics=True`` also ``idle_attn``, ``idle_ffn``, ``barrier_share``,
    ``step_p50``/``step_p90``/``step_p99`` (us) (module docstring); None otherwise."""

    r: np.ndarray
    throughput: np.ndarray
    se: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    tokens: np.ndarray
    steps: np.ndarray
    elapsed_us: np.ndarray
    active_fraction: np.ndarray
    attn_fraction: np.ndarray
    per_pool_throughput: np.ndarray
    batch: int
    n_requests: int
    completion_fraction: float
    replications: int
    seed: int
    ffn_tokens: str
    idle_attn: np.ndarray | None = None
    idle_ffn: np.ndarray | None = None
    idle_bundle: np.ndarray | None = None
    barrier_share: np.ndarray | None = None
    step_p50: np.ndarray | None = None
    step_p90: np.ndarray | None = None
    step_p99: np.ndarray | None = None
    level: float = 0.95

    @property
    def r_best(self) -> int:
        return int(self.r[int(np.argmax(self.throughput))])

    @property
    def slot_steps(self) -> int:
        """Slot-steps simulated: sum over r and pools of steps * r * B."""
        return int(round(float(np.sum(self.steps * self.r) * self.batch * self.replications)))

    def results_table(self) -> list[dict]:
        """One dict per r (the keys of ``SimulationResult.results_table`` plus the pool's own;
        a diagnostic that was not computed is None)."""
        keys = ("throughput", "ci_low", "ci_high", "se")
        extra = ("tokens", "steps", "elapsed_us", "active_fraction", "attn_fraction")
        rows = []
        for i, r in enumerate(self.r):
            row = {"r": int(r), **{k: float(getattr(self, k)[i]) for k in keys}}
            for k in STEP_DIAGNOSTICS:
                v = getattr(self, k)
                row[k] = None if v is None else float(v[i])
            row.update({k: float(getattr(self, k)[i]) for k in extra})
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        return {
            "kernel": "pool",
            "init": "cold",
            "batch": self.batch,
            "replications": self.replications,
            "seed": self.seed,
            "level": self.level,
            "ffn_tokens": self.ffn_tokens,
            "window": {
                "kind": "completions",
                "requests": self.n_requests,
                "fraction": self.completion_fraction,
            },
            "results": self.results_table(),
            "r_best": self.r_best,
            "slot_steps": self.slot_steps,
        }


def _sampler(source, load_offset: int):
    if isinstance(source, TraceWorkload | ParametricWorkload):
        from afd_jax.montecarlo.samplers import make_sampler

        return make_sampler(source, load_offset=load_offset)
    return source  # a sampler pytree already (load_offset is the caller's business)


def draw_pools(source, n_requests: int, replications: int, seed: int, load_offset: int = 0):
    """The request pools: (prompt, decode) int32[replications, N]; pool i is
    ``sample_requests(fold_in(key(seed), i), sampler, (N,))`` (prompt includes load_offset)."""
    sampler = _sampler(source, load_offset)
    base = jr.key(int(seed))
    keys = jax.vmap(lambda i: jr.fold_in(base, i))(jnp.arange(replications, dtype=jnp.uint32))
    return _draw(keys, sampler, int(n_requests))


@partial(jax.jit, static_argnums=2)
def _draw(keys, sampler, n: int):
    return jax.vmap(lambda k: KS.sample_requests(k, sampler, (n,)))(keys)


def _pool_model(lat: Latency) -> KP.PoolModel:
    return KP.PoolModel(
        *(
            jnp.asarray(float(getattr(lat, k)), jnp.float32)
            for k in ("alpha_attn", "beta_attn", "alpha_ffn", "beta_ffn", "alpha_comm", "beta_comm")
        )
    )


_POOL_STATIC = ("batch", "r_pad", "comm_aggregate", "serial", "ffn_tokens")


def _vmap_pools(run_one, static_argnames):
    """Jitted ``run_one`` vmapped over the leading (pool) axis of ``prompt`` / ``decode``;
    the other positional arguments are shared by every pool, keywords are static."""

    @partial(jax.jit, static_argnames=static_argnames)
    def run(prompt, decode, *shared, **static):
        return jax.vmap(lambda p, d: run_one(p, d, *shared, **static))(prompt, decode)

    return run


# (prompt, decode, n, r, target, model, *, batch, r_pad, comm_aggregate, serial, ffn_tokens)
_run_pools = _vmap_pools(KP.pool_run, _POOL_STATIC)


class _DiagSums(NamedTuple):
    """Extra carry of the diagnostics loop (float32 Kahan pairs, int32 histogram):
    load: sum over steps of the bundle's total worker load; max_load: of its largest worker
    load; hist: int32[n_bins] counts of tau per log bin (bin k: log_lo + k / inv_w <= log tau
    < log_lo + (k + 1) / inv_w, the end bins catch the rest)."""

    load: jax.Array
    load_comp: jax.Array
    max_load: jax.Array
    max_comp: jax.Array
    hist: jax.Array


def _kahan(total, comp, x):
    y = x - comp
    t = total + y
    return t, (t - total) - y


def _pool_run_diag(
    pool_prompt,
    pool_decode,
    n,
    r,
    target,
    model,
    log_lo,
    inv_w,
    *,
    batch,
    r_pad,
    comm_aggregate,
    serial,
    ffn_tokens,
    n_bins,
):
    """:func:`kernels.pool.pool_run` (same init, step time, advance and stopping rule) that
    also returns :class:`_DiagSums`. Shapes as pool_run; log_lo, inv_w: float32 scalars."""
    kw = dict(batch=batch, r_pad=r_pad)
    r = jnp.asarray(r, jnp.int32)
    n = jnp.asarray(n, jnp.int32)
    target = jnp.asarray(target, jnp.int32)
    z = jnp.zeros((), jnp.float32)
    carry = (
        KP.pool_init(pool_prompt, pool_decode, r, n, **kw),
        _DiagSums(z, z, z, z, jnp.zeros((n_bins,), jnp.int32)),
    )

    def cond(c):
        st = c[0]
        return (st.completed < target) & jnp.any(st.active)

    def body(c):
        st, d = c
        tau, attn = KP.pool_step_time(
            st,
            r,
            model,
            **kw,
            comm_aggregate=comm_aggregate,
            serial=serial,
            ffn_tokens=ffn_tokens,
        )
        loads = jnp.where(st.active, st.prompt + st.age, 0).reshape(r_pad, batch)
        in_bundle = jnp.arange(r_pad, dtype=jnp.int32) < r
        wl = jnp.where(in_bundle, jnp.sum(loads, axis=1, dtype=jnp.int32), 0)
        load, load_c = _kahan(d.load, d.load_comp, jnp.sum(wl.astype(jnp.float32)))
        mx, mx_c = _kahan(d.max_load, d.max_comp, jnp.max(wl).astype(jnp.float32))
        pos = jnp.floor((jnp.log(jnp.maximum(tau, jnp.float32(1e-30))) - log_lo) * inv_w)
        k = jnp.clip(pos, 0, n_bins - 1).astype(jnp.int32)
        hist = d.hist.at[k].add(jnp.int32(1))
        st = KP.pool_advance(st, pool_prompt, pool_decode, n, tau, attn)
        return st, _DiagSums(load, load_c, mx, mx_c, hist)

    st, d = jax.lax.while_loop(cond, body, carry)
    return KP.PoolInfo(st.tokens, st.steps, st.completed, st.elapsed, st.attn_steps), d


# (prompt, decode, n, r, target, model, log_lo, inv_w, *, batch, r_pad, comm_aggregate,
#  serial, ffn_tokens, n_bins)
_run_pools_diag = _vmap_pools(_pool_run_diag, (*_POOL_STATIC, "n_bins"))


def _tau_range(lat: Latency, batch: int, r: int, max_load: int, opts: ModelOptions):
    """(log_lo, inv_w) of log bins spanning every possible tau of a bundle of size r."""
    x_hi = float(r * batch)
    t_f = (float(lat.beta_ffn), float(lat.alpha_ffn) * x_hi + float(lat.beta_ffn))
    xc = x_hi if opts.comm_scaling == "aggregate" else float(batch)
    t_c = (float(lat.beta_comm), float(lat.alpha_comm) * xc + float(lat.beta_comm))
    t_a = (float(lat.beta_attn), float(lat.alpha_attn) * batch * max_load + float(lat.beta_attn))
    if opts.overlap == "serial":
        lo, hi = t_a[0] + t_c[0] + t_f[0], t_a[1] + t_c[1] + t_f[1]
    else:
        lo, hi = max(t_a[0], t_c[0], t_f[0]), max(t_a[1], t_c[1], t_f[1])
    hi = max(hi, 1e-30) * 1.001
    lo = max(lo, hi * 1e-9, 1e-30) * 0.999
    return math.log(lo), N_BINS / max(math.log(hi) - math.log(lo), 1e-9)


def _percentiles(hist: np.ndarray, log_lo: float, inv_w: float, qs=(0.5, 0.9, 0.99)):
    """Percentiles of tau from int64[n_bins] counts (linear within a bin in log tau)."""
    c = np.cumsum(hist.astype(np.float64))
    if c[-1] <= 0:
        return [float("nan")] * len(qs)
    out = []
    for q in qs:
        target = q * c[-1]
        j = int(np.searchsorted(c, target, side="left"))
        prev = c[j - 1] if j > 0 else 0.0
        frac = (target - prev) / max(c[j] - prev, 1.0)
        out.append(math.exp(log_lo + (j + frac) / inv_w))
    return out


def r_bucket(r: int) -> int:
    """Padded bundle size (the next power of two >= r): one compile per bucket."""
    return 1 << max(0, int(r) - 1).bit_length()


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
) -> PoolResult:
    """Cold-start finite-pool throughput for every r in ``r_values`` (module docstring).

    ``pools``: optional (prompt, decode) int32[replications, N_max] to use instead of drawing
    (prompt already offset); the first ``n_requests`` of each are the pool (default: all).
    Pools of different sizes drawn with the same seed are nested (prefixes of one stream), and
    compiled code depends on ``N_max`` only. ``diagnostics``: also idle fractions, barrier
    share and step-time percentiles (module docstring); ``progress``: one stderr line per r.
    Raises InputError for bad sizes or possible int32
    overflow.
    """
    batch = int(batch)
    r_values = [int(r) for r in r_values]
    if batch < 1 or not r_values or min(r_values) < 1:
        raise InputError("need batch >= 1 and every r >= 1", field="r")
    if not 0 < completion_fraction <= 1:
        raise InputError(
            f"completion fraction must be in (0, 1], got {completion_fraction}",
            field="completion_fraction",
        )
    if ffn_tokens not in KP.FFN_TOKENS:
        raise InputError(f"ffn_tokens must be one of {KP.FFN_TOKENS}", field="ffn_tokens")
    if pools is None:
        if n_requests is None or n_requests < 1 or replications < 1:
            raise InputError("need n_requests >= 1 and replications >= 1", field="n_requests")
        pools = draw_pools(
            workload_or_sampler, n_requests, replications, seed, int(opts.load_offset)
        )
    prompt, decode = (jnp.asarray(a, jnp.int32) for a in pools)
    replications, n_max = prompt.shape
    n_requests = n_max if n_requests is None else int(n_requests)
    if not 1 <= n_requests <= n_max:
        raise InputError(f"n_requests must be in 1..{n_max}", field="n_requests")
    p64 = np.asarray(prompt, np.int64)[:, :n_requests]
    d64 = np.asarray(decode, np.int64)[:, :n_requests]
    if d64.min() < 1:
        raise InputError("pool requests need D >= 1", field="decode")
    if batch * int((p64 + d64 - 1).max()) >= _INT32_LIMIT or int(d64.sum(1).max()) >= _INT32_LIMIT:
        raise InputError(
            "B * max slot load or the pool's total decode exceeds int32", field="batch"
        )
    target = jnp.asarray(max(1, math.ceil(completion_fraction * n_requests - 1e-9)), jnp.int32)
    model = _pool_model(lat)
    out = {k: [] for k in ("tokens", "steps", "elapsed", "attn_steps")}
    diag = {k: [] for k in ("load", "max_load", "pct")}
    max_load = int((p64 + d64 - 1).max())
    for r in r_values:
        args = (
            prompt,
            decode,
            jnp.asarray(n_requests, jnp.int32),
            jnp.asarray(r, jnp.int32),
            target,
            model,
        )
        kw = dict(
            batch=batch,
            r_pad=r_bucket(r),
            comm_aggregate=opts.comm_scaling == "aggregate",
            serial=opts.overlap == "serial",
            ffn_tokens=ffn_tokens,
        )
        if diagnostics:
            log_lo, inv_w = _tau_range(lat, batch, r, max_load, opts)
            info, d = _run_pools_diag(
                *args,
                jnp.asarray(log_lo, jnp.float32),
                jnp.asarray(inv_w, jnp.float32),
                **kw,
                n_bins=N_BINS,
            )
            diag["load"].append(np.asarray(d.load, np.float64))
            diag["max_load"].append(np.asarray(d.max_load, np.float64))
            hist = np.asarray(d.hist, np.int64).sum(axis=0)
            diag["pct"].append(_percentiles(hist, log_lo, inv_w))
        else:
            info = _run_pools(*args, **kw)
        out["tokens"].append(np.asarray(info.tokens, np.float64))
        out["steps"].append(np.asarray(info.steps, np.float64))
        out["elapsed"].append(np.asarray(info.elapsed, np.float64))
        out["attn_steps"].append(np.asarray(info.attn_steps, np.float64))
        if progress:
            print(f"pool: r = {r} done ({len(out['tokens'])}/{len(r_values)})", file=sys.stderr)
    tokens, steps = np.stack(out["tokens"]), np.stack(out["steps"])
    elapsed, attn = np.stack(out["elapsed"]), np.stack(out["attn_steps"])
    r_arr = np.asarray(r_values, np.int64)
    cost = r_arr * float(lat.cost_attn) + float(lat.cost_ffn)
    tp = 1e6 * tokens / (cost[:, None] * elapsed)
    mean = tp.mean(axis=1)
    if replications >= 2:
        se = tp.std(axis=1, ddof=1) / math.sqrt(replications)
        q = float(scipy.stats.t.ppf(0.5 + level / 2, replications - 1))
    else:
        se, q = np.full_like(mean, np.nan), np.nan
    extra = {}
    if diagnostics:
        extra = _diagnostics(lat, batch, r_arr, ffn_tokens, tokens, steps, elapsed, diag)
    return PoolResult(
        r=r_arr,
        throughput=mean,
        se=se,
        ci_low=mean - q * se,
        ci_high=mean + q * se,
        tokens=tokens.mean(1),
        steps=steps.mean(1),
        elapsed_us=elapsed.mean(1),
        active_fraction=(tokens / (steps * r_arr[:, None] * batch)).mean(1),
        attn_fraction=(attn / steps).mean(1),
        per_pool_throughput=tp,
        batch=batch,
        n_requests=int(n_requests),
        completion_fraction=float(completion_fraction),
        replications=int(replications),
        seed=int(seed),
        ffn_tokens=ffn_tokens,
        level=float(level),
        **extra,
    )


def _diagnostics(lat, batch, r_arr, ffn_tokens, tokens, steps, elapsed, diag) -> dict:
    """Idle fractions and barrier share (ratios of sums over all pools, float64) and the
    percentiles; arrays [len(r), replications] in, [len(r)] out."""
    s_tau = elapsed.sum(1)
    n_steps = steps.sum(1)
    s_load = np.stack(diag["load"]).sum(1)
    s_max = np.stack(diag["max_load"]).sum(1)
    r = r_arr.astype(np.float64)
    a_attn, b_attn = float(lat.alpha_attn), float(lat.beta_attn)
    a_ffn, b_ffn = float(lat.alpha_ffn), float(lat.beta_ffn)
    if ffn_tokens == "nominal":
        s_ffn = n_steps * (a_ffn * r * batch + b_ffn)
    else:
        s_ffn = a_ffn * tokens.sum(1) + b_ffn * n_steps
    pct = np.asarray(diag["pct"], np.float64)
    # clipped at 0: where tau == t_F every step the float32 sum of tau can fall 1e-7 short
    idle_attn = np.maximum(0.0, 1.0 - (a_attn * s_load + r * b_attn * n_steps) / (r * s_tau))
    idle_ffn = np.maximum(0.0, 1.0 - s_ffn / s_tau)
    return dict(
        idle_attn=idle_attn,
        idle_ffn=idle_ffn,
        # MODEL.md 3: (sum_j (tau - t_A,j) + (tau - t_F)) / ((r + 1) tau), summed over steps
        idle_bundle=(r * idle_attn + idle_ffn) / (r + 1.0),
        barrier_share=a_attn * (r * s_max - s_load) / (r * s_tau),
        step_p50=pct[:, 0],
        step_p90=pct[:, 1],
        step_p99=pct[:, 2],
    )

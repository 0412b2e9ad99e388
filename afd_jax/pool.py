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

Compilation: one ``jit`` of the pool loop (``vmap`` over pools) per static
``(N, B, r_pad, switches)``, ``r_pad`` the next power of two >= r; r is traced and the slots of
workers ``j >= r`` are masked, so r = 1..64 costs 7 compiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.stats

from .errors import InputError
from .kernels import pool as KP
from .kernels import sampling as KS
from .latency import Latency, ModelOptions
from .workload import ParametricWorkload, TraceWorkload

__all__ = ["PoolResult", "draw_pools", "pool_simulate"]

_INT32_LIMIT = 2**31
_DEFAULT_OPTS = ModelOptions()


@dataclass(frozen=True)
class PoolResult:
    """Per-r results (arrays of shape (len(r),), float64 unless said): ``r`` int64;
    ``throughput`` (mean over pools, tokens/s per instance), ``se`` (its standard error),
    ``ci_low``/``ci_high``; ``tokens``, ``steps``, ``elapsed_us`` (means over pools);
    ``active_fraction`` (tokens / (steps r B)); ``attn_fraction`` (share of steps where the
    barrier Attention time set tau). ``per_pool_throughput``: float64[len(r), replications]."""

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

    @property
    def r_best(self) -> int:
        return int(self.r[int(np.argmax(self.throughput))])


def _sampler(source, load_offset: int):
    if isinstance(source, TraceWorkload | ParametricWorkload):
        from .samplers import make_sampler

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


@partial(jax.jit, static_argnames=("batch", "r_pad", "comm_aggregate", "serial", "ffn_tokens"))
def _run_pools(
    prompt, decode, n, r, target, model, *, batch, r_pad, comm_aggregate, serial, ffn_tokens
):
    run = partial(
        KP.pool_run,
        batch=batch,
        r_pad=r_pad,
        comm_aggregate=comm_aggregate,
        serial=serial,
        ffn_tokens=ffn_tokens,
    )
    return jax.vmap(lambda p, d: run(p, d, n, r, target, model))(prompt, decode)


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
) -> PoolResult:
    """Cold-start finite-pool throughput for every r in ``r_values`` (module docstring).

    ``pools``: optional (prompt, decode) int32[replications, N_max] to use instead of drawing
    (prompt already offset); the first ``n_requests`` of each are the pool (default: all).
    Pools of different sizes drawn with the same seed are nested (prefixes of one stream), and
    compiled code depends on ``N_max`` only. Raises InputError for bad sizes or possible int32
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
    for r in r_values:
        info = _run_pools(
            prompt,
            decode,
            jnp.asarray(n_requests, jnp.int32),
            jnp.asarray(r, jnp.int32),
            target,
            model,
            batch=batch,
            r_pad=r_bucket(r),
            comm_aggregate=opts.comm_scaling == "aggregate",
            serial=opts.overlap == "serial",
            ffn_tokens=ffn_tokens,
        )
        out["tokens"].append(np.asarray(info.tokens, np.float64))
        out["steps"].append(np.asarray(info.steps, np.float64))
        out["elapsed"].append(np.asarray(info.elapsed, np.float64))
        out["attn_steps"].append(np.asarray(info.attn_steps, np.float64))
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
    )

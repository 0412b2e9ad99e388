"""Finite-pool cold-start simulator: the paper's v1 simulator (docs/model.md 6).

``r`` Attention workers x ``B`` slots start empty at t = 0 and serve a finite pool of ``N``
requests ``(P_i, D_i)`` in pool order:

* at t = 0 slot ``s = j*B + b`` (worker j, slot b) takes pool request ``s`` (if ``s < N``);
* every step, an active slot holding request (P, D) at age k has load ``P + k`` (the prompt
  already includes any ``load_offset``) and emits one token; then it ages by one, and a slot
  whose request finished (age == D) takes the next pool request (ties: lower slot index
  first), or goes idle (load 0, no token) once the pool is empty;
* the run stops after the step at which ``completed >= target`` (e.g. ``ceil(0.8 N)``), or
  when no slot is active.

Step time (docs/model.md 2), with ``tA_j = alpha_A T_j + beta_A`` for the r workers (an idle worker
still pays ``beta_A``) and the barrier ``max_j tA_j``::

    tau = max(max_j tA_j, t_C, t_F)         (pipelined)    or   max_j tA_j + t_C + t_F  (serial)
    t_F = alpha_F X_F + beta_F,  t_C = alpha_C X_C + beta_C

``ffn_tokens`` (static) chooses X: ``"nominal"`` (default, docs/model.md 2): ``X_F = r B`` and
``X_C = r B`` (aggregate) or ``B`` (per worker) whatever the slots hold; ``"active"``: the
number of active slots of the bundle (``X_C`` per worker: the most active slots of a worker),
i.e. a FFN whose cost shrinks as the pool drains.

Shapes: the slot arrays have ``r_pad * B`` entries (``r_pad`` static, e.g. the next power of
two); the bundle size ``r <= r_pad`` is traced, slots of workers ``j >= r`` are masked. Tokens,
loads and counters are int32 (the driver checks ``B * max load`` and ``sum D`` fit); times are
in the float dtype of the :class:`PoolModel` (float32 by default, float64 when the driver asks)
with a compensated (Kahan) running sum of tau. Measured (table) stages: the driver passes the
Attention time on a load grid (:class:`~.step.AttnGrid`, read by :func:`~.step.attn_times`)
and the FFN / communication times at every integer token count 0..r_pad B (the counts X are
integers in both ``ffn_tokens`` modes). Pure and un-jitted; no afd_jax imports.
"""

from __future__ import annotations

from functools import cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .barrier import TauHistogram
from .contract import Kernel
from .step import AttnGrid, attn_times, kahan_add

FFN_TOKENS = ("nominal", "active")


class PoolModel(NamedTuple):
    """Stage latencies (traced, one float dtype: float32 by default, float64 on request):
    t_A(T) = alpha_attn T + beta_attn, t_F = alpha_ffn X_F + beta_ffn, t_C = alpha_comm X_C +
    beta_comm. A measured stage replaces its pair: ``attn_grid`` (:class:`~.step.AttnGrid`,
    t_A on a load grid), ``ffn`` / ``comm`` ([r_pad B + 1], the time at X = 0, 1, ...)."""

    alpha_attn: jax.Array
    beta_attn: jax.Array
    alpha_ffn: jax.Array
    beta_ffn: jax.Array
    alpha_comm: jax.Array
    beta_comm: jax.Array
    attn_grid: AttnGrid | None = None
    ffn: jax.Array | None = None
    comm: jax.Array | None = None


def token_time(values, alpha, beta, tokens):
    """Time of a stage at the int32 token count ``tokens``: ``alpha X + beta`` (affine,
    ``values`` None) or ``values[X]`` (a table sampled at every integer count)."""
    if values is None:
        return alpha * tokens.astype(alpha.dtype) + beta
    return values[tokens]


class PoolState(NamedTuple):
    """Carry of the step loop. prompt, decode, age: int32[r_pad*B]; active: bool[r_pad*B];
    scalars int32: next_request (pool index of the next fresh request), completed, tokens,
    steps; elapsed, elapsed_comp: the model's float dtype (Kahan sum of tau and its compensation);
    attn_steps: int32, steps where the barrier Attention time set tau (pipelined)."""

    prompt: jax.Array
    decode: jax.Array
    age: jax.Array
    active: jax.Array
    next_request: jax.Array
    completed: jax.Array
    tokens: jax.Array
    steps: jax.Array
    elapsed: jax.Array
    elapsed_comp: jax.Array
    attn_steps: jax.Array


class PoolInfo(NamedTuple):
    """Result of :func:`pool_run` (scalars): tokens (int32, emitted in the window), steps
    (int32), completed (int32, requests finished in the window), elapsed (float32, sum of tau
    over the window, the model's float dtype), attn_steps (int32, steps whose tau was the
    barrier Attention time)."""

    tokens: jax.Array
    steps: jax.Array
    completed: jax.Array
    elapsed: jax.Array
    attn_steps: jax.Array


def pool_init(
    pool_prompt, pool_decode, r, n, *, batch: int, r_pad: int, dtype=jnp.float32
) -> PoolState:
    """Cold start: slot s < min(r B, N) holds pool request s at age 0; the rest are idle.

    pool_prompt, pool_decode: int32[N_max] (decode >= 1); the pool is their first ``n``
    entries (int32 scalar, traced, 1 <= n <= N_max: pools of several sizes share one compile);
    r: int32 scalar (traced), 1 <= r <= r_pad; ``dtype``: float dtype of the elapsed time.
    """
    n = jnp.asarray(n, jnp.int32)
    slots = r_pad * batch
    s = jnp.arange(slots, dtype=jnp.int32)
    n_bundle = jnp.asarray(r, jnp.int32) * jnp.int32(batch)
    active = (s < n_bundle) & (s < n)
    idx = jnp.minimum(s, n - 1)
    zero = jnp.zeros((), jnp.int32)
    return PoolState(
        prompt=jnp.where(active, pool_prompt[idx], 0).astype(jnp.int32),
        decode=jnp.where(active, pool_decode[idx], 1).astype(jnp.int32),
        age=jnp.zeros((slots,), jnp.int32),
        active=active,
        next_request=jnp.minimum(n_bundle, n),
        completed=zero,
        tokens=zero,
        steps=zero,
        elapsed=jnp.zeros((), dtype),
        elapsed_comp=jnp.zeros((), dtype),
        attn_steps=zero,
    )


def pool_step_time(
    state: PoolState,
    r,
    model: PoolModel,
    *,
    batch: int,
    r_pad: int,
    comm_aggregate: bool,
    serial: bool,
    ffn_tokens: str,
):
    """(tau, attention_binds, t_F) of the current step: float scalar, bool, float (module doc)."""
    loads = jnp.where(state.active, state.prompt + state.age, 0).reshape(r_pad, batch)
    worker_load = jnp.sum(loads, axis=1, dtype=jnp.int32)
    worker_active = jnp.sum(state.active.reshape(r_pad, batch), axis=1, dtype=jnp.int32)
    in_bundle = jnp.arange(r_pad, dtype=jnp.int32) < r
    max_load = jnp.max(jnp.where(in_bundle, worker_load, 0))
    t_attn = attn_times(model, max_load.astype(model.beta_attn.dtype))
    if ffn_tokens == "nominal":
        x_ffn = jnp.asarray(r, jnp.int32) * jnp.int32(batch)
        x_comm = x_ffn if comm_aggregate else jnp.int32(batch)
    else:
        x_ffn = jnp.sum(jnp.where(in_bundle, worker_active, 0), dtype=jnp.int32)
        x_comm = x_ffn if comm_aggregate else jnp.max(jnp.where(in_bundle, worker_active, 0))
    t_ffn = token_time(model.ffn, model.alpha_ffn, model.beta_ffn, x_ffn)
    t_comm = token_time(model.comm, model.alpha_comm, model.beta_comm, x_comm)
    if serial:
        return t_attn + t_comm + t_ffn, jnp.asarray(True), t_ffn
    other = jnp.maximum(t_comm, t_ffn)
    return jnp.maximum(t_attn, other), t_attn >= other, t_ffn


def pool_advance(state: PoolState, pool_prompt, pool_decode, n, tau, attn_binds) -> PoolState:
    """Account one step (tokens, tau) then age the slots and refill finished ones in slot order
    from the first ``n`` pool entries (idle once they are used up)."""
    n_active = jnp.sum(state.active, dtype=jnp.int32)
    # Kahan summation of tau (a plain float32 running sum drifts over 10^4+ steps)
    t, comp = kahan_add(state.elapsed, state.elapsed_comp, tau)
    age = state.age + state.active.astype(jnp.int32)
    done = state.active & (age >= state.decode)
    n_done = jnp.sum(done, dtype=jnp.int32)
    rank = jnp.cumsum(done.astype(jnp.int32)) - 1
    idx = state.next_request + rank
    refill = done & (idx < n)
    src = jnp.clip(idx, 0, n - 1)
    return PoolState(
        prompt=jnp.where(refill, pool_prompt[src], state.prompt),
        decode=jnp.where(refill, pool_decode[src], state.decode),
        age=jnp.where(done, 0, age),
        active=jnp.where(done, refill, state.active),
        next_request=jnp.minimum(state.next_request + n_done, n),
        completed=state.completed + n_done,
        tokens=state.tokens + n_active,
        steps=state.steps + 1,
        elapsed=t,
        elapsed_comp=comp,
        attn_steps=state.attn_steps + attn_binds.astype(jnp.int32),
    )


class PoolDiag(NamedTuple):
    """Optional extra carry of the pool loop (Kahan pairs in the model's float dtype, int32
    histogram): load: sum over steps of the bundle's total worker load (a table Attention
    stage: of the workers' Attention times t_A(T_j)); max_load: of its largest worker load
    (table: its Attention time); ffn: of t_F; hist: int32[n_bins] counts of tau per log bin
    (:class:`kernels.barrier.TauHistogram`; the end bins catch the rest)."""

    load: jax.Array
    load_comp: jax.Array
    max_load: jax.Array
    max_comp: jax.Array
    hist: jax.Array
    ffn: jax.Array
    ffn_comp: jax.Array


class PoolParams(NamedTuple):
    """Traced arguments of a pool run: pool_prompt, pool_decode int32[N_max]; n (pool size),
    r (bundle size), target (completions that end the window): int32 scalars; model:
    :class:`PoolModel`; bins: :class:`kernels.barrier.TauHistogram` (diagnostics) or None."""

    pool_prompt: jax.Array
    pool_decode: jax.Array
    n: jax.Array
    r: jax.Array
    target: jax.Array
    model: PoolModel
    bins: TauHistogram | None = None


def _observe(d: PoolDiag, st: PoolState, step, p: PoolParams, *, batch, r_pad, n_bins):
    """Adds one step (``step``: its tau and t_F) to the diagnostics sums (loads before the
    slots age)."""
    tau, t_ffn = step
    loads = jnp.where(st.active, st.prompt + st.age, 0).reshape(r_pad, batch)
    in_bundle = jnp.arange(r_pad, dtype=jnp.int32) < p.r
    wl = jnp.where(in_bundle, jnp.sum(loads, axis=1, dtype=jnp.int32), 0)
    dtype = tau.dtype
    per_worker, largest = wl.astype(dtype), jnp.max(wl).astype(dtype)
    if p.model.attn_grid is not None:  # sums of Attention times (the idle sums stay linear)
        per_worker = jnp.where(in_bundle, attn_times(p.model, per_worker), jnp.zeros((), dtype))
        largest = attn_times(p.model, largest)
    load, load_c = kahan_add(d.load, d.load_comp, jnp.sum(per_worker))
    mx, mx_c = kahan_add(d.max_load, d.max_comp, largest)
    f, f_c = kahan_add(d.ffn, d.ffn_comp, t_ffn)
    tiny = jnp.asarray(1e-30, dtype)
    pos = jnp.floor((jnp.log(jnp.maximum(tau, tiny)) - p.bins.log_lo) * p.bins.inv_width)
    k = jnp.clip(pos, 0, n_bins - 1).astype(jnp.int32)
    return PoolDiag(load, load_c, mx, mx_c, d.hist.at[k].add(jnp.int32(1)), f, f_c)


def pool_segment(
    key,
    state: PoolState,
    params: PoolParams,
    *,
    batch: int,
    r_pad: int,
    comm_aggregate: bool,
    serial: bool,
    ffn_tokens: str,
    n_bins: int = 0,
):
    """Steps ``state`` until ``completed >= target`` or no slot is active (``lax.while_loop``;
    ``key`` unused: the pool is the randomness). Returns ``(final state, info)``: info is
    :class:`PoolInfo`, or ``(PoolInfo, PoolDiag)`` when ``n_bins > 0`` (static): the same
    steps, with the diagnostics sums carried alongside."""
    p = params
    kw = dict(batch=batch, r_pad=r_pad)
    z = jnp.zeros((), p.model.beta_attn.dtype)
    diag0 = PoolDiag(z, z, z, z, jnp.zeros((n_bins,), jnp.int32), z, z) if n_bins else ()

    def cond(c):
        st = c[0]
        return (st.completed < p.target) & jnp.any(st.active)

    def body(c):
        st, d = c
        tau, attn, t_ffn = pool_step_time(
            st,
            p.r,
            p.model,
            **kw,
            comm_aggregate=comm_aggregate,
            serial=serial,
            ffn_tokens=ffn_tokens,
        )
        if n_bins:
            d = _observe(d, st, (tau, t_ffn), p, **kw, n_bins=n_bins)
        st = pool_advance(st, p.pool_prompt, p.pool_decode, p.n, tau, attn)
        return st, d

    st, d = jax.lax.while_loop(cond, body, (state, diag0))
    info = PoolInfo(st.tokens, st.steps, st.completed, st.elapsed, st.attn_steps)
    return st, ((info, d) if n_bins else info)


@cache
def pool_kernel(
    batch: int, r_pad: int, comm_aggregate: bool, serial: bool, ffn_tokens: str, n_bins: int = 0
) -> Kernel:
    """The finite pool under the contract of :mod:`kernels.contract`: ``init(key, params)`` =
    :func:`pool_init` (cold start), ``segment`` = :func:`pool_segment` (the whole window)."""
    if ffn_tokens not in FFN_TOKENS:
        raise ValueError(f"ffn_tokens must be one of {FFN_TOKENS}, got {ffn_tokens!r}")

    def init_fn(key, params: PoolParams):
        r = jnp.asarray(params.r, jnp.int32)
        n = jnp.asarray(params.n, jnp.int32)
        return pool_init(
            params.pool_prompt,
            params.pool_decode,
            r,
            n,
            batch=batch,
            r_pad=r_pad,
            dtype=params.model.beta_attn.dtype,
        )

    segment = partial(
        pool_segment,
        batch=batch,
        r_pad=r_pad,
        comm_aggregate=comm_aggregate,
        serial=serial,
        ffn_tokens=ffn_tokens,
        n_bins=n_bins,
    )
    return Kernel("pool", init_fn, segment)


def pool_run(
    pool_prompt,
    pool_decode,
    n,
    r,
    target,
    model: PoolModel,
    *,
    batch: int,
    r_pad: int,
    comm_aggregate: bool,
    serial: bool,
    ffn_tokens: str = "nominal",
) -> PoolInfo:
    """Run the cold-start finite-pool simulation on the pool ``pool_*[:n]`` until
    ``completed >= target`` (int32 scalar, 1 <= target <= n) or no slot is active;
    ``lax.while_loop`` (one compiled loop per static ``(N_max, batch, r_pad, comm_aggregate,
    serial, ffn_tokens)``; n, r, target and the coefficients are traced, so it vmaps over
    pools and r): :func:`pool_kernel` ``init`` then ``segment``.

    Throughput per instance (per unit cost) of the window: ``1e6 tokens / ((r c_A + c_F)
    elapsed)`` tokens/s (computed by the driver).
    """
    kernel = pool_kernel(batch, r_pad, comm_aggregate, serial, ffn_tokens)
    params = PoolParams(
        pool_prompt,
        pool_decode,
        jnp.asarray(n, jnp.int32),
        jnp.asarray(r, jnp.int32),
        jnp.asarray(target, jnp.int32),
        model,
    )
    return kernel.segment(None, kernel.init(None, params), params)[1]

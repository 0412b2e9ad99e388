"""Gradient-based provisioning: maximise a smoothed throughput in a continuous r (and B) with
optax, then choose the integers by exact evaluation (docs/optimize.md).

Smoothed objective (temperature ``T`` in microseconds, ``T -> 0`` recovers the Gaussian model
of :func:`afd_jax.model.theory.gaussian_step_time`):

* other stages      ``G_T(r) = T * logaddexp(t_C/T, t_F/T)`` (pipelined; ``max <= G_T <= max +
  T log 2``) or ``t_C + t_F`` (serial, no max);
* Attention vs G    the max inside ``E[max(M_A, G)]`` is smoothed by Gaussian jitter of the
  Attention time: ``s_T = sqrt(s_A^2 + T^2)`` with ``s_A = alpha_A sqrt(B v)``, so
  ``E_T[tau] = G_T + s_T * int_z^inf (1 - Phi(x)^r) dx``, ``z = (G_T - mu_A) / s_T`` -- the
  theory module's tail integral evaluated at (mu_A, s_T, G_T). Smooth in r, B and every
  coefficient even for a deterministic workload (v = 0). Bias: ``0 <= E_T[tau] - E[tau] <=
  T log 2 + T * (1 + m_r)`` (tests/test_optimize.py checks it vanishes linearly in T);
* objective         ``J_T = log throughput_T - w_T * pen_T`` with throughput ``1e6 r B / ((r c_A
  + c_F) E_T[tau])`` and, when a mean step-time budget S is set, the exterior penalty
  ``pen_T = (t softplus(log(E_T[tau]/S) / t))^2``, ``t = T / scale``, weight ``w_T = 1 / t``.

``T = t * scale`` with the relative temperature ``t`` annealed geometrically from
``temperature_start`` to ``temperature_final`` and ``scale = tA_bar(B0) + t_C(1, B0) +
t_F(1, B0)`` (B0 = the scenario's batch), so the schedule is unit-free.

Solver (:func:`solve_continuous`, one jitted function, vmapped in
:func:`solve_continuous_batched`): ``x = (log r, log B)`` (B is held fixed by
``batch_min = batch_max = B``);
``adam_steps`` steps of ``optax.adam`` with an exponentially decaying learning rate while the
temperature anneals (``lax.scan``), each followed by projection on the box bounds; then
projected Newton steps at the final temperature with backtracking (``lax.while_loop``).
Convergence test: the projected gradient of ``J_T`` in log coordinates has max-norm
``<= gtol`` (a stationary point of the final smoothed problem) or the last accepted step is
``<= xtol`` in max-norm. ``iterations`` counts Adam plus Newton steps.

Sensitivities (:func:`sensitivities`): implicit differentiation of the stationarity condition
``grad_x J_T(x*, p) = 0`` on the free coordinates: ``dx*/dp = -H^-1 d(grad_x J_T)/dp``;
coordinates at an active bound have zero sensitivity. ``dr*/dp = r* dx_r/dp``.

Integer choice and constraints (:func:`optimize`, host float64): candidates ``floor(r_c) - k ..
ceil(r_c) + k`` (and the same for B), extended while the best feasible candidate sits on the
edge of the window; each is evaluated by :mod:`afd_jax.model.exact`. Constraints: KV capacity
(``Pr(worker load > capacity) <= eps`` under the exact worker-load law -> the largest allowed
B), mean step time ``E[tau] <= S``, P99 step time (from the exact law of the barrier max), r and
B bounds. A constraint *binds* when a candidate with higher exact throughput violates it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from afd_jax.errors import InputError, is_real, positive_int
from afd_jax.model import theory
from afd_jax.model.exact import (
    exact_step_times,
    host_latency,
    other_stage_times,
    worker_load_pmf,
)
from afd_jax.model.hardware import KV_EPSILON, feasible_ratios
from afd_jax.model.latency import (
    DEFAULT_OPTIONS,
    SCALAR_FIELDS,
    Latency,
    ModelOptions,
    instance_cost,
    make_latency,
    other_stages,
    stage_slope,
    step_time_from_other,
    t_attn,
    t_comm,
    t_ffn,
    throughput,
)
from afd_jax.model.latency_io import scalar_items, validate_latency, validate_options
from afd_jax.model.stages import check_batch
from afd_jax.studies.directions import (
    STAGE_INPUTS,
    TABLE_STAGES,
    input_tangents,
    scale_tables,
)

__all__ = [
    "OptimizeResult",
    "Scenario",
    "Solution",
    "SolverConfig",
    "exact_p99_step_times",
    "input_derivatives",
    "kv_batch_limit",
    "make_scenario",
    "optimize",
    "sensitivities",
    "smooth_max",
    "smoothed_objective",
    "smoothed_step_time",
    "solve_continuous",
    "solve_continuous_batched",
]

PARAMETERS = (*SCALAR_FIELDS, "theta", "slot_var", "batch", "step_slo")


class Scenario(NamedTuple):
    """One provisioning problem as a pytree of scalars (stack leaves for a batch of scenarios).

    latency: coefficients and costs; theta, slot_var: per-slot load mean and variance (tokens,
    tokens^2); batch: B (fixed, or the reference/initial B when optimising B); step_slo: mean
    step-time budget in us (inf = none); r_min, r_max, batch_min, batch_max: box bounds
    (batch_max already includes the KV-capacity limit). All leaves are traced.
    """

    latency: Latency
    theta: jax.Array
    slot_var: jax.Array
    batch: jax.Array
    step_slo: jax.Array
    r_min: jax.Array
    r_max: jax.Array
    batch_min: jax.Array
    batch_max: jax.Array


class SolverConfig(NamedTuple):
    """Static solver settings (hashable; a new value recompiles).

    adam_steps: length of the annealing
    phase; learning_rate -> final_learning_rate: Adam step size (log units), exponential decay;
    temperature_start -> temperature_final: relative temperature t, geometric; newton_steps:
    most polishing steps; gtol, xtol: convergence test (module docstring).
    """

    adam_steps: int = 300
    learning_rate: float = 0.1
    final_learning_rate: float = 1e-3
    temperature_start: float = 0.3
    temperature_final: float = 1e-5
    newton_steps: int = 60
    gtol: float = 1e-10
    xtol: float = 1e-13


DEFAULT_CONFIG = SolverConfig()


class Solution(NamedTuple):
    """Continuous optimum (leaves batched like the scenario).

    r, batch: continuous optimum (batch = the fixed B unless optimising B); throughput: smoothed
    throughput there (tokens/s, final temperature); grad_norm: max-norm of the projected
    gradient of J_T in log coordinates; iterations: Adam + Newton steps; converged: bool;
    at_bound: bool per coordinate of x (shape (d,)), the coordinate sits on an active bound.
    """

    r: jax.Array
    batch: jax.Array
    throughput: jax.Array
    grad_norm: jax.Array
    iterations: jax.Array
    converged: jax.Array
    at_bound: jax.Array


def _dtype():
    return jnp.asarray(1.0).dtype  # float64 under x64, float32 otherwise


def make_scenario(
    lat: Latency,
    theta,
    slot_var,
    batch,
    *,
    step_slo=math.inf,
    r_min=1.0,
    r_max=64.0,
    batch_min=1.0,
    batch_max=None,
) -> Scenario:
    """Build a :class:`Scenario` with every leaf cast to the default float dtype. Arrays of equal
    shape give a batch of scenarios (for :func:`solve_continuous_batched`)."""
    dt = _dtype()
    if batch_max is None:
        batch_max = batch

    def c(x):
        return jnp.asarray(x, dtype=dt)

    n = len(SCALAR_FIELDS)
    leaves = [*lat[:n], theta, slot_var, batch, step_slo, r_min, r_max, batch_min, batch_max]
    leaves = jnp.broadcast_arrays(*(c(v) for v in leaves))  # one common shape
    tables = None if lat.tables is None else jax.tree_util.tree_map(c, lat.tables)
    return Scenario(make_latency(leaves[:n], tables), *leaves[n:])


def smooth_max(a, b, temperature):
    """``T * logaddexp(a/T, b/T)``: ``max(a, b) <= smooth_max <= max(a, b) + T log 2``;
    ``temperature = 0`` gives the hard max (elementwise, differentiable for T > 0)."""
    pos = temperature > 0
    t = jnp.where(pos, temperature, 1.0)
    return jnp.where(pos, t * jnp.logaddexp(a / t, b / t), jnp.maximum(a, b))


def smoothed_step_time(
    lat: Latency, theta, slot_var, r, batch, temperature, opts: ModelOptions = DEFAULT_OPTIONS
):
    """``E_T[tau]`` (us): the Gaussian-barrier step time with both maxima smoothed at temperature
    ``T`` (us) as in the module docstring; ``T = 0`` equals
    :func:`afd_jax.model.theory.gaussian_step_time` (method "tail"). Elementwise in every argument;
    ``opts`` is static."""
    mu = theory.mean_attention_time(lat, theta, batch)
    if opts.overlap == "pipelined":
        g = smooth_max(t_comm(lat, r, batch, opts), t_ffn(lat, r, batch), temperature)
    else:
        g = other_stages(lat, r, batch, opts)
    # s_A = t_A'(B theta) sqrt(B v): alpha_A sqrt(B v) for an affine stage; a table Attention
    # stage is linearised at the mean load here (the integer choice uses the whole table).
    slope = stage_slope(lat.attn, batch * theta, batch)
    s2 = slope**2 * batch * slot_var + temperature**2
    s = jnp.sqrt(jnp.where(s2 > 0, s2, 1.0))
    s = jnp.where(s2 > 0, s, 0.0)
    # The theory module's Gaussian barrier for N(mu, s^2) workers and other stages g: a
    # one-slot "worker" (B = 1, theta = 0, v = 1) with alpha_A = s, beta_A = mu, t_F = g, t_C = 0.
    zero = jnp.zeros_like(mu)
    pieces = Latency(s, mu, zero, g, zero, zero)
    unit = ModelOptions(comm_scaling="aggregate", overlap=opts.overlap)
    return theory.gaussian_step_time(pieces, 0.0, 1.0, r, 1.0, unit)


def _temperature_scale(scen: Scenario, opts: ModelOptions):
    lat, b0 = scen.latency, scen.batch
    one = jnp.ones_like(b0)
    return (
        theory.mean_attention_time(lat, scen.theta, b0)
        + t_comm(lat, one, b0, opts)
        + t_ffn(lat, one, b0)
    )


def _unpack(x):
    return jnp.exp(x[0]), jnp.exp(x[1])


def smoothed_objective(x, scen: Scenario, rel_temperature, opts: ModelOptions = DEFAULT_OPTIONS):
    """``J_T(x)``: log smoothed throughput minus the step-time penalty (module docstring);
    ``x = [log r, log B]`` (shape (2,)); ``rel_temperature`` t > 0 (traced)."""
    r, b = _unpack(x)
    lat = scen.latency
    temp = rel_temperature * _temperature_scale(scen, opts)
    tau = smoothed_step_time(lat, scen.theta, scen.slot_var, r, b, temp, opts)
    log_thr = jnp.log(1e6 * r * b) - jnp.log(instance_cost(lat, r)) - jnp.log(tau)
    has_slo = jnp.isfinite(scen.step_slo)
    slo = jnp.where(has_slo, scen.step_slo, 1.0)
    excess = jnp.log(tau) - jnp.log(slo)
    soft = rel_temperature * jax.nn.softplus(excess / rel_temperature)
    pen = jnp.where(has_slo, soft**2 / rel_temperature, 0.0)
    return log_thr - pen


def _bounds(scen: Scenario):
    lo = jnp.stack([jnp.log(scen.r_min), jnp.log(scen.batch_min)])
    hi = jnp.stack([jnp.log(scen.r_max), jnp.log(scen.batch_max)])
    return lo, hi


def _active(x, g, lo, hi):
    """Coordinates on a bound whose ascent direction (g = grad J) points outside."""
    return ((x <= lo) & (g < 0)) | ((x >= hi) & (g > 0))


def _adam_phase(neg, x, lo, hi, config: SolverConfig, dt):
    """``config.adam_steps`` projected Adam steps on ``neg(x, t)`` while the relative
    temperature t anneals geometrically and the learning rate decays (``lax.scan``)."""
    n = config.adam_steps
    t0, t1 = config.temperature_start, config.temperature_final
    temp_sched = optax.exponential_decay(t0, max(n - 1, 1), t1 / t0, end_value=t1)
    lr_sched = optax.exponential_decay(
        config.learning_rate,
        max(n - 1, 1),
        config.final_learning_rate / config.learning_rate,
        end_value=config.final_learning_rate,
    )
    opt = optax.adam(lr_sched)
    grad_neg = jax.grad(neg)

    def adam_step(carry, k):
        x, state = carry
        t = jnp.asarray(temp_sched(k), dtype=dt)
        g = grad_neg(x, t)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
            upd, state = opt.update(g, state, x)
        x = jnp.clip(optax.apply_updates(x, upd), lo, hi)
        return (x, state), None

    with jax.numpy_dtype_promotion("standard"):
        state0 = opt.init(x)
    (x, _), _ = jax.lax.scan(adam_step, (x, state0), jnp.arange(n))
    return x


def _projected_derivatives(neg, x, t_fin, lo, hi):
    """(f, projected gradient, Hessian masked to the free coordinates, active mask) of
    ``neg(., t_fin)`` at x."""

    def vg(x):
        f, g = jax.value_and_grad(neg)(x, t_fin)
        return g, (f, g)

    h, (f, g) = jax.jacfwd(vg, has_aux=True)(x)
    pg, act = _projected(g, x, lo, hi)
    free = ~act
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    return f, pg, jnp.where(free[:, None] & free[None, :], h, eye), act


def _projected(g, x, lo, hi):
    """(gradient ``g`` of ``neg`` with the active coordinates zeroed, active mask) at x."""
    act = _active(x, -g, lo, hi)
    return jnp.where(act, 0.0, g), act


def _backtrack(neg, x, step, pg, f0, accept_first, t_fin, lo, hi):
    """Armijo backtracking along ``step`` (halving, at most 40 tries): (step length, accepted)."""

    def ls_cond(s):
        a, ok, i = s
        return ~ok & (i < 40)

    def ls_body(s):
        a, _, i = s
        xn = jnp.clip(x + a * step, lo, hi)
        ok = neg(xn, t_fin) <= f0 + 1e-4 * jnp.dot(pg, xn - x)
        return jnp.where(ok, a, 0.5 * a), ok, i + 1

    one = jnp.asarray(1.0, x.dtype)
    ls0 = (one, accept_first, jnp.asarray(0, jnp.int32))
    a, ok, _ = jax.lax.while_loop(ls_cond, ls_body, ls0)
    return a, ok


def _newton_phase(neg, x, lo, hi, t_fin, config: SolverConfig):
    """Projected Newton steps at the final temperature with backtracking, until the projected
    gradient is below gtol, the step below xtol, or ``config.newton_steps``: (x, steps)."""
    dt = x.dtype
    eps = float(jnp.finfo(dt).eps)
    gtol = max(config.gtol, 10 * eps)
    xtol = max(config.xtol, 10 * eps)

    def cond(c):
        _, k, done = c
        return (k < config.newton_steps) & ~done

    def newton(c):
        x, k, _ = c
        f0, pg, hm, _ = _projected_derivatives(neg, x, t_fin, lo, hi)
        gn = jnp.max(jnp.abs(pg))
        eye = jnp.eye(x.shape[0], dtype=dt)
        pd = jnp.all(jnp.linalg.eigvalsh(hm) > 0)
        step_n = -jnp.linalg.solve(jnp.where(pd, hm, eye), pg)
        step = jnp.where(pd, step_n, -pg / (jnp.max(jnp.abs(jnp.diag(hm))) + 1.0))
        step = jnp.clip(step, -0.25, 0.25)
        # at the rounding floor of f the Armijo test is meaningless: take the Newton step
        floor = pd & (-jnp.dot(pg, step) <= 1e3 * eps * (1.0 + jnp.abs(f0)))
        a, ok = _backtrack(neg, x, step, pg, f0, floor, t_fin, lo, hi)
        xn = jnp.where(ok, jnp.clip(x + a * step, lo, hi), x)
        dx = jnp.max(jnp.abs(xn - x))
        small = dx <= xtol * (1.0 + jnp.max(jnp.abs(x)))
        done = (gn <= gtol) | small | ~ok
        return jnp.where(gn <= gtol, x, xn), k + 1, done

    init = (x, jnp.asarray(0, jnp.int32), jnp.asarray(False))
    x, k, _ = jax.lax.while_loop(cond, newton, init)
    return x, k, gtol


def _solve_one(scen: Scenario, config: SolverConfig, opts: ModelOptions) -> Solution:
    """Adam while annealing, then Newton at the final temperature (module docstring)."""
    dt = scen.theta.dtype
    lo, hi = _bounds(scen)

    def neg(x, t):
        return -smoothed_objective(x, scen, t, opts)

    # start: geometric middle of the r bounds; B at its upper bound (throughput grows with B)
    x = jnp.stack([0.5 * (lo[0] + hi[0]), hi[1]])
    x = _adam_phase(neg, x, lo, hi, config, dt)
    t_fin = jnp.asarray(config.temperature_final, dtype=dt)
    x, k, gtol = _newton_phase(neg, x, lo, hi, t_fin, config)
    pg, act = _projected(jax.grad(neg)(x, t_fin), x, lo, hi)  # no Hessian needed here
    gn = jnp.max(jnp.abs(pg))
    r, b = _unpack(x)
    thr = _smoothed_throughput(scen, r, b, t_fin, opts)
    converged = gn <= gtol
    n = config.adam_steps
    return Solution(r, b, thr, gn, jnp.asarray(n, jnp.int32) + k, converged, act)


def _smoothed_throughput(scen, r, b, rel_temperature, opts):
    temp = rel_temperature * _temperature_scale(scen, opts)
    tau = smoothed_step_time(scen.latency, scen.theta, scen.slot_var, r, b, temp, opts)
    return throughput(scen.latency, r, b, tau)


_solve_batched_jit = jax.jit(jax.vmap(_solve_one, in_axes=(0, None, None)), static_argnums=(1, 2))

MIN_BUCKET = 8


def _bucket(n: int) -> int:
    """Padded batch size: the next power of two >= max(n, MIN_BUCKET), so any number of
    scenarios compiles at most log2(n) solvers and a single scenario reuses the batch-8 one."""
    return max(MIN_BUCKET, 1 << max(0, (int(n) - 1).bit_length()))


def _pad(tree, n: int, size: int):
    """Pad every leaf's leading axis from n to size by repeating row 0 (a harmless replica)."""
    if size == n:
        return tree
    return jax.tree_util.tree_map(
        lambda a: jnp.concatenate([a, jnp.broadcast_to(a[:1], (size - n, *a.shape[1:]))]), tree
    )


def _run_padded(fn, trees, *static):
    n = jax.tree_util.tree_leaves(trees[0])[0].shape[0]
    size = _bucket(n)
    out = fn(*(_pad(t, n, size) for t in trees), *static)
    return jax.tree_util.tree_map(lambda a: a[:n], out)


def solve_continuous(
    scen: Scenario, config: SolverConfig = DEFAULT_CONFIG, opts: ModelOptions = DEFAULT_OPTIONS
) -> Solution:
    """Continuous maximiser of the smoothed objective for one scenario (scalar leaves). Runs the
    batched solver on a padded batch, so it shares its compilation."""
    one = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], scen)
    return jax.tree_util.tree_map(lambda a: a[0], solve_continuous_batched(one, config, opts))


def solve_continuous_batched(
    scens: Scenario, config: SolverConfig = DEFAULT_CONFIG, opts: ModelOptions = DEFAULT_OPTIONS
) -> Solution:
    """:func:`solve_continuous` vmapped over a leading scenario axis (every leaf shape (n,), e.g.
    from :func:`make_scenario` with arrays). The batch is padded to a power of two >= 8: one
    compilation per (bucket, config, opts, dtype); new values never retrace."""
    return _run_padded(_solve_batched_jit, (scens,), config, opts)


# --------------------------------------------------------------------------------------------
# Sensitivities by implicit differentiation


def _stationarity(scen: Scenario, sol: Solution, config: SolverConfig, opts: ModelOptions):
    """(residual F(x, p), x*, (dF/dx)^-1 at x*) of :func:`sensitivities`."""
    t_fin = jnp.asarray(config.temperature_final, dtype=scen.theta.dtype)
    x_star = jnp.stack([jnp.log(sol.r), jnp.log(sol.batch)])
    act = sol.at_bound

    def residual(x, p: Scenario):
        # free coordinates: grad_x J = 0; active ones: x equals its (parameter-dependent) bound
        lo, hi = _bounds(p)
        bound = jnp.where(jnp.abs(x - lo) <= jnp.abs(x - hi), lo, hi)
        xb = jnp.where(act, bound, x)
        g = jax.grad(smoothed_objective)(xb, p, t_fin, opts)
        return jnp.where(act, x - bound, g)

    jx = jax.jacfwd(residual, argnums=0)(x_star, scen)  # (2, 2)
    return residual, x_star, jnp.linalg.inv(jx)


def _scalar_part(scen: Scenario):
    """(the scenario with its scalars only, ``wrap(p, scales)`` rebuilding a full scenario with
    the stage tables scaled, the unit scales); for an affine scenario (itself, identity, None)."""
    tables = scen.latency.tables
    if tables is None:
        return scen, (lambda p, scales: p), None
    n = len(SCALAR_FIELDS)

    def wrap(p: Scenario, scales) -> Scenario:
        return p._replace(latency=make_latency(p.latency[:n], scale_tables(tables, scales)))

    ones = jnp.ones(len(TABLE_STAGES), dtype=scen.theta.dtype)
    return scen._replace(latency=Latency(*scen.latency[:n])), wrap, ones


def _scalar_jacobian(residual, x_star, scen: Scenario):
    """(dF/dp for every scalar leaf p, a Scenario of (2,) leaves; dF/d scale of each table
    stage, float[2, 3], or None). A table's knots are not differentiated one by one (NaN in
    the Scenario): that would multiply the compiled program; a stage's time function scaled
    as a whole is the direction the elasticities need (:func:`directions.scale_tables`)."""
    if scen.latency.tables is None:
        return jax.jacfwd(residual, argnums=1)(x_star, scen), None
    scalars, wrap, ones = _scalar_part(scen)
    jp, js = jax.jacfwd(lambda p, s: residual(x_star, wrap(p, s)), argnums=(0, 1))(scalars, ones)
    nan = jax.tree_util.tree_map(lambda a: jnp.full((2, *a.shape), jnp.nan, a.dtype), scen)
    return jp._replace(latency=nan.latency._replace(**jp.latency._asdict())), js


def _log_throughput(x, scen: Scenario, rel_temperature, opts: ModelOptions):
    r, b = _unpack(x)
    return jnp.log(_smoothed_throughput(scen, r, b, rel_temperature, opts))


def _scalar_dot(grad_tree: Scenario, tangents: Scenario):
    """sum over the scalar leaves of grad (shape (..., )) times the stacked tangents (k,):
    float[..., k]; where a tangent is 0 the leaf does not count (a NaN pair a table replaces)."""
    n = len(SCALAR_FIELDS)

    def scalars(tree):
        return [*tree.latency[:n], *tree[1:]]

    total = 0.0
    for g, t in zip(scalars(grad_tree), scalars(tangents), strict=True):
        t = jnp.reshape(t, (1,) * g.ndim + t.shape)  # explicit ranks (strict promotion)
        total = total + jnp.where(t == 0, 0.0, g[..., None] * t)
    return total


def _along_inputs(dx, dx_scale, scen: Scenario, x_star, config: SolverConfig, opts):
    """(d log r*/ds, d log throughput*/ds), float[k] each, along the inputs of
    :data:`directions.INPUTS`: the scalar sensitivities ``dx`` (log coordinates) dotted with
    each tangent, plus the table-scale ones ``dx_scale`` for a stage given as a table; the
    throughput's total derivative ``d_p ln thr . t + d_x ln thr . dx*/ds``."""
    tangents = input_tangents(scen)
    t_fin = jnp.asarray(config.temperature_final, dtype=x_star.dtype)
    scalars, wrap, ones = _scalar_part(scen)
    gx, gp, gs = jax.grad(
        lambda x, p, s: _log_throughput(x, wrap(p, s), t_fin, opts), argnums=(0, 1, 2)
    )(x_star, scalars, ones)
    move = _scalar_dot(dx, tangents)  # (2, k)
    d_thr = _scalar_dot(gp, tangents)  # (k,)
    if dx_scale is not None:
        for i, stage in STAGE_INPUTS:
            if getattr(scen.latency.tables, stage) is not None:
                j = TABLE_STAGES.index(stage)
                move = move.at[:, i].add(dx_scale[:, j])
                d_thr = d_thr.at[i].add(gs[j])
    return move[0], d_thr + gx @ move


def _sens_one(scen: Scenario, sol: Solution, config: SolverConfig, opts: ModelOptions):
    residual, x_star, inv = _stationarity(scen, sol, config, opts)
    jp, js = _scalar_jacobian(residual, x_star, scen)  # Scenario of (2,) leaves; (2, 3)
    dx = jax.tree_util.tree_map(lambda leaf: -(inv @ leaf), jp)
    r_sens = jax.tree_util.tree_map(lambda d: sol.r * d[0], dx)
    b_sens = jax.tree_util.tree_map(lambda d: sol.batch * d[1], dx)
    dx_scale = None if js is None else -(inv @ js)
    return r_sens, b_sens, _along_inputs(dx, dx_scale, scen, x_star, config, opts)


_sens_batched_jit = jax.jit(jax.vmap(_sens_one, in_axes=(0, 0, None, None)), static_argnums=(2, 3))


def sensitivities(
    scen: Scenario,
    sol: Solution,
    config: SolverConfig = DEFAULT_CONFIG,
    opts: ModelOptions = DEFAULT_OPTIONS,
) -> tuple[Scenario, Scenario]:
    """``(dr*/dp, dB*/dp)`` for every scalar leaf p of the scenario, as two :class:`Scenario`
    pytrees (same structure; scalars for one scenario; the knots of table stages are NaN: the
    derivatives along directions that scale a table are :func:`input_derivatives`').

    Implicit function theorem on ``F(x, p) = 0`` with ``F_i = dJ_T/dx_i`` on free coordinates
    and ``F_i = x_i - log(bound_i(p))`` on coordinates at an active bound:
    ``dx*/dp = -(dF/dx)^-1 dF/dp`` (so a pinned B = batch_min = batch_max moves with its bounds,
    and r reacts through the cross term). ``dr*/dp = r* dx_r/dp``, ``dB*/dp = B* dx_B/dp``.
    Valid at a converged, non-degenerate optimum of the final smoothed problem.
    """
    return _derivatives(scen, sol, config, opts)[:2]


def input_derivatives(
    scen: Scenario,
    sol: Solution,
    config: SolverConfig = DEFAULT_CONFIG,
    opts: ModelOptions = DEFAULT_OPTIONS,
):
    """``(d ln r*/d ln p, d ln throughput*/d ln p)`` (float[k] each) for the inputs of
    :data:`afd_jax.studies.directions.INPUTS`, in order: the elasticities, computed with the
    sensitivities by one compiled program (:func:`afd_jax.studies.elasticity.elasticities`)."""
    return _derivatives(scen, sol, config, opts)[2]


def _derivatives(scen: Scenario, sol: Solution, config: SolverConfig, opts: ModelOptions):
    one = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], (scen, sol))
    out = _run_padded(_sens_batched_jit, one, config, opts)
    return jax.tree_util.tree_map(lambda a: a[0], out)


# --------------------------------------------------------------------------------------------
# Exact evaluation, constraints and the integer choice (host, float64 NumPy)


def kv_batch_limit(slot_pmf, capacity: float, epsilon: float, batch_max: int) -> int:
    """Largest B in [1, batch_max] with ``Pr(worker load > capacity) <= epsilon`` under the exact
    worker-load law (pi convolved B times); 0 when even B = 1 violates it. The tail grows with
    B (loads are >= 0), so a bisection over B is exact."""

    def ok(b):
        wp = worker_load_pmf(slot_pmf, b)
        return _tail_above(wp, capacity) <= epsilon

    if not ok(1):
        return 0
    lo, hi = 1, int(batch_max)
    if ok(hi):
        return hi
    while hi - lo > 1:  # ok(lo) and not ok(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _tail_above(wp, capacity: float) -> float:
    return float(np.sum(wp.pmf[wp.support > capacity]))


def exact_p99_step_times(
    worker_pmf, lat: Latency, batch: int, r_max: int, opts: ModelOptions, q: float = 0.99
) -> np.ndarray:
    """q-quantile of tau(r) for r = 1..r_max (float64) under the exact law: tau is a
    non-decreasing function of the barrier max M_r, whose CDF is ``F_B^r``, so
    ``Q_q(tau) = tau(Q_q(M_r))`` with ``Q_q(M_r) = min{w : F_B(w) >= q^(1/r)}``."""
    p = worker_pmf.pmf
    w = worker_pmf.support
    cdf = 1.0 - np.concatenate([np.cumsum(p[::-1])[::-1][1:], [0.0]])  # F(w_i) via the tail
    r = np.arange(1, int(r_max) + 1, dtype=np.float64)
    level = q ** (1.0 / r)
    idx = np.minimum(np.searchsorted(cdf, level - 1e-15, side="left"), w.shape[0] - 1)
    t_a = t_attn(host_latency(lat), w[idx], float(batch))
    g = other_stage_times(lat, int(r_max), batch, opts)
    return step_time_from_other(t_a, g, opts)


@dataclass
class OptimizeResult:
    """Outcome of :func:`optimize` (host floats). ``candidates``: every (r, B) evaluated exactly,
    with its throughput and the constraints it violates; ``r_bounds``: the box ``(r_lo, r_hi)``
    of the continuous r (``[r_min, r_max]`` intersected with the extremes of ``r_values``), the
    one to solve in for anything derived from the continuous optimum (its elasticities), so a
    bound that pins ``r_continuous`` pins it there too (not in :meth:`to_json`)."""

    r_continuous: float
    batch_continuous: float
    r: int
    batch: int
    throughput: float
    step_time: float
    step_time_p99: float
    throughput_smoothed: float
    iterations: int
    converged: bool
    grad_norm: float
    theta: float
    slot_var: float
    kv_batch_limit: int | None
    sensitivities: dict
    constraints: dict
    candidates: list = field(default_factory=list)
    r_bounds: tuple[float, float] | None = None

    def to_json(self) -> dict:
        return {
            "r_continuous": self.r_continuous,
            "batch_continuous": self.batch_continuous,
            "r": self.r,
            "batch": self.batch,
            "throughput": self.throughput,
            "step_time": self.step_time,
            "step_time_p99": self.step_time_p99,
            "throughput_smoothed": self.throughput_smoothed,
            "iterations": self.iterations,
            "converged": self.converged,
            "grad_norm": self.grad_norm,
            "theta": self.theta,
            "slot_var": self.slot_var,
            "kv_batch_limit": self.kv_batch_limit,
            "sensitivities": self.sensitivities,
            "constraints": self.constraints,
            "candidates_evaluated": len(self.candidates),
        }


class _ExactCache:
    """Exact E[tau], P99 tau and worker pmfs per B, grown in r on demand."""

    def __init__(self, slot_pmf, lat, opts):
        self.slot_pmf, self.lat, self.opts = slot_pmf, lat, opts
        self.worker, self.mean, self.p99 = {}, {}, {}

    def get(self, b: int, r: int) -> tuple[float, float]:
        if b not in self.worker:
            self.worker[b] = worker_load_pmf(self.slot_pmf, b)
        if b not in self.mean or self.mean[b].shape[0] < r:
            r_hi = max(r, 2 * (self.mean[b].shape[0] if b in self.mean else 0), 8)
            wp = self.worker[b]
            self.mean[b] = exact_step_times(self.slot_pmf, self.lat, b, r_hi, self.opts, wp)
            self.p99[b] = exact_p99_step_times(wp, self.lat, b, r_hi, self.opts)
        return float(self.mean[b][r - 1]), float(self.p99[b][r - 1])


class _Limits(NamedTuple):
    """The integer constraints of :func:`optimize` (None = not set); ``batch_max`` is the user's
    bound, ``kv_limit`` the largest B the KV capacity allows."""

    r_min: int
    r_max: int
    optimize_batch: bool
    batch_min: int
    batch_max: int
    kv_limit: int | None
    step_slo: float | None
    step_slo_p99: float | None
    r_values: tuple[int, ...] | None = None

    def violations(self, r: int, b: int, mean: float, p99: float) -> list[str]:
        v = []
        if self.r_values is not None and r not in self.r_values:
            v.append("r_values")
        if r < self.r_min:
            v.append("r_min")
        if r > self.r_max:
            v.append("r_max")
        if self.optimize_batch and b < self.batch_min:
            v.append("batch_min")
        if self.optimize_batch and b > self.batch_max:
            v.append("batch_max")
        # past --batch-max the KV limit is not known (its search stops there: kv_limit is then
        # batch_max): such a B is out by batch_max alone, or the KV capacity "binds" at any size
        if self.kv_limit is not None and b > self.kv_limit:
            if not (self.optimize_batch and b > self.batch_max):
                v.append("kv_capacity")
        if self.step_slo is not None and mean > self.step_slo:
            v.append("step_slo")
        if self.step_slo_p99 is not None and p99 > self.step_slo_p99:
            v.append("step_slo_p99")
        return v


def _check_settings(
    optimize_batch, batch, batch_min, batch_max, r_min, r_max, slos, kv_capacity, kv_epsilon,
    neighbourhood,
):  # fmt: skip
    """Raise InputError for bad settings; returns batch_max (defaulting to batch)."""
    if not (is_real(neighbourhood) and neighbourhood >= 0 and neighbourhood == int(neighbourhood)):
        # a negative one left the search window empty, and the search never ended
        raise InputError(f"must be an integer >= 0, got {neighbourhood!r}", field="neighbourhood")
    r_min, r_max = positive_int("r_min", r_min), positive_int("r_max", r_max)
    if r_max < r_min:
        raise InputError(f"need 1 <= r_min <= r_max, got {r_min}, {r_max}", field="r")
    if optimize_batch:
        if batch_max is None:
            batch_max = batch
        if batch_max is None:
            raise InputError("--optimize-batch needs --batch-max", field="batch_max")
        batch_min = positive_int("batch_min", batch_min)
        if positive_int("batch_max", batch_max) < batch_min:
            raise InputError("--optimize-batch needs --batch-max >= batch_min", field="batch_max")
    else:
        positive_int("batch", batch)
    if kv_capacity is not None and not (is_real(kv_capacity) and kv_capacity > 0):
        raise InputError(f"must be a number > 0 (tokens), got {kv_capacity}", field="kv_capacity")
    for name, v in slos:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise InputError(f"must be a finite number > 0, got {v}", field=name)
    if not 0 < kv_epsilon < 1:  # also without a capacity: a bad value is never ignored
        raise InputError(f"kv epsilon must be in (0, 1), got {kv_epsilon}", field="kv_epsilon")
    return batch_max


def _batch_bounds(optimize_batch, batch, batch_min, b_hi_user: int, kv_limit):
    """(lowest B, highest B, reference B) of the continuous search: [batch_min, the user's
    and the KV capacity's bound] optimising B (reference: the top), else B itself."""
    if not optimize_batch:
        return float(batch), float(batch), float(batch)
    b_hi = float(min(b_hi_user, kv_limit or b_hi_user))
    return float(batch_min), b_hi, b_hi


def _ratio_bounds(r_values, r_min: int, r_max: int):
    """(allowed r as a tuple or None, lower and upper bound of the continuous r): the only
    place that box is computed (:attr:`OptimizeResult.r_bounds` hands it on)."""
    if r_values is None:
        return None, r_min, r_max
    allowed = tuple(int(v) for v in feasible_ratios(list(r_values), r_max=r_max))
    r_lo, r_hi = max(r_min, allowed[0]), min(r_max, allowed[-1])
    if r_lo > r_hi:
        raise InputError("no value of r_values lies within [r_min, r_max]", field="r_values")
    return allowed, r_lo, r_hi


def _kv_limit(slot_pmf, kv_capacity, kv_epsilon, b_hi_user, optimize_batch, batch):
    """The KV-capacity bound on B (None without a capacity); InputError when infeasible."""
    if kv_capacity is None:
        return None
    kv_limit = kv_batch_limit(slot_pmf, kv_capacity, kv_epsilon, b_hi_user)
    if kv_limit < 1:
        raise InputError(
            f"KV capacity {kv_capacity:g} tokens is exceeded with probability > "
            f"{kv_epsilon:g} even at B = 1",
            field="kv_capacity",
        )
    if not optimize_batch and kv_limit < batch:
        raise InputError(
            f"batch {batch} exceeds the KV capacity (Pr(load > {kv_capacity:g}) > "
            f"{kv_epsilon:g}); the largest allowed batch is {kv_limit}",
            field="kv_capacity",
        )
    return kv_limit


class _Candidates:
    """Exact evaluation of integer (r, B) candidates, memoised: throughput, E[tau], P99 tau and
    the constraints each violates."""

    def __init__(self, slot_pmf, lat: Latency, opts: ModelOptions, limits: _Limits):
        self.cache = _ExactCache(slot_pmf, lat, opts)
        self.lat, self.limits = host_latency(lat), limits
        self.evaluated: dict[tuple[int, int], dict] = {}

    def evaluate(self, r: int, b: int) -> dict:
        if (r, b) not in self.evaluated:
            mean, p99 = self.cache.get(b, r)
            self.evaluated[(r, b)] = {
                "r": r,
                "batch": b,
                "throughput": throughput(self.lat, r, b, mean),
                "step_time": mean,
                "step_time_p99": p99,
                "violates": self.limits.violations(r, b, mean, p99),
            }
        return self.evaluated[(r, b)]


def _grow_windows(best: dict, r_win, b_win, r_lim: int, b_lim: int, k: int, optimize_batch):
    """Extend each window past an edge holding the best candidate; True when one grew."""
    grown = False
    if best["r"] == r_win[0] and r_win[0] > 1:
        r_win[0] = max(1, r_win[0] - k - 1)
        grown = True
    if best["r"] == r_win[1] and r_win[1] < r_lim:
        r_win[1] = min(r_lim, r_win[1] + k + 1)
        grown = True
    if optimize_batch and best["batch"] == b_win[0] and b_win[0] > 1:
        b_win[0] = max(1, b_win[0] - k - 1)
        grown = True
    if optimize_batch and best["batch"] == b_win[1] and b_win[1] < b_lim:
        b_win[1] = min(b_lim, b_win[1] + k + 1)
        grown = True
    return grown


def _infeasible(cands: _Candidates, r_win, b_win) -> InputError:
    """The error when no candidate of the final window is feasible, naming the constraints
    that every one of them violates (the first of them as its field) and the step times of
    the window's smallest (r, B)."""
    window = [
        cands.evaluate(r, b)
        for r in range(r_win[0], r_win[1] + 1)
        for b in range(b_win[0], b_win[1] + 1)
    ]
    common = [v for v in window[0]["violates"] if all(v in c["violates"] for c in window)]
    names = common or sorted({v for c in window for v in c["violates"]})
    first = window[0]
    b_text = f"B {b_win[0]}..{b_win[1]}" if b_win[0] != b_win[1] else f"B = {b_win[0]}"
    return InputError(
        f"no feasible (r, batch): every candidate (r {r_win[0]}..{r_win[1]}, {b_text}) "
        f"violates {' or '.join(names)}; at r = {first['r']}, B = {first['batch']} the mean "
        f"step time is {first['step_time']:.6g} us and its P99 {first['step_time_p99']:.6g} us",
        field=names[0],
    )


def _search_integers(cands: _Candidates, r_c: float, b_c: float, batch, b_cap: int, k: int):
    """Best feasible integer (r, B) around the continuous optimum: a window floor - k .. ceil + k,
    widened downwards while nothing in it is feasible and extended while the best candidate sits
    on its edge (a local search on the exact objective)."""
    lim = cands.limits
    opt_b = lim.optimize_batch
    r_lim, b_lim = int(lim.r_max) + 1, (b_cap + 1 if opt_b else int(batch))
    r_win = [max(1, math.floor(r_c) - k), min(r_lim, math.ceil(r_c) + k)]
    if lim.r_values is not None:  # few allowed r: every one (one exact pass per B serves all r)
        r_win = [min(lim.r_values), max(lim.r_values)]
    b_win = (
        [max(1, math.floor(b_c) - k), min(b_lim, math.ceil(b_c) + k)]
        if opt_b
        else [int(batch), int(batch)]
    )
    while True:
        feas = [
            c
            for r in range(r_win[0], r_win[1] + 1)
            for b in range(b_win[0], b_win[1] + 1)
            if not (c := cands.evaluate(r, b))["violates"]
        ]
        if not feas:
            if r_win[0] == 1 and b_win[0] == 1 or (r_win[0] == 1 and not opt_b):
                raise _infeasible(cands, r_win, b_win)
            r_win[0] = max(1, r_win[0] - 2 * (r_win[1] - r_win[0] + 1))
            if opt_b:
                b_win[0] = max(1, b_win[0] - 2 * (b_win[1] - b_win[0] + 1))
            continue
        best = max(feas, key=lambda c: (c["throughput"], -c["r"], -c["batch"]))
        if not _grow_windows(best, r_win, b_win, r_lim, b_lim, k, opt_b):
            return best


def _constraint_report(best: dict, cands: _Candidates, kv_capacity, kv_epsilon) -> dict:
    """{constraint: limit, value, binds}: a constraint binds when a candidate with a higher
    exact throughput violates it."""
    lim = cands.limits
    better = [c for c in cands.evaluated.values() if c["throughput"] > best["throughput"]]
    constraints = {}

    def report(name, limit, value):
        constraints[name] = {
            "limit": limit,
            "value": value,
            "binds": any(name in c["violates"] for c in better),
        }

    if lim.r_values is not None:
        report("r_values", list(lim.r_values), best["r"])
    report("r_min", lim.r_min, best["r"])
    report("r_max", lim.r_max, best["r"])
    if lim.optimize_batch:
        report("batch_min", lim.batch_min, best["batch"])
        report("batch_max", lim.batch_max, best["batch"])
    if kv_capacity is not None:
        wp = cands.cache.worker[best["batch"]]
        constraints["kv_capacity"] = {
            "limit": kv_capacity,
            "epsilon": kv_epsilon,
            "batch_limit": lim.kv_limit,
            "value": _tail_above(wp, kv_capacity),
            "binds": any("kv_capacity" in c["violates"] for c in better),
        }
    if lim.step_slo is not None:
        report("step_slo", lim.step_slo, best["step_time"])
    if lim.step_slo_p99 is not None:
        report("step_slo_p99", lim.step_slo_p99, best["step_time_p99"])
    return constraints


def optimize(
    slot_pmf,
    theta: float,
    slot_var: float,
    lat: Latency,
    opts: ModelOptions = DEFAULT_OPTIONS,
    *,
    batch: int | None = None,
    optimize_batch: bool = False,
    batch_min: int = 1,
    batch_max: int | None = None,
    kv_capacity: float | None = None,
    kv_epsilon: float = KV_EPSILON,
    step_slo: float | None = None,
    step_slo_p99: float | None = None,
    r_min: int = 1,
    r_max: int = 64,
    neighbourhood: int = 1,
    config: SolverConfig = DEFAULT_CONFIG,
    r_values=None,
) -> OptimizeResult:
    """Provision one bundle: continuous optimum of the smoothed objective, then the best feasible
    integer (r, B) among its neighbours by exact evaluation (module docstring).

    slot_pmf: the stationary slot-load law (:func:`afd_jax.workload.slotload.slot_load_pmf`); theta,
    slot_var: its mean and variance (the Gaussian model's inputs); batch: fixed B (or, with
    optimize_batch, ignored except as a default for batch_max); constraints as in the module
    docstring (None = not set); r_values: the feasible integers r (None = all; the continuous
    optimum is searched between their extremes, the integer choice is one of them). Raises
    InputError for bad or infeasible settings.

    >>> import jax; jax.config.update("jax_enable_x64", True)  # float64, as the CLI
    >>> from afd_jax import optimize, resolve_latency, resolve_workload, slot_load_pmf
    >>> from afd_jax import workload_stats
    >>> w = resolve_workload("paper-v1")
    >>> st, lat_opts = workload_stats(w), resolve_latency("paper-v1")
    >>> res = optimize(slot_load_pmf(w), st.theta, st.slot_var, *lat_opts, batch=256, r_max=32)
    >>> res.r, round(res.r_continuous, 2)
    (10, 9.82)
    """
    slos = (("step_slo", step_slo), ("step_slo_p99", step_slo_p99))
    validate_latency(lat)
    validate_options(opts)
    batch_max = _check_settings(
        optimize_batch, batch, batch_min, batch_max, r_min, r_max, slos, kv_capacity, kv_epsilon,
        neighbourhood,
    )  # fmt: skip
    b_hi_user = int(batch_max) if optimize_batch else int(batch)
    r_allowed, r_lo, r_hi = _ratio_bounds(r_values, r_min, r_max)
    kv_limit = _kv_limit(slot_pmf, kv_capacity, kv_epsilon, b_hi_user, optimize_batch, batch)
    b_lo, b_hi, b_ref = _batch_bounds(optimize_batch, batch, batch_min, b_hi_user, kv_limit)
    scen = make_scenario(
        lat,
        theta,
        slot_var,
        b_ref,
        step_slo=math.inf if step_slo is None else step_slo,
        r_min=float(r_lo),
        r_max=float(r_hi),
        batch_min=b_lo,
        batch_max=b_hi,
    )
    check_batch(lat.attn, [b_lo, b_hi])
    sol = solve_continuous(scen, config, opts)
    r_c, b_c = float(sol.r), float(sol.batch)

    limits = _Limits(
        r_min, r_max, optimize_batch, batch_min, b_hi_user, kv_limit, step_slo, step_slo_p99
    )._replace(r_values=r_allowed)
    cands = _Candidates(slot_pmf, lat, opts, limits)
    b_cap = int(min(b_hi_user, kv_limit or b_hi_user))
    best = _search_integers(cands, r_c, b_c, batch, b_cap, int(neighbourhood))
    constraints = _constraint_report(best, cands, kv_capacity, kv_epsilon)

    rs, bs = sensitivities(scen, sol, config, opts)
    sens = {"r": _named(rs, optimize_batch)}
    if optimize_batch:
        sens["batch"] = _named(bs, optimize_batch)
    return OptimizeResult(
        r_continuous=r_c,
        batch_continuous=b_c,
        r=int(best["r"]),
        batch=int(best["batch"]),
        throughput=float(best["throughput"]),
        step_time=float(best["step_time"]),
        step_time_p99=float(best["step_time_p99"]),
        throughput_smoothed=float(sol.throughput),
        iterations=int(sol.iterations),
        converged=bool(sol.converged),
        grad_norm=float(sol.grad_norm),
        theta=float(theta),
        slot_var=float(slot_var),
        kv_batch_limit=kv_limit,
        sensitivities=sens,
        constraints=constraints,
        candidates=sorted(cands.evaluated.values(), key=lambda c: (c["r"], c["batch"])),
        r_bounds=(float(r_lo), float(r_hi)),
    )


def _named(s: Scenario, optimize_batch: bool) -> dict:
    """Flatten a sensitivity Scenario into {parameter: float}. With a fixed B, the derivative in
    B moves batch, batch_min and batch_max together; with B optimised, the reference batch is
    not a parameter (batch_min/batch_max are)."""
    out = {name: float(v) for name, v in scalar_items(s.latency)}
    out["theta"], out["slot_var"] = float(s.theta), float(s.slot_var)
    out["step_slo"] = float(s.step_slo)
    out["r_min"], out["r_max"] = float(s.r_min), float(s.r_max)
    if optimize_batch:
        out["batch_min"], out["batch_max"] = float(s.batch_min), float(s.batch_max)
    else:
        out["batch"] = float(s.batch) + float(s.batch_min) + float(s.batch_max)
    return out

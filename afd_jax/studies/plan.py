"""A plan a capacity planner can act on: the library verb behind ``afd-jax plan`` (docs/plan.md).

Over a grid of r (the feasible ratios) and B, every configuration is evaluated by the exact
steady state (docs/model.md 5): the mean step time E[tau] (:func:`afd_jax.model.exact.
exact_step_times`), its quantiles (the barrier max M_r has CDF F_B^r, tau is non-decreasing in
it, so ``Q_q(tau) = tau(Q_q(M_r))``: :func:`afd_jax.studies.optimize.exact_p99_step_times`), the
barrier share ``(E[t_A(M_r)] - E[t_A(T)]) / E[tau]`` and the mean-field regime. Time per output
token (TPOT) is the step time: each decode step emits one token per request.

Throughput in user terms (tokens/s per GPU, tokens per USD, USD per million tokens, J per token)
is :func:`afd_jax.model.hardware.user_metrics`. Constraints: KV capacity (the largest B whose
worker load overflows the capacity with probability <= eps, :func:`afd_jax.studies.optimize.
kv_batch_limit`), a GPU budget ``r attn_gpus + ffn_gpus <= N`` and the P99 TPOT SLO.

The front: among the configurations within KV capacity and budget, those not dominated in
(objective up, P99 TPOT down). The best: the highest objective meeting every constraint.
Elasticities of r* and throughput at the best B: :mod:`afd_jax.studies.elasticity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from afd_jax.choices import DEFAULT_BATCHES, OBJECTIVES
from afd_jax.errors import InputError, positive_int
from afd_jax.memory import require
from afd_jax.model.exact import (
    exact_barrier_attention_times,
    exact_step_times,
    host_latency,
    worker_load_pmf,
)
from afd_jax.model.hardware import (
    KV_EPSILON,
    KV_RESERVED,
    Hardware,
    check_ffn_fits,
    feasible_ratios,
    kv_capacity_tokens,
    per_gpu_latency,
    read_hardware,
    user_metrics,
)
from afd_jax.model.latency import ModelOptions, throughput
from afd_jax.model.latency_io import latency_file, validate_latency, validate_options
from afd_jax.model.stages import AttnTable
from afd_jax.model.theory import mean_field_regime
from afd_jax.studies.elasticity import optimum_elasticities, round_elasticity
from afd_jax.studies.optimize import exact_p99_step_times, kv_batch_limit
from afd_jax.studies.provision import _resolve_inputs, hardware_json
from afd_jax.workload.slotload import slot_load_pmf
from afd_jax.workload.statistics import workload_stats

__all__ = ["DEFAULT_BATCHES", "OBJECTIVES", "PlanResult", "pareto_front", "plan"]

POINT_BYTES = 40 << 10
"""Host memory per evaluated (r, B) point (its row and working arrays): measured 32 KiB on
the 2-core CPU (``--r-max 30000``, one B: 1.13 GB peak against 0.25 GB at 2,000)."""

FRONT_KEYS = (
    "r",
    "batch",
    "tokens_per_s_per_gpu",
    "tokens_per_dollar",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "regime",
)


@dataclass(frozen=True)
class PlanResult:
    """Outcome of :func:`plan` (host floats). ``points``: every (r, B) evaluated, a dict each
    (r, batch, gpus, step_time_us, tpot_p50_ms, tpot_p99_ms, the user-term metrics, regime,
    barrier_share, violates); ``front``: the Pareto front (P99 TPOT ascending); ``best``: the
    best point meeting every constraint (None when none does); ``ranked``: the top feasible
    points by the objective; ``elasticities``: {"r_star"|"throughput": {input: rounded}} at the
    best B (empty when not computed)."""

    workload: str
    latency_source: str
    theta: float
    slot_var: float
    objective: str
    hardware: Hardware
    r_values: tuple[int, ...]
    batches: tuple[int, ...]
    tpot_p99_ms: float | None
    budget_gpus: int | None
    kv_capacity_tokens: float | None
    kv_epsilon: float
    kv_batch_limit: int | None
    points: list
    front: list
    best: dict | None
    ranked: list
    elasticities: dict = field(default_factory=dict)
    elasticities_raw: dict = field(default_factory=dict)
    r_star: float | None = None
    batch_ceiling: int | None = None

    @property
    def best_at_largest_batch(self) -> bool:
        """The best point sits at the largest B searched with room above it: the SLO (if
        any) not met with equality, every B within the KV capacity, and the Attention tables
        (``batch_ceiling``, None for a formula) reaching past it. A larger B may then do
        better: the grid, not a constraint, set the answer."""
        b = self.best["batch"] if self.best is not None else None
        if b is None or b != self.batches[-1]:
            return False
        slo = self.tpot_p99_ms is None or self.best["tpot_p99_ms"] < self.tpot_p99_ms
        kv = self.kv_batch_limit is None or self.kv_batch_limit >= b
        return slo and kv and (self.batch_ceiling is None or b < self.batch_ceiling)

    def to_json(self) -> dict:
        """The ``afd-jax plan --json`` object: ``front``, ``best``, ``ranked``, the inputs."""
        return {
            "workload": self.workload,
            "latency_source": self.latency_source,
            "theta": self.theta,
            "slot_std": float(np.sqrt(self.slot_var)),
            "objective": self.objective,
            "hardware": hardware_json(self.hardware),
            "r_values": list(self.r_values),
            "batches": list(self.batches),
            "tpot_p99_slo_ms": self.tpot_p99_ms,
            "budget_gpus": self.budget_gpus,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "kv_epsilon": self.kv_epsilon,
            "kv_batch_limit": self.kv_batch_limit,
            "front": [{k: p[k] for k in FRONT_KEYS} for p in self.front],
            "best": self.best,
            "best_at_largest_batch": self.best_at_largest_batch,
            "ranked": self.ranked,
            "r_star_continuous": self.r_star,
            "elasticities": self.elasticities,
            "points_evaluated": len(self.points),
        }


def pareto_front(points: list, metric: str) -> list:
    """The points not dominated in (``metric`` up, ``tpot_p99_ms`` down), P99 ascending: a
    point is kept when its metric beats every point with a smaller or equal P99."""
    order = sorted(points, key=lambda p: (p["tpot_p99_ms"], -p[metric]))
    front, best = [], -np.inf
    for p in order:
        if p[metric] > best:
            front.append(p)
            best = p[metric]
    return front


def _batch_points(ctx, b: int) -> list:
    """Every allowed r at one B: exact mean, P50/P99 step time, barrier share, metrics."""
    lat, opts, hw, rs = ctx["lat"], ctx["opts"], ctx["hw"], ctx["r_values"]
    r_hi = int(rs[-1])
    worker = worker_load_pmf(ctx["slot"], b)
    mean = exact_step_times(ctx["slot"], lat, b, r_hi, opts, worker_pmf=worker)
    p50 = exact_p99_step_times(worker, lat, b, r_hi, opts, q=0.5)
    p99 = exact_p99_step_times(worker, lat, b, r_hi, opts, q=0.99)
    barrier = exact_barrier_attention_times(worker, lat, r_hi, b)
    out = []
    for r in (int(v) for v in rs):
        tau = float(mean[r - 1])
        point = {
            "r": r,
            "batch": int(b),
            "step_time_us": tau,
            "tpot_p50_ms": float(p50[r - 1]) / 1e3,
            "tpot_p99_ms": float(p99[r - 1]) / 1e3,
            "throughput_per_instance": float(throughput(host_latency(lat), r, b, tau)),
            **{k: _float(v) for k, v in user_metrics(lat, hw, r, b, tau).items()},
            "regime": mean_field_regime(lat, ctx["theta"], r, b, opts),
            "barrier_share": float((barrier[r - 1] - barrier[0]) / tau),
        }
        point["violates"] = _violations(ctx, point)
        out.append(point)
    return out


def _float(v):
    return None if v is None else (int(v) if isinstance(v, int) else float(v))


def _violations(ctx, p: dict) -> list[str]:
    v = []
    if ctx["kv_limit"] is not None and p["batch"] > ctx["kv_limit"]:
        v.append("kv_capacity")
    if ctx["budget"] is not None and p["gpus"] > ctx["budget"]:
        v.append("budget_gpus")
    if ctx["slo"] is not None and p["tpot_p99_ms"] > ctx["slo"]:
        v.append("tpot_p99")
    return v


def _check(hw: Hardware, objective: str, batches, tpot_p99_ms, budget_gpus, kv_epsilon):
    if not hw.has_gpus:
        raise InputError(
            "plan needs the GPU counts of an instance: a latency file with a [hardware] table "
            "(attn_gpus, ffn_gpus) or --attn-gpus and --ffn-gpus",
            field="attn_gpus",
        )
    if objective not in OBJECTIVES:
        raise InputError(f"must be one of {', '.join(OBJECTIVES)}", field="objective")
    if objective == "per_dollar" and (hw.attn_price is None or hw.ffn_price is None):
        raise InputError("per_dollar needs GPU prices (a known system or --price-*)", field="price")
    if isinstance(batches, str) or not hasattr(batches, "__len__") or len(batches) == 0:
        raise InputError(
            f"needs a sequence of at least one batch, got {batches!r}", field="batches"
        )
    for b in batches:
        positive_int("batches", b)
    if tpot_p99_ms is not None and not (np.isfinite(tpot_p99_ms) and tpot_p99_ms > 0):
        raise InputError(f"must be a finite number > 0, got {tpot_p99_ms}", field="tpot_p99")
    if budget_gpus is not None:
        positive_int("budget_gpus", budget_gpus)
    if not 0 < kv_epsilon < 1:
        raise InputError(f"must be in (0, 1), got {kv_epsilon}", field="kv_epsilon")


def _grid_ratios(r_values, r_max: int, n_batches: int) -> np.ndarray:
    """The r of the grid (``r_values``, default 1..r_max), its (r, B) points counted against
    the memory budget first (:data:`POINT_BYTES` each)."""
    rs = feasible_ratios(None if r_values is None else list(r_values), r_max=r_max)
    n_points = (r_max if rs is None else len(rs)) * n_batches
    require(
        n_points * POINT_BYTES,
        f"{n_points} (r, B) points",
        "lower --r-max, or give fewer --batches or --r-values",
    )
    return np.arange(1, r_max + 1) if rs is None else rs


def _kv_limit(slot, hw: Hardware, kv_reserved: float, kv_epsilon: float, b_max: int):
    check_ffn_fits(hw, kv_reserved)
    capacity = kv_capacity_tokens(hw, kv_reserved)
    if capacity is None:
        return None, None
    return capacity, kv_batch_limit(slot, capacity, kv_epsilon, b_max)


def _elasticities(ctx, best: dict, objective: str):
    """Rounded and raw elasticities at the best B, costs in the objective's unit."""
    lat = per_gpu_latency(ctx["lat"], ctx["hw"], "usd" if objective == "per_dollar" else "gpu")
    rs = ctx["r_values"]
    raw, sol = optimum_elasticities(
        lat, ctx["theta"], ctx["slot_var"], best["batch"], ctx["opts"], float(rs[0]), float(rs[-1])
    )
    rounded = {k: {n: round_elasticity(v) for n, v in d.items()} for k, d in raw.items()}
    return rounded, raw, float(sol.r)


def plan(
    workload,
    latency,
    *,
    hardware: Hardware | None = None,
    opts: ModelOptions | None = None,
    batches=DEFAULT_BATCHES,
    r_values=None,
    r_max: int = 32,
    tpot_p99_ms: float | None = None,
    budget_gpus: int | None = None,
    objective: str = "per_gpu",
    kv_reserved: float = KV_RESERVED,
    kv_epsilon: float = KV_EPSILON,
    top: int = 10,
    elasticities: bool = True,
    slot_bins: int = 4096,
    workload_name: str | None = None,
    latency_source: str | None = None,
) -> PlanResult:
    """Evaluate every (r, B) with r in ``r_values`` (default 1..r_max) and B in ``batches`` by
    the exact steady state; return the Pareto front of ``objective`` ("per_gpu": tokens/s per
    GPU, "per_dollar": tokens per USD) against P99 TPOT, the best configuration under the P99
    TPOT SLO (ms), the KV capacity (``kv_reserved`` of the GPU memory kept back, overflow
    probability <= ``kv_epsilon``) and the GPU budget, the ``top`` ranked feasible points and,
    with ``elasticities``, the elasticities of r* and throughput at the best B. ``hardware``
    defaults to the ``[hardware]``/``[costs]`` tables of ``latency`` when it is a preset name or
    file. InputError for bad input (checked before any work).

    >>> import jax; jax.config.update("jax_enable_x64", True)  # float64, as the CLI
    >>> from afd_jax import plan
    >>> from afd_jax.model.hardware import Hardware
    >>> hw = Hardware(attn_gpus=1, ffn_gpus=2, attn_system="h100_sxm", ffn_system="h100_sxm")
    >>> res = plan("paper-v1", "paper-v1", hardware=hw, batches=(64,), r_values=(2, 4, 8),
    ...            elasticities=False)
    >>> [p["r"] for p in res.front], res.best["r"]
    ([2, 4], 4)
    """
    if hardware is None:  # the [hardware]/[costs] tables of a preset or file given by name
        hardware = read_hardware(latency_file(latency) if isinstance(latency, str) else None)
    w, name, lat, opts, source = _resolve_inputs(workload, latency, opts)
    r_max, top = positive_int("r_max", r_max), positive_int("top", top)
    validate_options(opts)
    _check(hardware, objective, batches, tpot_p99_ms, budget_gpus, kv_epsilon)
    batches = tuple(sorted({int(b) for b in batches}))
    try:  # a measured table's B range: never extrapolated
        validate_latency(lat, batch=batches)
    except InputError as err:
        if err.field != "batch":
            raise
        raise InputError(err.reason, path=err.path, field="batches") from None
    rs = _grid_ratios(r_values, r_max, len(batches))
    stats = workload_stats(w)
    slot = slot_load_pmf(w, load_offset=opts.load_offset, max_bins=slot_bins)
    capacity, kv_limit = _kv_limit(slot, hardware, kv_reserved, kv_epsilon, batches[-1])
    ctx = {
        "lat": lat,
        "opts": opts,
        "hw": hardware,
        "r_values": rs,
        "slot": slot,
        "theta": float(stats.theta) + opts.load_offset,
        "slot_var": float(stats.slot_var),
        "kv_limit": kv_limit,
        "budget": budget_gpus,
        "slo": tpot_p99_ms,
    }
    points = [p for b in batches for p in _batch_points(ctx, b)]
    metric = OBJECTIVES[objective]
    within = [p for p in points if not set(p["violates"]) - {"tpot_p99"}]
    feasible = sorted(
        (p for p in points if not p["violates"]), key=lambda p: (-p[metric], p["r"], p["batch"])
    )
    best = feasible[0] if feasible else None
    el, raw, r_star = ({}, {}, None)
    if elasticities and best is not None:
        el, raw, r_star = _elasticities(ctx, best, objective)
    return PlanResult(
        workload=name if workload_name is None else workload_name,
        latency_source=source if latency_source is None else latency_source,
        theta=ctx["theta"],
        slot_var=ctx["slot_var"],
        objective=objective,
        hardware=hardware,
        r_values=tuple(int(v) for v in rs),
        batches=batches,
        tpot_p99_ms=tpot_p99_ms,
        budget_gpus=budget_gpus,
        kv_capacity_tokens=capacity,
        kv_epsilon=kv_epsilon,
        kv_batch_limit=kv_limit,
        points=points,
        front=pareto_front(within, metric),
        best=best,
        ranked=feasible[: int(top)],
        elasticities=el,
        elasticities_raw=raw,
        r_star=r_star,
        batch_ceiling=int(lat.attn.batches[-1]) if isinstance(lat.attn, AttnTable) else None,
    )

"""The one result type of every Monte Carlo driver (steps window and completions window).

Per-r arrays (float64, shape (len(r),); ``r`` int64) and run facts. Both drivers fill the same
fields, so ``results_table`` rows have the same keys whatever the window; a quantity a driver
does not measure is None (null in JSON).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP_DIAGNOSTICS = (
    "idle_attn",
    "idle_ffn",
    "idle_bundle",
    "barrier_share",
    "step_p50",
    "step_p90",
    "step_p99",
)
"""Per-r step diagnostics every simulator reports (docs/model.md 3)."""

ROW_FIELDS = (
    "throughput",
    "ci_low",
    "ci_high",
    "se",
    *STEP_DIAGNOSTICS,
    "mean_tau",
    "se_tau",
    "tokens",
    "steps",
    "elapsed_us",
    "active_fraction",
    "attn_fraction",
)
"""Keys of every ``results`` row besides ``r`` (the same for both windows)."""


@dataclass(frozen=True)
class MonteCarloResult:
    """Monte Carlo estimates per bundle size r, and the facts of the run.

    throughput, ci_low, ci_high, se: tokens/s per instance (per unit cost, docs/model.md 3),
    its confidence interval at ``level`` and standard error. mean_tau, se_tau: E[tau(r)] (us)
    and its SE. idle_attn: sum_j (tau - t_A,j) / (r tau); idle_ffn: (tau - t_F) / tau;
    idle_bundle: (sum_j (tau - t_A,j) + tau - t_F) / ((r + 1) tau); barrier_share:
    sum_j (max_i t_A,i - t_A,j) / (r tau) (ratios of sums over the measured steps);
    step_p50/p90/p99: step-time percentiles (us). tokens, steps, elapsed_us: per replication
    (means) over the window; active_fraction: tokens / (steps r B); attn_fraction: share of
    steps whose tau was the barrier Attention time. per_pool_throughput:
    float64[len(r), replications] (completions window). mean_slot_load, se_slot_load: average
    load over all slots and its SE (steps window; theta in steady state).
    devices, processes: how many devices (over all processes) and processes shared the rows.
    ``window``: {"kind": "steps", "steps", "warmup"} or {"kind": "completions", "requests",
    "fraction"}. empty_slot_fraction: share of the r B slots without an admitted request, and
    dynamics: the options of the dynamics kernel (docs/dynamics.md); None (absent from rows and
    JSON) for the other kernels. precision: the float dtype of the kernels' step-time sums
    ("float32" or "float64"). checkpoint: {"path", "chunks", "resumed_chunks"} of a run with
    a checkpoint file (``resumed_chunks`` found done there; ``wall_seconds`` is this
    process's), None (absent from JSON) otherwise. throughput_unit: "tokens/s per instance"
    with unit costs, else "tokens/s per unit cost" (:func:`~afd_jax.model.latency.throughput_unit`).
    se_warning: why the standard errors are not to be trusted (a single replication shorter
    than its batch means need, :data:`~afd_jax.montecarlo.estimators.BATCH_IACTS`), None
    otherwise; :meth:`warnings` adds the r whose interval has zero width (JSON
    ``warnings``, absent when there are none) unless they are in fixed_step_r: the r whose
    step time cannot vary (the largest Attention time at most the other stages' time).
    """

    r: np.ndarray
    throughput: np.ndarray
    se: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    kernel: str
    init: str
    batch: int
    replications: int
    seed: int
    level: float
    window: dict
    slot_steps: int
    wall_seconds: float
    device: str
    mean_tau: np.ndarray | None = None
    se_tau: np.ndarray | None = None
    idle_attn: np.ndarray | None = None
    idle_ffn: np.ndarray | None = None
    idle_bundle: np.ndarray | None = None
    barrier_share: np.ndarray | None = None
    step_p50: np.ndarray | None = None
    step_p90: np.ndarray | None = None
    step_p99: np.ndarray | None = None
    tokens: np.ndarray | None = None
    steps: np.ndarray | None = None
    elapsed_us: np.ndarray | None = None
    active_fraction: np.ndarray | None = None
    attn_fraction: np.ndarray | None = None
    per_pool_throughput: np.ndarray | None = None
    mean_slot_load: float | None = None
    se_slot_load: float | None = None
    ffn_tokens: str = "nominal"
    empty_slot_fraction: np.ndarray | None = None
    dynamics: dict | None = None
    devices: int = 1
    processes: int = 1
    precision: str = "float32"
    checkpoint: dict | None = None
    throughput_unit: str = "tokens/s per instance"
    se_warning: str | None = None
    fixed_step_r: tuple[int, ...] = ()

    def warnings(self) -> list[str]:
        """What the intervals do not cover: the driver's ``se_warning``, and the r whose
        every measured step (or replication) took the same time, a zero-width interval that
        says nothing of barrier excursions rarer than the run could see."""
        out = [] if self.se_warning is None else [self.se_warning]
        fixed = set(self.fixed_step_r)
        zero = [int(r) for r, s in zip(self.r, self.se, strict=True) if s == 0 and r not in fixed]
        if zero:
            shown = ", ".join(map(str, zero[:8])) + (", ..." if len(zero) > 8 else "")
            out.append(
                f"at r = {shown} every measured step took the same time (zero-width interval): "
                "barrier excursions rarer than the run could see are not in the estimate or "
                "its interval; the exact method (afd-jax provision) includes them, the barrier "
                "kernel samples them with i.i.d. snapshots"
            )
        return out

    @property
    def r_max(self) -> int:
        return int(np.max(self.r))

    @property
    def r_best(self) -> int:
        return int(self.r[int(np.argmax(self.throughput))])

    @property
    def slot_steps_per_second(self) -> float:
        """The run's rate; NaN when it resumed from a checkpoint (its wall time is not the
        run's) or took no time."""
        resumed = self.checkpoint is not None and self.checkpoint["resumed_chunks"] > 0
        ok = self.wall_seconds > 0 and not resumed
        return self.slot_steps / self.wall_seconds if ok else float("nan")

    @property
    def warmup(self) -> int | None:
        return self.window.get("warmup")

    @property
    def n_requests(self) -> int | None:
        return self.window.get("requests")

    @property
    def completion_fraction(self) -> float | None:
        return self.window.get("fraction")

    def results_table(self) -> list[dict]:
        """One dict per r: ``r`` and every key of :data:`ROW_FIELDS` (None if not measured)."""
        rows = []
        for i, r in enumerate(self.r):
            row = {"r": int(r)}
            for k in ROW_FIELDS:
                v = getattr(self, k)
                row[k] = None if v is None else float(v[i])
            if self.empty_slot_fraction is not None:
                row["empty_slot_fraction"] = float(self.empty_slot_fraction[i])
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        """The run as one JSON-ready dict (the ``afd-jax simulate --json`` object)."""
        out = {
            "kernel": self.kernel,
            "init": self.init,
            "batch": self.batch,
            "r_max": self.r_max,
            "replications": self.replications,
            "seed": self.seed,
            "level": self.level,
            "ffn_tokens": self.ffn_tokens,
            "precision": self.precision,
            "window": dict(self.window),
        }
        if self.dynamics is not None:
            out["dynamics"] = dict(self.dynamics)
        if self.window.get("kind") == "steps":
            out.update(steps=self.window["steps"], warmup=self.window["warmup"])
        out.update(
            results=self.results_table(),
            throughput_unit=self.throughput_unit,
            r_best=self.r_best,
            mean_slot_load=self.mean_slot_load,
            se_slot_load=self.se_slot_load,
            slot_steps=self.slot_steps,
            wall_seconds=self.wall_seconds,
            slot_steps_per_second=self.slot_steps_per_second,
            device=self.device,
            devices=self.devices,
            processes=self.processes,
        )
        if self.checkpoint is not None:
            out["checkpoint"] = dict(self.checkpoint)
        warnings = self.warnings()
        if warnings:
            out["warnings"] = warnings
        return out


__all__ = ["ROW_FIELDS", "STEP_DIAGNOSTICS", "MonteCarloResult"]

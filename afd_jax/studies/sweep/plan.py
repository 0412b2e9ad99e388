"""Sweep plan: everything resolved (workloads, latency, the scenario table) before any evaluation.

Scenarios are the Cartesian product ``workloads x batches x latency``, in that nesting order
(latency innermost: grid in spec key order, then the random-sample index; docs/sweep.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from afd_jax.errors import SEED_LIMIT, InputError
from afd_jax.model.exact import require_worker_load
from afd_jax.model.latency import (
    COEFFICIENTS,
    STAGES,
    Latency,
    ModelOptions,
    StageTables,
    make_latency,
    scale_latency,
)
from afd_jax.model.latency_io import (
    MIN_STEP_US,
    check_latency_limit,
    check_step_time,
    latency_file,
    load_latency_toml,
    resolve_latency,
    scalar_items,
    validate_latency,
)
from afd_jax.model.stages import AttnTable, is_affine
from afd_jax.montecarlo.dynamics import check_dynamics, check_experts_memory, dynamics_options
from afd_jax.montecarlo.simulate import check_kv_capacity, preflight
from afd_jax.studies.sweep.fields import LATENCY_FIELDS, SCALE_FIELDS, SWEPT_FIELDS, columns
from afd_jax.studies.sweep.spec import SweepSpec
from afd_jax.workload.containers import TraceWorkload, content_digest
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

__all__ = ["SweepPlan", "WorkloadEntry", "input_digests", "make_plan"]


@dataclass(eq=False)
class WorkloadEntry:
    """One resolved workload: its label, family parameters, workload object, theta (+ load
    offset) and slot-load variance."""

    label: str
    params: dict
    workload: object
    theta: float
    slot_var: float


@dataclass(eq=False)
class SweepPlan:
    """A spec with its inputs resolved. ``wl_index``, ``batch``: int64[n_scenarios];
    ``coeffs``: float64[n_scenarios, 8] in ``Latency._fields`` order; ``scales``:
    float64[n_scenarios, 3] (attn, ffn, comm stage-time scales) when the spec names one;
    ``inputs``: the content digest of each input file (:func:`input_digests`)."""

    spec: SweepSpec
    opts: ModelOptions
    workloads: list[WorkloadEntry]
    wl_index: np.ndarray
    batch: np.ndarray
    coeffs: np.ndarray
    swept: tuple[str, ...]  # parameter columns that vary
    family_params: tuple[str, ...]
    tables: StageTables | None = None  # measured stages of the base, shared by every scenario
    scales: np.ndarray | None = None
    inputs: dict = field(default_factory=dict)

    def latency(self, idx, convert=lambda a: a) -> Latency:
        """The :class:`Latency` of scenarios ``idx`` (an index array: every leaf gets that
        leading axis, tables broadcast; an int: scalars and the tables as they are), stage
        scales applied (float64, :func:`afd_jax.model.latency.scale_latency`), leaves passed
        through ``convert`` (only the scalars for an int)."""
        tables = self.tables
        batched = tables is not None and np.ndim(idx)
        if batched:
            lead = np.shape(idx)
            tables = jax.tree_util.tree_map(lambda a: np.broadcast_to(a, lead + a.shape), tables)
        lat = make_latency([self.coeffs[idx, j] for j in range(len(LATENCY_FIELDS))], tables)
        if self.scales is not None:
            lat = scale_latency(lat, dict(zip(STAGES, self.scales[idx].T, strict=True)))
        if batched:
            lat = lat._replace(tables=jax.tree_util.tree_map(convert, lat.tables))
        return lat._replace(**{f: convert(getattr(lat, f)) for f in LATENCY_FIELDS})

    @property
    def n_scenarios(self) -> int:
        return int(self.batch.shape[0])

    def columns(self) -> list[str]:
        """The table's columns (:func:`afd_jax.studies.sweep.fields.columns`)."""
        return columns(self.spec.methods, self.family_params, self.scales is not None)


def _random_latency(spec: SweepSpec, grid: np.ndarray, n_combos: int) -> np.ndarray:
    """The grid repeated ``random_n`` times with the seeded random fields filled in."""
    n = spec.random_n
    key = jr.key(spec.random_seed)
    out = np.repeat(grid, n, axis=0)
    for k, dist, lo, hi in spec.latency_random:
        # one stream per field (fold_in its index): adding a field does not change the others
        u = np.asarray(
            jax.device_get(
                jr.uniform(jr.fold_in(key, SWEPT_FIELDS.index(k)), (n,), dtype=jnp.float32)
            ),
            dtype=np.float64,
        )
        vals = (
            lo + (hi - lo) * u
            if dist == "uniform"
            else np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * u)
        )
        out[:, SWEPT_FIELDS.index(k)] = np.tile(vals, n_combos)
    return out


def _latency_samples(spec: SweepSpec, base: Latency) -> np.ndarray:
    """float64[n_lat, 11]: the grid product (spec key order) x the seeded random sample; the 8
    latency fields, then the 3 stage scales (1 unless swept)."""
    base_vec = np.array([float(getattr(base, f)) for f in LATENCY_FIELDS], dtype=np.float64)
    base_vec = np.concatenate([base_vec, np.ones(len(SCALE_FIELDS))])
    for k, v in spec.latency_set.items():
        base_vec[SWEPT_FIELDS.index(k)] = v
    names = [k for k, _ in spec.latency_grid]
    combos = list(itertools.product(*[v for _, v in spec.latency_grid])) or [()]
    grid = np.repeat(base_vec[None, :], len(combos), axis=0)
    for j, k in enumerate(names):
        grid[:, SWEPT_FIELDS.index(k)] = [c[j] for c in combos]
    if not spec.latency_random:
        return grid
    return _random_latency(spec, grid, len(combos))


def _latency_key(spec: SweepSpec, f: str) -> str:
    if f in dict(spec.latency_grid):
        return f"latency.grid.{f}"
    if f in {k for k, *_ in spec.latency_random}:
        return f"latency.random.{f}"
    if f in spec.latency_set:
        return f"latency.set.{f}"
    return "latency.base"


def _check_latency_values(coeffs: np.ndarray, spec: SweepSpec, base: Latency) -> None:
    for j, f in enumerate(LATENCY_FIELDS):
        col = coeffs[:, j]
        if f not in dict(scalar_items(base)):
            continue  # the pair of a measured (table) stage: NaN, never swept
        key = _latency_key(spec, f)
        if not np.all(np.isfinite(col)):
            raise InputError("non-finite value", path=spec.path, field=key)
        if f.startswith("cost") and np.any(col <= 0):
            raise InputError(f"costs must be > 0 (got {col.min():g})", path=spec.path, field=key)
        if np.any(col < 0):
            raise InputError(
                f"coefficients must be >= 0 (got {col.min():g})", path=spec.path, field=key
            )
        check_latency_limit(float(col.max()), key, spec.path)
    check_step_time(make_latency(tuple(coeffs.T), base.tables), spec.path)


def _check_scaled_values(coeffs: np.ndarray, scales: np.ndarray, spec: SweepSpec, base) -> None:
    """The stage scales applied (:func:`scale_latency`, as the methods apply them): each stage's
    scaled coefficients or table times within :data:`LATENCY_LIMIT` and its table times at
    least :data:`MIN_STEP_US`, then the scaled step time (:func:`check_step_time`); an error
    names the scale's key (``attn_scale = 1e300`` gave NaN, infinite or 1e-296 throughputs)."""
    lat = make_latency(tuple(coeffs.T), base.tables)
    lat = scale_latency(lat, dict(zip(STAGES, scales.T, strict=True)))
    keys = [_latency_key(spec, f"{stage}_scale") for stage in STAGES]
    for stage, key in zip(STAGES, keys, strict=True):
        times = _stage_times(getattr(lat, stage))
        check_latency_limit(float(max(np.max(t) for t in times)), key, spec.path)
        least = min(float(np.min(t)) for t in times)
        if not is_affine(getattr(lat, stage)) and least < MIN_STEP_US:
            raise InputError(
                f"scales a measured time to {least:.3g} us, below {MIN_STEP_US:g} us",
                path=spec.path,
                field=key,
            )
    try:
        check_step_time(lat, spec.path)
    except InputError as err:
        named = [k for k in keys if k != "latency.base"]
        raise InputError(f"{err.reason} (stage scales applied)", path=spec.path,
                         field=", ".join(named)) from None  # fmt: skip


def _stage_times(stage) -> list[np.ndarray]:
    """The arrays of times (us) that define a stage: an affine pair, or a table's knot times."""
    if is_affine(stage):
        return [np.asarray(stage.alpha), np.asarray(stage.beta)]
    rows = stage.rows if isinstance(stage, AttnTable) else (stage,)
    return [np.asarray(row.y) for row in rows]


def _check_kv(spec: SweepSpec, i: int, s: str, w) -> None:
    """The mc method's KV capacity against workload ``i``'s prompts, before any work
    (``afd_jax.montecarlo.simulate.check_kv_capacity``)."""
    capacity = spec.mc.get("kv_capacity", 0) if "mc" in spec.methods else 0
    try:
        check_kv_capacity(w, capacity, spec.load_offset)
    except InputError as err:
        raise InputError(
            f"workload {s!r} (workloads[{i}]): {err.reason}", path=spec.path, field="mc.kv_capacity"
        ) from None


def _resolve_workloads(spec: SweepSpec) -> list[WorkloadEntry]:
    entries = []
    for i, (label, s, params) in enumerate(spec.workloads):
        try:
            w = resolve_workload(s, fmt=spec.trace_format, decode_mapping=spec.decode_mapping)
        except InputError as err:
            raise InputError(
                f"workload {s!r}: {err}", path=spec.path, field=f"workloads[{i}]"
            ) from None
        _check_kv(spec, i, s, w)
        st = workload_stats(w)
        # the analytic methods see the mean slot load, theta + load_offset (docs/model.md 1)
        theta = float(st.theta) + spec.load_offset
        entries.append(WorkloadEntry(label, params, w, theta, float(st.slot_var)))
    return entries


def _resolve_latency(spec: SweepSpec) -> tuple[Latency, ModelOptions]:
    # swept fields need no base value: give resolve_latency a placeholder (overwritten later)
    overrides = {k: v[0] for k, v in spec.latency_grid}
    overrides.update({k: lo for k, _, lo, _ in spec.latency_random})
    overrides.update(spec.latency_set)
    overrides = {k: v for k, v in overrides.items() if k not in SCALE_FIELDS}
    try:
        return resolve_latency(
            spec=spec.latency_base,
            overrides=overrides,
            comm_scaling=spec.comm_scaling,
            overlap=spec.overlap,
            load_offset=spec.load_offset,
        )
    except InputError as err:
        hint = ""
        if err.field in COEFFICIENTS and "measured table" in err.reason:
            stage = err.field.split("_", 1)[1]
            hint = f"; scale its time with {stage}_scale in latency.set, .grid or .random"
        raise InputError(f"latency: {err}{hint}", path=spec.path, field="latency") from None


def input_digests(spec: SweepSpec, entries: list[WorkloadEntry]) -> dict[str, str]:
    """A digest of the content of every file the spec reads, by the name the spec gives it:
    each trace (its rows as read, :func:`~afd_jax.workload.containers.content_digest`) and the
    latency base (its TOML values; a preset's file too). A run's manifest keeps them, so that
    ``--resume`` refuses inputs that changed since the run started (docs/sweep.md)."""
    out = {
        s: content_digest(e.workload).hex()
        for (_, s, _), e in zip(spec.workloads, entries, strict=True)
        if isinstance(e.workload, TraceWorkload)
    }
    if spec.latency_base is not None:
        values = load_latency_toml(latency_file(spec.latency_base))
        blob = json.dumps(values, sort_keys=True, default=str).encode()
        out[spec.latency_base] = hashlib.blake2b(blob, digest_size=16).hexdigest()
    return out


def make_plan(spec: SweepSpec) -> SweepPlan:
    """Resolve workloads (statistics), the latency base and the scenario table; validate values."""
    entries = _resolve_workloads(spec)
    base, opts = _resolve_latency(spec)
    lat = _latency_samples(spec, base)
    lat, scales = lat[:, : len(LATENCY_FIELDS)], lat[:, len(LATENCY_FIELDS) :]
    _check_latency_values(lat, spec, base)
    if spec.scaled:
        _check_scaled_values(lat, scales, spec, base)

    n_wl, n_b, n_lat = len(entries), len(spec.batches), lat.shape[0]
    wl_index = np.repeat(np.arange(n_wl, dtype=np.int64), n_b * n_lat)
    batch = np.tile(np.repeat(np.asarray(spec.batches, dtype=np.int64), n_lat), n_wl)
    coeffs = np.tile(lat, (n_wl * n_b, 1))
    fam = tuple(dict.fromkeys(p for e in entries for p in e.params))
    swept = []
    if n_wl > 1:
        swept.append("workload")
    swept += [f"wl_{p}" for p in fam if len({e.params.get(p) for e in entries}) > 1]
    if n_b > 1:
        swept.append("batch")
    swept += [f for j, f in enumerate(LATENCY_FIELDS) if np.unique(lat[:, j]).size > 1]
    swept += [f for j, f in enumerate(SCALE_FIELDS) if np.unique(scales[:, j]).size > 1]
    scales = np.tile(scales, (n_wl * n_b, 1)) if spec.scaled else None
    plan = SweepPlan(
        spec, opts, entries, wl_index, batch, coeffs, tuple(swept), fam, base.tables, scales,
        input_digests(spec, entries),
    )  # fmt: skip
    if base.tables is not None:
        validate_latency(base, spec.path, batch=np.asarray(spec.batches))
    _check_methods(plan)
    return plan


def _check_dynamics_memory(spec: SweepSpec, b_max: int) -> None:
    """The mc method's dynamics at every B of the spec (``check_dynamics``: micro-batches
    that divide B, a slot slack below B; found at the first scenario of such a B before) and
    its expert routing at the largest B against the memory budget
    (``montecarlo.dynamics.check_experts_memory``), each named as its ``[mc]`` key."""
    dynamics = dynamics_options(spec.mc, "mc.")
    if dynamics is None:
        return
    for batch in spec.batches:
        try:
            check_dynamics(dynamics, batch)
        except InputError as err:
            field = f"mc.{err.field.replace('-', '_')}"
            raise InputError(err.reason, field=field) from None
    try:
        check_experts_memory(dynamics, spec.r_max, b_max)
    except InputError as err:
        raise InputError(err.reason, field="mc.experts") from None


def _check_methods(plan: SweepPlan) -> None:
    """What the methods would find only while running (after the sweep's state is written):
    the exact method's FFT against the memory budget, the Monte Carlo int32 and memory limits
    and its seeds (mc.seed + scenario index < 2^32). InputError naming the spec file."""
    spec, b_max = plan.spec, max(plan.spec.batches)
    try:
        if "exact" in spec.methods:
            require_worker_load(int(spec.exact.get("slot_bins", 1 << 16)), b_max)
        if "mc" in spec.methods:
            kw = {k: v for k, v in spec.mc.items() if k != "seed"}
            if int(spec.mc.get("seed", 0)) + plan.n_scenarios > SEED_LIMIT:
                raise InputError("mc.seed + number of scenarios must be < 2^32", field="mc.seed")
            for e in plan.workloads:
                preflight(e.workload, b_max, spec.r_max, plan.opts, **kw)
            _check_dynamics_memory(spec, b_max)
    except InputError as err:
        raise InputError(f"{err}", path=spec.path) from None

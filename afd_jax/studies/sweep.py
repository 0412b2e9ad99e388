"""Sensitivity sweeps at scale: a TOML spec -> one table row per (scenario, r).

A **scenario** is one (workload, batch B, latency coefficients and costs). The spec (docs/sweep.md)
lists workloads (preset/parametric specs, trace paths, or grids over a parametric family's
parameters), a batch grid, and a latency base (preset or TOML file) with grids, ranges
(linspace/logspace/geomspace/range) or seeded random samples over the eight ``Latency`` fields.
Scenarios are the Cartesian product ``workloads x batches x latency``, in that nesting order
(latency innermost: grid in spec key order, then the random-sample index).

For every scenario and every r = 1..r_max the sweep reports the throughput per instance (tokens/s,
MODEL.md 3) of each requested method:

* ``mean_field`` and ``gaussian`` (:mod:`afd_jax.model.theory`, JAX): ``jax.vmap`` over scenarios
and r,
  jitted once per chunk shape, the chunk sharded over every local device along a 1-D
  ``"scenarios"`` mesh axis (:class:`jax.sharding.NamedSharding`). Each scenario's numbers are
  computed independently of every other, so results do not depend on the chunk size or the device
  count.
* ``exact`` (float64 NumPy): the worker-load law ``pi^{*B}``
(:func:`afd_jax.model.exact.worker_load_pmf`,
  FFT) depends only on (workload, B); it is computed once per group and turned into the max-law
  tables ``F^r`` and ``S_r(k) = sum_{i<k} Pr(W_max = w_i) w_i``. For a scenario with attention
  coefficients (a, b) and other-stage time G(r) the pipelined step time is then O(1):
  ``E[max(G, a W_max + b)] = G F^r(w_{k-1}) + a (E[W_max] - S_r(k)) + b (1 - F^r(w_{k-1}))``
  with ``k = #{i: w_i < (G - b)/a}``, and ``E[a W_max + b] + G`` when serial -- the same sum as
  :func:`afd_jax.model.exact.exact_step_times`, evaluated for all coefficient scenarios at once.
* ``mc`` (:func:`afd_jax.montecarlo.simulate.simulate`, one call per scenario; small sweeps only)
and
  ``optimize`` (:mod:`afd_jax.studies.optimize`, one call per scenario) where those modules exist.

Per scenario the table also carries ``theta``, ``slot_std``, the mean-field binding ``regime`` at
each r, and ``r_best_<method>`` (the integer argmax of that method's throughput over 1..r_max).

**Streaming and resume.** Scenarios are cut into chunks of ``chunk_size``; every finished chunk is
written to ``<output>.parts/part-NNNNNN.csv`` atomically (temp file + ``os.replace``); a
``manifest.json`` (written atomically first) pins the spec hash, the chunk size and the columns.
``resume=True`` recomputes only the missing parts; the final table is the concatenation of the
parts in chunk order, so it is byte-identical to an uninterrupted run. Floats are written with
Python's shortest round-trip ``repr``.

**Multi-host.** With ``process_count > 1`` (``jax.distributed.initialize()`` then
``jax.process_index()/process_count()``), process p computes chunks ``c % process_count == p`` on
its local devices and writes parts to the shared output folder; process 0 waits for every part
and merges (docs/sweep.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from afd_jax.errors import InputError
from afd_jax.model.latency import COMM_SCALINGS, OVERLAPS, Latency, ModelOptions

METHODS = ("mean_field", "gaussian", "exact", "mc", "optimize")
LATENCY_FIELDS = Latency._fields  # 6 coefficients + cost_attn, cost_ffn
REGIMES = ("attention", "communication", "ffn")
FORMATS = ("csv", "parquet")
ABORT_ENV = "AFD_JAX_SWEEP_ABORT_AFTER"  # test hook: SIGKILL self after k chunks written
MANIFEST = "manifest.json"

_TOP_KEYS = {
    "name",
    "r_max",
    "methods",
    "output",
    "format",
    "chunk_size",
    "memory_budget_mb",
    "batch",
    "workloads",
    "latency",
    "exact",
    "mc",
    "gaussian",
}
_WORKLOAD_KEYS = {"specs", "family", "decode_mapping", "trace_format", "load_offset"}
_FAMILY_KEYS = {"family", "params"}
_LATENCY_KEYS = {"base", "comm_scaling", "overlap", "set", "grid", "random"}
_RANDOM_DISTS = ("uniform", "loguniform")
_GRID_FORMS = ("values", "linspace", "logspace", "geomspace", "range")
_EXACT_KEYS = {"slot_bins", "noise_floor"}
_MC_KEYS = {"steps", "warmup", "replications", "seed", "init", "kernel"}
_GAUSSIAN_KEYS = {"method"}


# ----------------------------------------------------------------------------------------------
# Spec parsing and validation (no work is done before the whole spec is valid)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec (host-side, hashable content).

    workloads: tuple of (label, spec string, family params dict). latency_grid: tuple of
    (field, float64 values). latency_random: tuple of (field, dist, lo, hi). Everything else as in
    docs/sweep.md.
    """

    path: str
    name: str
    r_max: int
    methods: tuple[str, ...]
    output: str
    format: str
    chunk_size: int | None
    memory_budget_mb: float
    batches: tuple[int, ...]
    workloads: tuple[tuple[str, str, dict], ...]
    decode_mapping: str
    trace_format: str | None
    load_offset: int
    latency_base: str | None
    comm_scaling: str | None
    overlap: str | None
    latency_set: dict
    latency_grid: tuple[tuple[str, tuple[float, ...]], ...]
    latency_random: tuple[tuple[str, str, float, float], ...]
    random_n: int
    random_seed: int
    exact: dict = field(default_factory=dict)
    mc: dict = field(default_factory=dict)
    gaussian: dict = field(default_factory=dict)

    def canonical(self) -> dict:
        """Everything that determines the table's content (not where it goes)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("path", "output", "format", "chunk_size", "memory_budget_mb", "name"):
            d.pop(k)
        return json.loads(json.dumps(d, default=str))

    def digest(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _err(msg: str, key: str, path: str) -> InputError:
    return InputError(msg, path=path, field=key)


def _check_keys(table, allowed, where: str, path: str) -> None:
    if not isinstance(table, dict):
        raise _err("must be a table", where or "spec", path)
    for k in table:
        if k not in allowed:
            full = f"{where}.{k}" if where else k
            raise _err(f"unknown key (allowed: {', '.join(sorted(allowed))})", full, path)


def _number(x, key, path) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(float(x)):
        raise _err(f"expected a finite number, got {x!r}", key, path)
    return float(x)


def _int(x, key, path, lo: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise _err(f"expected an integer, got {x!r}", key, path)
    if lo is not None and x < lo:
        raise _err(f"must be >= {lo}, got {x}", key, path)
    return int(x)


def grid_values(value, key: str, path: str = "<spec>", integer: bool = False) -> np.ndarray:
    """Expand one grid entry into a 1-D float64 (or int64) array.

    Forms: a non-empty list of numbers; ``{values = [...]}``; ``{linspace = [lo, hi, n]}``;
    ``{logspace = [lo_exp, hi_exp, n]}`` (base 10 exponents); ``{geomspace = [lo, hi, n]}``;
    ``{range = [start, stop, step]}`` (stop inclusive). Raises InputError naming ``key``.
    """
    if isinstance(value, list):
        if not value:
            raise _err("empty grid", key, path)
        out = np.array([_number(v, key, path) for v in value], dtype=np.float64)
    elif isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in _GRID_FORMS:
            raise _err(f"a grid is a list or one of {{{', '.join(_GRID_FORMS)}}}", key, path)
        form, args = next(iter(value.items()))
        sub = f"{key}.{form}"
        if not isinstance(args, list):
            raise _err("expected a list", sub, path)
        if form == "values":
            return grid_values(args, sub, path, integer)
        if len(args) != 3:
            raise _err(
                "expected [start, stop, n]" if form != "range" else "expected [start, stop, step]",
                sub,
                path,
            )
        a, b = _number(args[0], sub, path), _number(args[1], sub, path)
        if form == "range":
            step = _number(args[2], sub, path)
            if step <= 0 or b < a:
                raise _err("need step > 0 and stop >= start (empty grid otherwise)", sub, path)
            n = int(math.floor((b - a) / step + 1e-9)) + 1
            out = a + step * np.arange(n, dtype=np.float64)
        else:
            n = _int(args[2], sub, path)
            if n < 1:
                raise _err(f"empty grid (n = {n})", sub, path)
            if form == "linspace":
                out = np.linspace(a, b, n)
            elif form == "logspace":
                out = np.logspace(a, b, n)
            else:
                if a <= 0 or b <= 0:
                    raise _err("geomspace needs positive ends", sub, path)
                out = np.geomspace(a, b, n)
    else:
        raise _err(f"expected a list or a grid table, got {value!r}", key, path)
    if not np.all(np.isfinite(out)):
        raise _err("grid has non-finite values", key, path)
    if integer:
        rounded = np.rint(out)
        if np.any(np.abs(rounded - out) > 1e-9 * np.maximum(1.0, np.abs(out))):
            raise _err("expected integers", key, path)
        return rounded.astype(np.int64)
    return out


def _fmt_param(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def parse_spec(data: dict, path: str = "<spec>") -> SweepSpec:
    """Validate a parsed TOML document; raise InputError naming the first bad key."""
    _check_keys(data, _TOP_KEYS, "", path)
    for required in ("batch", "workloads"):
        if required not in data:
            raise _err("missing required key", required, path)
    name = str(data.get("name", Path(path).stem))
    r_max = _int(data.get("r_max", 64), "r_max", path, lo=1)
    methods = data.get("methods", ["mean_field", "gaussian", "exact"])
    if not isinstance(methods, list) or not methods:
        raise _err("expected a non-empty list of methods", "methods", path)
    for m in methods:
        if m not in METHODS:
            raise _err(f"unknown method {m!r} (choose from {', '.join(METHODS)})", "methods", path)
    if len(set(methods)) != len(methods):
        raise _err("duplicate method", "methods", path)
    methods = tuple(m for m in METHODS if m in methods)  # canonical order
    output = data.get("output", str(Path(path).with_suffix(".csv").name))
    if not isinstance(output, str) or not output:
        raise _err("expected a path", "output", path)
    fmt = data.get("format", "parquet" if output.endswith(".parquet") else "csv")
    if fmt not in FORMATS:
        raise _err(f"expected one of {FORMATS}, got {fmt!r}", "format", path)
    chunk = data.get("chunk_size")
    chunk = None if chunk is None else _int(chunk, "chunk_size", path, lo=1)
    budget = _number(data.get("memory_budget_mb", 512), "memory_budget_mb", path)
    if budget <= 0:
        raise _err("must be > 0", "memory_budget_mb", path)

    batches = grid_values(data["batch"], "batch", path, integer=True)
    if np.any(batches < 1):
        raise _err("batch sizes must be >= 1", "batch", path)

    wl = data["workloads"]
    _check_keys(wl, _WORKLOAD_KEYS, "workloads", path)
    workloads: list[tuple[str, str, dict]] = []
    specs = wl.get("specs", [])
    if not isinstance(specs, list) or not all(isinstance(s, str) and s for s in specs):
        raise _err("expected a list of workload specs or trace paths", "workloads.specs", path)
    for s in specs:
        workloads.append((s, s, {}))
    families = wl.get("family", [])
    if isinstance(families, dict):
        families = [families]
    if not isinstance(families, list):
        raise _err("expected an array of tables", "workloads.family", path)
    for i, fam in enumerate(families):
        where = f"workloads.family[{i}]"
        _check_keys(fam, _FAMILY_KEYS, where, path)
        fname = fam.get("family")
        if not isinstance(fname, str) or not fname:
            raise _err("missing family name", f"{where}.family", path)
        params = fam.get("params", {})
        if not isinstance(params, dict) or not params:
            raise _err("expected a table of parameter grids", f"{where}.params", path)
        names = list(params)
        grids = [grid_values(params[n], f"{where}.params.{n}", path) for n in names]
        for combo in itertools.product(*grids):
            body = ",".join(f"{n}={_fmt_param(v)}" for n, v in zip(names, combo, strict=True))
            spec_str = f"{fname}:{body}"
            workloads.append((spec_str, spec_str, dict(zip(names, map(float, combo), strict=True))))
    if not workloads:
        raise _err("no workloads (give specs or a family grid)", "workloads", path)
    decode_mapping = wl.get("decode_mapping", "output")
    if decode_mapping not in ("output", "output-minus-one"):
        raise _err("expected 'output' or 'output-minus-one'", "workloads.decode_mapping", path)
    trace_format = wl.get("trace_format")
    if trace_format is not None and not isinstance(trace_format, str):
        raise _err("expected a string", "workloads.trace_format", path)
    load_offset = _int(wl.get("load_offset", 0), "workloads.load_offset", path)
    if load_offset not in (0, 1):
        raise _err("must be 0 or 1", "workloads.load_offset", path)

    lat = data.get("latency", {})
    _check_keys(lat, _LATENCY_KEYS, "latency", path)
    base = lat.get("base")
    if base is not None and not isinstance(base, str):
        raise _err("expected a preset name or a TOML path", "latency.base", path)
    if base is not None and not Path(base).is_absolute() and base.endswith(".toml"):
        cand = Path(path).parent / base
        if cand.is_file():
            base = str(cand)
    comm = lat.get("comm_scaling")
    if comm is not None and comm not in COMM_SCALINGS:
        raise _err(f"expected one of {COMM_SCALINGS}", "latency.comm_scaling", path)
    overlap = lat.get("overlap")
    if overlap is not None and overlap not in OVERLAPS:
        raise _err(f"expected one of {OVERLAPS}", "latency.overlap", path)
    lset = lat.get("set", {})
    _check_keys(lset, set(LATENCY_FIELDS), "latency.set", path)
    lset = {k: _number(v, f"latency.set.{k}", path) for k, v in lset.items()}
    grid = lat.get("grid", {})
    _check_keys(grid, set(LATENCY_FIELDS), "latency.grid", path)
    lgrid = tuple(
        (k, tuple(float(x) for x in grid_values(v, f"latency.grid.{k}", path)))
        for k, v in grid.items()
    )
    rnd = lat.get("random", {})
    _check_keys(rnd, set(LATENCY_FIELDS) | {"n", "seed"}, "latency.random", path)
    lrandom = []
    for k, v in rnd.items():
        if k in ("n", "seed"):
            continue
        key = f"latency.random.{k}"
        if k in dict(lgrid):
            raise _err("swept both on a grid and at random", key, path)
        if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in _RANDOM_DISTS:
            raise _err("expected {uniform = [lo, hi]} or {loguniform = [lo, hi]}", key, path)
        dist, args = next(iter(v.items()))
        if not isinstance(args, list) or len(args) != 2:
            raise _err("expected [lo, hi]", f"{key}.{dist}", path)
        lo, hi = (_number(a, f"{key}.{dist}", path) for a in args)
        if not lo <= hi or (dist == "loguniform" and lo <= 0):
            raise _err("need lo <= hi (and lo > 0 for loguniform)", f"{key}.{dist}", path)
        lrandom.append((k, dist, lo, hi))
    random_n = _int(rnd.get("n", 1 if lrandom else 0), "latency.random.n", path, lo=0)
    if lrandom and random_n < 1:
        raise _err("empty sample (n must be >= 1)", "latency.random.n", path)
    if random_n and not lrandom:
        raise _err("n given but no parameter to sample", "latency.random", path)
    random_seed = _int(rnd.get("seed", 0), "latency.random.seed", path, lo=0)

    exact = data.get("exact", {})
    _check_keys(exact, _EXACT_KEYS, "exact", path)
    exact = dict(exact)
    if "slot_bins" in exact:
        _int(exact["slot_bins"], "exact.slot_bins", path, lo=2)
    if "noise_floor" in exact:
        eps = _number(exact["noise_floor"], "exact.noise_floor", path)
        if not 0 <= eps <= 1e-9:
            raise _err("must be in [0, 1e-9]", "exact.noise_floor", path)
    mc = data.get("mc", {})
    _check_keys(mc, _MC_KEYS, "mc", path)
    for k in ("steps", "replications"):
        if k in mc:
            _int(mc[k], f"mc.{k}", path, lo=1)
    for k in ("warmup", "seed"):
        if k in mc:
            _int(mc[k], f"mc.{k}", path, lo=0)
    if "init" in mc and mc["init"] not in ("stationary", "cold"):
        raise _err("expected 'stationary' or 'cold'", "mc.init", path)
    if "kernel" in mc and mc["kernel"] not in ("barrier", "trajectory", "fast"):
        raise _err("expected 'barrier', 'trajectory' or 'fast'", "mc.kernel", path)
    gauss = data.get("gaussian", {})
    _check_keys(gauss, _GAUSSIAN_KEYS, "gaussian", path)
    if "method" in gauss and gauss["method"] not in ("tail", "max_of_means"):
        raise _err("expected 'tail' or 'max_of_means'", "gaussian.method", path)

    return SweepSpec(
        path=str(path),
        name=name,
        r_max=r_max,
        methods=methods,
        output=output,
        format=fmt,
        chunk_size=chunk,
        memory_budget_mb=budget,
        batches=tuple(int(b) for b in batches),
        workloads=tuple(workloads),
        decode_mapping=decode_mapping,
        trace_format=trace_format,
        load_offset=load_offset,
        latency_base=base,
        comm_scaling=comm,
        overlap=overlap,
        latency_set=lset,
        latency_grid=lgrid,
        latency_random=tuple(lrandom),
        random_n=random_n,
        random_seed=random_seed,
        exact=exact,
        mc=dict(mc),
        gaussian=dict(gauss),
    )


def load_spec(path) -> SweepSpec:
    """Read and validate a sweep spec TOML file (InputError naming the file and key)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such spec file", path=str(path))
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"not valid TOML: {err}", path=str(path)) from None
    return parse_spec(data, str(path))


# ----------------------------------------------------------------------------------------------
# Plan: everything resolved (workloads, latency, scenario table) before any evaluation
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class WorkloadEntry:
    label: str
    params: dict
    workload: object
    theta: float
    slot_var: float


@dataclass(eq=False)
class SweepPlan:
    """A spec with its inputs resolved. ``wl_index``, ``batch``: int64[n_scenarios];
    ``coeffs``: float64[n_scenarios, 8] in ``Latency._fields`` order."""

    spec: SweepSpec
    opts: ModelOptions
    workloads: list[WorkloadEntry]
    wl_index: np.ndarray
    batch: np.ndarray
    coeffs: np.ndarray
    swept: tuple[str, ...]  # parameter columns that vary
    family_params: tuple[str, ...]

    @property
    def n_scenarios(self) -> int:
        return int(self.batch.shape[0])

    def columns(self) -> list[str]:
        cols = ["scenario", "workload", *(f"wl_{p}" for p in self.family_params), "batch"]
        cols += [*LATENCY_FIELDS, "theta", "slot_std", "r", "regime"]
        for m in self.spec.methods:
            if m != "optimize":
                cols.append(f"tput_{m}")
            if m == "mc":
                cols.append("tput_mc_stderr")
        cols += [f"r_best_{m}" for m in self.spec.methods]
        if "optimize" in self.spec.methods:
            cols.append("r_continuous_optimize")
        return cols


def _latency_samples(spec: SweepSpec, base: Latency) -> np.ndarray:
    """float64[n_lat, 8]: the grid product (spec key order) x the seeded random sample."""
    base_vec = np.array([float(getattr(base, f)) for f in LATENCY_FIELDS], dtype=np.float64)
    for k, v in spec.latency_set.items():
        base_vec[LATENCY_FIELDS.index(k)] = v
    names = [k for k, _ in spec.latency_grid]
    combos = list(itertools.product(*[v for _, v in spec.latency_grid])) or [()]
    grid = np.repeat(base_vec[None, :], len(combos), axis=0)
    for j, k in enumerate(names):
        grid[:, LATENCY_FIELDS.index(k)] = [c[j] for c in combos]
    if not spec.latency_random:
        return grid
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    n = spec.random_n
    key = jr.key(spec.random_seed)
    out = np.repeat(grid, n, axis=0)
    for k, dist, lo, hi in spec.latency_random:
        # one stream per field (fold_in its index): adding a field does not change the others
        u = np.asarray(
            jax.device_get(
                jr.uniform(jr.fold_in(key, LATENCY_FIELDS.index(k)), (n,), dtype=jnp.float32)
            ),
            dtype=np.float64,
        )
        vals = (
            lo + (hi - lo) * u
            if dist == "uniform"
            else np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * u)
        )
        out[:, LATENCY_FIELDS.index(k)] = np.tile(vals, len(combos))
    return out


def _check_latency_values(coeffs: np.ndarray, spec: SweepSpec) -> None:
    for j, f in enumerate(LATENCY_FIELDS):
        col = coeffs[:, j]
        key = _latency_key(spec, f)
        if not np.all(np.isfinite(col)):
            raise _err("non-finite value", key, spec.path)
        if f.startswith("cost") and np.any(col <= 0):
            raise _err(f"costs must be > 0 (got {col.min():g})", key, spec.path)
        if np.any(col < 0):
            raise _err(f"coefficients must be >= 0 (got {col.min():g})", key, spec.path)


def _latency_key(spec: SweepSpec, f: str) -> str:
    if f in dict(spec.latency_grid):
        return f"latency.grid.{f}"
    if f in {k for k, *_ in spec.latency_random}:
        return f"latency.random.{f}"
    if f in spec.latency_set:
        return f"latency.set.{f}"
    return "latency.base"


def make_plan(spec: SweepSpec) -> SweepPlan:
    """Resolve workloads (statistics), the latency base and the scenario table; validate values."""
    from afd_jax.model.latency_io import resolve_latency
    from afd_jax.workload.specs import resolve_workload
    from afd_jax.workload.statistics import workload_stats

    entries = []
    for i, (label, s, params) in enumerate(spec.workloads):
        try:
            w = resolve_workload(s, fmt=spec.trace_format, decode_mapping=spec.decode_mapping)
        except InputError as err:
            raise InputError(
                f"workload {s!r}: {err}", path=spec.path, field=f"workloads[{i}]"
            ) from None
        st = workload_stats(w)
        # the analytic methods see the mean slot load, theta + load_offset (MODEL.md 1)
        theta = float(st.theta) + spec.load_offset
        entries.append(WorkloadEntry(label, params, w, theta, float(st.slot_var)))
    # swept fields need no base value: give resolve_latency a placeholder (overwritten below)
    overrides = {k: v[0] for k, v in spec.latency_grid}
    overrides.update({k: lo for k, _, lo, _ in spec.latency_random})
    overrides.update(spec.latency_set)
    try:
        base, opts = resolve_latency(
            spec=spec.latency_base,
            overrides=overrides,
            comm_scaling=spec.comm_scaling,
            overlap=spec.overlap,
            load_offset=spec.load_offset,
        )
    except InputError as err:
        raise InputError(f"latency: {err}", path=spec.path, field="latency") from None
    lat = _latency_samples(spec, base)
    _check_latency_values(lat, spec)

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
    return SweepPlan(spec, opts, entries, wl_index, batch, coeffs, tuple(swept), fam)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _analytic_fns(opts: ModelOptions, r_max: int, gauss_method: str) -> dict:
    """Jitted chunk kernels, vmapped over scenarios (r = 1..r_max broadcasts inside).

    Inputs (all shape [n], one float dtype): a :class:`Latency` of [n] arrays, theta, slot_var,
    batch. ``"mean_field"`` returns ``regime`` int32[n, r_max] (0 attention, 1 communication,
    2 FFN: the stage with the largest mean-field time at r, ties in that order as in
    :func:`afd_jax.model.theory.mean_field_regime`) and ``tput_mean_field``; ``"gaussian"`` returns
    ``tput_gaussian`` (tokens/s, float[n, r_max]).
    """
    import jax
    import jax.numpy as jnp

    from afd_jax.model import latency as L
    from afd_jax.model import theory

    def mean_field(lat: Latency, theta, slot_var, batch):
        r = jnp.arange(1, r_max + 1, dtype=theta.dtype)
        ta = theory.mean_attention_time(lat, theta, batch)
        tc, tf = L.t_comm(lat, r, batch, opts), L.t_ffn(lat, r, batch)
        top = jnp.maximum(jnp.maximum(tc, tf), ta) * (1 - 1e-12)
        regime = jnp.where(
            ta >= top, jnp.int32(0), jnp.where(tc >= top, jnp.int32(1), jnp.int32(2))
        )
        tput = theory.mean_field_throughput(lat, theta, r, batch, opts)
        return {"regime": regime, "tput_mean_field": tput}

    def gaussian(lat: Latency, theta, slot_var, batch):
        r = jnp.arange(1, r_max + 1, dtype=theta.dtype)
        tput = theory.gaussian_throughput(lat, theta, slot_var, r, batch, opts, gauss_method)
        return {"tput_gaussian": tput}

    return {"mean_field": jax.jit(jax.vmap(mean_field)), "gaussian": jax.jit(jax.vmap(gaussian))}


class _Devices:
    """A 1-D mesh over the local devices; puts scenario arrays sharded along axis 0."""

    def __init__(self):
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        devs = jax.local_devices()
        self.n = len(devs)
        self.mesh = Mesh(np.array(devs), ("scenarios",))
        self.sharded = NamedSharding(self.mesh, PartitionSpec("scenarios"))

    def put(self, x):
        import jax

        return jax.device_put(x, self.sharded)


def _float_dtype():
    import jax.numpy as jnp

    return jnp.zeros(()).dtype  # float64 under x64, float32 otherwise


class _ExactTables:
    """Max-law tables of the worker load for one (workload, B) group (float64).

    With the worker-load lattice ``w_i = start + width * i`` (i < n) and survival
    ``S(w) = Pr(T > w)`` summed from the upper tail (as in :mod:`afd_jax.model.exact`):
    ``exceed[r-1, i] = Pr(M_r >= w_i) = -expm1(r log1p(-S(w_{i-1})))`` for i = 0..n (1 at i = 0,
    0 at i = n) and ``upper[r-1, k] = sum_{i >= k} Pr(M_r = w_i) w_i`` (0 at k = n).
    """

    def __init__(self, worker_pmf, r_max: int, noise_floor: float = 1e-14):
        pmf = np.asarray(worker_pmf.pmf, dtype=np.float64)
        # The FFT convolution leaves round-off of ~1e-15 * max(pmf) on every lattice point, far
        # beyond the real support (B = 256: ~900k points instead of ~50k). Keep the range between
        # the first and last point above noise_floor * max(pmf) and lump each dropped tail's mass
        # (kept only if <= 1e-10) onto the nearest kept point: E[h] moves by at most that mass
        # times r_max * (h(w_max) - h(w_min)). noise_floor = 0 keeps everything.
        if noise_floor > 0 and pmf.size > 2:
            above = np.flatnonzero(pmf > noise_floor * pmf.max())
            lo, hi = int(above[0]), int(above[-1]) + 1
            low_mass, high_mass = pmf[:lo].sum(), pmf[hi:].sum()
            lo, low_mass = (lo, low_mass) if low_mass <= 1e-10 else (0, 0.0)
            hi, high_mass = (hi, high_mass) if high_mass <= 1e-10 else (pmf.size, 0.0)
            if hi - lo >= 2 and (lo > 0 or hi < pmf.size):
                kept = pmf[lo:hi].copy()
                kept[0] += low_mass
                kept[-1] += high_mass
                worker_pmf = type(worker_pmf)(
                    start=worker_pmf.start + worker_pmf.width * lo,
                    width=worker_pmf.width,
                    pmf=kept,
                )
                pmf = kept
        self.start = float(worker_pmf.start)
        self.width = float(worker_pmf.width)
        self.n = n = pmf.shape[0]
        w = self.start + self.width * np.arange(n, dtype=np.float64)
        tail = np.cumsum(pmf[::-1])[::-1]  # Pr(T >= w_i)
        surv_prev = np.clip(tail[1:], 0.0, 1.0)  # Pr(T > w_{i-1}), i = 1..n-1
        r = np.arange(1, r_max + 1, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            exc = -np.expm1(r * np.log1p(-surv_prev)[None, :])
        self.exceed = np.concatenate(
            [np.ones((r_max, 1)), exc, np.zeros((r_max, 1))], axis=1
        )  # [r_max, n + 1]
        mass = self.exceed[:, :-1] - self.exceed[:, 1:]  # Pr(M_r = w_i)
        up = np.cumsum((mass * w[None, :])[:, ::-1], axis=1)[:, ::-1]
        self.upper = np.concatenate([up, np.zeros((r_max, 1))], axis=1)  # [r_max, n + 1]
        self.mean_max = self.upper[:, 0]

    def step_time(self, a, b, other, serial: bool) -> np.ndarray:
        """E[tau] float64[n_s, r_max] for attention (a, b): float64[n_s] and G: [n_s, r_max].

        Pipelined: ``G Pr(M_r < w_k) + a sum_{i>=k} Pr(M_r = w_i) w_i + b Pr(M_r >= w_k)`` with
        ``k`` the first lattice index where ``a w_k + b >= G``; serial: ``a E[M_r] + b + G``.
        """
        a2, b2 = a[:, None], b[:, None]
        if serial:
            return a2 * self.mean_max[None, :] + b2 + other
        pos = a2 > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            thr = (other - b2) / np.where(pos, a2, 1.0)  # a w + b >= G  <=>  w >= thr
            k = np.ceil((thr - self.start) / self.width)
        k = np.clip(np.nan_to_num(k, nan=0.0, posinf=self.n, neginf=0.0), 0, self.n)
        k = k.astype(np.int64)
        rows = np.arange(other.shape[1])[None, :]
        q = self.exceed[rows, k]
        tau = other * (1.0 - q) + a2 * self.upper[rows, k] + b2 * q
        return np.where(pos, tau, np.maximum(other, b2))


def _other_stages_np(coeffs, batch, r_max, opts: ModelOptions) -> np.ndarray:
    """G(r) = max(t_C, t_F) (pipelined) or t_C + t_F (serial), float64[n, r_max] (MODEL.md 2)."""
    f = {k: coeffs[:, j][:, None] for j, k in enumerate(LATENCY_FIELDS)}
    r = np.arange(1, r_max + 1, dtype=np.float64)[None, :]
    b = batch.astype(np.float64)[:, None]
    tf = f["alpha_ffn"] * r * b + f["beta_ffn"]
    x = r * b if opts.comm_scaling == "aggregate" else np.broadcast_to(b, tf.shape)
    tc = f["alpha_comm"] * x + f["beta_comm"]
    return np.maximum(tc, tf) if opts.overlap == "pipelined" else tc + tf


def _throughput_np(coeffs, batch, r_max, tau) -> np.ndarray:
    r = np.arange(1, r_max + 1, dtype=np.float64)[None, :]
    ca = coeffs[:, LATENCY_FIELDS.index("cost_attn")][:, None]
    cf = coeffs[:, LATENCY_FIELDS.index("cost_ffn")][:, None]
    return 1e6 * r * batch.astype(np.float64)[:, None] / ((r * ca + cf) * tau)


class _Evaluator:
    """Evaluates chunks of a plan; caches the compiled kernels, the slot-load law of the current
    workload and the exact max-law tables of the current (workload, B) group (scenarios are
    ordered workload, batch, latency, so each group is built once)."""

    def __init__(self, plan: SweepPlan, chunk_size: int):
        self.plan = plan
        self.spec = plan.spec
        self.seconds = dict.fromkeys(self.spec.methods, 0.0)
        self.dev = _Devices()
        self.padded = -(-chunk_size // self.dev.n) * self.dev.n  # fixed shape: one compile
        self.fns = _analytic_fns(
            plan.opts, self.spec.r_max, self.spec.gaussian.get("method", "tail")
        )
        self._theta = np.array([e.theta for e in plan.workloads], dtype=np.float64)
        self._var = np.array([e.slot_var for e in plan.workloads], dtype=np.float64)
        self._tables_key = None
        self._tables = None
        self._slot_key = None
        self._slot = None

    def _analytic(self, sl: slice) -> dict:
        import jax
        import jax.numpy as jnp

        p, dt = self.plan, _float_dtype()
        n = sl.stop - sl.start
        idx = np.arange(sl.start, sl.stop)
        idx = np.concatenate([idx, np.full(self.padded - n, sl.stop - 1)])
        put = self.dev.put
        lat = Latency(*(put(jnp.asarray(p.coeffs[idx, j], dt)) for j in range(len(LATENCY_FIELDS))))
        args = (
            lat,
            put(jnp.asarray(self._theta[p.wl_index[idx]], dt)),
            put(jnp.asarray(self._var[p.wl_index[idx]], dt)),
            put(jnp.asarray(p.batch[idx], dt)),
        )
        out = {}
        for m in ("mean_field", "gaussian"):
            if m == "gaussian" and m not in self.spec.methods:
                continue
            t0 = time.perf_counter()
            res = jax.device_get(self.fns[m](*args))
            if m in self.seconds:
                self.seconds[m] += time.perf_counter() - t0
            out.update({k: np.asarray(v)[:n] for k, v in res.items()})
        return out

    def _worker_pmf(self, wl: int, batch: int):
        from afd_jax.model.exact import worker_load_pmf
        from afd_jax.workload.slotload import slot_load_pmf

        if self._slot_key != wl:
            kw = {}
            if "slot_bins" in self.spec.exact:
                kw["max_bins"] = int(self.spec.exact["slot_bins"])
            w = self.plan.workloads[wl].workload
            self._slot = slot_load_pmf(w, load_offset=self.spec.load_offset, **kw)
            self._slot_key = wl
        return worker_load_pmf(self._slot, batch)

    def _exact(self, sl: slice) -> np.ndarray:
        p = self.plan
        t0 = time.perf_counter()
        wl, b, coeffs = p.wl_index[sl], p.batch[sl], p.coeffs[sl]
        tau = np.empty((wl.shape[0], self.spec.r_max), dtype=np.float64)
        group = wl * (int(p.batch.max()) + 1) + b
        starts = np.flatnonzero(np.diff(group, prepend=-1))
        ends = np.append(starts[1:], wl.shape[0])
        other = _other_stages_np(coeffs, b, self.spec.r_max, p.opts)
        serial = p.opts.overlap == "serial"
        ia, ib = LATENCY_FIELDS.index("alpha_attn"), LATENCY_FIELDS.index("beta_attn")
        for s, e in zip(starts, ends, strict=True):
            key = (int(wl[s]), int(b[s]))
            if key != self._tables_key:
                self._tables = _ExactTables(
                    self._worker_pmf(*key),
                    self.spec.r_max,
                    float(self.spec.exact.get("noise_floor", 1e-14)),
                )
                self._tables_key = key
            tau[s:e] = self._tables.step_time(coeffs[s:e, ia], coeffs[s:e, ib], other[s:e], serial)
        tput = _throughput_np(coeffs, b, self.spec.r_max, tau)
        self.seconds["exact"] += time.perf_counter() - t0
        return tput

    def evaluate(self, lo: int, hi: int) -> dict:
        """Column arrays [hi - lo, r_max] of scenarios lo..hi-1: regime and tput_<method>."""
        sl = slice(lo, hi)
        res = self._analytic(sl)
        if "exact" in self.spec.methods:
            res["tput_exact"] = self._exact(sl)
        if "mc" in self.spec.methods:
            res["tput_mc"], res["tput_mc_stderr"] = self._mc(sl)
        if "optimize" in self.spec.methods:
            res["r_continuous_optimize"] = self._optimize(sl)
        return res

    def _optimize(self, sl: slice) -> np.ndarray:
        """Continuous optimum r_c of the smoothed Gaussian objective
        (:mod:`afd_jax.studies.optimize`),
        vmapped over the chunk (padded to a fixed shape, sharded like the analytic kernels)."""
        import jax
        import jax.numpy as jnp

        from afd_jax.studies.optimize import make_scenario, solve_continuous_batched

        p = self.plan
        n = sl.stop - sl.start
        idx = np.arange(sl.start, sl.stop)
        idx = np.concatenate([idx, np.full(self.padded - n, sl.stop - 1)])
        t0 = time.perf_counter()
        scen = make_scenario(
            Latency(*(p.coeffs[idx, j] for j in range(len(LATENCY_FIELDS)))),
            self._theta[p.wl_index[idx]],
            self._var[p.wl_index[idx]],
            p.batch[idx].astype(np.float64),
            r_max=float(self.spec.r_max),
        )
        scen = jax.tree_util.tree_map(lambda x: self.dev.put(jnp.asarray(x)), scen)
        sol = solve_continuous_batched(scen, opts=p.opts)
        r_c = np.asarray(jax.device_get(sol.r), dtype=np.float64)[:n]
        self.seconds["optimize"] += time.perf_counter() - t0
        return r_c

    def _mc(self, sl: slice) -> tuple[np.ndarray, np.ndarray]:
        """Monte Carlo throughput and its standard error (delta method from the SE of E[tau]),
        one :func:`afd_jax.montecarlo.simulate.simulate` call per scenario with seed = mc.seed +
        scenario
        index (so results do not depend on chunking)."""
        from afd_jax.montecarlo.simulate import simulate

        p, spec = self.plan, self.spec
        t0 = time.perf_counter()
        kw = dict(spec.mc)
        seed = int(kw.pop("seed", 0))
        vals, errs = [], []
        for i in range(sl.start, sl.stop):
            res = simulate(
                p.workloads[int(p.wl_index[i])].workload,
                Latency(*(float(x) for x in p.coeffs[i])),
                int(p.batch[i]),
                spec.r_max,
                seed=seed + i,
                opts=p.opts,
                **kw,
            )
            tput = np.asarray(res.throughput, dtype=np.float64)
            vals.append(tput)
            errs.append(tput * np.asarray(res.se_tau) / np.asarray(res.mean_tau))
        self.seconds["mc"] += time.perf_counter() - t0
        return np.stack(vals), np.stack(errs)


# ----------------------------------------------------------------------------------------------
# Rows, parts, manifest, merge
# ----------------------------------------------------------------------------------------------


def _f(x) -> str:
    x = float(x)
    return repr(x) if math.isfinite(x) else ("nan" if math.isnan(x) else repr(x))


def _csv_field(s: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([s])
    return buf.getvalue()


def _best_r(tput: np.ndarray) -> np.ndarray:
    """Integer argmax over r = 1..r_max (NaN never wins), int64[n]."""
    return np.argmax(np.where(np.isnan(tput), -np.inf, tput), axis=1) + 1


def format_rows(plan: SweepPlan, lo: int, hi: int, res: dict) -> str:
    """CSV text (no header) of scenarios lo..hi-1, r_max rows each, in columns() order.

    ``r_best_optimize`` is the better of floor/ceil of the continuous optimum, judged by the
    most accurate throughput in the table (exact, else Gaussian, else mean-field)."""
    spec, r_max = plan.spec, plan.spec.r_max
    methods = spec.methods
    row_methods = [m for m in methods if m != "optimize"]
    tput = {m: res[f"tput_{m}"] for m in row_methods}
    best = {m: _best_r(tput[m]) for m in row_methods}
    if "optimize" in methods:
        judge = next(m for m in ("exact", "gaussian", "mean_field") if f"tput_{m}" in res)
        rc = np.clip(res["r_continuous_optimize"], 1.0, float(r_max))
        lo_r = np.floor(rc).astype(np.int64)
        hi_r = np.minimum(lo_r + 1, r_max)
        rows = np.arange(rc.shape[0])
        t = res[f"tput_{judge}"]
        best["optimize"] = np.where(t[rows, hi_r - 1] > t[rows, lo_r - 1], hi_r, lo_r)
    regime = res["regime"]
    lists = {m: tput[m].tolist() for m in row_methods}
    stderr = res["tput_mc_stderr"].tolist() if "mc" in methods else None
    lines = []
    for k, i in enumerate(range(lo, hi)):
        e = plan.workloads[int(plan.wl_index[i])]
        head = [str(i), _csv_field(e.label)]
        head += [_f(e.params[p]) if p in e.params else "" for p in plan.family_params]
        head.append(str(int(plan.batch[i])))
        head += [_f(x) for x in plan.coeffs[i].tolist()]
        head += [_f(e.theta), _f(math.sqrt(e.slot_var))]
        prefix = ",".join(head)
        tail = [str(int(best[m][k])) for m in methods]
        if "optimize" in methods:
            tail.append(_f(res["r_continuous_optimize"][k]))
        tail = ",".join(tail)
        reg = regime[k]
        for r in range(r_max):
            vals = []
            for m in row_methods:
                vals.append(_f(lists[m][k][r]))
                if m == "mc":
                    vals.append(_f(stderr[k][r]))
            lines.append(f"{prefix},{r + 1},{REGIMES[int(reg[r])]},{','.join(vals)},{tail}\n")
    return "".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def default_chunk_size(spec: SweepSpec, n_scenarios: int, n_devices: int = 1) -> int:
    """Scenarios per chunk from the memory budget: about r_max * 8 bytes * (rows of working
    arrays per method; the Gaussian tail integral's quadrature dominates), at least the device
    count, at most 8192 (so progress and checkpoints stay frequent)."""
    per = 16 + (256 if "gaussian" in spec.methods else 0) + (32 if "exact" in spec.methods else 0)
    per_scenario = spec.r_max * 8 * per
    n = int(spec.memory_budget_mb * 2**20 // per_scenario)
    n = max(n_devices, min(n, 8192, max(n_scenarios, 1)))
    return n


@dataclass
class SweepResult:
    """What a sweep did. ``rows_computed``: (scenario, r) rows evaluated by this call (0 when
    everything was already done); ``method_seconds``: wall time spent in each method."""

    output: str
    n_scenarios: int
    n_rows: int
    n_chunks: int
    chunks_computed: int
    rows_computed: int
    chunk_size: int
    wall_seconds: float
    method_seconds: dict
    devices: int

    def summary(self) -> dict:
        evals = {
            m: (self.rows_computed / s if s > 0 else None) for m, s in self.method_seconds.items()
        }
        return {
            "n_scenarios": self.n_scenarios,
            "n_rows": self.n_rows,
            "output": self.output,
            "wall_seconds": self.wall_seconds,
            "evaluations_per_second": evals,
            "chunks": self.n_chunks,
            "chunks_computed": self.chunks_computed,
            "rows_computed": self.rows_computed,
            "chunk_size": self.chunk_size,
            "devices": self.devices,
        }


def parts_dir(output: str | Path) -> Path:
    out = Path(output)
    return out.with_name(out.name + ".parts")


def run_sweep(
    plan: SweepPlan,
    *,
    output: str | None = None,
    resume: bool = False,
    chunk_size: int | None = None,
    progress: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    merge_timeout_s: float = 86400.0,
) -> SweepResult:
    """Evaluate every scenario of ``plan`` and write the table (see the module docstring).

    Raises InputError when partial results exist and ``resume`` is False, or when they belong to
    a different spec.
    """
    import jax

    t_start = time.perf_counter()
    spec = plan.spec
    out = Path(output or spec.output)
    work = parts_dir(out)
    n_dev = len(jax.local_devices())
    manifest_path = work / MANIFEST
    columns = plan.columns()
    n = plan.n_scenarios
    if process_index != 0:  # other hosts join the run process 0 set up (its manifest)
        _wait_for(lambda: manifest_path.is_file(), merge_timeout_s, "the manifest")
        resume = True
    man = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if man is not None and man.get("complete") and not resume:
        shutil.rmtree(work)  # a finished run's record: a plain rerun starts over
        man = None
    if man is not None:
        if not resume:
            raise InputError(
                f"partial sweep results exist in {work}; pass --resume to continue them or "
                "delete that folder to start over",
                path=str(out),
            )
        if man.get("digest") != spec.digest() or man.get("columns") != columns:
            raise InputError(
                f"the partial results in {work} come from a different spec; delete that folder "
                "or run without --resume",
                path=spec.path,
            )
        if chunk_size is not None and chunk_size != man["chunk_size"] and progress:
            print(
                f"afd-jax sweep: resuming with the original chunk size {man['chunk_size']}",
                file=sys.stderr,
            )
        chunk_size = int(man["chunk_size"])
        if man.get("complete") and out.is_file():
            return SweepResult(
                str(out),
                n,
                n * spec.r_max,
                man["n_chunks"],
                0,
                0,
                chunk_size,
                time.perf_counter() - t_start,
                dict.fromkeys(spec.methods, 0.0),
                n_dev,
            )
    else:
        chunk_size = chunk_size or spec.chunk_size or default_chunk_size(spec, n, n_dev)
        man = {
            "digest": spec.digest(),
            "spec": spec.canonical(),
            "chunk_size": chunk_size,
            "n_scenarios": n,
            "n_chunks": -(-n // chunk_size),
            "columns": columns,
            "format": spec.format,
            "complete": False,
        }
        work.mkdir(parents=True, exist_ok=True)
        _atomic_write(manifest_path, json.dumps(man, indent=1))
    n_chunks = -(-n // chunk_size)
    mine = [c for c in range(n_chunks) if c % process_count == process_index]
    todo = [c for c in mine if not (work / f"part-{c:06d}.csv").is_file()]

    ev = _Evaluator(plan, chunk_size)
    abort_after = int(os.environ.get(ABORT_ENV, "0") or 0)
    bar = None
    if progress:
        from tqdm import tqdm

        size = {c: min(n, (c + 1) * chunk_size) - c * chunk_size for c in mine}
        bar = tqdm(
            total=sum(size.values()),
            initial=sum(size[c] for c in mine if c not in set(todo)),
            unit="scen",
            desc="sweep",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    written = 0
    try:
        for c in todo:
            lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
            res = ev.evaluate(lo, hi)
            _atomic_write(work / f"part-{c:06d}.csv", format_rows(plan, lo, hi, res))
            written += 1
            if bar is not None:
                bar.update(hi - lo)
            if abort_after and written >= abort_after:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a killed process
    finally:
        if bar is not None:
            bar.close()
    if process_index == 0:
        _wait_for(
            lambda: all((work / f"part-{c:06d}.csv").is_file() for c in range(n_chunks)),
            merge_timeout_s,
            "the other processes' parts",
        )
        _merge(work, out, columns, n_chunks, spec.format)
        man["complete"] = True
        _atomic_write(manifest_path, json.dumps(man, indent=1))
        for c in range(n_chunks):  # keep the manifest: --resume then has nothing to do
            (work / f"part-{c:06d}.csv").unlink(missing_ok=True)
    rows = sum(min(n, (c + 1) * chunk_size) - c * chunk_size for c in todo) * spec.r_max
    return SweepResult(
        str(out), n, n * spec.r_max, n_chunks, len(todo), rows, chunk_size,
        time.perf_counter() - t_start, ev.seconds, ev.dev.n,
    )  # fmt: skip


def _wait_for(cond, timeout_s: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _merge(work: Path, out: Path, columns: list[str], n_chunks: int, fmt: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    csv_path = tmp if fmt == "csv" else out.with_name(out.name + f".csvtmp{os.getpid()}")
    with open(csv_path, "w", newline="") as fh:
        fh.write(",".join(columns) + "\n")
        for c in range(n_chunks):
            with open(work / f"part-{c:06d}.csv") as part:
                shutil.copyfileobj(part, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if fmt == "parquet":
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        pq.write_table(pacsv.read_csv(csv_path), tmp)
        csv_path.unlink()
    os.replace(tmp, out)


def read_table(path) -> dict[str, np.ndarray]:
    """Read a sweep CSV into columns (float64 where numeric, str otherwise)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        cols = list(zip(*reader, strict=True)) or [()] * len(header)
    out = {}
    for name, vals in zip(header, cols, strict=True):
        try:
            out[name] = np.array([float(v) if v != "" else np.nan for v in vals])
        except ValueError:
            out[name] = np.array(vals, dtype=object)
    return out

"""Sweep spec: TOML parsing and validation (docs/sweep.md, "The spec").

No work is done before the whole spec is valid: :func:`parse_sweep_spec` raises an
:class:`~afd_jax.errors.InputError` naming the file and the first bad key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from afd_jax.errors import InputError, check_seed, read_toml
from afd_jax.kernels.options import INITS, KERNELS
from afd_jax.memory import require
from afd_jax.model.latency import COMM_SCALINGS, OVERLAPS
from afd_jax.montecarlo.dynamics import DYNAMICS_KEYS, dynamics_options
from afd_jax.montecarlo.spine import PRECISIONS
from afd_jax.studies.sweep.fields import FORMATS, METHODS, SCALE_FIELDS, SWEPT_FIELDS

__all__ = ["SweepSpec", "grid_values", "load_spec", "output_format", "parse_sweep_spec"]

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
_MC_KEYS = {"steps", "warmup", "replications", "seed", "init", "kernel", "precision",
            *DYNAMICS_KEYS}  # fmt: skip
_GAUSSIAN_KEYS = {"method"}


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
    format_given: str | None = None  # the spec's `format` key as written (None: not given)

    @property
    def scaled(self) -> bool:
        """Whether the spec names a stage scale (``attn_scale``, ``ffn_scale``, ``comm_scale``):
        then the table has their columns."""
        named = [*self.latency_set, *dict(self.latency_grid), *(k for k, *_ in self.latency_random)]
        return any(k in SCALE_FIELDS for k in named)

    def canonical(self) -> dict:
        """Everything that determines the table's content (not where it goes)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("path", "output", "format", "format_given", "chunk_size", "memory_budget_mb",
                  "name"):  # fmt: skip
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


# Host memory per scenario of a plan (its 8 float64 coefficients twice, indices, the rows of a
# chunk's arrays): the estimate checked before a grid is expanded.
SCENARIO_BYTES = 256


# r = 1..r_max rows per scenario: beyond this a sweep is hours of table formatting whatever the
# memory (docs/sweep.md); the working arrays are also checked against memory_budget_mb.
R_MAX_LIMIT = 1 << 20


def scenario_work_bytes(methods, r_max: int) -> int:
    """Working memory of one scenario in a chunk: about r_max * 8 bytes * (rows of working arrays
    per method; the Gaussian tail integral's quadrature dominates). The chunk size is the
    memory budget over this (:func:`afd_jax.studies.sweep.run.default_chunk_size`)."""
    per = 16 + (256 if "gaussian" in methods else 0) + (32 if "exact" in methods else 0)
    return r_max * 8 * per


def _check_r_max(r_max: int, methods, budget_mb: float, path: str) -> None:
    """r_max within R_MAX_LIMIT, one scenario's working arrays within memory_budget_mb (a chunk
    holds at least one scenario) and within the process budget (--memory-budget)."""
    if r_max > R_MAX_LIMIT:
        raise _err(f"must be <= {R_MAX_LIMIT} (rows r = 1..r_max per scenario), got {r_max}",
                   "r_max", path)  # fmt: skip
    need = scenario_work_bytes(methods, r_max)
    if need > budget_mb * 2**20:
        raise _err(
            f"one scenario of r = 1..{r_max} needs about {need / 2**20:.6g} MiB of working "
            f"arrays ({', '.join(methods)}), over memory_budget_mb = {budget_mb:g}; lower r_max "
            "or raise memory_budget_mb",
            "r_max",
            path,
        )
    require(need, f"one scenario of r = 1..{r_max}", "lower r_max", path)


def _require_grid(n: float, key: str, path: str) -> None:
    require(SCENARIO_BYTES * n, f"the grid {key} of {n:.6g} points", "use fewer points", path)


def _spaced_grid(form: str, args: list, sub: str, path: str) -> np.ndarray:
    """The linspace / logspace / geomspace / range forms of :func:`grid_values`."""
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
        _require_grid(n, sub, path)
        return a + step * np.arange(n, dtype=np.float64)
    n = _int(args[2], sub, path)
    if n < 1:
        raise _err(f"empty grid (n = {n})", sub, path)
    _require_grid(n, sub, path)
    if form == "linspace":
        return np.linspace(a, b, n)
    if form == "logspace":
        if max(a, b) > 308:  # 10^309 overflows float64 (NumPy warned, then inf was refused)
            raise _err(f"exponents must be <= 308, got [{a:g}, {b:g}]", sub, path)
        return np.logspace(a, b, n)
    if a <= 0 or b <= 0:
        raise _err("geomspace needs positive ends", sub, path)
    return np.geomspace(a, b, n)


def grid_values(value, key: str, path: str = "<spec>", integer: bool = False) -> np.ndarray:
    """Expand one grid entry into a 1-D float64 (or int64) array.

    Forms: a non-empty list of numbers; ``{values = [...]}``; ``{linspace = [lo, hi, n]}``;
    ``{logspace = [lo_exp, hi_exp, n]}`` (base 10 exponents); ``{geomspace = [lo, hi, n]}``;
    ``{range = [start, stop, step]}`` (stop inclusive). Raises InputError naming ``key``.

    >>> grid_values({"range": [0, 1, 0.5]}, "k").tolist()
    [0.0, 0.5, 1.0]
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
        out = _spaced_grid(form, args, sub, path)
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


SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet"}


def table_format(output: str, given: str | None, path: str, key: str) -> str:
    """The format of the table ``output``: its suffix decides (``.csv``, ``.parquet``); a
    ``given`` format (the spec's ``format`` key) must agree with it; without a suffix, ``given``
    or csv. Another suffix, or a conflict, raises InputError (``path``, field ``key``)."""
    suffix = Path(output).suffix
    if suffix and suffix.lower() not in SUFFIX_FORMATS:
        raise _err(
            f"unknown table suffix {suffix!r} in {output!r} (use .csv or .parquet)", key, path
        )
    fmt = SUFFIX_FORMATS.get(suffix.lower(), given or "csv")
    if given is not None and given != fmt:
        raise _err(
            f"format = {given!r} (the spec's) conflicts with the suffix of {output!r}; drop "
            "one or make them agree",
            key,
            path,
        )
    return fmt


def output_format(spec: SweepSpec, output: str) -> str:
    """The format of the table written to ``output`` (the spec's ``output`` or ``--out``):
    :func:`table_format` with the spec's ``format`` key; InputError before any work."""
    if output == spec.output:
        return spec.format
    return table_format(output, spec.format_given, spec.path, "--out")


def _fmt_param(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _parse_top(data: dict, path: str) -> dict:
    """name, r_max, methods (canonical order), output, format, chunk_size, memory budget, batch."""
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
    given = data.get("format")
    if given is not None and given not in FORMATS:
        raise _err(f"expected one of {FORMATS}, got {given!r}", "format", path)
    default = Path(path).with_suffix(".parquet" if given == "parquet" else ".csv").name
    output = data.get("output", default)
    if not isinstance(output, str) or not output:
        raise _err("expected a path", "output", path)
    fmt = table_format(output, given, path, "output")
    chunk = data.get("chunk_size")
    chunk = None if chunk is None else _int(chunk, "chunk_size", path, lo=1)
    budget = _number(data.get("memory_budget_mb", 512), "memory_budget_mb", path)
    if budget <= 0:
        raise _err("must be > 0", "memory_budget_mb", path)
    _check_r_max(r_max, methods, budget, path)
    batches = grid_values(data["batch"], "batch", path, integer=True)
    if np.any(batches < 1):
        raise _err("batch sizes must be >= 1", "batch", path)
    return dict(
        name=name,
        r_max=r_max,
        methods=methods,
        output=output,
        format=fmt,
        format_given=given,
        chunk_size=chunk,
        memory_budget_mb=budget,
        batches=tuple(int(b) for b in batches),
    )


def _family_workloads(families, path: str) -> list[tuple[str, str, dict]]:
    """One workload per point of each ``[[workloads.family]]`` parameter grid."""
    if isinstance(families, dict):
        families = [families]
    if not isinstance(families, list):
        raise _err("expected an array of tables", "workloads.family", path)
    out = []
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
        _require_grid(math.prod(len(g) for g in grids) + len(out), f"{where}.params", path)
        for combo in itertools.product(*grids):
            body = ",".join(f"{n}={_fmt_param(v)}" for n, v in zip(names, combo, strict=True))
            spec_str = f"{fname}:{body}"
            out.append((spec_str, spec_str, dict(zip(names, map(float, combo), strict=True))))
    return out


def _parse_workloads(wl, path: str) -> dict:
    """``[workloads]``: specs and family grids, decode mapping, trace format, load offset."""
    _check_keys(wl, _WORKLOAD_KEYS, "workloads", path)
    specs = wl.get("specs", [])
    if not isinstance(specs, list) or not all(isinstance(s, str) and s for s in specs):
        raise _err("expected a list of workload specs or trace paths", "workloads.specs", path)
    workloads = [(s, s, {}) for s in specs]
    workloads += _family_workloads(wl.get("family", []), path)
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
    return dict(
        workloads=tuple(workloads),
        decode_mapping=decode_mapping,
        trace_format=trace_format,
        load_offset=load_offset,
    )


def _parse_random(rnd, lgrid, path: str) -> dict:
    """``[latency.random]``: (field, dist, lo, hi) per sampled field, n and seed."""
    _check_keys(rnd, set(SWEPT_FIELDS) | {"n", "seed"}, "latency.random", path)
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
    random_seed = check_seed("latency.random.seed", rnd.get("seed", 0), path)
    return dict(latency_random=tuple(lrandom), random_n=random_n, random_seed=random_seed)


def _parse_latency(lat, path: str) -> dict:
    """``[latency]``: base (preset or TOML beside the spec), options, set, grid and random."""
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
    _check_keys(lset, set(SWEPT_FIELDS), "latency.set", path)
    lset = {k: _number(v, f"latency.set.{k}", path) for k, v in lset.items()}
    grid = lat.get("grid", {})
    _check_keys(grid, set(SWEPT_FIELDS), "latency.grid", path)
    lgrid = tuple(
        (k, tuple(float(x) for x in grid_values(v, f"latency.grid.{k}", path)))
        for k, v in grid.items()
    )
    out = dict(
        latency_base=base,
        comm_scaling=comm,
        overlap=overlap,
        latency_set=lset,
        latency_grid=lgrid,
        **_parse_random(lat.get("random", {}), lgrid, path),
    )
    _check_scales(out, path)
    return out


def _check_scales(lat: dict, path: str) -> None:
    """Every stage scale (set, grid values, random lower end) must be > 0."""
    lows = [(f"latency.set.{k}", v) for k, v in lat["latency_set"].items()]
    lows += [(f"latency.grid.{k}", min(v)) for k, v in lat["latency_grid"]]
    lows += [(f"latency.random.{k}.{d}", lo) for k, d, lo, _ in lat["latency_random"]]
    for key, low in lows:
        if key.split(".")[2] in SCALE_FIELDS and not low > 0:
            raise _err(f"a stage scale must be > 0, got {low:g}", key, path)


def _parse_method_options(data: dict, path: str) -> dict:
    """``[exact]``, ``[mc]`` and ``[gaussian]`` option tables."""
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
    if "warmup" in mc:
        _int(mc["warmup"], "mc.warmup", path, lo=0)
    if "seed" in mc:
        check_seed("mc.seed", mc["seed"], path)
    for key, names in (("init", INITS), ("kernel", KERNELS)):
        if key in mc and mc[key] not in names:
            raise _err(f"expected one of {', '.join(names)}", f"mc.{key}", path)
    if "precision" in mc and mc["precision"] not in PRECISIONS:
        raise _err(f"expected one of {', '.join(PRECISIONS)}", "mc.precision", path)
    dynamics_options(mc, "mc.", path)  # the dynamics options (docs/dynamics.md), validated now
    gauss = data.get("gaussian", {})
    _check_keys(gauss, _GAUSSIAN_KEYS, "gaussian", path)
    if "method" in gauss and gauss["method"] not in ("tail", "max_of_means"):
        raise _err("expected 'tail' or 'max_of_means'", "gaussian.method", path)
    return dict(exact=exact, mc=dict(mc), gaussian=dict(gauss))


def parse_sweep_spec(data: dict, path: str = "<spec>") -> SweepSpec:
    """Validate a parsed TOML document; raise InputError naming the first bad key.

    >>> spec = parse_sweep_spec({"batch": [8, 16], "workloads": {"specs": ["paper-v1"]}})
    >>> spec.batches, spec.methods
    ((8, 16), ('mean_field', 'gaussian', 'exact'))
    """
    top = _parse_top(data, path)
    workloads = _parse_workloads(data["workloads"], path)
    latency = _parse_latency(data.get("latency", {}), path)
    options = _parse_method_options(data, path)
    n_lat = math.prod(len(v) for _, v in latency["latency_grid"]) * max(1, latency["random_n"])
    n = len(workloads["workloads"]) * len(top["batches"]) * n_lat
    require(SCENARIO_BYTES * n, f"the sweep's {n:.6g} scenarios", "use fewer points", path)
    return SweepSpec(path=str(path), **top, **workloads, **latency, **options)


def load_spec(path) -> SweepSpec:
    """Read and validate a sweep spec TOML file (InputError naming the file and key)."""
    p = Path(path)
    if p.is_dir():
        raise InputError("is a folder, expected a spec file (TOML)", path=str(path))
    if not p.is_file():
        raise InputError("no such spec file", path=str(path))
    data = read_toml(p, "sweep spec")
    return parse_sweep_spec(data, str(path))

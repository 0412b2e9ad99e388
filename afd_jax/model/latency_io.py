"""Latency coefficients from presets, TOML files and CLI overrides (docs/model.md 2).

A latency file is TOML with a ``[latency]`` table (time unit: microseconds)::

    [latency]
    alpha_attn = 0.01    # us per KV token
    beta_attn = 100.0    # us
    alpha_ffn = 0.5      # us per token in the FFN batch (r*B tokens)
    beta_ffn = 443.04
    alpha_comm = 0.5     # us per communicated token (X = r*B or B)
    beta_comm = 100.0
    comm_scaling = "per_worker"   # or "aggregate" (default)
    overlap = "pipelined"         # or "serial"
    cost_attn = 1.0               # optional instance costs (default 1, 1)
    cost_ffn = 1.0

and an optional free-form ``[meta]`` table, and optional ``[hardware]`` / ``[costs]`` tables (GPU
counts, systems, KV bytes per token, per-GPU prices and power), validated here and read by
:func:`afd_jax.model.hardware.read_hardware` (docs/plan.md). A stage may instead be a sub-table:
affine ``[latency.ffn] alpha = .., beta = ..`` or measured, ``[latency.ffn] tokens = [..],
time_us = [..]`` (likewise ``[latency.comm]``) and ``[[latency.attn.table]] batch = ..,
kv_tokens = [..], time_us = [..]`` (one per batch); x strictly increasing, times > 0 and
non-decreasing (docs/latency_presets.md, the file format). A preset is such a file shipped in
``afd_jax/presets/`` (``list_presets()``; docs/latency_presets.md derives each one).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np

from afd_jax.errors import InputError, read_toml
from afd_jax.model.hardware import check_hardware_tables
from afd_jax.model.latency import (
    COEFFICIENTS,
    COMM_SCALINGS,
    OVERLAPS,
    STAGES,
    Latency,
    ModelOptions,
    TableLatency,
    has_tables,
    step_time,
    t_attn,
    table_latency,
)
from afd_jax.model.stages import AttnTable, TableStage, check_batch, table_stage

__all__ = [
    "LATENCY_KEYS",
    "LATENCY_LIMIT",
    "check_latency_limit",
    "check_step_time",
    "format_latency_toml",
    "format_stages",
    "latency_file",
    "latency_summary",
    "list_presets",
    "read_latency_file",
    "resolve_latency",
    "scalar_items",
    "validate_latency",
]

COST_KEYS = ("cost_attn", "cost_ffn")
LATENCY_KEYS = COEFFICIENTS + ("comm_scaling", "overlap") + COST_KEYS
TABLE_KEY = "tables"
"""Key of the parsed stage objects in :func:`read_latency_file`'s dict (``{stage: object}``)."""
TOP_LEVEL = ("latency", "meta", "hardware", "costs")
"""Top-level tables of a latency file ([hardware] and [costs] are checked by
:func:`afd_jax.model.hardware.check_hardware_tables`)."""


LATENCY_LIMIT = 1e15
"""Largest coefficient (us, us per token), cost, knot (tokens, batch), measured time (us) or
table slope a latency file, flag or profile may give: 1e15 us is 32 years. With at most 2^31
tokens on a worker (the kernels' int32 loads), step times then stay below ~1e25 us and
throughputs above ~1e-30, inside float32 (the kernels' precision, max 3.4e38); a 1e308 there is
inf, and every throughput NaN or 0."""


def list_presets() -> list[str]:
    """Names of the shipped latency presets. A measured table preset (``MODEL@SYSTEM``,
    docs/hardware.md) is listed only if :func:`read_latency_file` accepts it, i.e. once this
    reader evaluates table stages; ``afd_jax.studies.hardware.list_hardware_presets`` lists
    them all."""
    folder = resources.files("afd_jax") / "presets"
    names = (p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
    return sorted(n for n in names if "@" not in n or _readable(folder / f"{n}.toml"))


def _readable(path) -> bool:
    try:
        read_latency_file(Path(str(path)))
    except InputError:
        return False
    return True


def _number(value, key: str, path: str | None, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"must be a number, got {value!r}", path=path, field=key)
    if isinstance(value, int) and abs(value) > LATENCY_LIMIT:  # float() overflows past 1.8e308
        if value > 0:
            return check_latency_limit(math.inf, key, path)
        value = -math.inf
    x = float(value)
    if not math.isfinite(x):
        raise InputError(f"must be finite, got {x}", path=path, field=key)
    if positive and x <= 0:
        raise InputError(f"must be > 0, got {x}", path=path, field=key)
    if x < 0:
        raise InputError(f"must be >= 0, got {x}", path=path, field=key)
    return check_latency_limit(x, key, path)


def check_latency_limit(
    largest: float, key: str, path: str | None = None, line: int | None = None
) -> float:
    """``largest`` when <= :data:`LATENCY_LIMIT`, else InputError naming ``key`` (and the
    file and line where known)."""
    if largest > LATENCY_LIMIT:
        raise InputError(
            f"must be <= {LATENCY_LIMIT:g} (step times must stay finite in float32), "
            f"got {largest:g}",
            path=path,
            line=line,
            field=key,
        )
    return largest


def _check_table(table: dict, path: str | None) -> dict:
    """Validate a [latency]-style mapping (keys subset of LATENCY_KEYS); returns clean values."""
    out = {}
    stages = {k: v for k, v in table.items() if k in STAGES}
    if stages:
        out.update(_check_stages(stages, path))
    for key, value in table.items():
        if key in STAGES:
            continue
        if key not in LATENCY_KEYS:
            allowed = ", ".join(LATENCY_KEYS + STAGES)
            raise InputError(f"unknown key (allowed: {allowed})", path=path, field=key)
        if key == "comm_scaling":
            if value not in COMM_SCALINGS:
                raise InputError(
                    f"must be one of {', '.join(COMM_SCALINGS)}, got {value!r}",
                    path=path,
                    field=key,
                )
            out[key] = value
        elif key == "overlap":
            if value not in OVERLAPS:
                raise InputError(
                    f"must be one of {', '.join(OVERLAPS)}, got {value!r}", path=path, field=key
                )
            out[key] = value
        else:
            out[key] = _number(value, key, path, positive=key in COST_KEYS)
    return out


def _array(value, field: str, path: str | None, *, positive: bool) -> np.ndarray:
    """A list of >= 2 finite numbers (> 0 or >= 0) as float64."""
    if not isinstance(value, list) or len(value) < 2:
        raise InputError("must be a list of at least 2 numbers", path=path, field=field)
    out = [_number(v, f"{field}[{i}]", path, positive=positive) for i, v in enumerate(value)]
    return np.asarray(out, dtype=np.float64)


def _curve(table: dict, x_key: str, field: str, path: str | None) -> TableStage:
    """A measured stage curve: x strictly increasing, times > 0 and non-decreasing."""
    for key in table:
        if key not in (x_key, "time_us"):
            raise InputError(
                f"unknown key (allowed: {x_key}, time_us)", path=path, field=f"{field}.{key}"
            )
    for key in (x_key, "time_us"):
        if key not in table:
            raise InputError("missing key", path=path, field=f"{field}.{key}")
    x = _array(table[x_key], f"{field}.{x_key}", path, positive=False)
    y = _array(table["time_us"], f"{field}.time_us", path, positive=True)
    if x.shape != y.shape:
        raise InputError(
            f"{x_key} has {x.size} entries, time_us {y.size}", path=path, field=f"{field}.time_us"
        )
    # x rounded to float32 (the kernels' precision; rounding is monotone, so this implies the
    # float64 rule): knots that coincide there would divide by a zero interval width
    x_ok = np.diff(x.astype(np.float32)) > 0
    for name, arr, ok in ((x_key, x, x_ok), ("time_us", y, np.diff(y) >= 0)):
        if not ok.all():
            i = int(np.argmin(ok)) + 1
            rule = "strictly increasing" if name == x_key else "non-decreasing"
            if name == x_key and arr[i] > arr[i - 1]:
                rule += " in float32 (the kernels' precision)"
            raise InputError(
                f"must be {rule}: entry {i} ({float(arr[i])!r}) after {float(arr[i - 1])!r}",
                path=path,
                field=f"{field}.{name}",
            )
    stage = table_stage(x, y)
    d = np.asarray(stage.d)  # per interval: the secant and the end slopes of the Hermite piece
    slope = np.maximum(np.diff(y) / np.diff(x), np.maximum(d[:-1], d[1:]))
    if not (slope <= LATENCY_LIMIT).all():
        i = int(np.argmin(slope <= LATENCY_LIMIT))
        raise InputError(
            f"slope {float(slope[i]):g} us per token between entries {i} and {i + 1} > "
            f"{LATENCY_LIMIT:g} (knots too close for their times: step times must stay finite "
            "in float32)",
            path=path,
            field=f"{field}.time_us",
        )
    return stage


def _attn_tables(entries, path: str | None) -> AttnTable:
    field = "latency.attn.table"
    if not isinstance(entries, list) or not entries:
        raise InputError(
            "must be an array of tables [[latency.attn.table]]", path=path, field=field
        )
    rows = {}
    for i, entry in enumerate(entries):
        where = f"{field}[{i}]"
        if not isinstance(entry, dict):
            raise InputError("must be a table", path=path, field=where)
        if "batch" not in entry:
            raise InputError("missing batch", path=path, field=f"{where}.batch")
        batch = _number(entry["batch"], f"{where}.batch", path, positive=True)
        if batch != math.floor(batch):
            raise InputError(
                f"must be a whole number of requests, got {batch:g}",
                path=path,
                field=f"{where}.batch",
            )
        if batch in rows:
            raise InputError(f"batch {batch:g} given twice", path=path, field=f"{where}.batch")
        curve = {k: v for k, v in entry.items() if k != "batch"}
        rows[batch] = _curve(curve, "kv_tokens", where, path)
    batches = sorted(rows)
    return AttnTable(np.asarray(batches), tuple(rows[b] for b in batches))


def _check_stage(name: str, value, path: str | None):
    """One ``[latency.<stage>]`` sub-table: ``{alpha, beta}`` (affine) or a measured table."""
    field = f"latency.{name}"
    if not isinstance(value, dict):
        raise InputError("must be a table", path=path, field=field)
    if "alpha" in value or "beta" in value:
        for key in value:
            if key not in ("alpha", "beta"):
                raise InputError(
                    "an affine stage takes alpha and beta only", path=path, field=f"{field}.{key}"
                )
        if not ("alpha" in value and "beta" in value):
            raise InputError("an affine stage needs both alpha and beta", path=path, field=field)
        return {f"{k}_{name}": _number(value[k], f"{field}.{k}", path) for k in ("alpha", "beta")}
    if name == "attn":
        if set(value) != {"table"}:
            raise InputError(
                "give [[latency.attn.table]] entries (batch, kv_tokens, time_us) or alpha/beta",
                path=path,
                field=field,
            )
        return {TABLE_KEY: {name: _attn_tables(value["table"], path)}}
    return {TABLE_KEY: {name: _curve(value, "tokens", field, path)}}


def _check_stages(stages: dict, path: str | None) -> dict:
    out: dict = {TABLE_KEY: {}}
    for name, value in stages.items():
        parsed = _check_stage(name, value, path)
        out[TABLE_KEY].update(parsed.pop(TABLE_KEY, {}))
        out.update(parsed)
    if not out[TABLE_KEY]:
        del out[TABLE_KEY]
    return out


def load_latency_toml(path: str | Path) -> dict:
    """The TOML dict of a latency file; InputError naming the file if unreadable or invalid."""
    return read_toml(path, "latency file")


def read_latency_file(path: str | Path) -> dict:
    """Parse and validate a latency TOML file; returns the (possibly partial) [latency] dict,
    with measured stages as objects under :data:`TABLE_KEY`."""
    path = Path(path)
    data = load_latency_toml(path)
    for key in data:
        if key not in TOP_LEVEL:
            raise InputError(
                "unknown top-level key (allowed tables: [latency], [meta], [hardware], [costs])",
                path=str(path),
                field=key,
            )
    if "latency" not in data or not isinstance(data["latency"], dict):
        raise InputError("missing [latency] table", path=str(path))
    check_hardware_tables(data, str(path))
    out = _check_table(data["latency"], str(path))
    for name in STAGES:
        flat = [k for k in (f"alpha_{name}", f"beta_{name}") if k in data["latency"]]
        if flat and name in data["latency"]:
            raise InputError(
                f"stage {name} given twice ({flat[0]} and [latency.{name}])",
                path=str(path),
                field=flat[0],
            )
    return out


def _spec_path(spec: str) -> tuple[Path, bool]:
    p = Path(spec)
    if p.is_file() or spec.endswith(".toml") or "/" in spec:
        return p, False
    if spec in list_presets():
        return Path(str(resources.files("afd_jax") / "presets" / f"{spec}.toml")), True
    raise InputError(
        f"unknown latency preset or file {spec!r} (presets: {', '.join(list_presets())})",
        field="latency",
    )


MIN_STEP_US = 1e-6
"""The shortest step time a latency model may give (us): a picosecond, far below any real
decode step, far above float32's smallest normal number (a review: coefficients of 1e-50
gave infinite throughput and NaN idle shares)."""


def check_step_time(lat: Latency, where: str | None = None) -> Latency:
    """InputError when the step time can be 0 (throughput infinite): with coefficients >= 0,
    tau is non-decreasing in the worker load T, r and B, so its least value is tau(T = 0,
    r = B = 1) (either overlap, either comm scaling); it must be at least :data:`MIN_STEP_US`
    (one picosecond). Coefficients may be arrays (a sweep's scenarios): every one is checked,
    the first bad one is named (a zero step before a tiny one)."""
    if has_tables(lat):  # measured times are > 0 (checked when read), so tau > 0
        return lat
    least = np.asarray(step_time(lat, t_attn(lat, 0.0), 1, 1), dtype=np.float64)
    flat = least.reshape(-1)
    zero = (
        "all three beta are 0 and alpha_ffn = alpha_comm = 0, so an empty worker takes no time "
        "and the throughput is infinite; give a positive fixed time or FFN/communication "
        "coefficient"
    )
    tiny = (
        f"below {MIN_STEP_US:g} us (a picosecond): times are in microseconds, and the kernels' "
        "float32 step times would round such a step to 0"
    )
    for ok, why in ((flat > 0, zero), (flat >= MIN_STEP_US, tiny)):
        bad = np.flatnonzero(~ok)
        if bad.size:
            which = f" (scenario {int(bad[0])})" if least.ndim else ""
            raise InputError(
                f"the step time can be {flat[bad[0]]:.3g} us{which}: {why}",
                path=where,
                field="beta_attn",
            )
    return lat


def latency_file(spec: str) -> Path:
    """The TOML file of a latency preset name or path (InputError for an unknown preset)."""
    return _spec_path(str(spec))[0]


def validate_latency(lat: Latency, where: str | None = None, batch=None) -> Latency:
    """Check every coefficient finite and >= 0, the costs > 0 and the step time > 0
    (:func:`check_step_time`; InputError otherwise); the
    pair of a stage given as a table is not checked (it is NaN). With ``batch`` (a B or an
    array of them), also that an Attention table covers it (:func:`check_batch`)."""
    if not isinstance(lat, Latency | TableLatency):
        raise InputError(f"expected a Latency, got {type(lat).__name__}", field="latency")
    for key, value in scalar_items(lat):
        _number(value, key, where, positive=key in COST_KEYS)
    if batch is not None:
        check_batch(lat.attn, batch, where)
    return check_step_time(lat, where)


def validate_options(opts: ModelOptions) -> ModelOptions:
    """``opts`` when it is a :class:`ModelOptions` with a known ``comm_scaling`` and ``overlap``
    and ``load_offset`` 0 or 1, else InputError naming the field (an unknown overlap was read
    as "pipelined" by the formulas and as "serial"-or-not by the kernels)."""
    if not isinstance(opts, ModelOptions):
        raise InputError(f"expected a ModelOptions, got {type(opts).__name__}", field="opts")
    for key, allowed in (("comm_scaling", COMM_SCALINGS), ("overlap", OVERLAPS)):
        if getattr(opts, key) not in allowed:
            raise InputError(
                f"must be one of {', '.join(allowed)}, got {getattr(opts, key)!r}", field=key
            )
    if isinstance(opts.load_offset, bool) or opts.load_offset not in (0, 1):
        raise InputError(f"must be 0 or 1, got {opts.load_offset!r}", field="load_offset")
    return opts


def latency_summary(lat: Latency) -> dict:
    """JSON-ready coefficients and costs, with ``"tables"``: each table stage's knot count
    (and batches for the Attention tables); the affine pairs that tables replace are left out."""
    out: dict = {k: float(v) for k, v in scalar_items(lat)}
    tables = lat.tables._asdict() if lat.tables is not None else {}
    described = {}
    for name, stage in tables.items():
        if isinstance(stage, AttnTable):
            described[name] = {"batches": [float(b) for b in np.asarray(stage.batches)]}
        elif stage is not None:
            described[name] = {"points": int(np.asarray(stage.x).shape[0])}
    if described:
        out[TABLE_KEY] = described
    return out


_SHORT = {"alpha": "a", "beta": "b", "attn": "A", "ffn": "F", "comm": "C"}


def format_stages(summary: dict, short: bool = False) -> str:
    """One line of the stages of a :func:`latency_summary` dict: ``alpha_attn=.. beta_attn=..``
    (``short``: ``aA=.. bA=..``) per affine stage, ``ffn=table(12 points)`` or
    ``attn=table(B 64,128)`` per table stage."""
    parts = []
    tables = summary.get(TABLE_KEY, {})
    for stage in STAGES:
        label = _SHORT[stage] if short else stage
        if stage in tables:
            t = tables[stage]
            inner = f"B {','.join(f'{b:g}' for b in t['batches'])}" if "batches" in t else ""
            parts.append(f"{label}=table({inner or str(t['points']) + ' points'})")
            continue
        for k in ("alpha", "beta"):
            name = _SHORT[k] + _SHORT[stage] if short else f"{k}_{stage}"
            parts.append(f"{name}={summary[f'{k}_{stage}']:g}")
    return " ".join(parts)


def scalar_items(lat: Latency) -> list[tuple[str, float]]:
    """(key, value) of the coefficients and costs, without the pairs that tables replace."""
    tables = lat.tables._asdict() if lat.tables is not None else {}
    return [
        (k, v)
        for k, v in lat._asdict().items()
        if k != TABLE_KEY and not (k in COEFFICIENTS and tables.get(k.split("_")[1]) is not None)
    ]


def resolve_latency(
    spec: str | None = None,
    overrides: dict | None = None,
    comm_scaling: str | None = None,
    overlap: str | None = None,
    load_offset: int = 0,
) -> tuple[Latency, ModelOptions]:
    """Build ``(Latency, ModelOptions)`` from a preset name or TOML path, then overrides.

    ``overrides`` maps keys of :data:`LATENCY_KEYS` to values (``None`` values are ignored:
    argparse defaults); ``comm_scaling``/``overlap`` override the file's. Without ``spec`` all
    six coefficients must be in ``overrides``. Defaults: costs 1, ``aggregate``, ``pipelined``.
    Raises InputError naming the file and key for negative, non-finite, unknown or missing
    values.
    """
    table: dict = {}
    where = None
    if spec is not None:
        path, _ = _spec_path(str(spec))
        where = str(path)
        table.update(read_latency_file(path))
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    if comm_scaling is not None:
        extra["comm_scaling"] = comm_scaling
    if overlap is not None:
        extra["overlap"] = overlap
    table.update(_check_table(extra, None))
    tables = table.pop(TABLE_KEY, {})
    for key in extra:
        if key in COEFFICIENTS and key.split("_", 1)[1] in tables:
            raise InputError(
                f"stage {key.split('_', 1)[1]} is a measured table; {key} (flag "
                f"--{key.replace('_', '-')}) does not apply to it",
                path=where,
                field=key,
            )
    missing = [k for k in COEFFICIENTS if k not in table and k.split("_", 1)[1] not in tables]
    if missing:
        raise InputError(
            f"missing latency coefficient(s): {', '.join(missing)} (give --latency "
            f"FILE_OR_PRESET or every --alpha-*/--beta-* flag; presets: "
            f"{', '.join(list_presets())})",
            path=where,
            field=missing[0],
        )
    lat = Latency(
        **{k: float(table.get(k, math.nan)) for k in COEFFICIENTS},
        cost_attn=float(table.get("cost_attn", 1.0)),
        cost_ffn=float(table.get("cost_ffn", 1.0)),
    )
    if tables:
        lat = table_latency(**tables, affine=lat)
    flagged = [k for k in COEFFICIENTS if k in extra]
    if len(flagged) == len(COEFFICIENTS):
        where = None  # every coefficient from the flags: the file is not to blame
    elif flagged and where is not None:
        where = f"{where} with the flags --{', --'.join(k.replace('_', '-') for k in flagged)}"
    check_step_time(lat, where)
    if load_offset not in (0, 1):
        raise InputError(f"must be 0 or 1, got {load_offset}", field="load_offset")
    opts = ModelOptions(
        comm_scaling=table.get("comm_scaling", "aggregate"),
        overlap=table.get("overlap", "pipelined"),
        load_offset=int(load_offset),
    )
    return lat, opts


def format_latency_toml(lat: Latency, opts: ModelOptions, meta: dict | None = None) -> str:
    """TOML text of a latency file (readable back by :func:`read_latency_file`)."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(float(v)) if isinstance(v, float) else str(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    if meta:
        lines.append("[meta]")
        lines += [f"{k} = {val(v)}" for k, v in meta.items()]
        lines.append("")
    lines.append("[latency]")
    lines += [f"{k} = {float(v)!r}" for k, v in scalar_items(lat)]
    lines.append(f'comm_scaling = "{opts.comm_scaling}"')
    lines.append(f'overlap = "{opts.overlap}"')
    lines += _format_tables(lat.tables._asdict() if lat.tables is not None else {})
    return "\n".join(lines) + "\n"


def _floats(a) -> str:
    return "[" + ", ".join(repr(float(v)) for v in np.asarray(a)) + "]"


def _format_tables(tables: dict) -> list[str]:
    """TOML lines of the measured stages (knots only; slopes are recomputed on reading)."""
    lines = []
    attn = tables.get("attn")
    if attn is not None:
        for b, row in zip(np.asarray(attn.batches), attn.rows, strict=True):
            lines += ["", "[[latency.attn.table]]", f"batch = {float(b)!r}"]
            lines += [f"kv_tokens = {_floats(row.x)}", f"time_us = {_floats(row.y)}"]
    for name in ("ffn", "comm"):
        stage = tables.get(name)
        if stage is not None:
            lines += ["", f"[latency.{name}]", f"tokens = {_floats(stage.x)}"]
            lines.append(f"time_us = {_floats(stage.y)}")
    return lines

"""Measured latency presets: table stages, their monotone cleanup, fit errors and the TOML file.

This module is the part of ``afd-jax hardware`` that needs no extra package: it turns measured
points (from :mod:`afd_jax.studies.aic`, which reads NVIDIA AIConfigurator's kernel tables)
into the table layout of a latency file, reports how far the stored table is from the points,
and reads/checks the committed ``MODEL@SYSTEM`` presets (docs/hardware.md).

A stage table is ``(x, time_us)`` with ``x`` strictly increasing; the stored times are the
running maximum of the measured ones (the smallest non-decreasing curve above the points),
rounded to :data:`DECIMALS` decimals of a microsecond. Its fit error against the points is
``(stored - measured) / measured`` (>= 0 up to the rounding).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from afd_jax.errors import InputError
from afd_jax.model.hardware import HARDWARE_KEYS
from afd_jax.model.latency_io import load_latency_toml

__all__ = [
    "DECIMALS",
    "FitError",
    "StageTable",
    "check_preset",
    "fit_error",
    "fit_meta",
    "format_preset_toml",
    "list_hardware_presets",
    "monotone_table",
    "preset_path",
    "read_preset",
]

DECIMALS = 3  # stored times: microseconds rounded to 1 ns


class StageTable(NamedTuple):
    """One measured stage: ``x`` (tokens) strictly increasing, ``measured`` and ``stored`` times
    (us, float64 arrays of the same shape); ``batch`` for an attention table, else ``None``."""

    x: np.ndarray
    measured: np.ndarray
    stored: np.ndarray
    batch: int | None = None


class FitError(NamedTuple):
    """Relative error of the stored table against the measured points (fractions, not %)."""

    mape: float  # mean |stored - measured| / measured
    worst: float  # max |stored - measured| / measured
    worst_x: float  # x of the worst point
    worst_batch: int | None  # its batch (attention) or None
    n: int  # number of points


def monotone_table(x, measured, batch: int | None = None) -> StageTable:
    """Running-max cleanup of measured points: ``stored[i] = max(measured[:i+1])`` (rounded).

    >>> t = monotone_table([1, 2, 4], [10.0, 9.5, 12.0])
    >>> t.stored.tolist()
    [10.0, 10.0, 12.0]
    """
    x = np.asarray(x, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    if x.ndim != 1 or x.shape != measured.shape or x.size < 2:
        raise ValueError("x and measured must be 1-d arrays of the same length >= 2")
    if not np.all(np.diff(x) > 0):
        raise ValueError("x must be strictly increasing")
    if not np.all(np.isfinite(measured)) or np.any(measured <= 0):
        raise ValueError("measured times must be finite and > 0")
    stored = np.round(np.maximum.accumulate(measured), DECIMALS)
    return StageTable(x, measured, stored, batch)


def fit_error(tables: list[StageTable]) -> FitError:
    """MAPE and worst relative error of the stored times over every point of ``tables``."""
    rel = [np.abs(t.stored - t.measured) / t.measured for t in tables]
    flat = np.concatenate(rel)
    i_tab = int(np.argmax([r.max() for r in rel]))
    i_pt = int(np.argmax(rel[i_tab]))
    return FitError(
        mape=float(flat.mean()),
        worst=float(flat.max()),
        worst_x=float(tables[i_tab].x[i_pt]),
        worst_batch=tables[i_tab].batch,
        n=int(flat.size),
    )


def fit_meta(errors: dict[str, FitError]) -> dict:
    """The ``[meta]`` keys recording fit errors: ``fit_mape_<stage>``, ``fit_worst_<stage>``."""
    return {
        **{f"fit_mape_{s}": round(e.mape, 8) for s, e in errors.items()},
        **{f"fit_worst_{s}": round(e.worst, 8) for s, e in errors.items()},
    }


# --------------------------------------------------------------------------- the TOML file


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list | tuple | np.ndarray):
        return "[" + ", ".join(_toml_value(_plain(e)) for e in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _plain(v):
    """numpy scalars -> Python numbers (TOML floats for times and tokens)."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _keys(table: dict) -> list[str]:
    return [f"{k} = {_toml_value(_plain(v))}" for k, v in table.items()]


def format_preset_toml(
    meta: dict,
    hardware: dict,
    attn: list[StageTable],
    ffn: StageTable,
    comm: StageTable,
    latency: dict,
) -> str:
    """Text of a table latency file (layout: docs/hardware.md, "The file").

    ``latency`` holds the switches (``comm_scaling``, ``overlap``) and optional costs; stage
    times are the stored (monotone) ones; x values are written as floats; an empty
    ``hardware`` leaves the ``[hardware]`` table out.
    """
    lines = ["[meta]", *_keys(meta), ""]
    if hardware:
        lines += ["[hardware]", *_keys(hardware), ""]
    lines += ["[latency]", *_keys(latency), ""]
    for t in attn:
        lines += ["[[latency.attn.table]]", f"batch = {int(t.batch)}"]
        lines += [f"kv_tokens = {_toml_value(t.x.astype(float))}"]
        lines += [f"time_us = {_toml_value(t.stored)}", ""]
    for name, t in (("ffn", ffn), ("comm", comm)):
        lines += [f"[latency.{name}]", f"tokens = {_toml_value(t.x.astype(float))}"]
        lines += [f"time_us = {_toml_value(t.stored)}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- shipped presets

PROVENANCE_KEYS = (
    "name",
    "source",
    "aiconfigurator_version",
    "framework",
    "framework_version",
    "table_files",
    "licence",
    "notice",
)


def list_hardware_presets() -> list[str]:
    """Names of the shipped measured presets (``MODEL@SYSTEM``)."""
    folder = resources.files("afd_jax") / "presets"
    names = (p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
    return sorted(n for n in names if "@" in n)


def preset_path(name: str) -> Path:
    """Path of the shipped preset ``name`` (InputError if there is none)."""
    if name not in list_hardware_presets():
        raise InputError(
            f"unknown hardware preset {name!r} (presets: {', '.join(list_hardware_presets())})",
            field="latency",
        )
    return Path(str(resources.files("afd_jax") / "presets" / f"{name}.toml"))


def read_preset(path: str | Path) -> dict:
    """Parse a table latency file and check it (:func:`check_preset`); returns the TOML dict."""
    data = load_latency_toml(path)
    check_preset(data, str(path))
    return data


def _check_curve(x, t, where: str, field: str, xname: str) -> None:
    if not isinstance(x, list) or not isinstance(t, list) or len(x) != len(t) or len(x) < 2:
        raise InputError(
            f"{xname} and time_us must be arrays of one length >= 2", path=where, field=field
        )
    xs, ts = np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64)
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ts))):
        raise InputError("values must be finite", path=where, field=field)
    if not np.all(np.diff(xs) > 0):
        raise InputError(f"{xname} must be strictly increasing", path=where, field=field)
    if np.any(ts <= 0) or not np.all(np.diff(ts) >= 0):
        raise InputError("time_us must be > 0 and non-decreasing", path=where, field=field)


def check_preset(data: dict, where: str) -> None:
    """Layout and monotonicity of a table latency file; provenance and hardware keys present."""
    for section, keys in (("meta", PROVENANCE_KEYS), ("hardware", HARDWARE_KEYS)):
        table = data.get(section)
        if not isinstance(table, dict):
            raise InputError(f"missing [{section}] table", path=where)
        missing = [k for k in keys if k not in table]
        if missing:
            raise InputError(f"missing key(s) {', '.join(missing)}", path=where, field=section)
    lat = data.get("latency", {})
    tables = lat.get("attn", {}).get("table")
    if not isinstance(tables, list) or not tables:
        raise InputError("missing [[latency.attn.table]]", path=where)
    batches = [t.get("batch") for t in tables]
    if batches != sorted(set(batches)) or not all(isinstance(b, int) and b > 0 for b in batches):
        raise InputError(
            "batches must be distinct positive integers, increasing",
            path=where,
            field="latency.attn.table.batch",
        )
    for t in tables:
        field = f"latency.attn.table[batch={t['batch']}]"
        _check_curve(t.get("kv_tokens"), t.get("time_us"), where, field, "kv_tokens")
    for stage in ("ffn", "comm"):
        s = lat.get(stage, {})
        _check_curve(s.get("tokens"), s.get("time_us"), where, f"latency.{stage}", "tokens")
    if not math.isfinite(float(data["hardware"]["kv_bytes_per_token"])):
        raise InputError("must be finite", path=where, field="hardware.kv_bytes_per_token")


# --------------------------------------------------------------------------- building

NOTICE = (
    "Latencies derived from NVIDIA AIConfigurator (https://github.com/ai-dynamo/aiconfigurator), "
    "Copyright (c) 2025-2026 NVIDIA CORPORATION & AFFILIATES, licensed under the Apache "
    "License 2.0 (http://www.apache.org/licenses/LICENSE-2.0). Its measured kernel tables were "
    "queried through its AFD partition and summed per stage by afd-jax; no table was modified."
)


def preset_name(model: str, attn_system: str, ffn_system: str) -> str:
    """``MODEL@SYSTEM`` (``MODEL@ASYS+FSYS`` for mixed pools): HF id tail, lower case, without
    an ``-FP8`` / ``-Instruct`` suffix.

    >>> preset_name("deepseek-ai/DeepSeek-V3", "h200_sxm", "h200_sxm")
    'deepseek-v3@h200_sxm'
    """
    system = attn_system if attn_system == ffn_system else f"{attn_system}+{ffn_system}"
    short = model.split("/")[-1].lower().removesuffix("-fp8").removesuffix("-instruct")
    return f"{short}@{system}"


def _stage_tables(points: dict, grids) -> tuple[list[StageTable], StageTable, StageTable]:
    batches, contexts, ffn_tokens, comm_tokens = grids
    attn = [monotone_table([b * s for s in contexts], points["attn"][b], b) for b in batches]
    return (
        attn,
        monotone_table(ffn_tokens, points["ffn"]),
        monotone_table(comm_tokens, points["comm"]),
    )


def build_preset(dep, command: str = "") -> tuple[str, dict[str, FitError], dict]:
    """Measure ``dep`` (an :class:`afd_jax.studies.aic.Deployment`) and build its file.

    Returns ``(toml_text, {stage: FitError}, {stage: [StageTable]})``. Needs the extra.
    """
    from afd_jax.studies import aic

    points = aic.measure(dep)
    grids = (aic.BATCHES, aic.CONTEXTS, aic.FFN_TOKENS, aic.COMM_TOKENS)
    attn, ffn, comm = _stage_tables(points, grids)
    tables = {"attn": attn, "ffn": [ffn], "comm": [comm]}
    errors = {stage: fit_error(ts) for stage, ts in tables.items()}
    hw = points["hardware"]
    meta = {
        "name": preset_name(dep.model, dep.attn_system, dep.ffn_system),
        "description": (
            f"{dep.model}: Attention instance = {hw['attn_gpus']}x {dep.attn_system} "
            f"({hw['attn_parallelism']}), FFN instance = {hw['ffn_gpus']}x {dep.ffn_system} "
            f"({hw['ffn_parallelism']}), {dep.framework}; measured kernel tables"
        ),
        "source": "NVIDIA AIConfigurator (packages aiconfigurator, aiconfigurator-core)",
        **points["provenance"],
        "framework": dep.framework,
        "built_with": command or "afd-jax hardware build",
        "time_unit": "microseconds per decode step, all layers",
        "cleanup": f"running max of the measured points, rounded to {DECIMALS} decimals of a us",
        **fit_meta(errors),
        "licence": "Apache-2.0",
        "notice": NOTICE,
    }
    latency = {"comm_scaling": "per_worker", "overlap": "pipelined"}
    return format_preset_toml(meta, hw, attn, ffn, comm, latency), errors, tables

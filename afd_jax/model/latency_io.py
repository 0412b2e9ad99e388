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

and an optional free-form ``[meta]`` table. A preset is such a file shipped in
``afd_jax/presets/`` (``list_presets()``; docs/latency_presets.md derives each one).
"""

from __future__ import annotations

import math
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np

from afd_jax.errors import InputError
from afd_jax.model.latency import (
    COEFFICIENTS,
    COMM_SCALINGS,
    OVERLAPS,
    Latency,
    ModelOptions,
    step_time,
    t_attn,
)

__all__ = [
    "LATENCY_KEYS",
    "check_step_time",
    "format_latency_toml",
    "list_presets",
    "read_latency_file",
    "resolve_latency",
    "validate_latency",
]

COST_KEYS = ("cost_attn", "cost_ffn")
LATENCY_KEYS = COEFFICIENTS + ("comm_scaling", "overlap") + COST_KEYS


def list_presets() -> list[str]:
    """Names of the shipped latency presets."""
    folder = resources.files("afd_jax") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _number(value, key: str, path: str | None, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"must be a number, got {value!r}", path=path, field=key)
    x = float(value)
    if not math.isfinite(x):
        raise InputError(f"must be finite, got {x}", path=path, field=key)
    if positive and x <= 0:
        raise InputError(f"must be > 0, got {x}", path=path, field=key)
    if x < 0:
        raise InputError(f"must be >= 0, got {x}", path=path, field=key)
    return x


def _check_table(table: dict, path: str | None) -> dict:
    """Validate a [latency]-style mapping (keys subset of LATENCY_KEYS); returns clean values."""
    out = {}
    for key, value in table.items():
        if key not in LATENCY_KEYS:
            raise InputError(
                f"unknown key (allowed: {', '.join(LATENCY_KEYS)})", path=path, field=key
            )
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


def read_latency_file(path: str | Path) -> dict:
    """Parse and validate a latency TOML file; returns the (possibly partial) [latency] dict."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"cannot read latency file: {err.strerror}", path=str(path)) from err
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"invalid TOML: {err}", path=str(path)) from err
    except UnicodeDecodeError as err:
        raise InputError("not a UTF-8 text file", path=str(path)) from err
    for key in data:
        if key not in ("latency", "meta"):
            raise InputError(
                "unknown top-level key (allowed tables: [latency], [meta])",
                path=str(path),
                field=key,
            )
    if "latency" not in data or not isinstance(data["latency"], dict):
        raise InputError("missing [latency] table", path=str(path))
    return _check_table(data["latency"], str(path))


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


def check_step_time(lat: Latency, where: str | None = None) -> Latency:
    """InputError when the step time can be 0 (throughput infinite): with coefficients >= 0,
    tau is non-decreasing in the worker load T, r and B, so its least value is tau(T = 0,
    r = B = 1) (either overlap, either comm scaling); it must be > 0. Coefficients may be
    arrays (a sweep's scenarios): every one is checked, the first bad one is named."""
    least = np.asarray(step_time(lat, t_attn(lat, 0.0), 1, 1), dtype=np.float64)
    bad = np.flatnonzero(~(least.reshape(-1) > 0))
    if bad.size:
        which = f" (scenario {int(bad[0])})" if least.ndim else ""
        raise InputError(
            f"the step time can be 0{which}: all three beta are 0 and alpha_ffn = alpha_comm = "
            "0, so an empty worker takes no time and the throughput is infinite; give a "
            "positive fixed time or FFN/communication coefficient",
            path=where,
            field="beta_attn",
        )
    return lat


def validate_latency(lat: Latency, where: str | None = None) -> Latency:
    """Check every coefficient finite and >= 0, the costs > 0 and the step time > 0
    (:func:`check_step_time`); InputError otherwise."""
    for key, value in lat._asdict().items():
        _number(value, key, where, positive=key in COST_KEYS)
    return check_step_time(lat, where)


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
    missing = [k for k in COEFFICIENTS if k not in table]
    if missing:
        raise InputError(
            f"missing latency coefficient(s): {', '.join(missing)} (give --latency "
            f"FILE_OR_PRESET or every --alpha-*/--beta-* flag; presets: "
            f"{', '.join(list_presets())})",
            path=where,
            field=missing[0],
        )
    lat = Latency(
        **{k: float(table[k]) for k in COEFFICIENTS},
        cost_attn=float(table.get("cost_attn", 1.0)),
        cost_ffn=float(table.get("cost_ffn", 1.0)),
    )
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
    lines += [f"{k} = {float(v)!r}" for k, v in lat._asdict().items()]
    lines.append(f'comm_scaling = "{opts.comm_scaling}"')
    lines.append(f'overlap = "{opts.overlap}"')
    return "\n".join(lines) + "\n"

"""Table calibration: a profile CSV -> a measured (table) latency file (docs/hardware.md,
"Calibrating tables from a profile"; ``afd-jax calibrate --fit table``).

The profile is the one of :mod:`afd_jax.model.calibrate` with a ``batch`` column for the
Attention rows (B of the measurement; the Attention time depends on the worker's KV load T and
on B, one curve per B). Each stage, and each batch of the Attention stage, becomes a table:
repeated measurements at one token count are reduced to their median, and the medians are made
monotone and rounded by :func:`afd_jax.studies.hardware.monotone_table` (the cleanup of the
measured presets), so the file has the layout ``afd-jax hardware build`` writes. Its fit error
(:func:`afd_jax.studies.hardware.fit_error`, reported as ``hardware build`` reports it) is taken
against every profile row: the spread of repeated measurements about their median plus what
the cleanup changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from afd_jax.errors import InputError
from afd_jax.model.calibrate import read_profile
from afd_jax.model.latency import STAGES
from afd_jax.studies.hardware import (
    DECIMALS,
    FitError,
    StageTable,
    fit_error,
    fit_meta,
    format_preset_toml,
    monotone_table,
)

__all__ = ["CurveError", "TableFit", "calibrate_tables", "median_table", "row_errors"]


class TableFit(NamedTuple):
    """Result of :func:`calibrate_tables`: the file's text, the stage tables
    (``{stage: [StageTable]}``, one per batch for ``attn``), their fit errors against the
    profile rows, the number of rows per stage and notes on medians the cleanup raised."""

    text: str
    tables: dict[str, list[StageTable]]
    errors: dict[str, FitError]
    rows: dict[str, int]
    notes: list[str]


class CurveError(ValueError):
    """A curve that cannot be stored: ``field`` (``tokens`` or ``time_us``) and the token count
    ``x`` at fault (None: the whole curve)."""

    def __init__(self, message: str, field: str, x: float | None = None):
        super().__init__(message)
        self.field, self.x = field, x


def median_table(tokens, times, batch: int | None = None) -> StageTable:
    """The monotone table of the per-token-count medians of ``(tokens, times)``;
    :class:`CurveError` for fewer than 2 distinct token counts, a median time of 0 or a time
    that rounds to 0 or overflows when stored."""
    x, inverse = np.unique(np.asarray(tokens, np.float64), return_inverse=True)
    if x.size < 2:
        raise CurveError(
            f"needs measurements at >= 2 distinct token counts, got {x.size}", "tokens"
        )
    times = np.asarray(times, np.float64)
    medians = np.array([np.median(times[inverse.reshape(-1) == k]) for k in range(x.size)])
    if np.any(medians <= 0):
        at = x[int(np.argmax(medians <= 0))]
        raise CurveError(
            f"median time at {at:g} tokens is 0 (a table needs times > 0)", "time_us", at
        )
    with np.errstate(over="ignore"):
        table = monotone_table(x, medians, batch)
    bad = ~(np.isfinite(table.stored) & (table.stored > 0))
    if bad.any():
        k = int(np.argmax(bad))
        raise CurveError(
            f"time {medians[k]:g} us at {x[k]:g} tokens is stored as {table.stored[k]:g} "
            f"(times are kept to {DECIMALS} decimals of a us and must stay finite and > 0)",
            "time_us",
            x[k],
        )
    return table


def _note(stage: str, t: StageTable) -> str | None:
    """Says how many medians the running max raised, if any: those below an earlier one
    (compared before the rounding, which alone moved a median by up to 0.0005 us and made
    the note blame a first point, that has nothing before it; an audit, session 25)."""
    top = np.maximum.accumulate(t.measured)
    raised = t.measured < top
    if not raised.any():
        return None
    where = f"{stage} (B = {t.batch})" if t.batch is not None else stage
    rel = (top - t.measured) / t.measured
    k = int(np.argmax(rel))
    return (
        f"{where}: {int(raised.sum())} of {t.x.size} medians fall below an earlier one and were "
        f"raised to the running max (most: +{100 * rel[k]:.3g} % at {t.x[k]:g} tokens)"
    )


def row_errors(table: StageTable, tokens, times) -> StageTable:
    """``table``'s stored times at each profile row against the row's time, as a
    :class:`StageTable` of the rows (for :func:`afd_jax.studies.hardware.fit_error`)."""
    tokens, times = np.asarray(tokens, np.float64), np.asarray(times, np.float64)
    stored = table.stored[np.searchsorted(table.x, tokens)]
    return StageTable(tokens, times, stored, table.batch)


def _stage_tables(data: dict, path: str) -> tuple[dict, dict]:
    """({stage: [StageTable]}, {stage: [row-error StageTable]}) of the profile; InputError
    naming the file, the line (the first row of the curve, or at the token count at fault), the
    field, and the stage and batch."""
    out, rows = {}, {}
    for stage in STAGES:
        tokens, times, batch, lines = data[stage]
        if tokens.size == 0:
            raise InputError(
                f"no rows for stage {stage} (every stage attn, ffn, comm needs rows)",
                path=path,
                field="stage",
            )
        groups = np.unique(batch) if stage == "attn" else [None]
        out[stage], rows[stage] = [], []
        for b in groups:
            sel = batch == b if b is not None else slice(None)
            b = None if b is None else int(b)
            try:
                out[stage].append(median_table(tokens[sel], times[sel], b))
            except CurveError as err:
                where = f"stage {stage}" + (f", batch {b}" if b is not None else "")
                at = lines[sel][tokens[sel] == err.x] if err.x is not None else lines[sel]
                line = int(at[0])
                raise InputError(f"{where}: {err}", path=path, line=line, field=err.field) from None
            rows[stage].append(row_errors(out[stage][-1], tokens[sel], times[sel]))
    return out, rows


def calibrate_tables(
    path: str | Path,
    comm_scaling: str = "aggregate",
    overlap: str = "pipelined",
    costs: tuple[float, float] = (1.0, 1.0),
    command: str = "",
) -> TableFit:
    """Fit every stage of the profile ``path`` as a monotone table (module docstring); the
    text is a table latency file (docs/hardware.md, "The file") with these switches and costs.

    >>> fit = calibrate_tables("examples/profile_table.csv")
    >>> [t.batch for t in fit.tables["attn"]], fit.tables["ffn"][0].x.size
    ([32, 64], 5)
    """
    data = read_profile(path, with_batch=True)
    tables, by_row = _stage_tables(data, str(path))
    errors = {stage: fit_error(ts) for stage, ts in by_row.items()}
    notes = [n for stage, ts in tables.items() for t in ts if (n := _note(stage, t))]
    meta = {
        "name": Path(path).stem,
        "source": f"afd-jax calibrate --fit table {Path(path).name}",
        "built_with": command or "afd-jax calibrate --fit table",
        "time_unit": "microseconds per decode step",
        "cleanup": (
            "median of the measurements at each token count, running max, rounded to "
            f"{DECIMALS} decimals of a us"
        ),
        **fit_meta(errors),
    }
    latency = {"comm_scaling": comm_scaling, "overlap": overlap}
    latency.update(cost_attn=float(costs[0]), cost_ffn=float(costs[1]))
    attn, (ffn,), (comm,) = tables["attn"], tables["ffn"], tables["comm"]
    text = format_preset_toml(meta, {}, attn, ffn, comm, latency)
    rows = {stage: int(data[stage][0].size) for stage in STAGES}
    return TableFit(text, tables, errors, rows, notes)

"""Least-squares calibration of the linear stage latencies (docs/model.md 2) from a profile.

(Table calibration, ``afd-jax calibrate --fit table``, reads the same CSV with a ``batch``
column through :func:`read_profile` and lives in :mod:`afd_jax.studies.calibration`.)

Profile CSV, header ``stage,tokens,time_us`` (other columns are ignored), one measurement a
row. ``stage`` is ``attn``/``attention``, ``ffn`` or ``comm``/``communication``; ``tokens`` is
the stage's token count (Attention: the worker load T = sum of its slot loads; FFN: the batch
r*B; communication: the tokens X sent per step, r*B or B per ``comm_scaling``); ``time_us`` the
measured time in microseconds. Each stage is fitted by ordinary least squares
``time = alpha * tokens + beta``; when the unconstrained fit gives a negative coefficient the
best fit with that coefficient at 0 is used instead (non-negative least squares in 2 unknowns)
and the result says so.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afd_jax.errors import InputError, is_real
from afd_jax.model.latency import STAGES, AffineStage, Latency, ModelOptions, stage_time
from afd_jax.model.latency_io import check_latency_limit, validate_options
from afd_jax.workload.numbers import parse_float
from afd_jax.workload.traces import (
    check_row_width,
    check_unique_columns,
    column_names,
    read_text,
)

STAGE_NAMES = {
    "attn": "attn",
    "attention": "attn",
    "ffn": "ffn",
    "comm": "comm",
    "communication": "comm",
}


@dataclass(frozen=True)
class StageFit:
    """Least-squares fit of one stage: time = alpha * tokens + beta (us)."""

    stage: str
    alpha: float
    beta: float
    n: int
    r_squared: float
    rmse: float
    max_abs_residual: float
    constrained: str  # "" or "alpha=0" / "beta=0" when a bound was active

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "alpha": self.alpha,
            "beta": self.beta,
            "n": self.n,
            "r_squared": self.r_squared,
            "rmse_us": self.rmse,
            "max_abs_residual_us": self.max_abs_residual,
            "constrained": self.constrained,
        }


def read_profile(path: str | Path, with_batch: bool = False) -> dict[str, tuple]:
    """Read the profile CSV -> {stage: (tokens float64[n], time_us float64[n], line)}, line
    the rows' lines in the file.

    ``with_batch`` (table calibration): the header must also have a ``batch`` column, required
    on Attention rows (an integer B >= 1: the batch the Attention time was measured at) and
    ignored on the others; then each stage maps to ``(tokens, time_us, batch, line)``, batch NaN
    off Attention rows, line the row's line in the file. InputError naming the file, line and
    field for a bad row (the rules of the trace reader: a column named twice, or a value past
    the header's columns, which a stray delimiter would have shifted, are errors)."""
    path = Path(path)
    spath = str(path)
    if path.is_dir() or not path.exists():  # a pipe (<(...), /dev/stdin) is read
        why = "is a folder" if path.is_dir() else "no such file"
        raise InputError(f"cannot read profile: {why}", path=spath)
    reader = csv.reader(io.StringIO(read_text(path, spath), newline=""))
    rows: dict[str, tuple[list, ...]] = {s: ([], [], [], []) for s in STAGES}
    try:
        names = _header(reader, spath, with_batch)
        cols = _columns(names, spath, reader.line_num, with_batch)
        for row in reader:
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            line = reader.line_num
            check_row_width(row, len(names), spath, line)
            if len(row) < len(names):
                raise InputError(
                    f"expected {len(names)} fields, got {len(row)}", path=spath, line=line
                )
            stage, values = _row(row, cols, spath, line)
            for acc, v in zip(rows[stage], [*values, line], strict=False):
                acc.append(v)
    except csv.Error as err:
        raise InputError(f"malformed CSV: {err}", path=spath, line=reader.line_num) from None
    keep = (0, 1, 2, 3) if with_batch else (0, 1, 2)  # values, then the line
    return {s: tuple(np.asarray(acc[k], np.float64) for k in keep) for s, acc in rows.items()}


def _header(reader, spath: str, with_batch: bool) -> list[str]:
    """The header's column names (lower case; blank lines before it skipped, a trailing
    delimiter names no column), each at most once."""
    for row in reader:
        names = [name.lower() for name in column_names(row)]
        if names:
            check_unique_columns(names, spath, reader.line_num)
            return names
    what = "stage,tokens,time_us" + (",batch" if with_batch else "")
    raise InputError(f"empty file (expected header {what})", path=spath)


def _columns(names: list, spath: str, line: int, with_batch: bool) -> dict:
    """Index of each column the reader uses (``batch`` only ``with_batch``)."""
    need = ("stage", "tokens", "time_us", "batch") if with_batch else ("stage", "tokens", "time_us")
    for col in need:
        if col not in names:
            what = "stage,tokens,time_us" + (",batch (table fit)" if with_batch else "")
            raise InputError(
                f"missing column (header must contain {what}; got {','.join(names)})",
                path=spath,
                line=line,
                field=col,
            )
    return {c: names.index(c) for c in need}


def _row(row: list, cols: dict, spath: str, line: int) -> tuple[str, list]:
    """(stage, [tokens, time_us(, batch)]) of one data row, checked."""
    stage = row[cols["stage"]].strip().lower()
    if stage not in STAGE_NAMES:
        raise InputError(
            f"unknown stage {row[cols['stage']]!r} (attn, ffn or comm)",
            path=spath,
            line=line,
            field="stage",
        )
    stage = STAGE_NAMES[stage]
    vals = []
    for col in ("tokens", "time_us"):
        x = parse_float(row[cols[col]], col, path=spath, line=line)
        if x < 0:
            raise InputError(
                f"must be >= 0, got {row[cols[col]].strip()!r}", path=spath, line=line, field=col
            )
        vals.append(check_latency_limit(x, col, spath, line))
    if "batch" in cols:
        vals.append(_batch(row[cols["batch"]].strip(), stage, spath, line))
    return stage, vals


def _batch(text: str, stage: str, spath: str, line: int) -> float:
    """The batch B of an Attention row (an integer >= 1); NaN for the other stages."""
    if stage != "attn":
        return math.nan
    if not text:
        raise InputError(
            "missing batch: an Attention row of a table fit needs the batch B it was measured at",
            path=spath,
            line=line,
            field="batch",
        )
    b = parse_float(text, "batch", path=spath, line=line)
    if not (b >= 1 and b == math.floor(b)):
        raise InputError(
            f"must be an integer >= 1, got {text!r}", path=spath, line=line, field="batch"
        )
    return check_latency_limit(b, "batch", spath, line)


def fit_stage(stage: str, tokens: np.ndarray, times: np.ndarray) -> StageFit:
    """Least-squares ``time = alpha * tokens + beta`` with alpha, beta >= 0."""
    n = int(tokens.shape[0])
    if n < 2 or np.unique(tokens).shape[0] < 2:
        raise InputError(
            f"stage {stage}: need measurements at >= 2 distinct token counts, got {n} row(s)",
            field="tokens",
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow: refused just below
        design = np.stack([tokens, np.ones_like(tokens)], axis=1)
        (alpha, beta), *_ = np.linalg.lstsq(design, times, rcond=None)
        constrained = ""
        if alpha < 0 or beta < 0:
            # best fit on each boundary, keep the better feasible one
            cand = []
            cand.append((0.0, float(np.mean(times)), "alpha=0"))
            xx = float(np.dot(tokens, tokens))
            cand.append((float(np.dot(tokens, times)) / xx if xx > 0 else 0.0, 0.0, "beta=0"))
            cand = [(a, b, c) for a, b, c in cand if a >= 0 and b >= 0]
            alpha, beta, constrained = min(
                cand,
                key=lambda t: float(
                    np.sum((times - stage_time(AffineStage(t[0], t[1]), tokens)) ** 2)
                ),
            )
        resid = times - stage_time(AffineStage(alpha, beta), tokens)
        ss_res = float(np.sum(resid**2))
        ss_tot = float(np.sum((times - times.mean()) ** 2))
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    if not all(map(math.isfinite, (alpha, beta, r2, ss_res))):
        raise InputError(
            f"stage {stage}: the least-squares fit is not finite (alpha {alpha:g}, beta "
            f"{beta:g}, R^2 {r2:g}); check the rows' magnitudes",
            field="time_us",
        )
    return StageFit(
        stage=stage,
        alpha=float(alpha),
        beta=float(beta),
        n=n,
        r_squared=r2,
        rmse=math.sqrt(ss_res / n),
        max_abs_residual=float(np.max(np.abs(resid))),
        constrained=constrained,
    )


def calibrate(
    path: str | Path,
    comm_scaling: str = "aggregate",
    overlap: str = "pipelined",
    cost_attn: float = 1.0,
    cost_ffn: float = 1.0,
) -> tuple[Latency, ModelOptions, dict[str, StageFit]]:
    """Fit every stage of the profile; returns (Latency, ModelOptions, {stage: StageFit}).

    ``path``: a CSV with header ``stage,tokens,time_us`` (module docstring); ``comm_scaling`` and
    ``overlap`` say how the model uses the fitted stages (the communication rows' tokens are X =
    r*B or B accordingly); costs are copied into the Latency. Raises InputError naming the file,
    line and field for bad rows or a stage without >= 2 distinct token counts.

    >>> from afd_jax import calibrate
    >>> lat, opts, fits = calibrate("examples/profile.csv", comm_scaling="per_worker")
    >>> round(lat.alpha_attn, 4), round(lat.beta_attn, 1), opts.comm_scaling, fits["attn"].n
    (0.0102, 78.0, 'per_worker', 10)
    """
    opts = validate_options(ModelOptions(comm_scaling=comm_scaling, overlap=overlap))
    for name, cost in (("cost_attn", cost_attn), ("cost_ffn", cost_ffn)):
        if not (is_real(cost) and math.isfinite(cost) and cost > 0):
            raise InputError(f"must be a finite number > 0, got {cost!r}", field=name)
    data = read_profile(path)
    fits = {}
    for stage in STAGES:
        x, y, lines = data[stage]
        if x.shape[0] == 0:
            raise InputError(
                f"no rows for stage {stage} (every stage attn, ffn, comm needs rows)",
                path=str(path),
                field="stage",
            )
        try:
            fits[stage] = fit_stage(stage, x, y)
        except InputError as err:  # named at the stage's first row, as the table fit does
            raise InputError(
                err.reason, path=str(path), line=int(lines[0]), field=err.field
            ) from None
    lat = Latency(
        alpha_attn=fits["attn"].alpha,
        beta_attn=fits["attn"].beta,
        alpha_ffn=fits["ffn"].alpha,
        beta_ffn=fits["ffn"].beta,
        alpha_comm=fits["comm"].alpha,
        beta_comm=fits["comm"].beta,
        cost_attn=float(cost_attn),
        cost_ffn=float(cost_ffn),
    )
    return lat, opts, fits

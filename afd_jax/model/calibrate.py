"""Least-squares calibration of the linear stage latencies (docs/model.md 2) from a profile.

Profile CSV, header ``stage,tokens,time_us`` (extra columns are ignored), one measurement a
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
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afd_jax.errors import InputError
from afd_jax.model.latency import STAGES, AffineStage, Latency, ModelOptions, stage_time

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


def read_profile(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the profile CSV -> {stage: (tokens float64[n], time_us float64[n])}."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot read profile: {err.strerror}", path=str(path)) from err
    rows: dict[str, tuple[list, list]] = {s: ([], []) for s in STAGES}
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(
                "empty file (expected header stage,tokens,time_us)", path=str(path)
            ) from None
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(f"not a CSV text file: {err}", path=str(path), line=1) from err
        names = [h.strip().lower() for h in header]
        for col in ("stage", "tokens", "time_us"):
            if col not in names:
                raise InputError(
                    f"missing column (header must contain stage,tokens,time_us; got "
                    f"{','.join(header)})",
                    path=str(path),
                    line=1,
                    field=col,
                )
        i_stage, i_tok, i_time = (names.index(c) for c in ("stage", "tokens", "time_us"))
        try:
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < len(names):
                    raise InputError(
                        f"expected {len(names)} fields, got {len(row)}", path=str(path), line=lineno
                    )
                stage = row[i_stage].strip().lower()
                if stage not in STAGE_NAMES:
                    raise InputError(
                        f"unknown stage {row[i_stage]!r} (attn, ffn or comm)",
                        path=str(path),
                        line=lineno,
                        field="stage",
                    )
                vals = []
                for idx, col in ((i_tok, "tokens"), (i_time, "time_us")):
                    try:
                        x = float(row[idx])
                    except ValueError:
                        raise InputError(
                            f"not a number: {row[idx]!r}", path=str(path), line=lineno, field=col
                        ) from None
                    if not math.isfinite(x) or x < 0:
                        raise InputError(
                            f"must be finite and >= 0, got {row[idx]!r}",
                            path=str(path),
                            line=lineno,
                            field=col,
                        )
                    vals.append(x)
                rows[STAGE_NAMES[stage]][0].append(vals[0])
                rows[STAGE_NAMES[stage]][1].append(vals[1])
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(f"malformed CSV: {err}", path=str(path)) from err
    return {s: (np.asarray(x, np.float64), np.asarray(y, np.float64)) for s, (x, y) in rows.items()}


def fit_stage(stage: str, tokens: np.ndarray, times: np.ndarray) -> StageFit:
    """Least-squares ``time = alpha * tokens + beta`` with alpha, beta >= 0."""
    n = int(tokens.shape[0])
    if n < 2 or np.unique(tokens).shape[0] < 2:
        raise InputError(
            f"stage {stage}: need measurements at >= 2 distinct token counts, got {n} row(s)",
            field=stage,
        )
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
            key=lambda t: float(np.sum((times - stage_time(AffineStage(t[0], t[1]), tokens)) ** 2)),
        )
    resid = times - stage_time(AffineStage(alpha, beta), tokens)
    ss_res = float(np.sum(resid**2))
    ss_tot = float(np.sum((times - times.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
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
    data = read_profile(path)
    fits = {}
    for stage in STAGES:
        x, y = data[stage]
        if x.shape[0] == 0:
            raise InputError(
                f"no rows for stage {stage} (every stage attn, ffn, comm needs rows)",
                path=str(path),
                field="stage",
            )
        try:
            fits[stage] = fit_stage(stage, x, y)
        except InputError as err:
            raise InputError(err.reason, path=str(path), field=err.field) from None
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
    return lat, ModelOptions(comm_scaling=comm_scaling, overlap=overlap), fits

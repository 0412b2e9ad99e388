"""The sweep table: CSV rows of evaluated chunks, and reading a table back (docs/sweep.md,
"The table"). Floats are written with Python's shortest round-trip ``repr``."""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from afd_jax.studies.sweep.fields import REGIMES, row_methods
from afd_jax.studies.sweep.plan import SweepPlan

__all__ = ["best_r", "format_rows", "read_table"]


def _f(x) -> str:
    x = float(x)
    return repr(x) if math.isfinite(x) else ("nan" if math.isnan(x) else repr(x))


def _csv_field(s: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([s])
    return buf.getvalue()


def best_r(tput: np.ndarray) -> np.ndarray:
    """Integer argmax over r = 1..r_max (NaN never wins), int64[n]."""
    return np.argmax(np.where(np.isnan(tput), -np.inf, tput), axis=1) + 1


def _best_r_all(methods, r_max: int, res: dict) -> dict:
    """``r_best_<method>`` per scenario. ``optimize``: the better of floor/ceil of the continuous
    optimum, judged by the most accurate throughput in the table (exact, else Gaussian, else
    mean-field)."""
    best = {m: best_r(res[f"tput_{m}"]) for m in row_methods(methods)}
    if "optimize" in methods:
        judge = next(m for m in ("exact", "gaussian", "mean_field") if f"tput_{m}" in res)
        rc = np.clip(res["r_continuous_optimize"], 1.0, float(r_max))
        lo_r = np.floor(rc).astype(np.int64)
        hi_r = np.minimum(lo_r + 1, r_max)
        rows = np.arange(rc.shape[0])
        t = res[f"tput_{judge}"]
        best["optimize"] = np.where(t[rows, hi_r - 1] > t[rows, lo_r - 1], hi_r, lo_r)
    return best


def _scenario_prefix(plan: SweepPlan, i: int) -> str:
    """scenario, workload, wl_<param>..., batch, the 8 latency fields, [the 3 stage scales],
    theta, slot_std."""
    e = plan.workloads[int(plan.wl_index[i])]
    head = [str(i), _csv_field(e.label)]
    head += [_f(e.params[p]) if p in e.params else "" for p in plan.family_params]
    head.append(str(int(plan.batch[i])))
    head += [_f(x) for x in plan.coeffs[i].tolist()]
    if plan.scales is not None:
        head += [_f(x) for x in plan.scales[i].tolist()]
    head += [_f(e.theta), _f(math.sqrt(e.slot_var))]
    return ",".join(head)


def format_rows(plan: SweepPlan, lo: int, hi: int, res: dict) -> str:
    """CSV text (no header) of scenarios lo..hi-1, r_max rows each, in ``plan.columns()`` order."""
    methods, r_max = plan.spec.methods, plan.spec.r_max
    per_r = row_methods(methods)
    best = _best_r_all(methods, r_max, res)
    regime = res["regime"]
    lists = {m: res[f"tput_{m}"].tolist() for m in per_r}
    stderr = res["tput_mc_stderr"].tolist() if "mc" in methods else None
    lines = []
    for k, i in enumerate(range(lo, hi)):
        prefix = _scenario_prefix(plan, i)
        tail = [str(int(best[m][k])) for m in methods]
        if "optimize" in methods:
            tail.append(_f(res["r_continuous_optimize"][k]))
        tail = ",".join(tail)
        reg = regime[k]
        for r in range(r_max):
            vals = []
            for m in per_r:
                vals.append(_f(lists[m][k][r]))
                if m == "mc":
                    vals.append(_f(stderr[k][r]))
            lines.append(f"{prefix},{r + 1},{REGIMES[int(reg[r])]},{','.join(vals)},{tail}\n")
    return "".join(lines)


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

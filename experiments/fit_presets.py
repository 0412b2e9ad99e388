"""Fit the parametric presets to the three public traces (joint fit on the slot-load statistics).

Model (per trace, docs/workloads.md "Fit method"): a 2-component mixture
``w * C1 + (1 - w) * C2``; each component ``Ck = copula(P_k, D_k, rho_k)`` has discretised
log-normal marginals ``families.lognormal(median, sigma)`` truncated to the trace column's
[min, max] (prompts longer than 16k tokens on a lattice of step ``ceil(range / 16384)``) and a
Gaussian copula with Spearman correlation ``rho_k``. 11 parameters: w, 4 medians, 4 sigmas,
2 rank correlations.

Loss: ``scipy.optimize.least_squares`` on scaled residuals of the EXACT model statistics
(``families.parametric_stats`` and :func:`spearman_exact`) against the trace's
(``statistics.workload_stats``, ``scipy.stats.spearmanr``)::

    (model / trace - 1) / 0.002   for theta and sqrt(v)          (the provisioning statistics)
    (model / trace - 1) / 0.01    for E[P], E[D]
    (model / trace - 1) / 0.05    for std(P), std(D)             (shape of the marginals)
    (model - trace) / 0.02        for Spearman and Pearson corr(P, D)

plus a weak pull (``/ 0.5`` in log-median and log-sigma) towards the start point so the
under-determined directions stay put. Start: the trace's rows split at the median decode length
(D <= median vs D > median); each half moment-matched (log-normal mean and variance equal to the
half's, Spearman of the half), w = share of the first half. Deterministic (no random numbers;
finite-difference Jacobian). Prints the constants for ``afd_jax/workload/specs.py`` and a
fit-vs-trace table, and writes experiments/results/fit_presets.json.

Usage: python experiments/fit_presets.py TRACES_DIR   (the folder holding the three traces,
azure_llm_2023_conv.csv, azure_llm_2023_code.csv and mooncake_conversation.jsonl)
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import spearmanr

from afd_jax.workload import families
from afd_jax.workload.containers import ParametricWorkload
from afd_jax.workload.statistics import workload_stats
from afd_jax.workload.traces import load_trace

ROOT = Path(__file__).resolve().parents[1]
TRACES = {
    "azure-conv-fit": "azure_llm_2023_conv.csv",
    "azure-code-fit": "azure_llm_2023_code.csv",
    "mooncake-fit": "mooncake_conversation.jsonl",
}
MAX_ATOMS = 16384
RC_MAX = 0.95  # |rank correlation| of a component: rho = RC_MAX * tanh(x)


def _mid_ranks(values: np.ndarray, pmf: np.ndarray) -> np.ndarray:
    """Mid-distribution transform ``F(x-) + pmf(x) / 2`` (the population version of average
    ranks / n)."""
    cdf = np.cumsum(pmf)
    return cdf - 0.5 * pmf


def _mixture_marginal(w: ParametricWorkload, attr: str) -> tuple[np.ndarray, np.ndarray]:
    vals = np.unique(np.concatenate([getattr(c, attr).values for c in w.components]))
    pmf = np.zeros(vals.size)
    for wk, c in zip(w.weights, w.components, strict=True):
        m = getattr(c, attr)
        pmf[np.searchsorted(vals, m.values)] += float(wk) * m.pmf
    return vals, pmf


def spearman_exact(w: ParametricWorkload) -> float:
    """Spearman correlation of (P, D) under ``w`` with average ranks for ties: the Pearson
    correlation of the mid-rank transforms R_P(P), R_D(D), ``E[R] = 1/2``; the joint law is
    integrated with the factorisation behind ``families.copula_conditional_rows``
    (rows = Pr(P | D = d) = A @ G, so E[R_P | D = d] = A @ (G @ R_P))."""
    pv, ppmf = _mixture_marginal(w, "prompt")
    dv, dpmf = _mixture_marginal(w, "decode")
    rp, rd = _mid_ranks(pv, ppmf), _mid_ranks(dv, dpmf)
    cross = 0.0
    for wk, c in zip(w.weights, w.components, strict=True):
        rp_k = rp[np.searchsorted(pv, c.prompt.values)]
        rd_k = rd[np.searchsorted(dv, c.decode.values)]
        if families.gaussian_corr(c.rank_corr) == 0.0 or rp_k.size == 1 or rd_k.size == 1:
            cond = np.full(rd_k.size, float(c.prompt.pmf @ rp_k))
        else:  # E[R_P | D = d] from the factorisation rows = A @ G (no |D| x |P| product)
            amat, grid = families.conditional_factors(c)
            cond = amat @ (grid @ rp_k)
        cross += float(wk) * float((c.decode.pmf * rd_k) @ cond)
    var_p = float(ppmf @ rp**2) - 0.25
    var_d = float(dpmf @ rd**2) - 0.25
    return (cross - 0.25) / math.sqrt(var_p * var_d)


def _bounds(x: np.ndarray) -> dict:
    lo, hi = int(x.min()), int(x.max())
    return {"lo": lo, "hi": hi, "step": max(1, math.ceil((hi - lo + 1) / MAX_ATOMS))}


def _moment_lognormal(x: np.ndarray) -> tuple[float, float]:
    """(log median, log sigma) of the log-normal with the mean and variance of ``x``."""
    xf = x.astype(np.float64)
    sigma2 = math.log1p(xf.var() / xf.mean() ** 2)
    return math.log(xf.mean()) - 0.5 * sigma2, 0.5 * math.log(sigma2)


def _unpack(x: np.ndarray) -> dict:
    """Parameter vector -> preset constants (medians/sigmas in log space, w logit, rho tanh)."""
    w = 1.0 / (1.0 + math.exp(-x[0]))
    comps = []
    for k in range(2):
        lm_p, ls_p, lm_d, ls_d, t = x[1 + 5 * k : 6 + 5 * k]
        comps.append(
            {
                "prompt": {"median": math.exp(lm_p), "sigma": math.exp(ls_p)},
                "decode": {"median": math.exp(lm_d), "sigma": math.exp(ls_d)},
                "rank_corr": RC_MAX * math.tanh(t),
            }
        )
    return {"weights": [w, 1.0 - w], "components": comps}


def build(params: dict, pb: dict, db: dict, name: str = "fit") -> ParametricWorkload:
    """The mixture workload of ``params`` (as in ``_unpack``) with marginal bounds pb, db."""
    parts = []
    for wk, c in zip(params["weights"], params["components"], strict=True):
        comp = families.copula(
            families.lognormal(**c["prompt"], **pb),
            families.lognormal(**c["decode"], **db),
            c["rank_corr"],
        )
        parts.append((wk, comp))
    return families.mixture(parts, name=name)


def model_stats(w: ParametricWorkload) -> dict:
    s = families.parametric_stats(w)
    pv, ppmf = _mixture_marginal(w, "prompt")
    dv, dpmf = _mixture_marginal(w, "decode")
    return {
        "mean_prompt": s.mean_prompt,
        "mean_decode": s.mean_decode,
        "theta": s.theta,
        "sqrt_v": s.slot_std,
        "std_prompt": math.sqrt(ppmf @ pv.astype(float) ** 2 - s.mean_prompt**2),
        "std_decode": math.sqrt(dpmf @ dv.astype(float) ** 2 - s.mean_decode**2),
        "spearman": spearman_exact(w),
        "pearson": s.corr_prompt_decode,
    }


REL = {
    "theta": 0.002,
    "sqrt_v": 0.002,
    "mean_prompt": 0.01,
    "mean_decode": 0.01,
    "std_prompt": 0.05,
    "std_decode": 0.05,
}
ABS = {"spearman": 0.02, "pearson": 0.02}
PRIOR = 0.5


def fit_trace(path: Path) -> dict:
    trace = load_trace(str(path))
    p, d = trace.prompt, trace.decode
    ts = workload_stats(trace)
    target = {
        "mean_prompt": ts.mean_prompt,
        "mean_decode": ts.mean_decode,
        "theta": ts.theta,
        "sqrt_v": ts.slot_std,
        "std_prompt": float(np.std(p.astype(np.float64))),
        "std_decode": float(np.std(d.astype(np.float64))),
        "spearman": float(spearmanr(p, d).statistic),
        "pearson": ts.corr_prompt_decode,
    }
    pb, db = _bounds(p), _bounds(d)
    low = d <= np.median(d)
    x0 = [math.log(low.mean() / (1.0 - low.mean()))]
    for half in (low, ~low):
        rc = float(spearmanr(p[half], d[half]).statistic) if np.ptp(d[half]) > 0 else 0.0
        x0 += [*_moment_lognormal(p[half]), *_moment_lognormal(d[half])]
        x0.append(math.atanh(np.clip(rc, -0.9, 0.9) / RC_MAX))
    x0 = np.array(x0)
    prior_idx = np.array([1, 2, 3, 4, 6, 7, 8, 9])

    def residuals(x):
        m = model_stats(build(_unpack(x), pb, db))
        r = [(m[k] / target[k] - 1.0) / s for k, s in REL.items()]
        r += [(m[k] - target[k]) / s for k, s in ABS.items()]
        r += list((x[prior_idx] - x0[prior_idx]) / PRIOR)
        return np.array(r)

    sol = least_squares(residuals, x0, method="trf", diff_step=1e-6, xtol=1e-10, max_nfev=40)
    params = _unpack(sol.x)
    m = model_stats(build(params, pb, db))
    return {
        "trace": path.name,
        "prompt_bounds": pb,
        "decode_bounds": db,
        **params,
        "quality": {k: {"fit": m[k], "trace": target[k]} for k in target},
        "optimizer": {"nfev": int(sol.nfev), "cost": float(sol.cost), "status": int(sol.status)},
    }


def main(traces_dir: Path) -> int:
    out = {}
    for name, fname in TRACES.items():
        t0 = time.perf_counter()
        out[name] = fit_trace(traces_dir / fname)
        print(f"{name}: fitted in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print("# constants for afd_jax/workload/specs.py (_FITS)")
    for name, f in out.items():
        comps = [
            (
                round(wk, 6),
                {k: round(v, 6) for k, v in c["prompt"].items()},
                {k: round(v, 6) for k, v in c["decode"].items()},
                round(c["rank_corr"], 6),
            )
            for wk, c in zip(f["weights"], f["components"], strict=True)
        ]
        print(f'"{name}": ({f["trace"]!r}, {f["prompt_bounds"]}, {f["decode_bounds"]}, {comps}),')
    print("\n| preset | statistic | fit | trace | fit / trace - 1 |")
    print("|---|---|---|---|---|")
    for name, f in out.items():
        for k, q in f["quality"].items():
            if k in ABS:
                err = f"{q['fit'] - q['trace']:+.3f} (abs)"
            else:
                err = f"{q['fit'] / q['trace'] - 1.0:+.2%}"
            print(f"| {name} | {k} | {q['fit']:,.3f} | {q['trace']:,.3f} | {err} |")
    res = ROOT / "experiments" / "results" / "fit_presets.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {res}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} TRACES_DIR")
    sys.exit(main(Path(sys.argv[1])))

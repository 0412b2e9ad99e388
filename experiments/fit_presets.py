"""Fit the illustrative parametric presets to the three shared traces.

Method (documented in docs/workloads.md): each marginal is a discretised log-normal
(``families.lognormal``) whose untruncated mean and variance equal the trace column's
(``sigma^2 = log(1 + Var X / E[X]^2)``, ``mu = log E[X] - sigma^2/2``), truncated to the
trace's [min, max]; prompts longer than 16k tokens use a lattice
step so the support stays ~16k atoms. P and D are tied by a Gaussian copula whose rank
correlation is the trace's Spearman correlation (average ranks). Prints the constants to paste
into ``afd_jax/workloads.py`` and the fit quality (theta and sqrt(v), fit vs trace), and writes
experiments/results/fit_presets.json.

Usage: python experiments/fit_presets.py [TRACES_DIR]   (default ../shared/traces)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from afd_jax import families
from afd_jax.statistics import workload_stats
from afd_jax.traces import load_trace

ROOT = Path(__file__).resolve().parents[1]
TRACES = {
    "azure-conv-fit": "azure_llm_2023_conv.csv",
    "azure-code-fit": "azure_llm_2023_code.csv",
    "mooncake-fit": "mooncake_conversation.jsonl",
}


def _fit_marginal(x: np.ndarray, max_atoms: int = 16384) -> dict:
    xf = x.astype(np.float64)
    sigma2 = math.log1p(xf.var() / xf.mean() ** 2)
    lo, hi = int(x.min()), int(x.max())
    step = max(1, math.ceil((hi - lo + 1) / max_atoms))
    return {
        "median": float(xf.mean() * math.exp(-0.5 * sigma2)),
        "sigma": math.sqrt(sigma2),
        "lo": lo,
        "hi": hi,
        "step": step,
    }


def main(traces_dir: Path) -> int:
    out = {}
    for name, fname in TRACES.items():
        trace = load_trace(str(traces_dir / fname))
        keep = trace.decode > 0
        p, d = trace.prompt[keep], trace.decode[keep]
        fit = {
            "prompt": _fit_marginal(p),
            "decode": _fit_marginal(d),
            "rank_corr": float(spearmanr(p, d).statistic),
            "trace": fname,
        }
        w = families.copula(
            families.lognormal(**fit["prompt"]),
            families.lognormal(**fit["decode"]),
            fit["rank_corr"],
        )
        fs, ts = families.parametric_stats(w), workload_stats(trace)
        fit["quality"] = {
            "theta_fit": fs.theta,
            "theta_trace": ts.theta,
            "sqrt_v_fit": fs.slot_std,
            "sqrt_v_trace": ts.slot_std,
            "mean_prompt_fit": fs.mean_prompt,
            "mean_prompt_trace": ts.mean_prompt,
            "mean_decode_fit": fs.mean_decode,
            "mean_decode_trace": ts.mean_decode,
        }
        out[name] = fit
        print(f"{name}: {json.dumps({k: fit[k] for k in ('prompt', 'decode', 'rank_corr')})}")
    print("\n| preset | theta fit | theta trace | sqrt(v) fit | sqrt(v) trace |")
    print("|---|---|---|---|---|")
    for name, fit in out.items():
        q = fit["quality"]
        print(
            f"| {name} | {q['theta_fit']:,.1f} | {q['theta_trace']:,.1f} | "
            f"{q['sqrt_v_fit']:,.1f} | {q['sqrt_v_trace']:,.1f} |"
        )
    res = ROOT / "experiments" / "results" / "fit_presets.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {res}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "traces"))

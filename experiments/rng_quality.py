"""Statistical quality of the fast kernel's random numbers: z-scores against the exact E[tau(r)].

For each seed the fast kernel estimates E[tau(r)] (r = 1..R_MAX, ``replications`` independent
replications, SE from their spread) and z(r) = (estimate - exact) / SE, exact from the FFT
computation (afd_jax.model.exact) of the slot-load law built from the request table. Under a good
generator the z(r) of one r over independent seeds are i.i.d., close to N(0, 1) (Student t with
replications - 1 degrees of freedom). z's of different r within a seed are correlated (common
random numbers), so the summary uses one r per seed (r cycling through R_LIST), plus per-r
summaries over seeds.

    python experiments/rng_quality.py --traces TRACES_DIR [--seeds 60] [--workload azure_conv]

``--traces``: the folder holding the Azure LLM 2023 CSVs (not needed for ``--workload
geometric``). ``--hash-module``: a module whose ``install()`` swaps in another hash (for
comparisons only).
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time

import jax
import numpy as np
import scipy.stats

from afd_jax.kernels import sampling as KS
from afd_jax.model.exact import exact_step_times
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.montecarlo.simulate import simulate
from afd_jax.workload.slotload import SlotLoadPMF
from afd_jax.workload.traces import load_trace

B, R_MAX, TABLE = 8, 32, 1 << 18
R_LIST = (1, 2, 4, 8, 16, 32)


def _table(name, traces):
    if name == "geometric":
        a, q = 60 / 61, 1 / 20
        p_vals, d_vals = np.arange(701), np.arange(1, 251)
        wp, wd = (1 - a) * a**p_vals, q * (1 - q) ** (d_vals - 1)
        pp, dd = np.meshgrid(p_vals, d_vals, indexing="ij")
        return pp.ravel(), dd.ravel(), np.outer(wp, wd).ravel()
    files = {"azure_conv": "azure_llm_2023_conv.csv", "azure_code": "azure_llm_2023_code.csv"}
    w = load_trace(f"{traces}/{files[name]}")
    keep = w.decode > 0
    return w.prompt[keep], w.decode[keep], np.ones(int(keep.sum()))


def z_scores(name, seeds, steps, reps, traces):
    """z[seed, r] of the fast kernel against the exact E[tau(r)]."""
    p, d, w = _table(name, traces)
    diff = np.zeros(int((p + d).max()) + 1)
    np.add.at(diff, p, w)
    np.add.at(diff, p + d, -w)
    pmf = SlotLoadPMF(start=0, width=1, pmf=np.cumsum(diff)[:-1] / np.dot(w, d))
    theta = float(np.dot(w, d * p + d * (d - 1) / 2) / np.dot(w, d))
    lat = Latency(100.0 / (B * theta), 20.0, 0.3125, 40.0, 0.01, 5.0)
    exact = exact_step_times(pmf, lat, B, R_MAX, ModelOptions())
    sampler = KS.alias_sampler(p, d, w, size=TABLE)
    z = np.empty((len(seeds), R_MAX))
    for i, s in enumerate(seeds):
        res = simulate(
            sampler,
            lat,
            B,
            R_MAX,
            kernel="fast",
            steps=steps,
            replications=reps,
            seed=int(s),
            max_slot_load=int((p + d - 1).max()),
        )
        z[i] = (res.mean_tau - exact) / res.se_tau
    return z


def summary(z, reps):
    """Independent subset (one r per seed) and per-r statistics with 4-sigma binomial bounds."""
    n = z.shape[0]
    cols = np.array([R_LIST[i % len(R_LIST)] - 1 for i in range(n)])
    zi = z[np.arange(n), cols]
    df = reps - 1
    e_abs = float(scipy.stats.t.expect(lambda x: abs(x), args=(df,)))  # E|t_df| (0.798 for N(0,1))
    p2 = float(2 * scipy.stats.t.sf(2.0, df))
    sd_abs = math.sqrt(1 + 2 / (df - 2) - e_abs**2) if df > 2 else float("nan")
    lines = [
        f"independent subset (one r per seed, n = {n}): mean z = {zi.mean():+.3f} "
        f"(expect 0 +- {4 / math.sqrt(n):.3f} at 4 SE), mean |z| = {np.abs(zi).mean():.3f} "
        f"(expect {e_abs:.3f} +- {4 * sd_abs / math.sqrt(n):.3f}), "
        f"frac |z| > 2 = {np.mean(np.abs(zi) > 2):.3f} (expect {p2:.3f}, 4-sigma upper "
        f"{p2 + 4 * math.sqrt(p2 * (1 - p2) / n):.3f}), max |z| = {np.abs(zi).max():.2f}",
        "per r (over seeds): r: mean z, mean |z|, frac |z|>2",
    ]
    for r in R_LIST:
        c = z[:, r - 1]
        lines.append(
            f"  r={r:2d}: {c.mean():+.3f}  {np.abs(c).mean():.3f}  {np.mean(np.abs(c) > 2):.3f}"
        )
    lines.append(
        f"all r pooled (correlated): mean |z| = {np.abs(z).mean():.3f}, frac |z| > 2 = "
        f"{np.mean(np.abs(z) > 2):.3f}, max |z| = {np.abs(z).max():.2f}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--workload", default="azure_conv")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--replications", type=int, default=32)
    ap.add_argument("--traces", default=None, help="folder of the Azure LLM 2023 CSV traces")
    ap.add_argument("--hash-module", default=None, help="module with install() (comparisons)")
    args = ap.parse_args(argv)
    if args.workload != "geometric" and args.traces is None:
        ap.error("--traces is needed for the trace workloads")
    jax.config.update("jax_enable_x64", True)
    if args.hash_module:
        importlib.import_module(args.hash_module).install()
    t = time.perf_counter()
    seeds = np.arange(args.first_seed, args.first_seed + args.seeds)
    z = z_scores(args.workload, seeds, args.steps, args.replications, args.traces)
    print(
        f"workload {args.workload}, {args.seeds} seeds, B = {B}, r_max = {R_MAX}, steps = "
        f"{args.steps}, replications = {args.replications} ({time.perf_counter() - t:.0f} s)"
    )
    print(summary(z, args.replications))
    return 0


if __name__ == "__main__":
    sys.exit(main())

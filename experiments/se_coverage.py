"""Coverage of one replication's confidence intervals: batch means against the exact steady state.

For each of ``--seeds`` seeds the fast kernel runs one replication of ``--steps`` steps
(paper-v1 latency, r = 1..``--r-max``) and its 95 % throughput interval is checked against
the exact steady-state throughput (``provision``'s exact method at 65,536 slot-load bins).
Two batch rules side by side: ``adaptive`` (batches of at least ``BATCH_IACTS``
autocorrelation times, the code's rule) and ``fixed`` (20 batches whatever their length, the
rule before session 26). Prints, per rule, the share of seeds whose interval covers the
exact value for each r, and how many runs warned that they are too short.

    python experiments/se_coverage.py [--workload paper-v1] [--batch 64] [--steps 2000]

Measured in session 26 (docs/simulation.md, "Estimators").
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import afd_jax.montecarlo.estimators as E
from afd_jax import provision, resolve_latency, resolve_workload, simulate


def coverage(w, lat, opts, args, exact) -> tuple[np.ndarray, int]:
    """(share of seeds covering the exact throughput per r, runs that warned)."""
    cover, warned = [], 0
    for seed in range(args.seeds):
        res = simulate(
            w, lat, args.batch, args.r_max, opts=opts, kernel="fast", steps=args.steps,
            replications=1, seed=seed,
        )  # fmt: skip
        cover.append((res.ci_low <= exact) & (exact <= res.ci_high))
        warned += res.se_warning is not None
    return np.mean(cover, axis=0), warned


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="paper-v1")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--r-max", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=40)
    args = p.parse_args()
    jax.config.update("jax_enable_x64", True)
    w = resolve_workload(args.workload)
    lat, opts = resolve_latency("paper-v1")
    exact = provision(w, lat, args.batch, r_max=args.r_max, opts=opts, slot_bins=65536)
    exact = exact.throughput["exact"]
    print(f"{args.workload}, B = {args.batch}, {args.steps} steps, {args.seeds} seeds")
    for rule, iacts in (("adaptive", E.BATCH_IACTS), ("fixed", 0.0)):
        E.BATCH_IACTS = iacts  # 0: every batch one block long at least, i.e. 20 batches
        share, warned = coverage(w, lat, opts, args, exact)
        print(f"{rule:>8}: coverage per r {np.round(share, 2).tolist()}, warned {warned}")


if __name__ == "__main__":
    main()

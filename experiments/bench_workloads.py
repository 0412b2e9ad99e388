"""Benchmark: slot-steps per second of the three kernels by workload kind, a parametric
workload (requests drawn by the copula sampler; the barrier draws pi from an alias table of
loads for both kinds) against a trace (an alias table of requests), at
r_max = 64, B = 256, latency paper-v1; `simulate`'s `wall_seconds`, fastest of --repeat runs
after a compiling call (docs/benchmarks.md, "Workload kinds").

    python experiments/bench_workloads.py --workloads paper-v1,azure_llm_2023_conv.csv \
        [--replications 8] [--repeat 3] [--out FILE]

A workload is a spec (``paper-v1``, ``geometric:prompt=...``) or a trace file name, looked up
like experiments/bench_kernels.py does ($AFD_TRACES_DIR, ../shared/traces).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import jax

from afd_jax.model.latency_io import resolve_latency
from afd_jax.montecarlo.simulate import simulate
from afd_jax.workload.specs import resolve_workload

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import bench_trace, emit, machine  # noqa: E402

RUNS = (("fast", 5_000), ("trajectory", 1_024), ("barrier", 4_096))  # kernel, steps


def _workload(name: str):
    if name.endswith((".csv", ".jsonl", ".gz")):
        return bench_trace(name)
    return resolve_workload(name)


def _rate(w, lat, kernel: str, steps: int, reps: int, repeat: int) -> float:
    kw = dict(kernel=kernel, steps=steps, replications=reps)
    simulate(w, lat, 256, 64, seed=1, **kw)  # compiles
    best = min(simulate(w, lat, 256, 64, seed=2, **kw).wall_seconds for _ in range(repeat))
    return 64 * 256 * steps * reps / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="paper-v1,azure_llm_2023_conv.csv")
    ap.add_argument("--replications", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    lat = resolve_latency("paper-v1")[0]
    head = " | ".join(f"{k}, {args.replications} x {t:,} steps" for k, t in RUNS)
    lines = [
        f"## workload kinds, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        "",
        f"Machine: {machine()}; r_max = 64, B = 256, latency paper-v1; slot-steps/s, fastest "
        f"of {args.repeat} after a compiling call.",
        "",
        f"| workload | {head} |",
        "|---|" + "---|" * len(RUNS),
    ]
    for name in args.workloads.split(","):
        w = _workload(name)
        rates = [_rate(w, lat, k, t, args.replications, args.repeat) for k, t in RUNS]
        lines.append(f"| `{name}` | " + " | ".join(f"{r:.3e}" for r in rates) + " |")
        print(lines[-1], file=sys.stderr)
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f}.", ""]
    emit("\n".join(lines), args.out, "a")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: slot-steps per second of the dynamics kernel under each option against today's
trajectory kernel, same workload, sizes and run.

    python experiments/bench_dynamics.py --trace TRACE.csv [--r-max 16 --batch 64 --steps 512]
        [--out docs/benchmarks.md --append] [--note "shared, loaded"] [--only LABEL ...]

Each configuration is compiled by a first call (its extra time is reported) and then timed
``--repeat`` times, the fastest counting (today's trajectory kernel always runs, as the
reference; ``--only`` picks the other rows). Two rates: per bundle slot (r_max B slots per step,
what one simulation answers for every r) and per simulated slot (load-aware routing simulates
one bundle per r, sum_r r B = r_max (r_max + 1) B / 2 slots, padded to r_max^2 B).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import jax

from afd_jax.kernels.dynamics import Dynamics
from afd_jax.model.latency_io import resolve_latency
from afd_jax.montecarlo.simulate import simulate
from afd_jax.workload.traces import load_trace

CONFIGS = {
    "trajectory kernel (today)": None,
    "in-place": Dynamics(),
    "in-place, KV capacity": Dynamics(kv_capacity=10**9),
    "jitter 0.2 + straggler 0.05,2": Dynamics(jitter_cv=0.2, straggler_p=0.05, straggler_s=2.0),
    "micro-batches m=2": Dynamics(microbatches=2),
    "experts 64,6,8": Dynamics(experts=64, expert_k=6, expert_ranks=8),
    "experts 64,6,8 skew 1": Dynamics(experts=64, expert_k=6, expert_ranks=8, expert_skew=1.0),
    "balanced": Dynamics(routing="balanced"),
    "power-of-2": Dynamics(routing="power-of-d"),
    "lookahead 8": Dynamics(routing="lookahead", lookahead=8),
}


def bench(w, lat, opts, cfg, args) -> tuple[float, float, float]:
    """(compile seconds, bundle slot-steps/s, simulated slot-steps/s)."""
    kw = dict(steps=args.steps, warmup=0, replications=args.replications, seed=0, opts=opts)
    if cfg is None:
        kw["kernel"] = "trajectory"
    else:
        kw["dynamics"] = cfg
    t0 = time.perf_counter()
    first = simulate(w, lat, args.batch, args.r_max, **kw)
    first_s = time.perf_counter() - t0
    best = min(
        simulate(w, lat, args.batch, args.r_max, **kw).wall_seconds for _ in range(args.repeat)
    )
    bundle = args.steps * args.replications * args.r_max * args.batch
    return first_s - best, bundle / best, first.slot_steps / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--r-max", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--replications", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--only", nargs="*", default=None, help="configuration labels to run")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    w = load_trace(args.trace)
    lat, opts = resolve_latency("paper-v1")
    dev = jax.devices()[0]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## dynamics kernel, {when}",
        "",
        f"Machine: {platform.node()} ({platform.machine()}, {jax.device_count()} x "
        f"{dev.platform}:{getattr(dev, 'device_kind', '')}, {len(jax.devices('cpu'))} CPU "
        f"device(s)) {args.note}. Trace {args.trace.split('/')[-1]}, latency paper-v1, "
        f"r_max = {args.r_max}, B = {args.batch}, {args.steps} steps x {args.replications} "
        f"replications, fastest of {args.repeat}.",
        "",
        "| configuration | bundle slot-steps/s | simulated slot-steps/s | compile s |",
        "|---|---|---|---|",
    ]
    for label, cfg in CONFIGS.items():
        if args.only and label not in args.only and cfg is not None:
            continue
        comp, bundle, sim = bench(w, lat, opts, cfg, args)
        lines.append(f"| {label} | {bundle:.3e} | {sim:.3e} | {comp:.1f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "a" if args.append else "w") as f:
            f.write("\n" + text if args.append else text)
    else:
        print(text)


if __name__ == "__main__":
    main()

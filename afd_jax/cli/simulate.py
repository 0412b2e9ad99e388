"""``afd-jax simulate``: Monte Carlo throughput per instance for r = 1..r_max (docs/simulation.md).

Runs one of the JAX kernels (barrier sampler, step-by-step trajectories, fast renewal
trajectories) and prints, per r, the throughput per instance with a confidence interval, idle
fractions, the barrier share and step-time percentiles.
"""

from __future__ import annotations

import sys

from ..errors import InputError
from .common import (
    add_latency_args,
    add_workload_args,
    emit_json,
    load_latency,
    load_workload,
    positive_int,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="Monte Carlo simulation of the rA-1F bundle (JAX kernels)",
        description=(
            "Simulate r_max Attention workers of B slots each and report, for every r <= "
            "r_max (common random numbers), throughput per instance with a confidence "
            "interval, idle fractions, barrier share and step-time percentiles."
        ),
    )
    add_workload_args(p)
    p.add_argument("--batch", "-B", type=int, required=True, help="slots per Attention instance")
    add_latency_args(p)
    p.add_argument("--r-max", type=int, default=32, help="largest r simulated (default 32)")
    p.add_argument(
        "--kernel",
        choices=("barrier", "trajectory", "fast"),
        default="fast",
        help="barrier: i.i.d. steady-state snapshots; trajectory: step-by-step slots; fast: "
        "the same trajectories by renewal sequences (default)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=4096,
        help="measured decode steps per replication (barrier: snapshots per replication)",
    )
    p.add_argument("--warmup", type=int, default=0, help="discarded steps (trajectory kernels)")
    p.add_argument("--replications", type=int, default=8, help="independent replications")
    p.add_argument(
        "--init",
        choices=("stationary", "cold"),
        default="stationary",
        help="stationary start (default) or all slots fresh (the paper's v1 simulator)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument(
        "--memory-budget-mb", type=int, default=1024, help="chunk size budget (default 1024)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--plot", metavar="FILE", default=None, help="write a figure (.png/.pdf/.svg)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    from ..simulate import simulate

    positive_int("batch", args.batch)
    positive_int("r-max", args.r_max)
    positive_int("steps", args.steps)
    positive_int("replications", args.replications)
    positive_int("memory-budget-mb", args.memory_budget_mb)
    if args.warmup < 0:
        raise InputError(f"must be >= 0, got {args.warmup}", field="warmup")
    if args.seed < 0:
        raise InputError(f"must be >= 0, got {args.seed}", field="seed")
    w = load_workload(args)
    lat, opts = load_latency(args)
    res = simulate(
        w,
        lat,
        args.batch,
        args.r_max,
        kernel=args.kernel,
        steps=args.steps,
        warmup=args.warmup,
        replications=args.replications,
        init=args.init,
        seed=args.seed,
        opts=opts,
        level=args.level,
        memory_budget_bytes=args.memory_budget_mb << 20,
        progress=not args.quiet,
    )
    out = res.to_json()
    out["workload"] = args.workload
    if args.plot:
        _plot(res, args.plot, args.workload)
        out["plot"] = args.plot
    if args.json:
        emit_json(out)
        return 0
    print(
        f"workload {args.workload}: B = {res.batch}, kernel {res.kernel} ({res.init} start), "
        f"{res.replications} x {res.steps} steps, seed {res.seed}"
    )
    print(
        f"mean slot load {res.mean_slot_load:.1f} +- {res.se_slot_load:.1f}; "
        f"{res.slot_steps:.3e} slot-steps in {res.wall_seconds:.2f} s "
        f"({res.slot_steps_per_second:.3e}/s) on {res.device}"
    )
    lvl = int(round(100 * res.level))
    print(
        f"{'r':>3} {'tokens/s/inst':>13} {lvl:>3}% CI{'':>14} {'idle A':>7} {'idle F':>7} "
        f"{'barrier':>7} {'P50 us':>9} {'P99 us':>9}"
    )
    for row in res.results_table():
        mark = " *" if row["r"] == res.r_best else ""
        print(
            f"{row['r']:>3} {row['throughput']:>13.1f} [{row['ci_low']:>9.1f}, "
            f"{row['ci_high']:>9.1f}] {row['idle_attn']:>7.3f} {row['idle_ffn']:>7.3f} "
            f"{row['barrier_share']:>7.3f} {row['step_p50']:>9.1f} {row['step_p99']:>9.1f}{mark}"
        )
    print(f"best r = {res.r_best} (*)")
    if args.plot:
        print(f"figure: {args.plot}", file=sys.stderr)
    return 0


def _plot(res, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(res.r, res.throughput, "o-", ms=3, label=f"{res.kernel} kernel")
    a1.fill_between(res.r, res.ci_low, res.ci_high, alpha=0.3, label=f"{res.level:.0%} CI")
    a1.set_xlabel("r (Attention instances per FFN)")
    a1.set_ylabel("throughput per instance (tokens/s)")
    a1.legend()
    a2.plot(res.r, res.idle_attn, label="Attention idle")
    a2.plot(res.r, res.idle_ffn, label="FFN idle")
    a2.plot(res.r, res.barrier_share, label="barrier share")
    a2.set_xlabel("r")
    a2.set_ylabel("fraction of time")
    a2.legend()
    fig.suptitle(f"{title}: B = {res.batch}")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot write figure: {err}", path=path) from err
    finally:
        plt.close(fig)

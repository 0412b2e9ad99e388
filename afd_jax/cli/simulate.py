"""``afd-jax simulate``: Monte Carlo throughput per instance for r = 1..r_max (docs/simulation.md).

Runs one of the JAX kernels (barrier sampler, step-by-step trajectories, fast renewal
trajectories) and prints, per r, the throughput per instance with a confidence interval, idle
fractions, the barrier share and step-time percentiles.

Two measurement windows (``--window``): ``steps`` (default): ``--steps`` decode steps after
``--warmup`` of an infinite request stream (``--init`` stationary or cold); ``completions``:
the paper's v1 simulator (:func:`afd_jax.montecarlo.pool.pool_simulate`): a cold start on a
finite pool of ``--requests`` requests, throughput over the time until
``--completion-fraction`` of them have completed, each r = 1..r_max run on its own (same pools
for every r). Both return the one ``MonteCarloResult``, printed by the same code with the same
columns.
"""

from __future__ import annotations

import argparse
import math
import sys

from afd_jax.choices import DYNAMICS_KEYS, PRECISIONS
from afd_jax.cli import use_float64
from afd_jax.cli.common import (
    add_distributed_args,
    add_latency_args,
    add_memory_budget_arg,
    add_workload_args,
    check_seed,
    emit_json,
    fill_defaults,
    load_latency,
    load_workload,
    plot_file,
    positive_int,
    start_distributed,
    wants_distributed,
)
from afd_jax.errors import InputError, check_level, check_output_file
from afd_jax.kernels.options import INITS, KERNELS, ROUTINGS
from afd_jax.memory import current_budget
from afd_jax.montecarlo.result import MonteCarloResult
from afd_jax.studies.plots import plot_simulation

WINDOWS = ("steps", "completions")
DEFAULT_STEPS = 4096
DEFAULT_REQUESTS = 10_000
DEFAULT_FRACTION = 0.8
_STEP_ONLY = ("kernel", "steps", "warmup", "init")
_POOL_ONLY = ("requests", "completion_fraction", "ffn_tokens")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
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
        "--window",
        choices=WINDOWS,
        default="steps",
        help="steps: a window of --steps decode steps (default); completions: cold start on a "
        "finite pool of --requests, measured until --completion-fraction of them completed "
        "(the paper's v1 simulator)",
    )
    p.add_argument(
        "--kernel",
        choices=KERNELS,
        default=None,
        help="steps window: barrier: i.i.d. steady-state snapshots; trajectory: step-by-step "
        "slots; fast: the same trajectories by renewal sequences (default)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured decode steps per replication (barrier: snapshots per replication; "
        f"default {DEFAULT_STEPS})",
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="discarded steps (trajectory kernels; default 0)"
    )
    p.add_argument(
        "--replications",
        type=int,
        default=8,
        help="independent replications (completions window: request pools)",
    )
    p.add_argument(
        "--init",
        choices=INITS,
        default=None,
        help="stationary start (default) or all slots fresh (the paper's v1 simulator); the "
        "completions window is always cold",
    )
    g = p.add_argument_group("completions window (--window completions)")
    g.add_argument(
        "--requests",
        type=int,
        default=None,
        help=f"requests N in each pool (default {DEFAULT_REQUESTS})",
    )
    g.add_argument(
        "--completion-fraction",
        type=float,
        default=None,
        help=f"measure until this fraction of the N requests completed, in (0, 1] (default "
        f"{DEFAULT_FRACTION})",
    )
    g.add_argument(
        "--ffn-tokens",
        choices=("nominal", "active"),
        default=None,
        help="FFN/communication tokens: the nominal r*B (default, docs/model.md 2) or only the "
        "active slots (an FFN whose cost shrinks as the pool drains)",
    )
    add_dynamics_args(p)
    add_run_args(p)
    p.add_argument(
        "--memory-budget-mb",
        type=int,
        default=None,
        help="steps window: chunk size budget (default 1024, at most half of --memory-budget)",
    )
    add_memory_budget_arg(p)
    p.add_argument(
        "--exact-shapes",
        action="store_true",
        help="fast kernel: compile for this --r-max and --batch exactly instead of padding "
        "them to a shape bucket shared by nearby values (the numbers are the same either way)",
    )
    add_output_args(p)
    add_distributed_args(p)
    p.set_defaults(func=run)


def add_output_args(p) -> None:
    """Where a run's results go: the checkpoint, JSON, a figure, the progress bar, and the
    processes of a cluster (``--distributed``)."""
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        default=None,
        help="save the run's sums to FILE as its chunks of replications finish (at most every "
        "10 s); the same command run again resumes from FILE, to the same numbers "
        "(docs/simulation.md; one process)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--plot", metavar="FILE", default=None, help="write a figure (.png/.pdf/.svg)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (a cluster JAX detects, e.g. SLURM): every "
        "process's devices share the replications; process 0 prints (README)",
    )


def add_run_args(p) -> None:
    """Seed, confidence level and the float precision of the kernels."""
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="float dtype of the kernels' step times and sums: float32 (default) or float64 "
        "(slower; for comparisons beyond float32 rounding)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")


def _numbers(kind, n: int, what: str):
    """argparse type of ``n`` comma-separated numbers (``p,s`` or ``E,k,G``)."""

    def parse(text: str):
        parts = text.split(",")
        try:
            if len(parts) != n:
                raise ValueError
            return [kind(x) for x in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


def add_dynamics_args(p) -> None:
    """Options of the dynamics kernel (docs/dynamics.md); any of them selects it."""
    g = p.add_argument_group("dynamics (steps window; any of these runs the dynamics kernel)")
    g.add_argument(
        "--routing",
        choices=ROUTINGS,
        default=None,
        help="fresh requests to freed slots: in-place (the paper), balanced (longest prompt to "
        "the lightest worker), power-of-d (lighter of d workers) or lookahead (the lightest "
        "worker takes, of k waiting requests, the one that brings it nearest the mean load)",
    )
    g.add_argument(
        "--routing-d", type=int, default=None, help="power-of-d candidates (2; that routing only)"
    )
    g.add_argument(
        "--lookahead",
        type=int,
        default=None,
        help="requests a lookahead router chooses from (1; that routing only)",
    )
    g.add_argument(
        "--slot-slack", type=int, default=None, help="a worker holds B-s..B+s requests (0)"
    )
    g.add_argument(
        "--kv-capacity",
        type=int,
        default=None,
        help="KV tokens per worker (default, or 0: unlimited); the start fills every slot, so "
        "give a --warmup that drains a start above the capacity",
    )
    g.add_argument(
        "--microbatches", type=int, default=None, help="m micro-batches, ping-pong schedule"
    )
    g.add_argument("--jitter-cv", type=float, default=None, help="Attention-time noise CV")
    g.add_argument(
        "--straggler",
        type=_numbers(float, 2, "p,s"),
        default=None,
        metavar="P,S",
        help="with probability p a worker's Attention takes s times longer",
    )
    g.add_argument(
        "--experts",
        type=_numbers(int, 3, "E,k,G"),
        default=None,
        metavar="E,K,G",
        help="MoE FFN: top-k of E experts on G ranks; the most loaded rank sets t_F",
    )
    g.add_argument(
        "--expert-skew", type=float, default=None, help="Zipf exponent of expert popularity (0)"
    )


def _dynamics(args):
    """The Dynamics of the flags, or None (today's kernels)."""
    values = {k: getattr(args, k) for k in DYNAMICS_KEYS}
    if all(v is None for v in values.values()):
        return None  # without loading the dynamics driver (and JAX)
    from afd_jax.montecarlo.dynamics import dynamics_options

    cfg = dynamics_options(values, dash=True)
    if cfg is not None and args.kernel is not None:
        raise InputError("dynamics options run their own kernel; drop --kernel", field="kernel")
    if cfg is not None and args.window == "completions":
        raise InputError("dynamics options need --window steps", field="window")
    return cfg


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_window_flags(args) -> None:
    """Flags of the other window are an error (InputError), not silently ignored."""
    if args.window == "completions":
        bad = [k for k in _STEP_ONLY if getattr(args, k) is not None]
        if args.init == "cold":
            bad.remove("init")  # the completions window is a cold start: allowed, redundant
        if bad:
            raise InputError(
                f"{', '.join(_flag(k) for k in bad)} not allowed with --window completions "
                "(a cold start measured until a fraction of a finite pool completed)",
                field=bad[0],
            )
    else:
        bad = [k for k in _POOL_ONLY if getattr(args, k) is not None]
        if bad:
            raise InputError(
                f"{', '.join(_flag(k) for k in bad)} need --window completions", field=bad[0]
            )


def _check_fast_only(args, dynamics) -> None:
    """--exact-shapes (the fast kernel's shape buckets) and --memory-budget-mb (the steps
    window's chunks) where they act; elsewhere they were ignored without a word."""
    if args.window == "completions" and args.memory_budget_mb is not None:
        raise InputError(
            "sizes the steps window's chunks; --window completions runs whole pools",
            field="--memory-budget-mb",
        )
    if args.exact_shapes and (
        args.window == "completions" or dynamics is not None or args.kernel not in (None, "fast")
    ):
        raise InputError(
            "applies to the fast kernel only (the steps window's default without dynamics options)",
            field="--exact-shapes",
        )


# JAX and the drivers are imported when the command runs, not when the parser is built (the CLI
# builds every command's parser at start).


def run(args) -> int:
    use_float64()
    _check_window_flags(args)
    dynamics = _dynamics(args)
    _check_fast_only(args, dynamics)
    positive_int("batch", args.batch)
    positive_int("r-max", args.r_max)
    positive_int("replications", args.replications)
    fill_defaults(args, {"memory_budget_mb": 1024})
    positive_int("memory-budget-mb", args.memory_budget_mb)
    check_seed("seed", args.seed)
    check_level(args.level)
    plot = plot_file(args.plot)
    if args.checkpoint is not None:
        check_output_file(args.checkpoint, "--checkpoint")
    if wants_distributed(args):
        start_distributed(args)
    res = _run_pool(args) if args.window == "completions" else _run_steps(args, dynamics)
    import jax  # loaded by the run

    if jax.process_index() != 0:
        return 0  # every process holds the same result; process 0 reports it
    if res.checkpoint is not None and res.checkpoint["resumed_chunks"]:
        done, n = res.checkpoint["resumed_chunks"], res.checkpoint["chunks"]
        print(f"resumed from {args.checkpoint}: {done} of {n} chunks were done", file=sys.stderr)
    out = res.to_json()
    out["workload"] = args.workload
    for text in res.warnings():
        print(f"afd-jax simulate: warning: {text}", file=sys.stderr)
    if dynamics is not None:
        out["idealised"] = _idealised(args)
    if plot:
        plot_simulation(res, plot, args.workload)
        out["plot"] = str(plot)
    if args.json:
        emit_json(out)
        return 0
    for line in _describe(res, args.workload):
        print(line)
    _print_table(res, args.window)
    if dynamics is not None:
        ideal = out["idealised"]["r_best"]
        print(
            f"empty slots (r = {res.r_best}): {res.empty_slot_fraction[res.r_best - 1]:.3f}; "
            "idealised model r*: "
            + ", ".join(f"{k} {v}" for k, v in ideal.items())
            + f"; simulated with the dynamics: {res.r_best}"
        )
    if plot:
        print(f"figure: {plot}", file=sys.stderr)
    return 0


def _run_steps(args, dynamics=None) -> MonteCarloResult:
    """--window steps: :func:`afd_jax.montecarlo.simulate.simulate` for r = 1..r_max."""
    args.kernel = args.kernel or "fast"
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    args.warmup = 0 if args.warmup is None else args.warmup
    args.init = args.init or "stationary"
    positive_int("steps", args.steps)
    if args.warmup < 0:
        raise InputError(f"must be >= 0, got {args.warmup}", field="warmup")
    w = load_workload(args)
    lat, opts = load_latency(args)
    from afd_jax.montecarlo.simulate import simulate  # JAX loads here, after the inputs

    return simulate(
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
        memory_budget_bytes=min(args.memory_budget_mb << 20, current_budget() // 2),
        shape_buckets=not args.exact_shapes,
        progress=not args.quiet,
        dynamics=dynamics,
        precision=args.precision,
        checkpoint=args.checkpoint,
    )


def _idealised(args) -> dict:
    """Best r and throughput of the idealised model (mean field, Gaussian, exact), reported
    beside a dynamics run (:func:`afd_jax.studies.provision.provision`)."""
    from afd_jax.studies.provision import provision

    lat, opts = load_latency(args)
    ref = provision(load_workload(args), lat, args.batch, r_max=args.r_max, opts=opts)
    return {
        "r_best": {k: int(v) for k, v in ref.r_best.items()},
        "throughput": {k: [float(x) for x in v] for k, v in ref.throughput.items()},
    }


def _run_pool(args) -> MonteCarloResult:
    """--window completions: :func:`afd_jax.montecarlo.pool.pool_simulate` for r = 1..r_max."""
    n = DEFAULT_REQUESTS if args.requests is None else args.requests
    x = DEFAULT_FRACTION if args.completion_fraction is None else args.completion_fraction
    positive_int("requests", n)
    if not 0 < x <= 1:
        raise InputError(f"must be in (0, 1], got {x}", field="completion-fraction")
    w = load_workload(args)
    lat, opts = load_latency(args)
    from afd_jax.montecarlo.pool import pool_simulate  # JAX loads here, after the inputs

    return pool_simulate(
        w,
        lat,
        args.batch,
        range(1, args.r_max + 1),
        n_requests=n,
        completion_fraction=x,
        replications=args.replications,
        seed=args.seed,
        opts=opts,
        ffn_tokens=args.ffn_tokens or "nominal",
        level=args.level,
        diagnostics=True,
        progress=not args.quiet,
        precision=args.precision,
        checkpoint=args.checkpoint,
    )


def _describe(res: MonteCarloResult, workload: str) -> list[str]:
    """The two header lines: what was simulated, and how much of it how fast."""
    win = res.window
    if win["kind"] == "completions":
        what = (
            f"pool kernel (cold start), {res.replications} pools x {win['requests']} requests, "
            f"window: first {win['fraction']:.0%} of completions, FFN tokens {res.ffn_tokens}"
        )
        load = ""
    else:
        what = f"kernel {res.kernel} ({res.init} start), {res.replications} x {win['steps']} steps"
        se = f" +- {res.se_slot_load:.1f}" if math.isfinite(res.se_slot_load) else ""
        load = f"mean slot load {res.mean_slot_load:.1f}{se}; "
    if res.precision != "float32":
        what += f", {res.precision} step times"
    rate = res.slot_steps_per_second
    rate = f"{rate:.3e}/s" if math.isfinite(rate) else "resumed from a checkpoint"
    return [
        f"workload {workload}: B = {res.batch}, {what}, seed {res.seed}",
        f"{load}{res.slot_steps:.3e} slot-steps in {res.wall_seconds:.2f} s "
        f"({rate}) on {res.device} x{res.devices}"
        + (f" ({res.processes} processes)" if res.processes > 1 else ""),
    ]


def _print_table(res: MonteCarloResult, window: str) -> None:
    rows, r_best, replications = res.results_table(), res.r_best, res.replications
    lvl = int(round(100 * res.level))
    per = "tokens/s/inst" if res.throughput_unit.endswith("instance") else "tokens/s/cost"
    print(
        f"{'r':>3} {per:>13} {lvl:>3}% CI{'':>14} {'idle A':>7} {'idle F':>7} "
        f"{'barrier':>7} {'P50 us':>9} {'P99 us':>9} {'busy':>6}"
    )
    for row in rows:
        mark = " *" if row["r"] == r_best else ""
        low, high = (_ci_cell(row[k]) for k in ("ci_low", "ci_high"))
        idle_a, idle_f, bar = (
            round(row[k], 3) + 0.0 for k in ("idle_attn", "idle_ffn", "barrier_share")
        )  # no "-0.000" for a rounding error below zero
        print(
            f"{row['r']:>3} {row['throughput']:>13.1f} [{low}, {high}] {idle_a:>7.3f} "
            f"{idle_f:>7.3f} {bar:>7.3f} {row['step_p50']:>9.1f} {row['step_p99']:>9.1f}"
            f" {row['active_fraction']:>6.3f}{mark}"
        )
    print(f"best r = {r_best} (*); busy: mean fraction of slots active")
    if all(math.isfinite(row[k]) for row in rows for k in ("ci_low", "ci_high")):
        return
    if replications == 1 and window == "completions":
        why = "one pool gives no spread across pools (use --replications >= 2)"
    elif replications == 1:
        why = (
            "one replication needs at least two batch means of 128-step blocks for one (use "
            "--replications >= 2 or --steps >= 256)"
        )
    else:
        why = (
            "some intervals of the mean step time reach 0, so the throughput's upper bound is "
            "unbounded (too few replications for this spread: use more --replications)"
        )
    print(f"afd-jax simulate: warning: no confidence interval: {why}", file=sys.stderr)


def _ci_cell(value: float) -> str:
    """A CI bound of the text table; "-" where there is none (one short replication)."""
    return f"{value:>9.1f}" if math.isfinite(value) else f"{'-':>9}"

"""``afd-jax sweep SPEC.toml``: sensitivity sweeps over workloads, B and latency coefficients.

One table row per (scenario, r) with each method's throughput, written in atomic chunks;
``--resume`` continues an interrupted run (docs/sweep.md)."""

from __future__ import annotations

import math
import os
import sys
import time

from afd_jax.cli.common import (
    add_distributed_args,
    add_memory_budget_arg,
    emit_json,
    start_distributed,
    wants_distributed,
)
from afd_jax.errors import InputError, check_output_dir, check_output_file
from afd_jax.studies.store import PeersLost


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        description=(
            "Evaluate every scenario of a sweep spec (workloads x batch sizes x latency "
            "coefficients/costs) for r = 1..r_max by the chosen methods (mean_field, gaussian, "
            "exact, mc, optimize) and write one row per (scenario, r). The spec is validated "
            "completely before any work starts. See docs/sweep.md."
        ),
    )
    p.add_argument("spec", metavar="SPEC.toml", help="sweep spec (TOML)")
    p.add_argument("--out", default=None, help="output table (overrides the spec's `output`)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep from its finished chunks (OUT.parts/)",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        metavar="N",
        help="scenarios per chunk (default: the spec's, else from memory_budget_mb)",
    )
    p.add_argument(
        "--plot-dir", default=None, metavar="DIR", help="also write regime and error maps here"
    )
    p.add_argument(
        "--plot-x", default=None, help="x parameter of the maps (default: first swept parameter)"
    )
    p.add_argument(
        "--plot-y", default=None, help="y parameter of the maps (default: second swept parameter)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_memory_budget_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (multi-host; see docs/sweep.md) and split the "
        "chunks over the processes",
    )
    add_distributed_args(p)
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="multi-process: process 0 reports a process whose heartbeat is older than S "
        "seconds (> 0) and stops (finished chunks are kept; rerun with --resume); default 120",
    )
    p.set_defaults(func=run)


def _check_parquet(spec, out: str, spec_path: str) -> None:
    """The table's format from its suffix (agreeing with the spec's ``format``); Parquet output
    needs pyarrow (an optional dependency): InputError before any work."""
    from afd_jax.studies.sweep.spec import output_format

    if output_format(spec, out) == "parquet":
        try:
            import pyarrow  # noqa: F401  (optional dependency, only probed here)
        except ImportError:
            raise InputError(
                'Parquet output needs pyarrow (pip install pyarrow); use format = "csv"',
                path=spec_path,
                field="format",
            ) from None


def _check_outputs(args, out: str) -> None:
    """Every place the sweep writes, before any work: the table, its parts folder, the maps."""
    from afd_jax.studies.sweep.run import parts_dir

    check_output_file(out, "--out")
    check_output_dir(parts_dir(out), "--out (its .parts folder)")
    if args.plot_dir:
        check_output_dir(args.plot_dir, "--plot-dir")


def run(args) -> int:
    # JAX and the study load here, not at import: `afd-jax sweep --help` does not need them
    import jax

    from afd_jax.studies.sweep import check_axes, load_spec, make_plan, plot_sweep, run_sweep

    t0 = time.perf_counter()
    jax.config.update("jax_enable_x64", True)
    if args.chunk_size is not None and args.chunk_size < 1:
        raise InputError(f"must be >= 1, got {args.chunk_size}", field="--chunk-size")
    if not (math.isfinite(args.peer_timeout) and args.peer_timeout > 0):
        raise InputError(f"must be a number of seconds > 0, got {args.peer_timeout}",
                         field="--peer-timeout")  # fmt: skip
    for flag in ("plot_x", "plot_y"):
        if getattr(args, flag) is not None and not args.plot_dir:
            raise InputError(
                "names an axis of the maps, which need --plot-dir",
                field=f"--{flag.replace('_', '-')}",
            )
    spec = load_spec(args.spec)
    out = spec.output if args.out is None else args.out  # --out "" is refused, not ignored
    _check_outputs(args, out)
    _check_parquet(spec, out, args.spec)
    plan = make_plan(spec)  # resolves and validates everything before any evaluation
    if args.plot_dir:
        check_axes(plan, args.plot_x, args.plot_y)
    pidx, pcount = 0, 1
    if wants_distributed(args):
        start_distributed(args)
        pidx, pcount = jax.process_index(), jax.process_count()
    if not args.quiet:
        print(
            f"afd-jax sweep: {plan.n_scenarios} scenarios x r = 1..{spec.r_max} "
            f"({', '.join(spec.methods)}) on {len(jax.local_devices())} device(s)",
            file=sys.stderr,
        )
    try:
        res = run_sweep(
            plan,
            output=out,
            resume=args.resume,
            chunk_size=args.chunk_size,
            progress=not args.quiet,
            process_index=pidx,
            process_count=pcount,
            peer_timeout_s=args.peer_timeout,
        )
    except PeersLost as err:
        print(f"afd-jax sweep: {err}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # jax.distributed's exit barrier would wait for the lost process, then abort: leave now
        os._exit(3)
    plots = []
    if args.plot_dir and pidx == 0:
        plots = plot_sweep(res.output, args.plot_dir, plan, args.plot_x, args.plot_y)
    summary = res.summary()
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["plots"] = plots
    if args.json:
        emit_json(summary)
    else:
        rates = ", ".join(
            f"{m} {v:,.0f}/s" for m, v in summary["evaluations_per_second"].items() if v
        )
        print(
            f"wrote {summary['n_rows']} rows ({summary['n_scenarios']} scenarios) to "
            f"{summary['output']} in {summary['wall_seconds']:.1f} s"
            + (f"; scenario-r evaluations: {rates}" if rates else "")
        )
        for p in plots:
            print(f"plot: {p}")
    return 0

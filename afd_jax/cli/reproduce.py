"""``afd-jax reproduce``: the paper's claims checked at scale (docs/reproduction.md)."""

from __future__ import annotations

import os
import sys

from afd_jax.cli import use_float64
from afd_jax.cli.common import check_seed, emit_json
from afd_jax.errors import check_output_dir

TRACES_ENV = "AFD_TRACES_DIR"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce",
        description=(
            "Runs the reproduction (docs/reproduction.md) and writes CSV tables, report.md "
            "and PNG figures into --out. A rerun into the same folder resumes (finished parts "
            "are skipped). --quick is the small CI configuration (no traces, under a minute)."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--quick", action="store_true", help="small configuration (CI)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--traces-dir",
        metavar="PATH",
        default=None,
        help=f"folder with the public traces (default ${TRACES_ENV}; without either, the full "
        "mode runs without the trace scenarios; quick mode never reads traces)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--json", action="store_true", help="print the run's meta data as JSON")
    p.set_defaults(func=run)


def traces_dir(args) -> str | None:
    """--traces-dir, else $AFD_TRACES_DIR, else None (no traces folder)."""
    return args.traces_dir or os.environ.get(TRACES_ENV) or None


def run(args) -> int:
    # JAX loads with the study, after the flags are checked (afd-jax --help and a rejected
    # flag do not pay for it)
    use_float64()
    check_seed("--seed", args.seed)
    check_output_dir(args.out, "--out")
    from afd_jax.studies.reproduce import run_reproduction

    meta = run_reproduction(
        args.out,
        quick=args.quick,
        seed=args.seed,
        traces_dir=traces_dir(args),
        plots=not args.no_plots,
    )
    if args.json:
        emit_json(meta)
    else:
        print(f"wrote {args.out}/report.md ({meta['mode']} mode, {meta['wall_seconds']} s)")
        if meta["skipped_workloads"]:
            print(f"skipped workloads: {', '.join(meta['skipped_workloads'])}", file=sys.stderr)
    return 0

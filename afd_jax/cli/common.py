"""Options and helpers shared by the subcommands (workload, latency, output)."""

from __future__ import annotations

import json
import math
import sys

from ..errors import InputError


def add_workload_args(parser, required: bool = True) -> None:
    g = parser.add_argument_group("workload")
    g.add_argument(
        "--workload",
        required=required,
        metavar="TRACE_OR_PRESET",
        help="a trace file (CSV/JSONL, .gz ok) or a preset/parametric spec "
        "(see `afd-jax theta --help` and docs/workloads.md)",
    )
    g.add_argument(
        "--format",
        dest="trace_format",
        default=None,
        help="trace format (default: detected from the header)",
    )
    g.add_argument(
        "--decode-mapping",
        choices=("output", "output-minus-one"),
        default="output",
        help="decode steps D = output tokens (default) or output tokens - 1",
    )
    g.add_argument(
        "--load-offset",
        type=int,
        choices=(0, 1),
        default=0,
        help="slot load at decode step k is P + k + offset (default 0)",
    )


def load_workload(args):
    """Resolve --workload (path or preset) into a workload object."""
    from ..workloads import resolve_workload

    return resolve_workload(
        args.workload, fmt=args.trace_format, decode_mapping=args.decode_mapping
    )


def positive_int(name: str, value: int) -> int:
    if value is None or value < 1:
        raise InputError(f"must be an integer >= 1, got {value}", field=name)
    return value


def finite_nonneg(name: str, value: float) -> float:
    if value is None or not math.isfinite(value) or value < 0:
        raise InputError(f"must be a finite number >= 0, got {value}", field=name)
    return value


def emit_json(obj) -> None:
    """Write exactly one JSON object on stdout (NaN/inf become null)."""

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
            return clean(x.item())
        if hasattr(x, "tolist"):
            return clean(x.tolist())
        return x

    sys.stdout.write(json.dumps(clean(obj), indent=2) + "\n")

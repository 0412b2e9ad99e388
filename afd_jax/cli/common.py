"""Options and helpers shared by the subcommands (workload, latency, output)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from afd_jax.errors import (
    InputError,
    check_output_file,
    check_seed,
    finite_nonneg,
    positive_int,
)
from afd_jax.memory import DEFAULT_FRACTION, parse_size
from afd_jax.model.latency_io import resolve_latency
from afd_jax.workload.specs import resolve_workload

__all__ = [
    "DEFAULT_LATENCY",
    "LATENCY_FLAGS",
    "PLOT_SUFFIXES",
    "add_latency_args",
    "add_memory_budget_arg",
    "add_workload_args",
    "check_seed",  # re-exported from afd_jax.errors
    "emit_json",
    "finite_nonneg",  # re-exported from afd_jax.errors
    "load_latency",
    "load_workload",
    "plot_file",
    "positive_int",  # re-exported from afd_jax.errors
    "warn_lattice",
]

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(err.reason) from None


def add_memory_budget_arg(parser) -> None:
    """``--memory-budget SIZE``: the most memory the command may plan to use (afd_jax.memory);
    the CLI's main runs the command under it. Every command with large inputs adds it."""
    parser.add_argument(
        "--memory-budget",
        type=_size,
        default=None,
        metavar="SIZE",
        help=f"refuse work whose memory estimate exceeds SIZE (512M, 2G, or MiB; default "
        f"{DEFAULT_FRACTION:.0%} of physical memory, less under ulimit -v; "
        "docs/reliability.md)",
    )


def plot_file(path: str | None, option: str = "--plot") -> Path | None:
    """The figure file of ``--plot NAME``, checked before any work: NAME without a suffix gets
    ``.png`` (the file actually written, which the command reports); other suffixes than
    PLOT_SUFFIXES and unwritable places are an InputError."""
    if path is None:
        return None
    out = Path(path)
    if out.suffix == "" and not out.is_dir():
        out = out.with_name(out.name + ".png")
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(
            f"{option}: unsupported figure suffix {out.suffix!r} (use {', '.join(PLOT_SUFFIXES)})",
            path=str(out),
        )
    return check_output_file(out, option)


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
    return resolve_workload(
        args.workload, fmt=args.trace_format, decode_mapping=args.decode_mapping
    )


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


LATENCY_FLAGS = (
    ("alpha_attn", "us per KV token of a worker's load"),
    ("beta_attn", "us, fixed Attention time per step"),
    ("alpha_ffn", "us per token of the FFN batch (r*B tokens)"),
    ("beta_ffn", "us, fixed FFN time per step"),
    ("alpha_comm", "us per communicated token (X = r*B or B)"),
    ("beta_comm", "us, fixed communication time per step"),
    ("cost_attn", "relative cost of an Attention instance (default 1)"),
    ("cost_ffn", "relative cost of an FFN instance (default 1)"),
)
DEFAULT_LATENCY = "paper-v1"


def add_latency_args(parser) -> None:
    """--latency FILE_OR_PRESET, the six coefficient flags, costs, --comm-scaling, --overlap."""
    g = parser.add_argument_group(
        "latency model (microseconds; docs/latency_presets.md)",
        "flags override the values of --latency",
    )
    g.add_argument(
        "--latency",
        metavar="FILE_OR_PRESET",
        default=None,
        help=f"latency TOML file or preset name (default: {DEFAULT_LATENCY} unless all six "
        "--alpha-*/--beta-* flags are given)",
    )
    for key, text in LATENCY_FLAGS:
        g.add_argument("--" + key.replace("_", "-"), dest=key, type=float, default=None, help=text)
    g.add_argument(
        "--comm-scaling",
        choices=("aggregate", "per_worker"),
        default=None,
        help="communicated tokens X = r*B (aggregate, default) or B (per_worker, paper v1)",
    )
    g.add_argument(
        "--overlap",
        choices=("pipelined", "serial"),
        default=None,
        help="tau = max of the stages (pipelined, default) or their sum (serial)",
    )


def load_latency(args):
    """(Latency, ModelOptions) from the latency flags (and --load-offset when present)."""
    overrides = {key: getattr(args, key, None) for key, _ in LATENCY_FLAGS}
    spec = getattr(args, "latency", None)
    six = [k for k, _ in LATENCY_FLAGS[:6]]
    if spec is None and not all(overrides[k] is not None for k in six):
        if any(overrides[k] is not None for k in six):
            missing = [k for k in six if overrides[k] is None]
            raise InputError(
                "give --latency FILE_OR_PRESET or all six coefficient flags; missing "
                + ", ".join("--" + k.replace("_", "-") for k in missing),
                field="latency",
            )
        spec = DEFAULT_LATENCY
    return resolve_latency(
        spec,
        overrides=overrides,
        comm_scaling=getattr(args, "comm_scaling", None),
        overlap=getattr(args, "overlap", None),
        load_offset=int(getattr(args, "load_offset", 0) or 0),
    )


def warn_lattice(command: str, max_rel_error: float, width: int) -> None:
    """Say on stderr (also with --json) when the slot-load lattice of the exact method allows
    more than 1 % error in its throughput (afd_jax.model.exact.binning_error_bound)."""
    if not max_rel_error <= 0.01:
        shown = "an unbounded" if max_rel_error == float("inf") else f"up to {max_rel_error:.1%}"
        print(
            f"afd-jax {command}: warning: the slot-load lattice (width {width}) allows {shown} "
            "error in the exact throughput; raise --slot-bins",
            file=sys.stderr,
        )

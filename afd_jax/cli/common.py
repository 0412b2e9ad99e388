"""Options and helpers shared by the subcommands (workload, latency, output)."""

from __future__ import annotations

import argparse
import json
import math
import socket
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
from afd_jax.model.hardware import SYSTEMS, Hardware, feasible_ratios, read_hardware
from afd_jax.model.latency_io import latency_file, resolve_latency
from afd_jax.workload.specs import resolve_workload

__all__ = [
    "DEFAULT_LATENCY",
    "LATENCY_FLAGS",
    "add_hardware_args",
    "add_distributed_args",
    "add_latency_args",
    "add_ratio_args",
    "PLOT_SUFFIXES",
    "add_memory_budget_arg",
    "add_workload_args",
    "check_seed",  # re-exported from afd_jax.errors
    "emit_json",
    "finite_nonneg",  # re-exported from afd_jax.errors
    "load_hardware",
    "load_latency",
    "load_ratios",
    "parse_int_list",
    "load_workload",
    "plot_file",
    "positive_int",  # re-exported from afd_jax.errors
    "start_distributed",
    "wants_distributed",
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
        f"{DEFAULT_FRACTION:.0%}% of physical memory, less under ulimit -v; "
        "docs/reliability.md)",
    )


def fill_defaults(args, defaults: dict) -> None:
    """Set each option of ``defaults`` the user left out (``None``): for options whose
    parser default is ``None`` so that a command can tell given from defaulted (and refuse
    one given where it does not act) before the default applies."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


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
        help="a trace file (CSV/JSONL, .gz ok), a preset or a parametric spec "
        "FAMILY:key=value,... (grammar and presets: docs/workloads.md)",
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
    w = resolve_workload(args.workload, fmt=args.trace_format, decode_mapping=args.decode_mapping)
    check_trace_options(args, w)
    return w


def check_trace_options(args, workload) -> None:
    """InputError when an option that only a trace file reads (--format, --decode-mapping,
    --prompt-field, --decode-field) was given for a preset or a parametric spec, which would
    otherwise be ignored while the output names it."""
    from afd_jax.workload.containers import TraceWorkload

    if isinstance(workload, TraceWorkload):
        return
    given = {
        "--format": getattr(args, "trace_format", None) is not None,
        "--decode-mapping": getattr(args, "decode_mapping", "output") != "output",
        "--prompt-field": getattr(args, "prompt_field", None) is not None,
        "--decode-field": getattr(args, "decode_field", None) is not None,
    }
    for option, is_given in given.items():
        if is_given:
            raise InputError(
                f"applies to trace files only; {workload.name!r} is a preset or parametric "
                "workload (its decode lengths are given as they are)",
                field=option,
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


def fit_error_lines(errors: dict) -> list[str]:
    """Report lines of table fit errors ``{stage: FitError}`` (``hardware build``,
    ``calibrate --fit table``): points, MAPE %, worst % and the worst point per stage."""
    lines = [f"{'stage':<6} {'points':>6} {'MAPE %':>9} {'worst %':>9}  worst point"]
    for stage, e in errors.items():
        where = f"x = {e.worst_x:g} tokens" + (f", B = {e.worst_batch}" if e.worst_batch else "")
        lines.append(f"{stage:<6} {e.n:>6} {100 * e.mape:>9.4f} {100 * e.worst:>9.4f}  {where}")
    return lines


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


HARDWARE_FLAGS = (
    ("attn_gpus", int, "N", "GPUs of one Attention instance (overrides [hardware])"),
    ("ffn_gpus", int, "N", "GPUs of the FFN instance (overrides [hardware])"),
    ("attn_system", str, "NAME", "system of the Attention GPUs, e.g. h200_sxm (docs/plan.md)"),
    ("ffn_system", str, "NAME", "system of the FFN GPUs, e.g. gb200"),
    ("price_attn", float, "USD", "price per Attention GPU-hour (default: the system's)"),
    ("price_ffn", float, "USD", "price per FFN GPU-hour (default: the system's)"),
    ("power_attn", float, "W", "power per Attention GPU (default: the system's TDP)"),
    ("power_ffn", float, "W", "power per FFN GPU (default: the system's TDP)"),
    ("memory_attn_gib", float, "GIB", "memory per Attention GPU (default: the system's)"),
)


def add_hardware_args(parser, keys: tuple[str, ...] | None = None) -> None:
    """GPU counts, systems, per-GPU price / power / memory (override the latency file's
    [hardware] and [costs] tables and the system defaults; docs/plan.md); ``keys``: only
    those (a command that uses only some takes only those)."""
    g = parser.add_argument_group(
        "hardware and costs (docs/plan.md)",
        "override the latency file's [hardware]/[costs] tables and the per-system defaults",
    )
    for key, kind, metavar, text in HARDWARE_FLAGS:
        if keys is not None and key not in keys:
            continue
        g.add_argument(
            "--" + key.replace("_", "-"), dest=key, type=kind, metavar=metavar, help=text
        )


def load_hardware(args) -> Hardware:
    """The :class:`Hardware` of --latency's file (a preset or path; none for flags only),
    then the hardware flags."""
    spec = getattr(args, "latency", None)
    path = latency_file(spec) if spec else None
    overrides = {key: getattr(args, key, None) for key, *_ in HARDWARE_FLAGS}
    hw = read_hardware(path, overrides)
    _warn_step_times_stay(args, spec, read_hardware(path) if path else None, overrides)
    for side in ("attn", "ffn"):
        system = getattr(hw, f"{side}_system")
        if system and system not in SYSTEMS and getattr(hw, f"{side}_price") is None:
            print(
                f"afd-jax {args.command}: warning: --{side}-system ({side}_system) "
                f"{system!r} is not one of "
                f"{', '.join(SYSTEMS)}: its price, power and memory come only from [costs] "
                "or the flags",
                file=sys.stderr,
            )
    return hw


def _warn_step_times_stay(args, spec, file_hw: Hardware | None, overrides: dict) -> None:
    """Say on stderr when a flag changes the GPU count or system that the latency file's
    ``[hardware]`` names: the stage times are those of the file's hardware, so only the GPU
    count, prices, power and memory follow the flag (a review read 1.77x the tokens/s per
    GPU off ``--attn-gpus 1`` on a preset measured at TP4)."""
    if file_hw is None:
        return
    for key in ("attn_gpus", "ffn_gpus", "attn_system", "ffn_system"):
        given, theirs = overrides.get(key), getattr(file_hw, key)
        if given is not None and theirs is not None and given != theirs:
            print(
                f"afd-jax {args.command}: warning: --{key.replace('_', '-')} {given} differs "
                f"from {key} = {theirs} in the [hardware] of {spec}: the stage times stay "
                "those of its hardware; only the GPU count, price, power and memory follow "
                "the flag",
                file=sys.stderr,
            )


def parse_int_list(text: str | None, field: str) -> list[int] | None:
    """``"2,4,8"`` -> [2, 4, 8] (None for None); InputError naming ``field`` otherwise."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        try:
            out.append(int(part.strip()))
        except ValueError:
            raise InputError(
                f"expected comma-separated integers, got {part.strip()!r}", field=field
            ) from None
    return out


def add_ratio_args(parser) -> None:
    """--r-values LIST / --r-step N: the feasible r (hardware allows only some)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument(
        "--r-values",
        metavar="LIST",
        default=None,
        help="feasible r only, comma-separated (e.g. 2,4,8,16); every method chooses among them",
    )
    g.add_argument(
        "--r-step",
        type=int,
        metavar="N",
        default=None,
        help="feasible r are the multiples of N up to --r-max (node granularity)",
    )


def load_ratios(args, r_max: int):
    """The feasible r from --r-values / --r-step (sorted int array), None = every r."""
    values = parse_int_list(args.r_values, "r_values")
    return feasible_ratios(values, args.r_step, r_max)


def add_distributed_args(parser) -> None:
    """--coordinator / --num-processes / --process-id: join a jax.distributed run."""
    g = parser.add_argument_group("several processes (jax.distributed)")
    g.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="address of process 0's coordinator; with --num-processes and --process-id this "
        "process joins a jax.distributed run (SLURM and other clusters: --distributed alone)",
    )
    g.add_argument("--num-processes", type=int, default=None, metavar="N")
    g.add_argument("--process-id", type=int, default=None, metavar="I")


def wants_distributed(args) -> bool:
    """True when the flags ask for a jax.distributed run (--distributed or --coordinator);
    --num-processes / --process-id alone are an InputError, not silently ignored."""
    if not args.coordinator and (args.num_processes is not None or args.process_id is not None):
        raise InputError(
            "--num-processes and --process-id need --coordinator HOST:PORT (or use "
            "--distributed on a cluster)",
            field="--coordinator",
        )
    if args.coordinator:
        check_coordinator(args.coordinator)
    return bool(args.distributed or args.coordinator)


def check_coordinator(address: str) -> None:
    """InputError unless ``address`` is HOST:PORT with a port in 1..65535 (JAX splits it at
    the last colon: a bare host gave an IndexError there) and HOST resolves."""
    host, colon, port = str(address).rpartition(":")
    if not (colon and host.strip() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InputError(
            f"expected HOST:PORT with a port in 1..65535, got {address!r}", field="--coordinator"
        )
    try:  # an unknown host made JAX wait for minutes
        socket.getaddrinfo(host.strip("[]"), int(port))
    except (OSError, UnicodeError) as err:
        raise InputError(f"cannot resolve host {host!r}: {err}", field="--coordinator") from None


def start_distributed(args) -> None:
    """``jax.distributed.initialize`` from the flags (or the cluster's environment)."""
    import jax

    if args.coordinator:
        n, i = args.num_processes, args.process_id
        if n is None or i is None or not 0 <= i < n:
            raise InputError(
                "--coordinator needs --num-processes N and --process-id I with 0 <= I < N",
                field="--process-id",
            )
        try:
            jax.distributed.initialize(args.coordinator, num_processes=n, process_id=i)
        except (ValueError, RuntimeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(
                f"could not start or join the coordinator at {args.coordinator}: {reason}",
                field="--coordinator",
            ) from None
        return
    try:
        jax.distributed.initialize()
    except (ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"--distributed needs a cluster (SLURM, Cloud TPU, ...) or JAX_COORDINATOR_ADDRESS, "
            f"JAX_NUM_PROCESSES and JAX_PROCESS_ID: {reason}",
            field="--distributed",
        ) from None


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

"""``afd-jax calibrate PROFILE.csv``: fit the stage latencies (affine by least squares, or
measured tables with ``--fit table``), write a latency TOML."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from afd_jax.cli.common import add_memory_budget_arg, emit_json, finite_nonneg, fit_error_lines
from afd_jax.errors import InputError, check_output_file
from afd_jax.model.calibrate import calibrate
from afd_jax.model.latency_io import format_latency_toml, validate_latency


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        description=(
            "Least-squares fit time = alpha * tokens + beta for each stage (attn, ffn, comm) "
            "of a profile CSV with header stage,tokens,time_us; reports R^2 and residuals and "
            "writes a latency TOML usable with --latency (docs/latency_presets.md). With "
            "--fit table each stage becomes a monotone table of per-token-count medians "
            "(Attention rows need a batch column: one table per B; docs/hardware.md)."
        ),
    )
    p.add_argument("profile", metavar="PROFILE.csv")
    p.add_argument("--out", metavar="FILE", default=None, help="write the latency TOML here")
    p.add_argument(
        "--fit",
        choices=("affine", "table"),
        default="affine",
        help="affine least squares (default) or measured tables (CSV needs a batch column)",
    )
    p.add_argument("--comm-scaling", choices=("aggregate", "per_worker"), default="aggregate")
    p.add_argument("--overlap", choices=("pipelined", "serial"), default="pipelined")
    p.add_argument("--cost-attn", type=float, default=1.0)
    p.add_argument("--cost-ffn", type=float, default=1.0)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_memory_budget_arg(p)
    p.set_defaults(func=run)


def _write(out: str | None, text: str) -> None:
    if out is None:
        return
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror}", path=out) from err
    print(f"wrote {out}", file=sys.stderr)


def run(args) -> int:
    for name in ("cost_attn", "cost_ffn"):
        value = finite_nonneg(name, getattr(args, name))
        if value <= 0:
            raise InputError(f"must be > 0, got {value}", field=name)
    if args.out is not None:  # "" too: "--out: empty path", as reproduce says
        out = check_output_file(args.out, "--out", stream_ok=True)  # written by opening it
        if out.is_file() and Path(args.profile).is_file() and out.samefile(args.profile):
            raise InputError("--out: is the profile being read; give another file", path=args.out)
    if args.fit == "table":
        return _run_table(args)
    lat, opts, fits = calibrate(
        args.profile, args.comm_scaling, args.overlap, args.cost_attn, args.cost_ffn
    )
    validate_latency(lat, args.profile)
    meta = {
        "source": f"afd-jax calibrate {Path(args.profile).name}",
        **{f"r_squared_{s}": f.r_squared for s, f in fits.items()},
        **{f"rmse_us_{s}": f.rmse for s, f in fits.items()},
    }
    text = format_latency_toml(lat, opts, meta)
    _write(args.out, text)
    if args.json:
        emit_json(
            {
                "latency": {
                    **lat._asdict(),
                    "comm_scaling": opts.comm_scaling,
                    "overlap": opts.overlap,
                },
                "fits": {s: f.as_dict() for s, f in fits.items()},
                "out": args.out,
            }
        )
        return 0
    print(
        f"{'stage':<6} {'alpha (us/tok)':>15} {'beta (us)':>12} {'n':>5} {'R^2':>9} "
        f"{'rmse us':>10} {'max |res|':>10}"
    )
    for s, f in fits.items():
        note = f"  ({f.constrained})" if f.constrained else ""
        print(
            f"{s:<6} {f.alpha:>15.6g} {f.beta:>12.6g} {f.n:>5} {f.r_squared:>9.5f} "
            f"{f.rmse:>10.4g} {f.max_abs_residual:>10.4g}{note}"
        )
    if not args.out:
        print()
        print(text, end="")
    return 0


def _run_table(args) -> int:
    """``--fit table``: the fit errors (as ``hardware build`` prints them), notes, the file."""
    from afd_jax.studies.calibration import calibrate_tables

    flags = ["--fit", "table", "--comm-scaling", args.comm_scaling, "--overlap", args.overlap]
    command = shlex.join(["afd-jax", "calibrate", Path(args.profile).name, *flags])
    fit = calibrate_tables(
        args.profile, args.comm_scaling, args.overlap, (args.cost_attn, args.cost_ffn), command
    )
    _write(args.out, fit.text)
    if args.json:
        errors = {s: e._asdict() for s, e in fit.errors.items()}
        emit_json({"fit": errors, "rows": fit.rows, "notes": fit.notes, "out": args.out})
        return 0
    print("\n".join(fit_error_lines(fit.errors)))
    for note in fit.notes:
        print(f"note: {note}")
    if not args.out:
        print()
        print(fit.text, end="")
    return 0

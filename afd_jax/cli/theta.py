"""``afd-jax theta``: workload statistics of a trace (or preset) with a confidence interval for
theta (docs/model.md 4)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from afd_jax.cli.common import (
    add_memory_budget_arg,
    check_seed,
    check_trace_options,
    emit_json,
)
from afd_jax.errors import InputError, check_level
from afd_jax.workload.containers import TraceWorkload
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import (
    theta_confidence_interval,
    theta_interval_note,
    workload_stats,
)
from afd_jax.workload.traces import load_trace

# Names that are clearly meant as files: a missing one is "no such file", not a preset spec.
_FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".tsv", ".txt", ".gz")

DESCRIPTION = """\
Estimate the workload statistics of a request trace (docs/model.md 4):
  theta = sum(D P + D(D-1)/2) / sum(D)  (long-run mean KV load of one slot),
  slot_std = sqrt(v) (per-slot stationary standard deviation), mean prompt/decode, their naive
  sum E[P]+E[D], the P-D correlation, row counts, and a confidence interval for theta.

TRACE is a CSV/JSONL file (.gz ok) in Azure, Mooncake, Vidur or BurstGPT format (detected from
the header) or any CSV/JSONL with --prompt-field/--decode-field; or, if no such file exists, a
workload preset / parametric spec (exact statistics, no CI needed). See docs/traces.md.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "theta",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("trace", metavar="TRACE", help="trace file, or a workload preset/spec")
    p.add_argument(
        "--format",
        dest="trace_format",
        default=None,
        metavar="F",
        help="azure, mooncake, vidur, burstgpt, csv or jsonl (default: detected)",
    )
    p.add_argument("--prompt-field", default=None, metavar="X", help="column holding P")
    p.add_argument(
        "--decode-field", default=None, metavar="Y", help="column holding the output tokens"
    )
    p.add_argument(
        "--decode-mapping",
        choices=("output", "output-minus-one"),
        default="output",
        help="decode steps D = output tokens (default) or max(output tokens - 1, 0)",
    )
    p.add_argument("--level", type=float, default=0.95, help="CI level (default 0.95)")
    p.add_argument(
        "--ci-method",
        choices=("delta", "bootstrap"),
        default="delta",
        help="delta method for the ratio estimator (default) or percentile bootstrap",
    )
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_memory_budget_arg(p)
    p.set_defaults(func=run)


def _resolve(args):
    path = Path(args.trace)
    if os.path.exists(path):  # False for a spec too long to be a file name (no OSError)
        return load_trace(
            path,
            fmt=args.trace_format,
            prompt_field=args.prompt_field,
            decode_field=args.decode_field,
            decode_mapping=args.decode_mapping,
        )
    if args.trace.lower().endswith(_FILE_SUFFIXES) or "/" in args.trace:
        raise InputError("no such file", path=args.trace)
    w = resolve_workload(args.trace, fmt=args.trace_format, decode_mapping=args.decode_mapping)
    check_trace_options(args, w)
    return w


def run(args) -> int:
    check_level(args.level, "--level")
    if args.ci_method == "bootstrap" and args.n_boot < 2:
        raise InputError(f"must be >= 2, got {args.n_boot}", field="--n-boot")
    check_seed("--seed", args.seed)
    w = _resolve(args)
    stats = workload_stats(w)
    if isinstance(w, TraceWorkload):
        low, high = theta_confidence_interval(
            w.prompt,
            w.decode,
            level=args.level,
            method=args.ci_method,
            n_boot=args.n_boot,
            seed=args.seed,
        )
        ci_method, source, fmt = args.ci_method, w.source, w.format
        mapping = w.decode_mapping
        note = theta_interval_note(w.decode, low, high)
    else:  # parametric: the moments are exact
        low = high = stats.theta
        ci_method, source, fmt = "exact", getattr(w, "label", "") or w.name, "parametric"
        mapping = args.decode_mapping
        note = None
    out = {
        "source": source,
        "name": w.name,
        "format": fmt,
        "decode_mapping": mapping,
        "n_requests": stats.n_requests,
        "n_zero_decode": stats.n_zero_decode,
        "mean_prompt": stats.mean_prompt,
        "mean_decode": stats.mean_decode,
        "naive_mean_sum": stats.naive_mean_sum,
        "theta": stats.theta,
        "theta_ci_low": low,
        "theta_ci_high": high,
        "ci_level": args.level,
        "ci_method": ci_method,
        "theta_ci_note": note,
        "slot_var": stats.slot_var,
        "slot_std": stats.slot_std,
        "corr_prompt_decode": stats.corr_prompt_decode,
        "theta_over_naive": stats.theta / stats.naive_mean_sum
        if stats.naive_mean_sum > 0
        else float("nan"),
    }
    if args.json:
        emit_json(out)
        return 0
    pct = f"{100 * args.level:g}%"
    ci = (
        "exact (parametric workload)"
        if ci_method == "exact"
        else f"[{low:,.1f}, {high:,.1f}]  ({pct}, {ci_method})"
    )
    rows = [
        ("workload", f"{source}  ({fmt}, D = {mapping.replace('-', ' ')})"),
        ("requests", f"{stats.n_requests:,}"),
        ("zero-decode rows", f"{stats.n_zero_decode:,}  (kept, zero weight)"),
        ("mean prompt E[P]", f"{stats.mean_prompt:,.1f}"),
        ("mean decode E[D]", f"{stats.mean_decode:,.1f}"),
        ("E[P] + E[D]", f"{stats.naive_mean_sum:,.1f}"),
        ("theta", f"{stats.theta:,.1f}"),
        ("theta CI", ci),
        *([("warning", note)] if note else []),
        ("theta / (E[P]+E[D])", f"{out['theta_over_naive']:.3f}"),
        ("slot std sqrt(v)", f"{stats.slot_std:,.1f}"),
        ("corr(P, D)", f"{stats.corr_prompt_decode:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))
    return 0

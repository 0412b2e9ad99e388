"""``afd-jax provision``: the A/F ratio r by three predictions of throughput per instance.

Parses the flags, calls :func:`afd_jax.studies.provision.provision` (mean field, Gaussian
barrier, exact steady state for r = 1..r_max; docs/model.md 5) and prints its result as a table
or JSON. docs/provisioning.md.
"""

from __future__ import annotations

import sys
import time

from afd_jax.cli import use_float64
from afd_jax.cli.common import (
    LATENCY_FLAGS,
    add_hardware_args,
    add_latency_args,
    add_memory_budget_arg,
    add_ratio_args,
    add_workload_args,
    emit_json,
    load_hardware,
    load_latency,
    load_ratios,
    load_workload,
    plot_file,
    positive_int,
    warn_lattice,
)
from afd_jax.memory import CURVE_ROW_BYTES, require
from afd_jax.model.latency_io import format_stages
from afd_jax.studies.plots import plot_provision


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "provision",
        description=(
            "Throughput per instance vs r for r = 1..r_max by the mean-field closed form, the "
            "Gaussian barrier and the exact steady state; reports the binding regime, the "
            "continuous optima and the best integer r of each method."
        ),
    )
    add_workload_args(p)
    p.add_argument("--batch", "-B", type=int, required=True, help="slots per Attention instance")
    add_latency_args(p)
    p.add_argument("--r-max", type=int, default=64, help="largest r considered (default 64)")
    add_ratio_args(p)
    add_hardware_args(p)
    p.add_argument(
        "--slot-bins",
        type=int,
        default=4096,
        help="lattice points of the slot-load law for the exact method (default 4096; the "
        "variance grows by at most width^2/4, docs/workloads.md)",
    )
    add_memory_budget_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument(
        "--plot", metavar="FILE", default=None, help="write a figure (.png/.pdf/.svg; default .png)"
    )
    p.set_defaults(func=run)


def _print_summary(res: dict) -> None:
    lat = res["latency"]
    out = sys.stdout
    print(f"workload      {res['workload']}", file=out)
    print(f"theta         {res['theta']:.2f} tokens  (slot sd {res['slot_std']:.2f})", file=out)
    print(f"batch B       {res['batch']}", file=out)
    print(
        f"latency       {res['latency_source']}: {format_stages(lat)} us; "
        f"costs {lat['cost_attn']:g}/{lat['cost_ffn']:g}; "
        f"{lat['comm_scaling']}, {lat['overlap']}",
        file=out,
    )
    print(f"regime        {res['regime']}-bound (mean field)", file=out)
    print(
        f"r* continuous mean field {res['r_star']['mean_field']:.3f}, "
        f"Gaussian {res['r_star']['gaussian']:.3f}",
        file=out,
    )
    rb, tb = res["r_best"], res["exact_throughput_of_choice"]
    print(
        "best integer  "
        + ", ".join(f"{k.replace('_', ' ')} {rb[k]} ({tb[k]:,.0f} exact)" for k in rb),
        file=out,
    )
    print(_lattice_note(res["exact_lattice"]), file=out)
    print(f"\nthroughput ({res['throughput_unit']}):", file=out)
    print(f"{'r':>4} {'mean field':>14} {'Gaussian':>14} {'exact':>14}", file=out)
    marks = {v: k for k, v in rb.items()}
    for row in res["curve"]:
        mark = (
            "  <- " + ", ".join(k for k, v in rb.items() if v == row["r"])
            if row["r"] in marks
            else ""
        )
        print(
            f"{row['r']:>4} {row['mean_field']:>14,.1f} {row['gaussian']:>14,.1f} "
            f"{row['exact']:>14,.1f}{mark}",
            file=out,
        )
    _print_user_terms(res)


def _print_user_terms(res: dict) -> None:
    """The exact choice in user terms (only when the GPU counts are known)."""
    if "r_values" in res:
        print(f"\nfeasible r    {', '.join(str(v) for v in res['r_values'])}")
    u = res.get("user_terms")
    if u is None:
        return
    print(f"\nexact choice r = {u['r']}, B = {u['batch']} on {u['gpus']} GPUs:")
    print(f"  tokens/s per GPU               {u['tokens_per_s_per_gpu']:,.1f}")
    if u["tokens_per_dollar"] is not None:
        print(f"  tokens per USD                 {u['tokens_per_dollar']:,.0f}")
        print(f"  USD per million output tokens  {u['cost_per_million_tokens']:.4g}")
    if u["joules_per_token"] is not None:
        print(f"  joules per token               {u['joules_per_token']:.4g}")
    if u["best_r_per_gpu"] != u["r"]:  # the choice is per unit of the latency's costs
        print(
            f"  per GPU the best r is {u['best_r_per_gpu']} "
            f"({u['best_tokens_per_s_per_gpu']:,.1f} tokens/s per GPU): the choice above is "
            "per unit of --cost-attn/--cost-ffn (afd-jax plan ranks per GPU or per USD)"
        )
    if u.get("best_r_per_dollar") not in (None, u["r"]):
        print(
            f"  per USD the best r is {u['best_r_per_dollar']} "
            f"({u['best_tokens_per_dollar']:,.0f} tokens per USD)"
        )


def _lattice_note(lattice: dict) -> str:
    """The exact method's slot-load lattice and the bound on its error (docs/reliability.md)."""
    err = lattice["max_rel_error"]
    bound = "unbounded" if err is None or err == float("inf") else f"within {err:.2%}"
    return f"exact lattice {lattice['slot_bins']} points of width {lattice['width']} tokens: " + (
        "no binning" if lattice["width"] == 1 else f"exact throughput {bound} (--slot-bins)"
    )


def _latency_source(args) -> str:
    """How the latency was given: a preset/file name, "flags", or "<name> + flags"."""
    source = args.latency or ("paper-v1" if args.alpha_attn is None else "flags")
    if args.latency and any(getattr(args, k) is not None for k, _ in LATENCY_FLAGS):
        source += " + flags"
    return source


def run(args) -> int:
    use_float64()  # JAX loads with the study, once the flags and inputs are read
    positive_int("batch", args.batch)
    positive_int("r_max", args.r_max)
    plot = plot_file(args.plot)
    require(CURVE_ROW_BYTES * args.r_max, f"the r = 1..{args.r_max} curve", "lower --r-max")
    lat, opts = load_latency(args)
    r_values = load_ratios(args, args.r_max)
    hardware = load_hardware(args)
    t0 = time.perf_counter()
    w = load_workload(args)
    loaded = time.perf_counter()
    from afd_jax.studies.provision import provision

    t0 += time.perf_counter() - loaded  # total_s: the inputs and the study, not loading JAX
    result = provision(
        w,
        lat,
        args.batch,
        r_max=args.r_max,
        opts=opts,
        slot_bins=args.slot_bins,
        workload_name=args.workload,
        latency_source=_latency_source(args),
        r_values=r_values,
        hardware=hardware,
    )
    res = result.to_json()
    res["timings_s"]["total_s"] = time.perf_counter() - t0
    lattice = res["exact_lattice"]
    warn_lattice("provision", lattice["max_rel_error"], lattice["width"])
    if plot:
        plot_provision(res, plot)
        res["plot"] = str(plot)
        print(f"wrote {plot}", file=sys.stderr)
    if args.json:
        emit_json(res)
    else:
        _print_summary(res)
    return 0

"""``afd-jax provision``: the A/F ratio r by three predictions of throughput per instance.

mean field (closed form, regimes), Gaussian barrier (tail integral, JAX) and the exact steady
state (pi convolved B times by FFT), for r = 1..r_max (MODEL.md 5). docs/provisioning.md.
"""

from __future__ import annotations

import sys
import time

from afd_jax.cli.common import (
    LATENCY_FLAGS,
    add_latency_args,
    add_workload_args,
    emit_json,
    load_latency,
    load_workload,
    positive_int,
)
from afd_jax.errors import InputError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "provision",
        help="recommend the A/F ratio r (mean field, Gaussian barrier, exact steady state)",
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
    p.add_argument(
        "--slot-bins",
        type=int,
        default=4096,
        help="lattice points of the slot-load law for the exact method (default 4096; the "
        "variance grows by at most width^2/4, docs/workloads.md)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--plot", metavar="FILE", default=None, help="write a figure (.png/.pdf/.svg)")
    p.set_defaults(func=run)


def provision(
    w,
    workload_name: str,
    batch: int,
    lat,
    opts,
    r_max: int,
    slot_bins: int,
    latency_source: str = "",
) -> dict:
    """The provision result dict (the --json object) for workload ``w``."""
    import jax.numpy as jnp
    import numpy as np

    from afd_jax.model.exact import exact_throughput, worker_load_pmf
    from afd_jax.model.latency_io import validate_latency
    from afd_jax.model.theory import (
        gaussian_optimum_continuous,
        gaussian_throughput_jit,
        mean_field_optimum,
        mean_field_throughput,
        regime_segments,
    )
    from afd_jax.workload.slotload import slot_load_pmf
    from afd_jax.workload.statistics import workload_stats

    positive_int("batch", batch)
    positive_int("r_max", r_max)
    if slot_bins < 2:
        raise InputError(f"must be >= 2, got {slot_bins}", field="slot_bins")
    validate_latency(lat)
    stats = workload_stats(w)
    theta = float(stats.theta) + opts.load_offset
    slot_var = float(stats.slot_var)
    timings = {}

    t0 = time.perf_counter()
    rs = np.arange(1, r_max + 1, dtype=np.float64)
    mf_opt = mean_field_optimum(lat, theta, batch, opts, r_max)
    mf_curve = np.asarray(mean_field_throughput(lat, theta, jnp.asarray(rs), batch, opts))
    timings["mean_field_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    g_curve = np.asarray(
        gaussian_throughput_jit(lat, theta, slot_var, jnp.asarray(rs), batch, opts, "tail")
    )
    g_star = gaussian_optimum_continuous(lat, theta, slot_var, batch, opts, r_max)
    timings["gaussian_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    slot = slot_load_pmf(w, load_offset=opts.load_offset, max_bins=slot_bins)
    worker = worker_load_pmf(slot, batch)
    ex_curve = exact_throughput(slot, lat, batch, r_max, opts, worker_pmf=worker)
    timings["exact_s"] = time.perf_counter() - t0

    unit_costs = float(lat.cost_attn) == 1.0 and float(lat.cost_ffn) == 1.0
    r_best = {
        "mean_field": int(mf_opt.r_best),
        "gaussian": int(np.argmax(g_curve)) + 1,
        "exact": int(np.argmax(ex_curve)) + 1,
    }
    return {
        "workload": workload_name,
        "batch": int(batch),
        "r_max": int(r_max),
        "theta": theta,
        "slot_std": float(np.sqrt(slot_var)),
        "load_offset": opts.load_offset,
        "latency_source": latency_source,
        "latency": {
            **{k: float(v) for k, v in lat._asdict().items()},
            "comm_scaling": opts.comm_scaling,
            "overlap": opts.overlap,
        },
        "time_unit": "us",
        "regime": mf_opt.regime,
        "r_star": {"mean_field": float(mf_opt.r_continuous), "gaussian": float(g_star)},
        "r_best": r_best,
        "throughput_at_best": {
            "mean_field": float(mf_curve[r_best["mean_field"] - 1]),
            "gaussian": float(g_curve[r_best["gaussian"] - 1]),
            "exact": float(ex_curve[r_best["exact"] - 1]),
        },
        # what each method's choice achieves under the exact steady state
        "exact_throughput_of_choice": {k: float(ex_curve[v - 1]) for k, v in r_best.items()},
        "candidates": [
            {"name": c.name, "r": c.r, "throughput": c.throughput} for c in mf_opt.candidates
        ],
        "regimes": [
            {"from": a, "to": b, "regime": name}
            for a, b, name in regime_segments(lat, theta, batch, opts, r_max)
        ],
        "curve": [
            {"r": int(r), "mean_field": float(a), "gaussian": float(b), "exact": float(c)}
            for r, a, b, c in zip(rs, mf_curve, g_curve, ex_curve, strict=True)
        ],
        "throughput_unit": "tokens/s per instance" if unit_costs else "tokens/s per unit cost",
        "exact_lattice": {
            "slot_bins": int(slot.pmf.shape[0]),
            "width": int(slot.width),
            "worker_points": int(worker.pmf.shape[0]),
        },
        "timings_s": timings,
    }


def _print_summary(res: dict) -> None:
    lat = res["latency"]
    out = sys.stdout
    print(f"workload      {res['workload']}", file=out)
    print(f"theta         {res['theta']:.2f} tokens  (slot sd {res['slot_std']:.2f})", file=out)
    print(f"batch B       {res['batch']}", file=out)
    print(
        f"latency       {res['latency_source']}: alpha_attn={lat['alpha_attn']:g} "
        f"beta_attn={lat['beta_attn']:g} alpha_ffn={lat['alpha_ffn']:g} "
        f"beta_ffn={lat['beta_ffn']:g} alpha_comm={lat['alpha_comm']:g} "
        f"beta_comm={lat['beta_comm']:g} us; costs {lat['cost_attn']:g}/{lat['cost_ffn']:g}; "
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


def run(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    positive_int("batch", args.batch)
    positive_int("r_max", args.r_max)
    lat, opts = load_latency(args)
    t0 = time.perf_counter()
    w = load_workload(args)
    source = args.latency or ("paper-v1" if args.alpha_attn is None else "flags")
    if args.latency and any(getattr(args, k) is not None for k, _ in LATENCY_FLAGS):
        source += " + flags"
    res = provision(w, args.workload, args.batch, lat, opts, args.r_max, args.slot_bins, source)
    res["timings_s"]["total_s"] = time.perf_counter() - t0
    if args.plot:
        from afd_jax.studies.plots import plot_provision

        plot_provision(res, args.plot)
        res["plot"] = args.plot
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        emit_json(res)
    else:
        _print_summary(res)
    return 0

"""``afd-jax optimize``: gradient-based provisioning of r (and B) under constraints.

Maximises the smoothed Gaussian-barrier throughput in a continuous r (and B) with optax + Newton,
picks the integers by exact evaluation, reports which constraints bind and the sensitivities of
the continuous optimum (docs/optimize.md).
"""

from __future__ import annotations

import math
import sys
import time

from afd_jax.cli import use_float64
from afd_jax.cli.common import (
    add_hardware_args,
    add_latency_args,
    add_memory_budget_arg,
    add_ratio_args,
    add_workload_args,
    emit_json,
    fill_defaults,
    load_hardware,
    load_latency,
    load_ratios,
    load_workload,
    plot_file,
    positive_int,
    warn_lattice,
)
from afd_jax.errors import InputError
from afd_jax.model.exact import binning_error_bound, require_worker_load
from afd_jax.model.hardware import KV_EPSILON, KV_RESERVED, check_reserved, kv_capacity_tokens
from afd_jax.model.latency import throughput_unit
from afd_jax.studies.plots import plot_tornado
from afd_jax.workload.slotload import slot_load_pmf
from afd_jax.workload.statistics import workload_stats


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "optimize",
        description=(
            "Maximise the smoothed throughput per instance (per unit cost) over a continuous r "
            "(and B), choose the integers by exact evaluation of the neighbours, and report "
            "binding constraints and sensitivities dr*/dp of every coefficient. "
            "docs/optimize.md."
        ),
    )
    add_workload_args(p)
    add_latency_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--batch", "-B", type=int, help="fixed slots per Attention instance")
    g.add_argument(
        "--optimize-batch", action="store_true", help="optimise B too (needs --batch-max)"
    )
    p.add_argument("--batch-max", type=int, default=None, help="largest B (--optimize-batch)")
    p.add_argument(
        "--batch-min", type=int, default=None, help="smallest B (--optimize-batch; default 1)"
    )
    p.add_argument("--r-min", type=int, default=1, help="smallest r (default 1)")
    p.add_argument("--r-max", type=int, default=64, help="largest r (default 64)")
    add_ratio_args(p)
    p.add_argument(
        "--kv-capacity",
        default=None,
        metavar="TOKENS|auto",
        help="KV-cache capacity per Attention instance (tokens); auto: from the latency file's "
        "[hardware] (GPUs x memory x (1 - --kv-reserved) - weights) / KV bytes per token",
    )
    p.add_argument(
        "--kv-reserved",
        type=float,
        default=None,
        metavar="F",
        help="with --kv-capacity auto: fraction of GPU memory kept back (default 0.1)",
    )
    add_hardware_args(p, KV_AUTO_FLAGS)
    p.add_argument(
        "--kv-epsilon",
        type=float,
        default=None,
        metavar="E",
        help="with --kv-capacity: allowed Pr(worker load > capacity) (default 1e-3)",
    )
    p.add_argument(
        "--step-slo", type=float, default=None, metavar="US", help="mean step-time budget (us)"
    )
    p.add_argument(
        "--step-slo-p99",
        type=float,
        default=None,
        metavar="US",
        help="P99 step-time budget (us), from the exact law",
    )
    p.add_argument(
        "--neighbourhood",
        type=int,
        default=1,
        help="integers tried around the continuous optimum: floor-k..ceil+k (default 1)",
    )
    p.add_argument(
        "--slot-bins",
        type=int,
        default=4096,
        help="lattice points of the slot-load law for the exact evaluation (default 4096)",
    )
    add_memory_budget_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--tornado", metavar="FILE", help="tornado figure of the elasticities")
    p.set_defaults(func=run)


KV_AUTO_FLAGS = ("attn_gpus", "attn_system", "memory_attn_gib")
"""The hardware flags ``--kv-capacity auto`` reads (the only use of hardware here)."""
_DEFAULTS = {"kv_reserved": KV_RESERVED, "kv_epsilon": KV_EPSILON, "batch_min": 1}


def _check_used(args) -> None:
    """InputError for an option the run would not read (it was ignored without a word: the
    hardware flags and --kv-reserved without --kv-capacity auto, --kv-epsilon without
    --kv-capacity, --batch-min without --optimize-batch); then the defaults of the others."""
    auto = args.kv_capacity is not None and args.kv_capacity.strip().lower() == "auto"
    needs = {key: ("--kv-capacity auto", auto) for key in (*KV_AUTO_FLAGS, "kv_reserved")}
    needs["kv_epsilon"] = ("--kv-capacity", args.kv_capacity is not None)
    needs["batch_min"] = ("--optimize-batch", args.optimize_batch)
    for key, (option, used) in needs.items():
        if getattr(args, key) is not None and not used:
            flag = "--" + key.replace("_", "-")
            raise InputError(f"applies with {option} only", field=flag)
    fill_defaults(args, _DEFAULTS)


def _kv_capacity(args) -> float | None:
    """--kv-capacity as tokens: a number > 0, or "auto" from the hardware (None = no limit)."""
    text = args.kv_capacity
    if text is None:
        return None
    if text.strip().lower() == "auto":
        capacity = kv_capacity_tokens(load_hardware(args), args.kv_reserved)
        if capacity is None:
            raise InputError(
                "auto needs attn_gpus, the GPU memory and kv_bytes_per_token ([hardware] of "
                "--latency, or --attn-gpus/--attn-system/--memory-attn-gib)",
                field="kv_capacity",
            )
        return capacity
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"expected a number or auto, got {text!r}", field="kv_capacity") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"must be > 0, got {value}", field="kv_capacity")
    return value


def run(args) -> int:
    use_float64()  # JAX loads with the study, once the flags and inputs are read
    tornado = plot_file(args.tornado, "--tornado")
    _check_used(args)
    if args.optimize_batch:
        positive_int("batch_max", args.batch_max)
    else:
        positive_int("batch", args.batch)
        if args.batch_max is not None:
            raise InputError("--batch-max needs --optimize-batch", field="batch_max")
    positive_int("batch_min", args.batch_min)
    positive_int("r_min", args.r_min)
    positive_int("r_max", args.r_max)
    positive_int("slot_bins", args.slot_bins)
    if args.neighbourhood < 0:
        raise InputError(f"must be >= 0, got {args.neighbourhood}", field="neighbourhood")
    check_reserved(args.kv_reserved)
    kv_capacity = _kv_capacity(args)
    r_values = load_ratios(args, args.r_max)
    lat, opts = load_latency(args)
    w = load_workload(args)
    from afd_jax.studies.elasticity import optimum_elasticities, round_elasticity
    from afd_jax.studies.optimize import optimize

    t0 = time.perf_counter()
    stats = workload_stats(w)
    pmf = slot_load_pmf(w, load_offset=opts.load_offset, max_bins=args.slot_bins)
    require_worker_load(len(pmf.pmf), args.batch_max if args.optimize_batch else args.batch)
    theta = stats.theta + opts.load_offset
    res = optimize(
        pmf,
        theta,
        stats.slot_var,
        lat,
        opts,
        batch=args.batch,
        optimize_batch=args.optimize_batch,
        batch_min=args.batch_min,
        batch_max=args.batch_max,
        kv_capacity=kv_capacity,
        kv_epsilon=args.kv_epsilon,
        step_slo=args.step_slo,
        step_slo_p99=args.step_slo_p99,
        r_min=args.r_min,
        r_max=args.r_max,
        neighbourhood=args.neighbourhood,
        r_values=r_values,
    )
    # the continuous optimum's own r box: a bound that pins r_continuous pins r* here too
    raw, _ = optimum_elasticities(lat, theta, stats.slot_var, res.batch, opts, *res.r_bounds)
    print(f"optimize: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    bound = float(binning_error_bound(lat, res.batch, pmf.width, res.step_time))
    warn_lattice("optimize", bound, pmf.width)
    out = res.to_json()
    out["exact_lattice"] = {"width": int(pmf.width), "max_rel_error": bound}
    out["workload"] = args.workload
    out["throughput_unit"] = throughput_unit(lat)
    out["elasticities"] = {
        k: {n: round_elasticity(v) for n, v in d.items()} for k, d in raw.items()
    }
    if tornado:
        plot_tornado(raw, tornado, f"elasticities at B = {res.batch} ({args.workload})")
        out["tornado"] = str(tornado)
        print(f"wrote {tornado}", file=sys.stderr)
    if args.json:
        emit_json(out)
        return 0
    print(f"workload {args.workload}: theta = {theta:.1f}, slot std = {stats.slot_var**0.5:.1f}")
    print(
        f"continuous optimum: r = {res.r_continuous:.3f}, B = {res.batch_continuous:.2f} "
        f"({res.iterations} iterations, converged: {res.converged})"
    )
    print(
        f"chosen: r = {res.r}, B = {res.batch}: {res.throughput:,.0f} {out['throughput_unit']}, "
        f"E[tau] = {res.step_time:.2f} us, P99 tau = {res.step_time_p99:.2f} us (exact)"
    )
    for name, c in res.constraints.items():
        binds = c["binds"]
        print(f"  constraint {name}: limit {c['limit']}, value {c['value']:.6g}, binds {binds}")
    _print_sensitivities(res.sensitivities, out["elasticities"], res.batch)
    return 0


def _print_sensitivities(sens: dict, elasticities: dict, batch: int) -> None:
    """Elasticities (% per %, rounded) first; then the raw derivatives to 3 digits."""
    print(f"elasticities at B = {batch} (% per %):")
    print(f"  {'input':<16} {'r*':>7} {'throughput':>11}")
    for name in elasticities["r_star"]:
        e_r, e_t = elasticities["r_star"][name], elasticities["throughput"][name]
        print(f"  {name:<16} {e_r:>7g} {e_t:>11g}")
    print("sensitivities of r* (raw derivatives, 3 digits):")
    for name, v in sens["r"].items():
        print(f"  dr*/d{name} = {float(f'{v:.3g}') + 0.0:g}")  # + 0.0: no "-0"
    if "batch" in sens:
        print("sensitivities of B*:")
        for name, v in sens["batch"].items():
            print(f"  dB*/d{name} = {float(f'{v:.3g}') + 0.0:g}")

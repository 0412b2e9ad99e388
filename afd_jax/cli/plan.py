"""``afd-jax plan``: the Pareto front of throughput per GPU (or per USD) against P99 time per
output token over r and B, the best configuration under SLO, KV capacity and GPU budget, and
the elasticities of r* and throughput (docs/plan.md).

Parses the flags, calls :func:`afd_jax.studies.plan.plan` and prints its result as tables or
one JSON object; ``--plot`` draws the front, ``--tornado`` the elasticities.
"""

from __future__ import annotations

import sys

from afd_jax.choices import DEFAULT_BATCHES, OBJECTIVES
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
    parse_int_list,
    plot_file,
    positive_int,
)
from afd_jax.cli.provision import _latency_source
from afd_jax.errors import InputError
from afd_jax.model.exact import require_worker_load
from afd_jax.model.hardware import KV_EPSILON, KV_RESERVED, check_reserved, kv_capacity_tokens
from afd_jax.studies.plots import plot_plan_front, plot_tornado


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        description=(
            "Evaluate every (r, B) by the exact steady state: throughput per GPU, per USD, USD "
            "per million tokens, joules per token, P50/P99 time per output token (the exact "
            "barrier law), regime and barrier share; report the Pareto front, the best "
            "configuration under the P99 SLO, the KV capacity and the GPU budget, and the "
            "elasticities of r* and throughput. docs/plan.md."
        ),
    )
    add_workload_args(p)
    add_latency_args(p)
    add_hardware_args(p)
    g = p.add_argument_group("plan")
    g.add_argument(
        "--batches",
        metavar="LIST",
        default=",".join(str(b) for b in DEFAULT_BATCHES),
        help="B values, comma-separated (default %(default)s)",
    )
    g.add_argument("--r-max", type=int, default=32, help="largest r (default 32)")
    add_ratio_args(g)
    g.add_argument("--tpot-p99", type=float, metavar="MS", help="P99 time per output token SLO")
    g.add_argument("--budget-gpus", type=int, metavar="N", help="most GPUs of one rA-1F bundle")
    g.add_argument(
        "--objective",
        choices=tuple(OBJECTIVES),
        default="per_gpu",
        help="maximise tokens/s per GPU (default) or tokens per USD",
    )
    g.add_argument(
        "--kv-reserved",
        type=float,
        default=None,
        metavar="F",
        help="fraction of GPU memory not available to weights + KV cache (default 0.1)",
    )
    g.add_argument(
        "--kv-epsilon",
        type=float,
        default=None,
        metavar="E",
        help="allowed Pr(worker KV load > capacity) (default 1e-3)",
    )
    g.add_argument("--top", type=int, default=10, help="ranked candidates shown (default 10)")
    g.add_argument("--no-elasticities", action="store_true", help="skip the elasticities (faster)")
    g.add_argument("--slot-bins", type=int, default=4096, help="slot-load lattice (default 4096)")
    g.add_argument("--json", action="store_true", help="one JSON object on stdout")
    g.add_argument("--plot", metavar="FILE", help="figure of the front (.png/.pdf/.svg)")
    g.add_argument("--tornado", metavar="FILE", help="tornado figure of the elasticities")
    add_memory_budget_arg(p)
    p.set_defaults(func=run)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _row(p: dict) -> str:
    return (
        f"{p['r']:>4} {p['batch']:>5} {p['gpus']:>5} {p['tokens_per_s_per_gpu']:>12,.1f} "
        f"{_fmt(p['tokens_per_dollar'], '>14,.0f')} {_fmt(p['cost_per_million_tokens'], '>9.4g')} "
        f"{p['tpot_p50_ms']:>8.3f} {p['tpot_p99_ms']:>8.3f} {p['regime']:>13} "
        f"{100 * p['barrier_share']:>7.1f}%"
    )


HEADER = (
    f"{'r':>4} {'B':>5} {'GPUs':>5} {'tok/s/GPU':>12} {'tokens/USD':>14} {'USD/Mtok':>9} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'regime':>13} {'barrier':>8}"
)


def _print_inputs(res: dict) -> None:
    hw = res["hardware"]
    print(
        f"workload      {res['workload']}  (theta {res['theta']:.1f}, slot sd "
        f"{res['slot_std']:.1f} tokens)"
    )
    print(f"latency       {res['latency_source']}")
    price_a, price_f = hw["price_attn_usd_per_gpu_hour"], hw["price_ffn_usd_per_gpu_hour"]
    print(
        f"hardware      r x {hw['attn_gpus']} GPUs ({hw['attn_system'] or '?'}) + "
        f"{hw['ffn_gpus']} GPUs ({hw['ffn_system'] or '?'}); USD/GPU-h "
        f"{_fmt(price_a, 'g')}/{_fmt(price_f, 'g')}, W/GPU {_fmt(hw['power_attn_w'], 'g')}/"
        f"{_fmt(hw['power_ffn_w'], 'g')}"
    )
    if res["kv_capacity_tokens"] is not None:
        limit = res["kv_batch_limit"]
        fits = "every B given fits" if limit >= res["batches"][-1] else f"B <= {limit}"
        print(
            f"KV capacity   {res['kv_capacity_tokens']:,.0f} tokens per Attention instance -> "
            f"{fits} (Pr(overflow) <= {res['kv_epsilon']:g})"
        )
    limits = [f"P99 TPOT <= {res['tpot_p99_slo_ms']:g} ms"] if res["tpot_p99_slo_ms"] else []
    limits += [f"<= {res['budget_gpus']} GPUs"] if res["budget_gpus"] else []
    kv_only = "none" if res["kv_capacity_tokens"] is None else "none besides KV capacity"
    print(
        f"constraints   {', '.join(limits) or kv_only}; r in "
        f"{res['r_values'][0]}..{res['r_values'][-1]} ({len(res['r_values'])} values), B in "
        f"{', '.join(str(b) for b in res['batches'])}"
    )


def _print_plan(res: dict) -> None:
    _print_inputs(res)
    best = res["best"]
    if best is None:
        print("\nbest          none: no (r, B) meets every constraint")
    else:
        print(
            f"\nbest          r = {best['r']}, B = {best['batch']} on {best['gpus']} GPUs: "
            f"{best['tokens_per_s_per_gpu']:,.1f} tokens/s per GPU, "
            f"{_fmt(best['cost_per_million_tokens'], '.4g')} USD per million output tokens, "
            f"{_fmt(best['joules_per_token'], '.4g')} J per token; TPOT p50 "
            f"{best['tpot_p50_ms']:.3f} ms, p99 {best['tpot_p99_ms']:.3f} ms"
        )
        if res["best_at_largest_batch"]:
            print(
                f"note          B = {best['batch']} is the largest B searched, within the "
                "SLO and the KV capacity: a larger B may do better (add it to --batches)"
            )
    print(f"\nPareto front ({len(res['front'])} points, objective {res['objective']}):")
    print(HEADER)
    for p in res["front_points"]:
        print(_row(p))
    print(f"\ntop {len(res['ranked'])} feasible configurations:")
    print(HEADER)
    for p in res["ranked"]:
        print(_row(p))
    el = res["elasticities"]
    if el:
        print(
            f"\nelasticities at B = {best['batch']} (% per %; continuous r* = "
            f"{res['r_star_continuous']:.2f}):"
        )
        print(f"  {'input':<16} {'r*':>7} {'throughput':>11}")
        for name in el["r_star"]:
            print(f"  {name:<16} {el['r_star'][name]:>7g} {el['throughput'][name]:>11g}")


def _check_kv_options(args, hw) -> None:
    """The KV options where they can act: --kv-epsilon and --memory-attn-gib size the KV
    capacity, which needs kv_bytes_per_token, the GPUs and their memory; --kv-reserved also
    keeps FFN memory back, which needs the FFN weights. Without those they were ignored while
    the table said "none besides KV capacity". Then the defaults."""
    if args.kv_reserved is not None:
        check_reserved(args.kv_reserved)
    why = (
        "no KV capacity is sized (it needs kv_bytes_per_token in the latency file's [hardware], "
        "the Attention GPUs and their memory)"
    )
    used = {
        "--kv-epsilon": args.kv_epsilon is not None,
        "--memory-attn-gib": args.memory_attn_gib is not None,
        "--kv-reserved": args.kv_reserved is not None and hw.ffn_weight_bytes is None,
    }
    if kv_capacity_tokens(hw, 0.0) is None:
        for flag, given in used.items():
            if given:
                raise InputError(f"has nothing to act on: {why}", field=flag)
    fill_defaults(args, {"kv_reserved": KV_RESERVED, "kv_epsilon": KV_EPSILON})


def run(args) -> int:
    use_float64()  # JAX loads with the study, once the flags and inputs are read
    positive_int("r_max", args.r_max)
    positive_int("top", args.top)
    positive_int("slot_bins", args.slot_bins)
    batches = parse_int_list(args.batches, "batches")
    for b in batches or ():
        positive_int("batches", b)  # before the memory check below sizes on the largest
    r_values = load_ratios(args, args.r_max)
    if args.tornado and args.no_elasticities:
        raise InputError(
            "--tornado needs the elasticities (drop --no-elasticities)", field="tornado"
        )
    plot, tornado = plot_file(args.plot), plot_file(args.tornado, "--tornado")
    lat, opts = load_latency(args)
    hardware = load_hardware(args)
    _check_kv_options(args, hardware)
    require_worker_load(args.slot_bins, max(batches or DEFAULT_BATCHES))
    w = load_workload(args)
    from afd_jax.studies.plan import plan

    result = plan(
        w,
        lat,
        hardware=hardware,
        opts=opts,
        batches=batches,
        r_values=r_values,
        r_max=args.r_max,
        tpot_p99_ms=args.tpot_p99,
        budget_gpus=args.budget_gpus,
        objective=args.objective,
        kv_reserved=args.kv_reserved,
        kv_epsilon=args.kv_epsilon,
        top=args.top,
        elasticities=not args.no_elasticities,
        slot_bins=args.slot_bins,
        workload_name=args.workload,
        latency_source=_latency_source(args),
    )
    res = result.to_json()
    if plot:
        plot_plan_front({**res, "points": result.points}, plot)
        res["plot"] = str(plot)
        print(f"wrote {plot}", file=sys.stderr)
    if tornado and result.elasticities_raw:
        title = f"elasticities at B = {result.best['batch']} ({args.workload})"
        plot_tornado(result.elasticities_raw, tornado, title)
        res["tornado"] = str(tornado)
        print(f"wrote {tornado}", file=sys.stderr)
    if args.json:
        emit_json(res)
    else:
        _print_plan({**res, "front_points": result.front})
    return 0

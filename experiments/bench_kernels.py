"""Benchmark: slot-steps per second of the three Monte Carlo kernels against a plain NumPy
step-by-step simulator (vectorised over slots, one Python iteration per step, redrawing only
the finished slots), on the same workload and sizes, in one run.

    python experiments/bench_kernels.py --trace TRACE.csv --out docs/benchmarks.md \
        [--append] [--size cpu|gpu]

A slot-step is one slot advanced by one decode step (barrier kernel: one slot of one
stationary snapshot). Every simulator is timed ``--repeat`` times (default 3) and the fastest
run counts; kernels are compiled by a first call, whose extra time is reported separately.
Writes a Markdown section naming the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

from afd_jax.cli import cpu_device_flags, enable_compilation_cache

# as `afd-jax simulate`: one CPU device per core (AFD_JAX_CPU_DEVICES=1: one device), and the
# persistent compilation cache (a rerun loads its programs instead of compiling them)
if (_FLAGS := cpu_device_flags(os.environ)) is not None:
    os.environ["XLA_FLAGS"] = _FLAGS
enable_compilation_cache()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from afd_jax.errors import InputError  # noqa: E402
from afd_jax.model.latency import Latency, ModelOptions, other_stages  # noqa: E402
from afd_jax.montecarlo.samplers import make_sampler, max_slot_load  # noqa: E402
from afd_jax.montecarlo.simulate import _SPLIT_MIN_STEPS, simulate  # noqa: E402
from afd_jax.workload.traces import load_trace  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = {
    # name: (r_max, B, T fast, T trajectory, T numpy, barrier snapshots, replications)
    "cpu": dict(
        r_max=64, batch=256, t_fast=20_000, t_traj=2_000, t_numpy=2_000, snaps=2_048, reps=1
    ),
    "gpu": dict(
        r_max=64, batch=256, t_fast=20_000, t_traj=20_000, t_numpy=2_000, snaps=65_536, reps=64
    ),
    "small": dict(r_max=16, batch=32, t_fast=2_000, t_traj=1_000, t_numpy=500, snaps=512, reps=1),
}


def numpy_baseline(prompt, decode, r_max, batch, steps, alpha, beta, other, seed=0, reps=1):
    """The simulator a user would write: (reps, r_max, B) slot arrays (replications vectorised
    too), one Python iteration per step, fresh requests only for the slots that finished; the
    same outputs as the kernels (mean tau, Attention idle and barrier wait per r, step-time
    percentiles, mean slot load). Returns (dict of results, seconds)."""
    rng = np.random.default_rng(seed)
    n = prompt.shape[0]
    lb = np.cumsum(decode.astype(np.float64))
    lb /= lb[-1]
    shape = (reps, r_max, batch)
    idx = np.searchsorted(lb, rng.random(shape), side="right")
    p, d = prompt[idx].copy(), decode[idx].copy()
    age = np.floor(rng.random(shape) * d).astype(np.int64)
    r = np.arange(1, r_max + 1)
    tau_steps = np.empty((steps, reps, r_max))
    idle_sum, wait_sum, load_sum = np.zeros((reps, r_max)), np.zeros((reps, r_max)), 0.0
    t0 = time.perf_counter()
    for t in range(steps):
        worker = (p + age).sum(axis=2)
        max_ta = alpha * np.maximum.accumulate(worker, axis=1) + beta
        sum_ta = alpha * np.cumsum(worker, axis=1) + beta * r
        tau = np.maximum(max_ta, other)
        tau_steps[t] = tau
        idle_sum += r * tau - sum_ta
        wait_sum += r * max_ta - sum_ta
        load_sum += worker.sum() / (reps * r_max * batch)
        age += 1
        done = age >= d
        k = int(done.sum())
        if k:
            j = rng.integers(0, n, k)
            p[done], d[done], age[done] = prompt[j], decode[j], 0
    mean_tau = tau_steps.mean(axis=(0, 1))
    pct = np.percentile(tau_steps.reshape(-1, r_max), [50, 90, 99], axis=0)
    sec = time.perf_counter() - t0
    out = dict(
        mean_tau=mean_tau,
        idle=idle_sum.sum(0) / (r * mean_tau * steps * reps),
        wait=wait_sum.sum(0) / (r * mean_tau * steps * reps),
        pct=pct,
        load=load_sum / steps,
    )
    return out, sec


def emit(text: str, out: str | None, mode: str = "w") -> None:
    """Print a benchmark's Markdown and write it to ``out`` when given (``mode`` "a" appends
    to a results file, "w" replaces it): the ending of every bench script here."""
    print(text)
    if out:
        with open(out, mode) as f:
            f.write(text)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    d = jax.devices()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__}; device "
        f"{d.platform}:{getattr(d, 'device_kind', '')} (x{len(jax.devices())})"
    )


def _requests(w):
    """(prompt, decode int64 of the requests with a decode phase, theta) of a trace."""
    keep = w.decode > 0
    prompt, decode = w.prompt[keep].astype(np.int64), w.decode[keep].astype(np.int64)
    theta = float((decode * prompt + decode * (decode - 1) / 2).sum() / decode.sum())
    return prompt, decode, theta


def bench_trace(name: str):
    """The trace ``name``: a path, or a file name in $AFD_TRACES_DIR or ../shared/traces (the
    commands in docs/benchmarks.md name the traces so); exits 2 with a message when it is in
    none of them or cannot be read."""
    roots = [os.environ.get("AFD_TRACES_DIR"), os.path.join(_ROOT, "..", "shared", "traces")]
    tried = [name] + [os.path.join(r, name) for r in roots if r and not os.path.isabs(name)]
    path = next((p for p in tried if os.path.isfile(p)), None)
    try:
        if path is None:
            raise InputError(f"trace {name!r} not found (tried: {', '.join(tried)})")
        return load_trace(path)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def bench_latency(w, batch: int) -> Latency:
    """The benchmarks' latency: Attention 200 us at the mean load of B slots (theta), plus
    fixed FFN and communication stages."""
    theta = _requests(w)[2]
    return Latency(
        alpha_attn=200.0 / (batch * theta),
        beta_attn=50.0,
        alpha_ffn=0.02,
        beta_ffn=40.0,
        alpha_comm=0.002,
        beta_comm=10.0,
    )


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--trace",
        default=os.path.join(os.path.dirname(__file__), "..", "examples", "sample_trace.csv"),
        help="request trace (default: the repository's synthetic examples/sample_trace.csv)",
    )
    ap.add_argument("--out", default=None, help="Markdown file to write")
    ap.add_argument("--append", action="store_true", help="append instead of overwrite")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--kernels", default="numpy,fast,trajectory,barrier")
    ap.add_argument("--replications", type=int, default=None)
    ap.add_argument("--steps-fast", type=int, default=None)
    ap.add_argument("--memory-budget-mb", type=int, default=None)
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs per simulator (the fastest counts)"
    )
    ap.add_argument(
        "--short-runs",
        action="store_true",
        help="instead: one replication at 16..10,000 steps, and the fixed cost per call and the "
        "marginal rate fitted from 3,000 to 10,000 steps, against 64 replications",
    )
    ap.add_argument(
        "--jax-bits",
        action="store_true",
        help="the samplers' random words from jax.random.bits (JAX's own Threefry lowering, a "
        "rolled loop on CPU) instead of the unrolled kernels.threefry.random_bits: the same "
        "numbers, for the A/B of docs/cpu-speed.md",
    )
    ap.add_argument(
        "--step-unroll",
        type=int,
        default=None,
        help="steps per loop iteration of the trajectory kernel on an accelerator (default: "
        "simulate's, 8; a divisor of 128; CPUs never unroll it): the same numbers, for the A/B",
    )
    ap.add_argument(
        "--segment-steps",
        type=int,
        default=None,
        help="steps per call of the trajectory kernel (rounded up to a multiple of 128; "
        "default: simulate's, about 2**28 slot-steps per call): the same numbers, for the A/B",
    )
    ap.add_argument(
        "--plain-carry",
        action="store_true",
        help="the trajectory kernel's loop carries steps left and requests taken as two int32 "
        "arrays (simulate packs them into one uint32 word): the same numbers, for the A/B",
    )
    ap.add_argument(
        "--barrier-halves",
        action="store_true",
        help="the barrier kernel draws both halves of its snapshots together on every backend "
        "(simulate does so on CPU only): the same numbers, for the A/B",
    )
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="instead: the fast kernel's slot-steps/s at 1..64 replications and 2,000..200,000 "
        "steps, and its ratio to the NumPy baseline at 1 and 32 replications",
    )
    return ap.parse_args(argv)


def _numpy_row(prompt, decode, lat, cfg, repeat):
    r_max, batch = cfg["r_max"], cfg["batch"]
    other = other_stages(lat, np.arange(1, r_max + 1), batch, ModelOptions())
    sec = min(
        numpy_baseline(
            prompt, decode, r_max, batch, cfg["t_numpy"], lat.alpha_attn, lat.beta_attn, other
        )[1]
        for _ in range(max(1, repeat))
    )
    slots = r_max * batch
    print(f"numpy: {slots * cfg['t_numpy'] / sec:.3e} slot-steps/s", file=sys.stderr)
    return ("numpy step-by-step", cfg["t_numpy"], 1, slots * cfg["t_numpy"], sec, 0.0)


def _kernel_row(k, w, lat, cfg, budget, repeat, segment_steps=None):
    steps = {"fast": cfg["t_fast"], "trajectory": cfg["t_traj"], "barrier": cfg["snaps"]}[k]
    reps = cfg["reps"]
    r_max, batch = cfg["r_max"], cfg["batch"]
    kw = dict(kernel=k, steps=steps, replications=reps, memory_budget_bytes=budget)
    if k == "trajectory" and segment_steps:
        kw["segment_steps"] = segment_steps
    t = time.perf_counter()
    simulate(w, lat, batch, r_max, seed=1, **kw)
    first = time.perf_counter() - t
    res = min(
        (simulate(w, lat, batch, r_max, seed=2, **kw) for _ in range(max(1, repeat))),
        key=lambda x: x.wall_seconds,
    )
    print(f"{k}: {res.slot_steps_per_second:.3e} slot-steps/s", file=sys.stderr)
    first_extra = max(first - res.wall_seconds, 0.0)
    return (f"{k} kernel", steps, reps, res.slot_steps, res.wall_seconds, first_extra)


def _markdown(rows, args, argv, n_requests, theta, cfg) -> str:
    base = next((s / t for name, _, _, s, t, _ in rows if name.startswith("numpy")), None)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    r_max, batch = cfg["r_max"], cfg["batch"]
    lines = [
        f"## {args.size} sizes, {now}",
        "",
        f"Machine: {machine()}.",
        f"Workload: `{os.path.basename(args.trace)}` ({n_requests} requests, theta = "
        f"{theta:.1f}); r_max = {r_max}, B = {batch} ({r_max * batch} slots per replication).",
        "",
        "| simulator | steps T | replications | slot-steps | seconds | slot-steps/s | vs NumPy "
        "| compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, steps, reps, ss, sec, comp in rows:
        rate = ss / sec
        rel = f"{rate / base:.1f}x" if base else "-"
        lines.append(
            f"| {name} | {steps:,} | {reps} | {ss:.3e} | {sec:.2f} | {rate:.3e} | "
            f"{rel} | {comp:.1f} |"
        )
    lines += [
        "",
        "Command: `python experiments/bench_kernels.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + "`",
        "",
    ]
    return "\n".join(lines)


MIN_SECONDS = 0.5
"""A timed row runs at least ``--repeat`` times and at least this long (a 10 ms run is timed
about 50 times, a 0.5 s run ``--repeat`` times): the fastest run counts."""


def _fastest(once, repeat):
    """(best rate, total slot-steps) over at least ``repeat`` calls of ``once() -> (rate,
    slot-steps)`` and at least :data:`MIN_SECONDS`."""
    best = total = n = 0
    t0 = time.perf_counter()
    while n < repeat or time.perf_counter() - t0 < MIN_SECONDS:
        rate, work = once()
        best, total, n = max(best, rate), total + work, n + 1
    return best, total


def _fast_run(w, lat, cfg, steps, reps, budget, seed=2):
    """One ``simulate`` call of the fast kernel; ``w``: (sampler, max slot load)."""
    sampler, most = w
    kw = dict(steps=steps, replications=reps, memory_budget_bytes=budget, max_slot_load=most)
    return simulate(sampler, lat, cfg["batch"], cfg["r_max"], kernel="fast", seed=seed, **kw)


def _fast_rate(w, lat, cfg, steps, reps, repeat, budget, warm=True):
    """Best slot-steps/s of the fast kernel over at least ``repeat`` runs and
    :data:`MIN_SECONDS` (compiled by a first call unless ``warm`` is False). ``w``:
    (sampler, max slot load), built once (the alias table takes 0.2 s of host time that
    ``simulate`` spends before its timer starts)."""
    if warm:
        _fast_run(w, lat, cfg, steps, reps, budget, seed=1)

    def once():
        res = _fast_run(w, lat, cfg, steps, reps, budget)
        return res.slot_steps_per_second, res.slot_steps

    return _fastest(once, repeat)


def _numpy_rate(prompt, decode, lat, cfg, steps, reps, repeat):
    r_max, batch = cfg["r_max"], cfg["batch"]
    other = other_stages(lat, np.arange(1, r_max + 1), batch, ModelOptions())
    args = (prompt, decode, r_max, batch, steps, lat.alpha_attn, lat.beta_attn, other)
    work = r_max * batch * steps * reps
    return _fastest(lambda: (work / numpy_baseline(*args, reps=reps)[1], work), repeat)


SCALING_REPS = (1, 8, 32, 64)
SCALING_STEPS = (2_000, 20_000, 200_000)
SCALING_LONG = ((64, 20_000),)  # many replications of several segments each, in several calls


def _interleaved(w, lat, cfg, steps, budget) -> str:
    """A markdown line: 1 against 64 replications of ``steps``, the calls alternating (three
    rounds of one 64-replication call and 8 single ones), so that both see the same load of a
    shared machine; the fastest call of each counts."""

    def wall(reps):
        return _fast_run(w, lat, cfg, steps, reps, budget).wall_seconds

    one, many = wall(1), wall(64)  # compiled
    for _ in range(3):
        many = min(many, wall(64))
        one = min([one] + [wall(1) for _ in range(8)])
    work = cfg["r_max"] * cfg["batch"] * steps
    r1, r64 = work / one, 64 * work / many
    return (
        f"Interleaved at {steps:,} steps: 1 replication {r1:.3e}, 64 replications {r64:.3e} "
        f"slot-steps/s (ratio 64 / 1 = {r64 / r1:.2f})."
    )


def scaling(args, w, prompt, decode, lat, cfg, budget) -> str:
    """Markdown rows: per-slot-step rate against the job size, and the NumPy ratio."""
    load = os.getloadavg()[0]
    lines = [
        f"## scaling, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        "",
        f"Machine: {machine()}; load average {load:.1f} at the start.",
        f"r_max = {cfg['r_max']}, B = {cfg['batch']}; fast kernel, fastest of at least "
        f"{args.repeat} runs and {MIN_SECONDS} s per row.",
        "",
        "| replications | steps | slot-steps/s | vs first row |",
        "|---|---|---|---|",
    ]
    sizes = [(reps, 5_000) for reps in SCALING_REPS] + [(1, t) for t in SCALING_STEPS]
    first = None
    for reps, steps in sizes + list(SCALING_LONG):
        rate = _fast_rate(w, lat, cfg, steps, reps, args.repeat, budget)[0]
        first = first or rate
        lines.append(f"| {reps} | {steps:,} | {rate:.3e} | {rate / first:.2f} |")
        print(lines[-1], file=sys.stderr)
    lines += [""] + [_interleaved(w, lat, cfg, t, budget) for t in (5_000, 20_000)]
    lines += [
        "",
        "| replications | NumPy slot-steps/s | fast slot-steps/s | ratio |",
        "|---|---|---|---|",
    ]
    cpu = []
    for reps in (1, 32):
        # NumPy and fast runs alternate, so that both see the same load of a shared machine
        rates, work, cpu_s = [0.0, 0.0], [0, 0], [0.0, 0.0]
        for _ in range(args.repeat):
            steps = max(200, 2_000 // reps)
            c0 = time.process_time()
            base = _numpy_rate(prompt, decode, lat, cfg, steps, reps, 1)
            c1 = time.process_time()
            fast = _fast_rate(w, lat, cfg, 5_000, reps, 1, budget, warm=False)
            cpu_s = [cpu_s[0] + c1 - c0, cpu_s[1] + time.process_time() - c1]
            rates = [max(rates[0], base[0]), max(rates[1], fast[0])]
            work = [work[0] + base[1], work[1] + fast[1]]
        base, fast = rates
        lines.append(f"| {reps} | {base:.3e} | {fast:.3e} | {fast / base:.1f}x |")
        print(lines[-1], file=sys.stderr)
        per_cpu = (work[0] / cpu_s[0], work[1] / cpu_s[1])
        cpu.append(f"{reps}: NumPy {per_cpu[0]:.3e}, fast {per_cpu[1]:.3e} "
                   f"({per_cpu[1] / per_cpu[0]:.1f}x)")  # fmt: skip
    lines += [
        "",
        "Slot-steps per CPU-second (all threads; less sensitive to the load than wall time), "
        "replications " + "; ".join(cpu) + ".",
        f"Load average at the end: {os.getloadavg()[0]:.1f}.",
        "",
    ]
    return "\n".join(lines)


SHORT_STEPS = (16, 1_000, 2_000, 3_000, 5_000, 10_000)


def short_runs(args, w, lat, cfg, budget) -> str:
    """Markdown: ``wall_seconds`` of one replication against its length, the least-squares
    line through the lengths from ``simulate._SPLIT_MIN_STEPS`` on (from there one replication
    is split over the CPU devices; the shorter ones run on one device), with
    intercept = fixed cost per call and slope = marginal rate, and the rate of 64
    replications x 5,000 steps."""
    slots = cfg["r_max"] * cfg["batch"]
    ms = {}
    for steps in SHORT_STEPS:
        ms[steps] = 1e3 * slots * steps / _fast_rate(w, lat, cfg, steps, 1, args.repeat, budget)[0]
    fit = [t for t in SHORT_STEPS if t >= _SPLIT_MIN_STEPS]  # one way of running: split
    slope, intercept = np.polyfit(fit, [ms[t] for t in fit], 1)
    many = _fast_rate(w, lat, cfg, 5_000, 64, args.repeat, budget)[0]
    return "\n".join(
        [
            f"## short runs, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
            "",
            f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end.",
            f"r_max = {cfg['r_max']}, B = {cfg['batch']}; fast kernel, one replication, "
            f"`wall_seconds`, fastest of at least {args.repeat} runs and {MIN_SECONDS} s.",
            "",
            "| steps | " + " | ".join(f"{t:,}" for t in SHORT_STEPS) + " |",
            "|---|" + "---|" * len(SHORT_STEPS),
            "| ms | " + " | ".join(f"{ms[t]:.2f}" for t in SHORT_STEPS) + " |",
            "",
            f"Line through {fit[0]:,}..{fit[-1]:,} steps: {intercept:.2f} ms per call plus "
            f"{1e3 * slope:.3f} us per step (marginal {slots / (1e-3 * slope):.3e} "
            f"slot-steps/s); 64 replications x 5,000 steps: {many:.3e} slot-steps/s.",
            "",
        ]
    )


_HEADER = (
    "# Kernel benchmarks\n\nSlot-steps per second of the Monte Carlo kernels against a "
    "plain NumPy step-by-step simulator (`experiments/bench_kernels.py`). Steps T "
    "differ between simulators where stated (the slow ones run fewer steps; the rate "
    "is per slot-step). Barrier kernel: T = stationary snapshots. Seconds: the fastest "
    "of --repeat timed runs (default 3) for every simulator, kernels compiled "
    "beforehand (compile time listed separately).\n\n"
)


def _use_jax_bits() -> None:
    """The samplers draw their words with ``jax.random.bits`` (before anything is traced)."""
    import jax.numpy as jnp

    from afd_jax.kernels import sampling

    sampling.random_bits = lambda key, shape: jax.random.bits(key, tuple(shape), jnp.uint32)


def _use_variants(args) -> None:
    """The A/B options (before anything is traced): the same numbers, another program."""
    from afd_jax.montecarlo import simulate as sim

    if args.step_unroll:
        if args.step_unroll < 1 or 128 % args.step_unroll:
            print(f"error: --step-unroll must divide 128, got {args.step_unroll}", file=sys.stderr)
            sys.exit(2)
        sim._ACCELERATOR_STEP_UNROLL = args.step_unroll
    if args.segment_steps is not None and args.segment_steps < 1:
        print(f"error: --segment-steps must be positive, got {args.segment_steps}", file=sys.stderr)
        sys.exit(2)
    if args.barrier_halves:
        sim._BARRIER_HALVES_BACKENDS = ("cpu", "gpu", "tpu")
    if args.plain_carry:
        sim._PACK_STEP_CARRY = False


def main(argv=None) -> int:
    args = _parse(argv)
    jax.config.update("jax_enable_x64", True)
    if args.jax_bits:
        _use_jax_bits()
    _use_variants(args)
    cfg = dict(SIZES[args.size])
    if args.replications:
        cfg["reps"] = args.replications
    if args.steps_fast:
        cfg["t_fast"] = args.steps_fast
    budget = (args.memory_budget_mb << 20) if args.memory_budget_mb else None
    w = bench_trace(args.trace)
    prompt, decode, theta = _requests(w)
    lat = bench_latency(w, cfg["batch"])
    if args.scaling or args.short_runs:
        built = (make_sampler(w, 0, draw="alias"), max_slot_load(w))
        if args.short_runs:
            text = short_runs(args, built, lat, cfg, budget)
        else:
            text = scaling(args, built, prompt, decode, lat, cfg, budget)
        emit(text, args.out, "a")
        return 0
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    rows = [_numpy_row(prompt, decode, lat, cfg, args.repeat)] if "numpy" in kernels else []
    for k in ("fast", "trajectory", "barrier"):
        if k in kernels:
            rows.append(_kernel_row(k, w, lat, cfg, budget, args.repeat, args.segment_steps))
    text = _markdown(rows, args, argv, prompt.size, theta, cfg)
    print(text)
    if args.out:
        header = "" if args.append and os.path.exists(args.out) else _HEADER
        with open(args.out, "a" if args.append else "w") as f:
            f.write(header + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

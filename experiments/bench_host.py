"""The host's share of a ``simulate`` call: how long the driver's host work takes per call
(dispatching the chunk programs, fetching their sums once they are ready, adding them up in
float64), against the call's ``wall_seconds``.

    python experiments/bench_host.py --trace TRACE.csv [--kernel fast] [--steps 20000]
        [--replications 64] [--replications-per-call 32] [--segment-steps 10112]
        [--calls 5] [--host-sums] [--out FILE.md]

With the chunk loop pipelined (``spine.run_chunks``) the host's work on segment i overlaps
the device's on segment i + 1, so a call is host-bound when its host work comes near its
wall time: on a GPU the device part shrinks and this is what is left. The pieces are timed
by wrapping the driver's functions (a fetch first waits for its arrays, so its time is the
copy and conversion alone); "rest" is the wall time not in them (waiting for the device,
Python between the pieces). The defaults are the chunking the driver chose on an H200 for
64 replications x 20,000 steps (two chunks of 32, two segments each). Each piece is the
smallest over ``--calls`` calls after a compiling call.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_kernels as bk  # noqa: E402  (sets the CPU device flags before JAX starts)
import jax  # noqa: E402

from afd_jax.montecarlo import simulate as S  # noqa: E402
from afd_jax.montecarlo import spine  # noqa: E402
from afd_jax.montecarlo.samplers import make_sampler, max_slot_load  # noqa: E402

PIECES = {
    "dispatch": ("start_chunk", "segment_chunk", "start_split", "segment_split"),
    "add": ("StepAccumulator.add",),
}


class Timers:
    """Seconds per piece in the current call, and how many times each ran."""

    def __init__(self):
        self.seconds = collections.Counter()
        self.count = collections.Counter()

    def wrap(self, piece: str, f, wait: bool = False):
        def timed(*a, **k):
            if wait:  # a fetch: time the copy, not the wait for the device
                jax.block_until_ready(a[-1])
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                self.seconds[piece] += time.perf_counter() - t
                self.count[piece] += 1

        return timed


def install(timers: Timers) -> None:
    """Wrap the driver's dispatches, fetches and accumulator adds (in place, for this run)."""
    for name in PIECES["dispatch"]:
        setattr(S, name, timers.wrap("dispatch", getattr(S, name)))
    S.StepAccumulator.add = timers.wrap("add", S.StepAccumulator.add)
    spine.RowMesh.fetch = timers.wrap("fetch", spine.RowMesh.fetch, wait=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--kernel", default="fast", choices=("fast", "trajectory"))
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--replications", type=int, default=64)
    ap.add_argument("--replications-per-call", type=int, default=32, help="0: the driver's")
    ap.add_argument("--segment-steps", type=int, default=10_112, help="0: the driver's")
    ap.add_argument("--r-max", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument(
        "--host-sums",
        action="store_true",
        help="fetch every block and add them on the host (the code before the device totals, "
        "same numbers): the A/B of spine.block_totals",
    )
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # as the CLI
    trace = bk.bench_trace(args.trace)
    lat = bk.bench_latency(trace, args.batch)
    sampler = make_sampler(trace, 0, draw="alias")
    kw = dict(kernel=args.kernel, steps=args.steps, replications=args.replications)
    kw.update(max_slot_load=max_slot_load(trace))
    kw.update(replications_per_call=args.replications_per_call or None)
    kw.update(segment_steps=args.segment_steps or None)
    timers = Timers()
    install(timers)
    if args.host_sums:
        S._device_totals = lambda run, acc: False
    simulate = S.simulate
    simulate(sampler, lat, args.batch, args.r_max, seed=1, **kw)  # compiled
    best: dict = {}
    for _ in range(args.calls):
        timers.seconds.clear()
        timers.count.clear()
        res = simulate(sampler, lat, args.batch, args.r_max, seed=2, **kw)
        parts = dict(timers.seconds, wall=res.wall_seconds)
        parts["rest"] = res.wall_seconds - sum(timers.seconds.values())
        for k, v in parts.items():
            best[k] = min(best.get(k, v), v)
    counts = dict(timers.count)
    sums = "every block added on the host" if args.host_sums else "totals from the device"
    lines = [
        f"## host share of a call, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        "",
        f"Machine: {bk.machine()}. {args.kernel} kernel, r_max = {args.r_max}, "
        f"B = {args.batch}, {args.replications} replications x {args.steps:,} steps "
        f"(replications per call {args.replications_per_call or 'auto'}, segment steps "
        f"{args.segment_steps or 'auto'}; {sums}); the smallest of {args.calls} calls "
        f"per piece; fastest call {res.slot_steps / best['wall']:.3e} slot-steps/s.",
        "",
        "| piece | calls | ms |",
        "|---|---|---|",
    ]
    for k in ("dispatch", "fetch", "add", "rest", "wall"):
        lines.append(f"| {k} | {counts.get(k, '')} | {1e3 * best.get(k, 0.0):.2f} |")
    bk.emit("\n".join(lines + [""]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

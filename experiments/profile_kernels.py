"""Where a kernel's time goes on the device: one ``simulate`` call under ``jax.profiler``, its
device operations (GPU kernels; on CPU the host's XLA work) summed by name.

    python experiments/profile_kernels.py --trace TRACE.csv [--kernels fast,trajectory:2000]
        [--steps 20000] [--replications 64] [--out DIR]

Each kernel is compiled by a first call, then one call (seed 2) runs under the profiler with a
Perfetto trace (``DIR/KERNEL/...perfetto_trace.json.gz``); the Markdown table printed (and
written to ``DIR/profile.md``) lists the operations that took most device time, with the
count of launches, the total and the share of the busy time, and the first fields the
profiler records for each; then the host events (Python thread) that took most time. Same
sizes and workload as ``bench_kernels.py``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_kernels as bk  # noqa: E402  (sets the CPU device flags before JAX starts)
import jax  # noqa: E402

from afd_jax.montecarlo.samplers import make_sampler, max_slot_load  # noqa: E402
from afd_jax.montecarlo.simulate import simulate  # noqa: E402


def device_ops(events) -> tuple[dict, float, str]:
    """({name: [count, total us, label]}, span us, process) of the complete events of the
    device processes of a Perfetto trace (every process whose name does not start with
    ``/host``; on CPU, where there is none, the host's XLA threads)."""
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    dev = {p for p, n in names.items() if not n.startswith("/host")}
    if not dev:  # CPU: the XLA client and Eigen threads of the host
        threads = {
            (e["pid"], e["tid"]) for e in events if e.get("name") == "thread_name"
            and e["args"]["name"].startswith(("tf_XLA", "XLA"))
        }  # fmt: skip
        keep = [e for e in events if e.get("ph") == "X" and (e["pid"], e.get("tid")) in threads]
        where = "host XLA threads"
    else:
        keep = [e for e in events if e.get("ph") == "X" and e["pid"] in dev]
        where = ", ".join(sorted(names[p] for p in dev))
    ops: dict = collections.defaultdict(lambda: [0, 0.0, ""])
    for e in keep:
        op = ops[e["name"]]
        op[0] += 1
        op[1] += float(e.get("dur", 0.0))
        args = e.get("args", {})
        op[2] = op[2] or "; ".join(f"{k}={str(v)[:40]}" for k, v in sorted(args.items())[:4])
    span = max((e["ts"] + e.get("dur", 0) for e in keep), default=0) - min(
        (e["ts"] for e in keep), default=0
    )
    return dict(ops), span, where


def host_calls(events, top: int) -> list[str]:
    """Markdown rows: the host's Python calls (the profiler's Python tracer names them
    ``$file:line function``) and jitted-function dispatches that took most time (nested
    events count in each of their parents; a first look at where the host waits)."""
    total: dict = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") == "X" and e.get("name", "").startswith(("$", "PjitFunction")):
            total[e["name"]][0] += 1
            total[e["name"]][1] += float(e.get("dur", 0.0))
    rows = sorted(total.items(), key=lambda kv: -kv[1][1])[:top]
    return ["| host event | calls | total ms |", "|---|---|---|"] + [
        f"| `{name[:80]}` | {n} | {dur / 1e3:.2f} |" for name, (n, dur) in rows
    ]


def table(kernel, wall, ops, span, where, top) -> str:
    busy = sum(v[1] for v in ops.values()) or 1.0
    lines = [
        f"### {kernel}: call {1e3 * wall:.1f} ms wall, device span {span / 1e3:.1f} ms, "
        f"busy {busy / 1e3:.1f} ms ({where})",
        "",
        "| operation | launches | total ms | share | op |",
        "|---|---|---|---|---|",
    ]
    for name, (n, dur, label) in sorted(ops.items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"| `{name[:60]}` | {n} | {dur / 1e3:.2f} | {dur / busy:.1%} | {label[:90]} |")
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument(
        "--kernels",
        default="fast,trajectory,barrier",
        help="comma-separated KERNEL or KERNEL:STEPS (steps of that kernel; barrier: snapshots)",
    )
    ap.add_argument("--steps", type=int, default=20_000, help="default steps (barrier: snapshots)")
    ap.add_argument("--replications", type=int, default=64)
    ap.add_argument("--r-max", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="profile_out")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    trace = bk.bench_trace(args.trace)
    lat = bk.bench_latency(trace, args.batch)
    # the sampler built once (its alias table is host work before simulate's timer starts)
    w = make_sampler(trace, 0, draw="alias")
    most = max_slot_load(trace)
    parts = [f"## profile, {bk.machine()}", ""]
    for item in [s.strip() for s in args.kernels.split(",") if s.strip()]:
        k, _, steps = item.partition(":")
        kw = dict(kernel=k, steps=int(steps or args.steps), replications=args.replications)
        kw.update(max_slot_load=most)
        simulate(w, lat, args.batch, args.r_max, seed=1, **kw)  # compiled
        log = os.path.join(args.out, k)
        with jax.profiler.trace(log, create_perfetto_trace=True):
            t0 = time.perf_counter()
            res = simulate(w, lat, args.batch, args.r_max, seed=2, **kw)
            wall = time.perf_counter() - t0
        path = sorted(glob.glob(os.path.join(log, "**", "perfetto_trace.json.gz"), recursive=True))
        with gzip.open(path[-1]) as f:
            events = json.load(f)["traceEvents"]
        ops, span, where = device_ops(events)
        parts.append(f"{k}: {res.slot_steps:.3e} slot-steps, {res.slot_steps_per_second:.3e}/s")
        parts.append(table(k, wall, ops, span, where, args.top))
        parts.append("\n".join(host_calls(events, args.top) + [""]))
        print("\n".join(parts[-3:]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile.md"), "w") as f:
        f.write("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the Gaussian method's kernel alone: scenario-r evaluations per second against the
chunk size, compiled beforehand (the issue's target: 1e5/s on the 2-core CPU, 1e7/s on one GPU).

`experiments/bench_sweep.py` times a whole 10,000-scenario sweep, first compilation, CSV and
exact method included: on a GPU that caps the Gaussian column far below what the kernel does.
This script runs the very kernel the sweep runs (``analytic_kernels(...)["gaussian"]``: one
``jit(vmap)`` over scenarios, r = 1..r_max inside) on one device, on seeded random scenarios
whose latency ranges are those of experiments/sweeps/bench_10k.toml, and reports per chunk size
and float dtype: compile seconds, the fastest call (inputs on the device, the result fetched to
the host, as the sweep does) and the evaluations per second. No trace is read.

    python experiments/bench_gaussian.py [--chunks 1000,4000] [--dtypes float64,float32]
        [--r-max 64] [--repeat 5] [--out results.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_sweep import cpu_model

from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.studies.sweep import analytic_kernels

MIN_SECONDS = 0.5


def scenarios(n: int, dtype, seed: int = 0):
    """(lat, theta, slot_var, batch) of n random scenarios on the default device."""
    rng = np.random.default_rng(seed)

    def log_uniform(lo, hi):
        return np.exp(rng.uniform(np.log(lo), np.log(hi), n))

    lat = Latency(
        alpha_attn=log_uniform(0.002, 0.02),
        beta_attn=rng.uniform(200.0, 2000.0, n),
        alpha_ffn=log_uniform(0.05, 0.5),
        beta_ffn=log_uniform(1000.0, 20000.0),
        alpha_comm=log_uniform(0.2, 2.0),
        beta_comm=rng.uniform(20.0, 200.0, n),
        cost_attn=np.ones(n),
        cost_ffn=np.ones(n),
    )
    theta = rng.uniform(500.0, 15000.0, n)
    slot_var = (theta * rng.uniform(0.5, 1.5, n)) ** 2
    batch = rng.choice([16.0, 32.0, 64.0, 128.0, 256.0], n)

    def put(a):
        return jax.device_put(jnp.asarray(a, dtype))

    return jax.tree_util.tree_map(put, lat), put(theta), put(slot_var), put(batch)


def measure(n: int, dtype, r_max: int, repeat: int) -> dict:
    fn = analytic_kernels(ModelOptions(), r_max, "tail")["gaussian"]
    args = scenarios(n, dtype)
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.device_get(compiled(*args))["tput_gaussian"]
    assert out.shape == (n, r_max) and np.isfinite(out).all(), "non-finite throughput"
    best, calls, t_start = float("inf"), 0, time.perf_counter()
    while calls < repeat or time.perf_counter() - t_start < MIN_SECONDS:
        t0 = time.perf_counter()
        jax.device_get(compiled(*args))
        best, calls = min(best, time.perf_counter() - t0), calls + 1
    return {"compile_s": compile_s, "seconds": best, "calls": calls, "rate": n * r_max / best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", default="1000,4000", help="scenarios per call, comma-separated")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--r-max", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the markdown here")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    dev = jax.devices()[0]
    lines = [
        f"## Gaussian kernel, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; jax {jax.__version__}; device "
        f"{dev.platform}:{getattr(dev, 'device_kind', '')} (one of {len(jax.devices())}); "
        f"load average {os.getloadavg()[0]:.1f} at the start.",
        f"r = 1..{args.r_max}; fastest of at least {args.repeat} calls and {MIN_SECONDS} s, "
        "result fetched to the host.",
        "",
        "| dtype | scenarios per call | compile s | ms per call | scenario-r evaluations/s |",
        "|---|---|---|---|---|",
    ]
    for dtype in args.dtypes.split(","):
        for n in (int(c) for c in args.chunks.split(",")):
            m = measure(n, jnp.dtype(dtype), args.r_max, args.repeat)
            lines.append(
                f"| {dtype} | {n:,} | {m['compile_s']:.2f} | {1e3 * m['seconds']:.2f} | "
                f"{m['rate']:.3e} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

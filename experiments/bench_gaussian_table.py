"""Benchmark of the Gaussian barrier on a measured Attention table (the table path of
``theory.gaussian_step_time``: root finding, then the tail integral on panels cut at the
table's knots): scenario-r evaluations per second on a preset, compiled beforehand, and the
largest relative distance to adaptive quadrature split at the knots (SciPy) on a few points.

    python experiments/bench_gaussian_table.py [--preset deepseek-v3@h200_sxm] [--n 500]
        [--batch 64] [--ffn-scale 0.05] [--repeat 5]

The FFN scaled down (default 0.05) keeps the bundle Attention-bound, where the integral over
the table's knots is most of E[tau] (with the preset's own FFN most r are FFN-bound).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import time

import jax
import numpy as np
from bench_sweep import cpu_model
from scipy import integrate, optimize, stats

from afd_jax.model import latency as L
from afd_jax.model import theory
from afd_jax.model.latency_io import resolve_latency
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

WORKLOAD = "geometric:prompt=2000,decode=300"


def quadrature(lat, opts, theta: float, var: float, r: float, batch: float) -> float:
    """E[max(t_A(max of r worker loads), G)] under Gaussian loads, by adaptive quadrature
    split at the knots of the two rows interpolated at B and at the kink t_A = G."""
    host = L.host_latency(lat)
    m, s = batch * theta, math.sqrt(batch * var)

    def t_a(x):
        return float(L.t_attn(host, m + s * x, batch))

    g = float(L.other_stages(host, r, batch, opts))
    b = np.asarray(lat.tables.attn.batches)
    i = max(0, min(len(b) - 2, int(np.searchsorted(b, batch, side="right")) - 1))
    knots = np.concatenate([np.asarray(lat.tables.attn.rows[k].x) for k in (i, i + 1)])
    pts = [z for z in (knots - m) / s if -12 < z < 12]
    if t_a(-12) < g < t_a(12):
        pts.append(optimize.brentq(lambda x: t_a(x) - g, -12, 12))

    def dens(x):
        return max(t_a(x), g) * r * stats.norm.pdf(x) * stats.norm.cdf(x) ** (r - 1)

    return integrate.quad(dens, -12, 12, points=sorted(pts), limit=800, epsabs=1e-13)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="deepseek-v3@h200_sxm")
    ap.add_argument("--n", type=int, default=500, help="scenario-r points per call")
    ap.add_argument("--batch", type=float, default=64.0)
    ap.add_argument("--ffn-scale", type=float, default=0.05)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    lat, opts = resolve_latency(args.preset)
    lat = L.scale_latency(lat, {"ffn": args.ffn_scale})
    st = workload_stats(resolve_workload(WORKLOAD))
    r = np.linspace(1.0, 64.0, args.n)
    batch = np.full(args.n, args.batch)
    fn = jax.jit(lambda r, b: theory.gaussian_step_time(lat, st.theta, st.slot_var, r, b, opts))
    t0 = time.perf_counter()
    fn(r, batch).block_until_ready()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fn(r, batch).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    got = np.asarray(fn(r, batch))
    worst = max(
        abs(got[k] / quadrature(lat, opts, st.theta, st.slot_var, r[k], args.batch) - 1)
        for k in np.linspace(0, args.n - 1, 6).astype(int)
    )
    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, {cpu_model()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__}: {args.preset} (FFN x "
        f"{args.ffn_scale:g}), {WORKLOAD}, "
        f"B = {args.batch:g}, {args.n} r in [1, 64]: first call {first:.2f} s, fastest "
        f"{1e3 * best:.1f} ms ({args.n / best:.3e} evaluations/s, {1e6 * best / args.n:.0f} us "
        f"each); largest |relative distance| to quadrature on 6 of them {worst:.1e}"
    )


if __name__ == "__main__":
    main()

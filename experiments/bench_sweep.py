"""Benchmark of `afd-jax sweep`: scenario-r evaluations per second per method.

Runs experiments/sweeps/bench_10k.toml (10,000 scenarios x r = 1..64 by mean-field, Gaussian
and exact; 640,000 rows) into a temporary folder and prints one JSON object with the machine
(CPU model, cores, devices, jax version), the wall time and the evaluations per second of each
method (rows / seconds spent in that method; the first chunk's compilation included).

    python experiments/bench_sweep.py [--scenarios-per-chunk N] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import jax

from afd_jax.studies.sweep import load_spec, make_plan, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "experiments/sweeps/bench_10k.toml"))
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)  # float64, as the CLI runs it
    os.chdir(ROOT)  # the spec's trace paths are relative to the project root
    spec = load_spec(args.spec)
    t0 = time.perf_counter()
    plan = make_plan(spec)
    t_plan = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        res = run_sweep(
            plan, output=str(Path(tmp) / "bench.csv"), chunk_size=args.chunk_size, progress=True
        )
        size = (Path(tmp) / "bench.csv").stat().st_size
    summary = res.summary()
    out = {
        "spec": str(Path(args.spec).relative_to(ROOT))
        if args.spec.startswith(str(ROOT))
        else args.spec,
        "n_scenarios": summary["n_scenarios"],
        "n_rows": summary["n_rows"],
        "methods": list(spec.methods),
        "plan_seconds": t_plan,
        "sweep_wall_seconds": summary["wall_seconds"],
        "method_seconds": res.method_seconds,
        "evaluations_per_second": summary["evaluations_per_second"],
        "table_bytes": size,
        "chunk_size": summary["chunk_size"],
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "devices": [str(d) for d in jax.local_devices()],
            "platform": jax.default_backend(),
            "jax": jax.__version__,
            "x64": bool(jax.config.jax_enable_x64),
        },
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

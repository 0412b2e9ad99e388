"""What afd-jax predicts for the shipped measured presets (``MODEL@SYSTEM``) on the shared
traces: the best (r, B) of ``afd_jax.plan`` (tokens/s per GPU, exact steady state, KV capacity
from the preset's [hardware] table), its regime, cost and P99 time per output token.

    python experiments/hardware_predictions.py [--traces-dir DIR] [--out CSV]

Rows are appended as they complete; a rerun skips the (preset, trace) pairs already written.
The traces are read from ``--traces-dir`` (default ``$AFD_TRACES_DIR``); they are not committed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import jax

from afd_jax import plan
from afd_jax.model.latency_io import list_presets

TRACES = ("azure_llm_2023_conv.csv", "azure_llm_2023_code.csv", "mooncake_conversation.jsonl")
BATCHES = (16, 32, 64, 128, 256, 512)
FIELDS = (
    "preset",
    "trace",
    "theta",
    "r",
    "batch",
    "gpus",
    "regime",
    "barrier_share",
    "tokens_per_s_per_gpu",
    "cost_per_million_tokens",
    "joules_per_token",
    "tpot_p99_ms",
    "kv_batch_limit",
)


def _row(preset: str, trace: str, res) -> dict:
    best = res.best or {}
    row = {"preset": preset, "trace": trace, "theta": f"{res.theta:.2f}"}
    for key in FIELDS[3:-1]:
        value = best.get(key, "")
        row[key] = f"{value:.6g}" if isinstance(value, float) else value
    row["kv_batch_limit"] = res.kv_batch_limit if res.kv_batch_limit is not None else ""
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces-dir", default=os.environ.get("AFD_TRACES_DIR"))
    ap.add_argument("--out", default="experiments/results/hardware/predictions.csv")
    ap.add_argument("--r-max", type=int, default=32)
    args = ap.parse_args(argv)
    if not args.traces_dir or not Path(args.traces_dir).is_dir():
        print(
            "give --traces-dir (or AFD_TRACES_DIR): the folder of the shared traces",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    done = set()
    if out.exists():
        with out.open() as f:
            done = {(r["preset"], r["trace"]) for r in csv.DictReader(f)}
    presets = [p for p in list_presets() if "@" in p]
    jax.config.update("jax_enable_x64", True)
    for preset in presets:
        for trace in TRACES:
            if (preset, trace) in done:
                continue
            res = plan(
                str(Path(args.traces_dir) / trace),
                preset,
                batches=BATCHES,
                r_max=args.r_max,
                elasticities=False,
                workload_name=trace,
            )
            new = not out.exists()
            with out.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
                if new:
                    writer.writeheader()
                writer.writerow(_row(preset, trace, res))
            print(f"{preset} {trace}: {_row(preset, trace, res)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

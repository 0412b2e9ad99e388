"""Experiment: how far throughput and the best r move under each serving dynamic
(docs/dynamics.md), on the shared traces, beside the idealised model's closed forms.

    python experiments/dynamics.py --traces-dir $AFD_TRACES_DIR \
        --out experiments/results/dynamics [--steps 2048] [--replications 3]

Writes ``results.json`` (every run: per-r throughput, SE, barrier share, empty-slot fraction,
best r; the idealised mean-field / Gaussian / exact best r), ``summary.md`` (the tables quoted
in docs/dynamics.md) and two figures: ``barrier_vs_routing.png`` (barrier share and throughput
against r per routing policy and trace) and ``throughput_vs_microbatches.png`` (m = 1..4 beside
the serial and pipelined steps). Sizes are small on purpose (a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from afd_jax.kernels.dynamics import Dynamics
from afd_jax.model.latency_io import resolve_latency
from afd_jax.montecarlo.simulate import simulate
from afd_jax.studies.provision import provision
from afd_jax.workload.traces import load_trace

TRACES = {
    "azure_conv": "azure_llm_2023_conv.csv",
    "azure_code": "azure_llm_2023_code.csv",
    "mooncake": "mooncake_conversation.jsonl",
}
BATCH, R_MAX = 36, 12
ROUTING = {
    "in-place": Dynamics(),
    "balanced": Dynamics(routing="balanced"),
    "power-of-2": Dynamics(routing="power-of-d", routing_d=2),
    "balanced, slack 4": Dynamics(routing="balanced", slot_slack=4),
    "lookahead 8": Dynamics(routing="lookahead", lookahead=8),
}
MICRO = {f"m={m}": Dynamics(microbatches=m) for m in (1, 2, 3, 4)}
EFFECTS = {
    "jitter cv 0.1": Dynamics(jitter_cv=0.1),
    "jitter cv 0.3": Dynamics(jitter_cv=0.3),
    "straggler 0.05,2": Dynamics(straggler_p=0.05, straggler_s=2.0),
    "experts 64,6,8 uniform": Dynamics(experts=64, expert_k=6, expert_ranks=8),
    "experts 64,6,8 skew 1": Dynamics(experts=64, expert_k=6, expert_ranks=8, expert_skew=1.0),
}


def _row(res) -> dict:
    keys = ("throughput", "se", "barrier_share", "mean_tau", "se_tau", "idle_attn", "idle_ffn")
    out = {k: [float(x) for x in getattr(res, k)] for k in keys}
    if res.empty_slot_fraction is not None:
        out["empty_slot_fraction"] = [float(x) for x in res.empty_slot_fraction]
    out.update(r_best=res.r_best, wall_seconds=res.wall_seconds, slot_steps=res.slot_steps)
    return out


def _run(w, lat, opts, cfg, args, label):
    t0 = time.perf_counter()
    res = simulate(w, lat, BATCH, R_MAX, steps=args.steps, warmup=args.warmup,
                   replications=args.replications, seed=args.seed, opts=opts,
                   dynamics=cfg)  # fmt: skip
    print(f"  {label}: r* = {res.r_best}, {time.perf_counter() - t0:.1f} s", flush=True)
    return _row(res)


def run_trace(name: str, path: Path, args) -> dict:
    """Every configuration on one trace."""
    w = load_trace(path)
    lat, opts = resolve_latency("paper-v1")
    ref = provision(w, lat, BATCH, r_max=R_MAX, opts=opts)
    out = {
        "idealised": {
            "r_best": {k: int(v) for k, v in ref.r_best.items()},
            "throughput": {k: [float(x) for x in v] for k, v in ref.throughput.items()},
        },
        "routing": {},
        "micro": {},
        "effects": {},
    }
    print(f"{name}: idealised r* {out['idealised']['r_best']}", flush=True)
    for label, cfg in ROUTING.items():
        out["routing"][label] = _run(w, lat, opts, cfg, args, label)
    if name == "azure_conv":
        for overlap in ("serial", "pipelined"):
            o = opts._replace(overlap=overlap)
            out["micro"][overlap] = _run(w, lat, o, Dynamics(), args, overlap)
        for label, cfg in MICRO.items():
            out["micro"][label] = _run(w, lat, opts, cfg, args, label)
        mean_load = BATCH * float(ref.theta)
        for frac in (1.05, 1.2):
            cfg = Dynamics(kv_capacity=int(frac * mean_load))
            out["effects"][f"kv {frac:.2f} B theta"] = _run(w, lat, opts, cfg, args, f"kv {frac}")
        for label, cfg in EFFECTS.items():
            out["effects"][label] = _run(w, lat, opts, cfg, args, label)
    return out


def _fmt_row(label, row, r_show) -> str:
    thr = " | ".join(f"{row['throughput'][r - 1]:.0f}" for r in r_show)
    bar = " | ".join(f"{row['barrier_share'][r - 1]:.3f}" for r in r_show)
    empty = row.get("empty_slot_fraction", [0.0] * R_MAX)[row["r_best"] - 1]
    return f"| {label} | {thr} | {bar} | {row['r_best']} | {empty:.3f} |"


def summary(results: dict, meta: dict) -> str:
    r_show = (2, 4, 8, 12)
    head = (
        "| configuration | "
        + " | ".join(f"tok/s r={r}" for r in r_show)
        + " | "
        + " | ".join(f"barrier r={r}" for r in r_show)
        + " | r* | empty at r* |\n|"
        + "---|" * (2 * len(r_show) + 3)
    )
    lines = [f"Run: {json.dumps(meta)}", ""]
    for name, res in results.items():
        lines += [f"## {name}", "", f"idealised r*: {res['idealised']['r_best']}", "", head]
        for group in ("routing", "micro", "effects"):
            for label, row in res[group].items():
                lines.append(_fmt_row(label, row, r_show))
        lines.append("")
    return "\n".join(lines)


def figures(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.arange(1, R_MAX + 1)
    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 6), squeeze=False)
    for col, (name, res) in enumerate(results.items()):
        for label, row in res["routing"].items():
            axes[0, col].plot(r, row["barrier_share"], marker="o", label=label)
            axes[1, col].errorbar(r, row["throughput"], yerr=2 * np.array(row["se"]), label=label)
        axes[1, col].plot(r, res["idealised"]["throughput"]["exact"], "k--", label="exact (ideal)")
        axes[0, col].set_title(name)
        axes[0, col].set_ylabel("barrier share")
        axes[1, col].set_ylabel("tokens/s per instance")
        axes[1, col].set_xlabel("r")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "barrier_vs_routing.png", dpi=120)
    plt.close(fig)
    micro = results["azure_conv"]["micro"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, row in micro.items():
        style = "--" if label in ("serial", "pipelined") else "-"
        ax.plot(r, row["throughput"], style, marker="o", label=label)
    ax.set_xlabel("r")
    ax.set_ylabel("tokens/s per instance")
    ax.set_title("azure_conv: micro-batches")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_microbatches.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=512)
    ap.add_argument("--replications", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {name: run_trace(name, args.traces_dir / f, args) for name, f in TRACES.items()}
    meta = dict(
        batch=BATCH, r_max=R_MAX, latency="paper-v1", steps=args.steps, warmup=args.warmup,
        replications=args.replications, seed=args.seed, device=str(jax.devices()[0]),
    )  # fmt: skip
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (args.out / "summary.md").write_text(summary(results, meta))
    figures(results, args.out)


if __name__ == "__main__":
    main()

"""The reproduction's figures, drawn from the CSV tables in the output folder:
``v1_throughput.png``, ``workload_errors.png`` and ``idle_breakdown.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from afd_jax.model.theory import REGIMES
from afd_jax.studies.reproduce.configs import GRID_METHODS
from afd_jax.studies.reproduce.parts import as_float, read_csv

__all__ = ["write_plots"]


def _v1_figure(plt, out: Path) -> None:
    """v1_throughput.png: every method's curve on the v1 setup, Monte Carlo with CIs."""
    v1 = read_csv(out / "v1_curves.csv")
    r = np.array([int(x["r"]) for x in v1])
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, label, style in (
        ("mean_field", "mean field", "-"),
        ("gaussian", "Gaussian barrier", "--"),
        ("exact", "exact steady state", ":"),
    ):
        ax.plot(r, [as_float(x[key]) for x in v1], style, label=label)
    mc = np.array([as_float(x["stationary_mc"]) for x in v1])
    lo = np.array([as_float(x["stationary_ci_low"]) for x in v1])
    hi = np.array([as_float(x["stationary_ci_high"]) for x in v1])
    ax.errorbar(r, mc, yerr=[mc - lo, hi - mc], fmt=".", ms=3, label="stationary MC (95 % CI)")
    cold = [
        (
            int(x["r"]),
            as_float(x["cold_pool"]),
            as_float(x["cold_ci_low"]),
            as_float(x["cold_ci_high"]),
        )
        for x in v1
        if x["cold_pool"]
    ]
    if cold:
        cr, cm, cl, ch = (np.array(c) for c in zip(*cold, strict=True))
        ax.errorbar(
            cr,
            cm,
            yerr=[cm - cl, ch - cm],
            fmt="s",
            ms=3,
            label="cold start, finite pool (95 % CI)",
        )
    act = [
        (int(x["r"]), as_float(x["cold_pool_active_ffn"])) for x in v1 if x["cold_pool_active_ffn"]
    ]
    if act:
        ar, am = zip(*act, strict=True)
        ax.plot(ar, am, "x", label="cold start, FFN on active slots")
    ax.set_xlabel("r (Attention instances per FFN instance)")
    ax.set_ylabel("throughput per instance (tokens/s)")
    ax.set_title("v1 setup: paper-v1 workload and latency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "v1_throughput.png", dpi=110)
    plt.close(fig)


def _errors_figure(plt, out: Path, grid: list[dict]) -> None:
    """workload_errors.png: relative error of r* and regret of every method, per scenario."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for i, meth in enumerate(GRID_METHODS):
        err = [as_float(g[f"relerr_{meth}"]) for g in grid]
        reg = [as_float(g[f"regret_{meth}"]) for g in grid]
        xs = i + 0.15 * (np.arange(len(err)) % 5 - 2) / 2
        axes[0].scatter(xs, err, s=10)
        axes[1].scatter(xs, np.maximum(reg, 1e-6), s=10)
    for ax, title in (
        (axes[0], "relative error of r* vs simulation optimum"),
        (axes[1], "throughput regret (exact)"),
    ):
        ax.set_xticks(range(len(GRID_METHODS)))
        ax.set_xticklabels([m.replace("_", "\n") for m in GRID_METHODS], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.1, color="k", lw=0.8, ls="--")
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "workload_errors.png", dpi=110)
    plt.close(fig)


def _idle_figure(plt, out: Path, grid: list[dict]) -> None:
    """idle_breakdown.png: bundle idle (imbalance and barrier wait) per regime and choice of r."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels, idle, barrier = [], [], []
    for reg_name in REGIMES:
        sub = [g for g in grid if g["regime"] == reg_name]
        if not sub:
            continue
        for lab, name in (("r1", "r=1"), ("naive", "naive"), ("recommended", "rec.")):
            labels.append(f"{reg_name[:4]}\n{name}")
            i = np.nanmean([as_float(g[f"idle_{lab}"]) for g in sub])
            b = np.nanmean([as_float(g[f"barrier_share_{lab}"]) for g in sub])
            idle.append(i * (1 - b))
            barrier.append(i * b)
    x = np.arange(len(labels))
    ax.bar(x, idle, label="idle (stage imbalance)")
    ax.bar(x, barrier, bottom=idle, label="idle (barrier wait)")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("bundle idle fraction")
    ax.set_title("Idle time at r = 1, the naive E[P]+E[D] r and the recommended r")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "idle_breakdown.png", dpi=110)
    plt.close(fig)


FIGURES = ("v1_throughput.png", "workload_errors.png", "idle_breakdown.png")
"""The figures :func:`write_plots` draws."""


def write_plots(out: Path) -> None:
    """v1_throughput.png, workload_errors.png, idle_breakdown.png from the CSVs in ``out``."""
    import matplotlib  # heavy optional import: only when figures are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _v1_figure(plt, out)
    grid = read_csv(out / "workloads.csv")
    _errors_figure(plt, out, grid)
    _idle_figure(plt, out, grid)

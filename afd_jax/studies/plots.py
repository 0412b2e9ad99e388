"""Figures for the provisioning commands (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from afd_jax.errors import InputError
from afd_jax.model.latency_io import format_stages

REGIME_COLOURS = {"attention": "#dbe9f6", "communication": "#fde9d9", "ffn": "#e2f0d9"}
METHOD_STYLE = {
    "mean_field": ("mean field", "#1f77b4", "o"),
    "gaussian": ("Gaussian barrier", "#d62728", "s"),
    "exact": ("exact steady state", "#2ca02c", "^"),
}


def plot_provision(result: dict, path: str | Path) -> Path:
    """Throughput per instance vs r for the three methods (``result`` = the provision JSON).

    Shades the mean-field regimes (``result["regimes"]``), marks each method's best integer r,
    draws the continuous optima as dotted lines, and names the workload and coefficients in the
    title. Writes ``path`` (format from its suffix: .png, .pdf, .svg).
    """
    plt = _pyplot()
    path = Path(path)
    curve = result["curve"]
    rs = [row["r"] for row in curve]
    fig, ax = plt.subplots(figsize=(8.0, 5.0), constrained_layout=True)
    seen = set()
    for seg in result.get("regimes", []):
        name = seg["regime"]
        ax.axvspan(
            seg["from"],
            seg["to"],
            color=REGIME_COLOURS[name],
            alpha=0.8,
            lw=0,
            label=None if name in seen else f"{name}-bound (mean field)",
        )
        seen.add(name)
    for key, (label, colour, marker) in METHOD_STYLE.items():
        ys = [row[key] for row in curve]
        ax.plot(rs, ys, color=colour, lw=1.6, label=label)
        best = result["r_best"][key]
        y_best = curve[best - 1][key]
        ax.plot([best], [y_best], marker=marker, color=colour, ms=9, mec="black", ls="none")
        ax.annotate(
            f"r={best}",
            (best, y_best),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=8,
            color=colour,
        )
    for key in ("mean_field", "gaussian"):
        r_star = result["r_star"].get(key)
        if r_star is not None:
            ax.axvline(r_star, color=METHOD_STYLE[key][1], ls=":", lw=1.0)
    lat = result["latency"]
    ax.set_xlabel("r (Attention instances per FFN instance)")
    ax.set_ylabel(f"throughput ({result['throughput_unit']})")
    ax.set_xlim(1, max(rs))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    coeffs = (
        f"{format_stages(lat, short=True)} "
        f"cA={lat['cost_attn']:g} cF={lat['cost_ffn']:g} [{lat['comm_scaling']}, "
        f"{lat['overlap']}] (us)"
    )
    ax.set_title(
        f"workload {result['workload']} (theta={result['theta']:.1f}, "
        f"sd={result['slot_std']:.1f}), B={result['batch']}, latency {result['latency_source']}"
        f"\n{coeffs}",
        fontsize=9,
    )
    return _save(plt, fig, path)


def plot_simulation(result, path: str | Path, title: str) -> Path:
    """Monte Carlo figure of one ``afd-jax simulate`` run (a
    :class:`~afd_jax.montecarlo.result.MonteCarloResult`, either window): throughput per
    instance vs r with its confidence band, and the Attention idle, FFN idle and barrier share
    fractions vs r. Writes ``path`` (format from its suffix: .png, .pdf, .svg)."""
    plt = _pyplot()
    res = result
    kernel = "pool (cold start)" if res.kernel == "pool" else res.kernel
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(res.r, res.throughput, "o-", ms=3, label=f"{kernel} kernel")
    a1.fill_between(res.r, res.ci_low, res.ci_high, alpha=0.3, label=f"{res.level:.0%} CI")
    a1.set_xlabel("r (Attention instances per FFN)")
    a1.set_ylabel("throughput per instance (tokens/s)")
    a1.legend()
    a2.plot(res.r, res.idle_attn, label="Attention idle")
    a2.plot(res.r, res.idle_ffn, label="FFN idle")
    a2.plot(res.r, res.barrier_share, label="barrier share")
    a2.set_xlabel("r")
    a2.set_ylabel("fraction of time")
    a2.legend()
    fig.suptitle(f"{title}: B = {res.batch}")
    fig.tight_layout()
    return _save(plt, fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (format from its suffix; its folder created, as
    :func:`afd_jax.errors.check_output_file` allowed before the work) and close it; InputError
    on failure."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot write figure: {err}", path=str(path)) from err
    finally:
        plt.close(fig)
    return Path(path)


def plot_plan_front(result: dict, path: str | Path) -> Path:
    """The plan figure (``result`` = the ``afd-jax plan --json`` object with ``points``): every
    evaluated (r, B) as objective vs P99 time per output token, coloured by B, the Pareto front
    as a step line, the best configuration starred and the P99 SLO as a vertical line."""
    plt = _pyplot()
    from afd_jax.studies.plan import OBJECTIVES  # the objective -> metric key, one home

    key = OBJECTIVES[result["objective"]]
    unit = {"per_gpu": "tokens/s per GPU", "per_dollar": "tokens per USD"}[result["objective"]]
    fig, ax = plt.subplots(figsize=(8.0, 5.0), constrained_layout=True)
    outside = [p for p in result["points"] if set(p["violates"]) - {"tpot_p99"}]
    pts = [p for p in result["points"] if not set(p["violates"]) - {"tpot_p99"}]
    if outside:
        ax.scatter(
            [p["tpot_p99_ms"] for p in outside],
            [p[key] for p in outside],
            facecolors="none",
            edgecolors="grey",
            s=14,
            label="over KV capacity or GPU budget",
        )
    sc = ax.scatter(
        [p["tpot_p99_ms"] for p in pts],
        [p[key] for p in pts],
        c=[p["batch"] for p in pts],
        cmap="viridis",
        s=14,
        alpha=0.7,
    )
    fig.colorbar(sc, ax=ax, label="B (slots per Attention instance)")
    front = result["front"]
    ax.step(
        [p["tpot_p99_ms"] for p in front],
        [p[key] for p in front],
        where="post",
        color="black",
        lw=1.4,
        label="Pareto front",
    )
    best = result.get("best")
    if best is not None:
        ax.plot(best["tpot_p99_ms"], best[key], "*", color="#d62728", ms=16, mec="black")
        ax.annotate(
            f"best r={best['r']}, B={best['batch']}",
            (best["tpot_p99_ms"], best[key]),
            textcoords="offset points",
            xytext=(6, -12),
            fontsize=8,
        )
    if result.get("tpot_p99_slo_ms") is not None:
        ax.axvline(result["tpot_p99_slo_ms"], color="#d62728", ls="--", lw=1.0, label="P99 SLO")
    ax.set_xlabel("P99 time per output token (ms, exact barrier law)")
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"workload {result['workload']}, latency {result['latency_source']}", fontsize=9)
    return _save(plt, fig, path)


def plot_tornado(elasticities: dict, path: str | Path, title: str = "") -> Path:
    """Tornado figure: one bar per input for the elasticity of r* (left panel) and of the
    throughput (right panel), percent per percent, inputs sorted by the largest |elasticity|."""
    plt = _pyplot()
    names = sorted(
        elasticities["throughput"],
        key=lambda n: max(abs(elasticities["r_star"][n]), abs(elasticities["throughput"][n])),
    )
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.0), sharey=True, constrained_layout=True)
    panels = (("r_star", "d ln r* / d ln input"), ("throughput", "d ln throughput / d ln input"))
    for ax, (which, label) in zip(axes, panels, strict=True):
        vals = [elasticities[which][n] for n in names]
        colours = ["#2ca02c" if v >= 0 else "#d62728" for v in vals]
        ax.barh(names, vals, color=colours)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "elasticities (% per %)", fontsize=10)
    return _save(plt, fig, path)

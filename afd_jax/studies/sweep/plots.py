"""Maps of a sweep table over two swept parameters (matplotlib, Agg backend).

* ``regime_map.png``: the binding mean-field regime at the optimum r* (colour) and r* (numbers;
  second panel as a colour scale). r* is the exact optimum when the sweep ran ``exact``, else the
  Gaussian, else the mean-field one.
* ``error_map_<method>.png`` (when ``exact`` ran; method in mean_field, gaussian, mc):
  left, the largest relative throughput error over r, ``max_r |T_m(r) / T_exact(r) - 1|``;
  right, the throughput lost by provisioning with the method's r*,
  ``1 - T_exact(r*_m) / T_exact(r*_exact)``.

Other swept grid parameters are held at their first value (stated in the title); randomly sampled
parameters are not held: with them the map is a scatter of every sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from afd_jax.errors import InputError
from afd_jax.studies.sweep.table import read_table

__all__ = ["check_axes", "plot_sweep"]

_REGIME_COLOURS = {"attention": "#4C72B0", "communication": "#DD8452", "ffn": "#55A868"}


def check_axes(plan, x: str | None, y: str | None) -> tuple[str, str]:
    """Choose (x, y) among the plan's swept parameters; InputError if impossible or unknown."""
    swept = list(plan.swept)
    for name, flag in ((x, "--plot-x"), (y, "--plot-y")):
        if name is not None and name not in swept:
            raise InputError(
                f"{name!r} is not a swept parameter (swept: {', '.join(swept) or 'none'})",
                field=flag,
            )
    rest = [s for s in swept if s not in (x, y)]
    x = x or (rest.pop(0) if rest else None)
    y = y or (rest.pop(0) if rest else None)
    if x is None or y is None or x == y:
        raise InputError(
            f"maps need two distinct swept parameters (swept: {', '.join(swept) or 'none'})",
            field="--plot-dir",
        )
    for name, flag in ((x, "--plot-x"), (y, "--plot-y")):
        param = name[3:] if name.startswith("wl_") else None
        lacking = [e.label for e in plan.workloads if param and param not in e.params]
        if lacking:
            raise InputError(
                f"{name!r} is not a parameter of every workload (not of {lacking[0]!r}); map "
                "over a parameter all workloads share, or split the spec",
                field=flag,
            )
    return x, y


def _scenario_frame(table: dict) -> tuple[dict, np.ndarray]:
    """Per-scenario view: the row index of each scenario's first row (r = 1)."""
    first = np.flatnonzero(table["r"] == 1.0)
    return {k: v[first] for k, v in table.items()}, first


def _axis_values(col: np.ndarray):
    """Numeric positions and tick labels for a column (categorical for strings)."""
    if col.dtype == object:
        cats = list(dict.fromkeys(col.tolist()))
        return np.array([cats.index(v) for v in col], dtype=np.float64), cats
    return col.astype(np.float64), None


def _select(plan, table: dict, x: str, y: str):
    """Scenarios shown on the (x, y) maps: other swept grid parameters held at their first value
    (random samples are not held). Returns (per-scenario view, first rows, kept indices, held)."""
    scen, first = _scenario_frame(table)
    random_fields = {f for f, *_ in plan.spec.latency_random}
    keep = np.ones(first.shape[0], dtype=bool)
    held = []
    axes_on_family = any(a.startswith("wl_") for a in (x, y))
    for p in plan.swept:
        if p in (x, y) or p in random_fields:
            continue
        if (p == "workload" and axes_on_family) or (p.startswith("wl_") and "workload" in (x, y)):
            continue  # the workload label and its family parameters move together
        v0 = scen[p][0]
        keep &= scen[p] == v0
        held.append(f"{p}={v0 if isinstance(v0, str) else f'{v0:g}'}")
    return scen, first, np.flatnonzero(keep), held


def _axes_setup(ax, x: str, y: str, xs, ys, xcats, ycats) -> None:
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if xcats:
        ax.set_xticks(range(len(xcats)), xcats, rotation=30, ha="right", fontsize=7)
    elif np.all(xs > 0) and xs.max() / xs.min() > 9:
        ax.set_xscale("log")
    if ycats:
        ax.set_yticks(range(len(ycats)), ycats, fontsize=7)
    elif np.all(ys > 0) and ys.max() / ys.min() > 9:
        ax.set_yscale("log")


def _regime_map(plt, path: Path, xs, ys, setup, r_best, regimes, ref: str, title_held: str):
    n = xs.size
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    colours = [_REGIME_COLOURS[str(g)] for g in regimes]
    a1.scatter(xs, ys, c=colours, marker="s", s=120 if n <= 400 else 12)
    if n <= 400:
        for xi, yi, rb in zip(xs, ys, r_best, strict=True):
            a1.annotate(str(rb), (xi, yi), ha="center", va="center", fontsize=6, color="white")
    for name, c in _REGIME_COLOURS.items():
        a1.scatter([], [], c=c, marker="s", label=name)
    a1.legend(title="binding at r*", fontsize=7, loc="best")
    a1.set_title(f"regime at r* ({ref}){title_held}", fontsize=9)
    setup(a1)
    sc = a2.scatter(xs, ys, c=r_best, cmap="viridis", marker="s", s=120 if n <= 400 else 12)
    fig.colorbar(sc, ax=a2, label=f"r* ({ref})")
    a2.set_title("optimal ratio r*", fontsize=9)
    setup(a2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _error_map(plt, path: Path, xs, ys, setup, m: str, err, loss, title_held: str):
    fig, (b1, b2) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    s1 = b1.scatter(xs, ys, c=100 * err, cmap="magma", marker="s", s=120)
    fig.colorbar(s1, ax=b1, label="max_r |T/T_exact - 1| (%)")
    b1.set_title(f"{m} vs exact: throughput error{title_held}", fontsize=9)
    setup(b1)
    s2 = b2.scatter(xs, ys, c=100 * loss, cmap="magma", marker="s", s=120)
    fig.colorbar(s2, ax=b2, label="1 - T_exact(r*_m)/T_exact(r*) (%)")
    b2.set_title(f"throughput lost provisioning with {m} r*", fontsize=9)
    setup(b2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(table_path, out_dir, plan, x=None, y=None) -> list[str]:
    """Write the regime map and error maps for ``table_path`` into ``out_dir``; return paths."""
    import matplotlib  # heavy optional import, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = check_axes(plan, x, y)
    table = read_table(table_path)
    r_max = plan.spec.r_max
    scen, first, idx, held = _select(plan, table, x, y)
    xs, xcats = _axis_values(scen[x][idx])
    ys, ycats = _axis_values(scen[y][idx])
    methods = plan.spec.methods
    ref = next(m for m in ("exact", "gaussian", "mean_field") if m in methods)

    def per_r(col):  # [n_scenarios_kept, r_max]
        rows = first[idx][:, None] + np.arange(r_max)[None, :]
        return table[col][rows]

    def setup(ax):
        _axes_setup(ax, x, y, xs, ys, xcats, ycats)

    r_best = scen[f"r_best_{ref}"][idx].astype(np.int64)
    regimes = per_r("regime")[np.arange(idx.size), r_best - 1]
    title_held = ("; " + ", ".join(held)) if held else ""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _regime_map(plt, out / "regime_map.png", xs, ys, setup, r_best, regimes, ref, title_held)
    paths = [str(out / "regime_map.png")]
    if "exact" not in methods:
        return paths
    t_ex = per_r("tput_exact")
    rows = np.arange(idx.size)
    best_ex = t_ex[rows, r_best - 1]
    for m in ("mean_field", "gaussian", "mc"):
        if m not in methods:
            continue
        err = np.nanmax(np.abs(per_r(f"tput_{m}") / t_ex - 1.0), axis=1)
        rb_m = scen[f"r_best_{m}"][idx].astype(np.int64)
        loss = 1.0 - t_ex[rows, rb_m - 1] / best_ex
        p = out / f"error_map_{m}.png"
        _error_map(plt, p, xs, ys, setup, m, err, loss, title_held)
        paths.append(str(p))
    return paths

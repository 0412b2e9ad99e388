"""The parts of the reproduction: the v1 setup, the drain check and one (workload, B) cell of
the workload grid (docs/reproduction.md). Each part computes in a float64 scope
(``jax.enable_x64``, never the global flag), writes its CSV files into the parts folder and is
skipped when they exist already (resume).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import jax
import numpy as np

from afd_jax.model.theory import REGIMES, mean_field_optimum
from afd_jax.montecarlo.pool import draw_pools, pool_simulate
from afd_jax.studies.reproduce.configs import (
    PAPER_R,
    load_workload,
    regime_latency,
    v1_latency,
)
from afd_jax.studies.reproduce.methods import (
    MethodCurves,
    mean_field_curve,
    methods_curve,
    optimiser_choice,
    simulate_stationary,
)
from afd_jax.studies.reproduce.parts import part_done, write_part_csv
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

__all__ = ["float64", "grid_tag", "log", "part_drain", "part_grid", "part_v1"]


def log(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[reproduce] {msg}", file=sys.stderr, flush=True)


def _x64_scope(enabled: bool):
    """``jax.enable_x64`` where this JAX has it (0.6 and later), else the experimental one."""
    scope = getattr(jax, "enable_x64", None)
    if scope is None:  # pragma: no cover - older JAX
        from jax.experimental import enable_x64 as scope
    return scope(enabled)


def float64(fn):
    """Run ``fn`` with float64 enabled in a scope (``jax.enable_x64``): the global JAX
    configuration is left as the caller set it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _x64_scope(True):
            return fn(*args, **kwargs)

    return wrapper


def relative_gap(a: float, b: float) -> float:
    """|a - b| / b (nan when b = 0)."""
    return abs(a - b) / b if b else math.nan


# ------------------------------------------------------------------------------ v1 setup


def _v1_curve_rows(cfg: dict, m: MethodCurves, sim, cold, active) -> list[dict]:
    """v1_curves.csv: one row per r = 1..v1_r_max."""
    b, r_max = cfg["v1_batch"], cfg["v1_r_max"]
    cold_i = {int(r): i for i, r in enumerate(cold.r)}
    act_i = {int(r): i for i, r in enumerate(active.r)}
    rows = []
    for k in range(r_max):
        r = k + 1
        ci, ai = cold_i.get(r), act_i.get(r)
        rows.append(
            dict(
                r=r,
                paper_grid=r in PAPER_R,
                mean_field=m.mean_field[k],
                gaussian=m.gaussian[k],
                exact=m.exact[k],
                stationary_mc=sim.throughput[k],
                stationary_ci_low=sim.ci_low[k],
                stationary_ci_high=sim.ci_high[k],
                stationary_idle=sim.idle_bundle[k],
                stationary_barrier_share=sim.barrier_share[k],
                cold_pool=None if ci is None else cold.throughput[ci],
                cold_ci_low=None if ci is None else cold.ci_low[ci],
                cold_ci_high=None if ci is None else cold.ci_high[ci],
                cold_active_fraction=None if ci is None else cold.active_fraction[ci],
                cold_attn_fraction=None if ci is None else cold.attn_fraction[ci],
                cold_pool_active_ffn=None if ai is None else active.throughput[ai],
                slots_exceed_pool=r * b > cfg["v1_pool_requests"],
            )
        )
    return rows


def _v1_optima(cfg: dict, m: MethodCurves, optimiser, sim, cold) -> list[tuple]:
    """The (quantity, value) rows of v1_summary.csv on the optima and the closed form's gaps."""
    mo = m.mf_opt
    r_opt_c, r_opt = optimiser
    cold_i = {int(r): i for i, r in enumerate(cold.r)}
    r_stat = int(np.argmax(sim.throughput)) + 1
    r_cold = cold.r_best
    paper_idx = [cold_i[r] for r in PAPER_R if r in cold_i]
    r_cold_paper = int(cold.r[paper_idx][np.argmax(cold.throughput[paper_idx])]) if paper_idx else 0
    return [
        ("theta", float(m.stats.theta)),
        ("batch", cfg["v1_batch"]),
        ("r_star_mean_field_continuous", mo.r_continuous),
        ("r_star_mean_field", mo.r_best),
        ("mean_field_regime", mo.regime),
        ("r_star_gaussian_continuous", m.gauss_cont),
        ("r_star_gaussian", int(np.argmax(m.gaussian)) + 1),
        ("r_star_exact", int(np.argmax(m.exact)) + 1),
        ("r_star_optimiser_continuous", r_opt_c),
        ("r_star_optimiser", r_opt),
        ("r_sim_stationary", r_stat),
        ("r_sim_cold_pool", r_cold),
        ("r_sim_cold_pool_paper_grid", r_cold_paper),
        ("gap_mean_field_continuous_vs_stationary", relative_gap(mo.r_continuous, r_stat)),
        ("gap_mean_field_continuous_vs_cold_pool", relative_gap(mo.r_continuous, r_cold)),
        (
            "gap_mean_field_continuous_vs_cold_pool_paper_grid",
            relative_gap(mo.r_continuous, r_cold_paper),
        ),
    ]


def _v1_r32(m: MethodCurves, sim, cold, active) -> list[tuple]:
    """The (quantity, value) rows of v1_summary.csv on the r = 32 shortfall (needs r_max >= 32)."""
    k = 31
    mf32 = m.mean_field[k]
    rows = [
        ("r32_mean_field", mf32),
        ("r32_gaussian", m.gaussian[k]),
        ("r32_exact", m.exact[k]),
        ("r32_stationary_mc", sim.throughput[k]),
        ("r32_shortfall_gaussian", 1 - m.gaussian[k] / mf32),
        ("r32_shortfall_exact", 1 - m.exact[k] / mf32),
        ("r32_shortfall_stationary_mc", 1 - sim.throughput[k] / mf32),
    ]
    cold_i = {int(r): i for i, r in enumerate(cold.r)}
    act_i = {int(r): i for i, r in enumerate(active.r)}
    if 32 in cold_i:
        c = cold_i[32]
        rows += [
            ("r32_cold_pool", cold.throughput[c]),
            ("r32_shortfall_cold_pool", 1 - cold.throughput[c] / mf32),
            ("r32_cold_active_fraction", cold.active_fraction[c]),
        ]
    if 32 in act_i:
        rows.append(("r32_shortfall_cold_pool_active_ffn", 1 - active.throughput[act_i[32]] / mf32))
    return rows


def _v1_pools(cfg: dict, w, lat, opts, b: int):
    """The cold-start finite-pool runs of the v1 setup: (nominal FFN tokens, active only)."""
    log(f"v1: cold-start pool ({cfg['v1_pool_requests']} requests, {len(cfg['v1_pool_r'])} r)")
    kw = dict(
        n_requests=cfg["v1_pool_requests"],
        completion_fraction=cfg["completion_fraction"],
        replications=cfg["v1_pool_replications"],
        seed=cfg["seed"],
        opts=opts,
    )
    cold = pool_simulate(w, lat, b, cfg["v1_pool_r"], **kw)
    active = pool_simulate(w, lat, b, cfg["v1_active_r"], ffn_tokens="active", **kw)
    return cold, active


@float64
def part_v1(cfg: dict, parts: Path) -> None:
    """v1_curves.csv and v1_summary.csv: every method on the paper's v1 setup."""
    if part_done(parts, ["v1_curves.csv", "v1_summary.csv"]):
        log("v1: done already (resume)")
        return
    b, r_max, seed = cfg["v1_batch"], cfg["v1_r_max"], cfg["seed"]
    w = resolve_workload("paper-v1")
    lat, opts = v1_latency(b)
    log(f"v1: analytic curves (B = {b}, r = 1..{r_max})")
    m = methods_curve(w, lat, opts, b, r_max, cfg["slot_bins"])
    optimiser = optimiser_choice(m.pmf, m.stats, lat, opts, b, r_max, cfg["optimiser"])
    log("v1: stationary Monte Carlo")
    sim = simulate_stationary(
        w, lat, opts, b, r_max, cfg["v1_sim_steps"], cfg["v1_sim_replications"], seed
    )
    cold, active = _v1_pools(cfg, w, lat, opts, b)
    rows = _v1_curve_rows(cfg, m, sim, cold, active)
    summary = _v1_optima(cfg, m, optimiser, sim, cold)
    if 32 <= r_max:
        summary += _v1_r32(m, sim, cold, active)
    write_part_csv(parts / "v1_curves.csv", rows)
    write_part_csv(parts / "v1_summary.csv", [dict(quantity=q, value=v) for q, v in summary])


# ------------------------------------------------------------------------------ drain


@float64
def part_drain(cfg: dict, parts: Path) -> None:
    """v1_drain.csv: the r = 32 cold-start shortfall as the pool grows (nested pools)."""
    if part_done(parts, ["v1_drain.csv"]):
        log("drain: done already (resume)")
        return
    b = cfg["v1_batch"]
    w = resolve_workload("paper-v1")
    lat, opts = v1_latency(b)
    r = 32 if cfg["v1_r_max"] >= 32 else cfg["v1_r_max"]
    mf = float(mean_field_curve(lat, 599.0, float(r), float(b), opts))
    n_max = max(cfg["v1_drain_requests"])
    pools = draw_pools(w, n_max, cfg["v1_drain_replications"], cfg["seed"], int(opts.load_offset))
    rows = []
    for n in cfg["v1_drain_requests"]:
        for ffn in ("nominal", "active"):
            log(f"drain: N = {n}, ffn tokens {ffn}")
            res = pool_simulate(
                w,
                lat,
                b,
                [r],
                n_requests=n,
                completion_fraction=cfg["completion_fraction"],
                replications=cfg["v1_drain_replications"],
                seed=cfg["seed"],
                opts=opts,
                ffn_tokens=ffn,
                pools=pools,
            )
            rows.append(
                dict(
                    r=r,
                    n_requests=n,
                    ffn_tokens=ffn,
                    slots_per_request=r * b / n,
                    throughput=res.throughput[0],
                    ci_low=res.ci_low[0],
                    ci_high=res.ci_high[0],
                    mean_field=mf,
                    shortfall=1 - res.throughput[0] / mf,
                    active_fraction=res.active_fraction[0],
                )
            )
    write_part_csv(parts / "v1_drain.csv", rows)


# ------------------------------------------------------------------------------ workloads grid


def grid_tag(name: str, batch: int) -> str:
    """The part name of one (workload, B) cell of the grid."""
    return f"grid_{name}_B{batch}"


def _grid_choices(m: MethodCurves, st, lat, opts, batch: int, r_max: int, optimiser) -> dict:
    """The integer r of every method on one scenario."""
    return {
        "mean_field": m.mf_opt.r_best,
        "gaussian": int(np.argmax(m.gaussian)) + 1,
        "exact": int(np.argmax(m.exact)) + 1,
        "optimiser": optimiser[1],
        "naive_mean_field": mean_field_optimum(
            lat, float(st.naive_mean_sum), batch, opts, r_max
        ).r_best,
    }


def _grid_errors(row: dict, methods: dict, m: MethodCurves, sim, r_sim: int, r_sim_max: int):
    """Add the r of every method, its relative error against the simulated optimum and its
    regret (exact and Monte Carlo) to ``row``."""
    ex, ex_best, sim_best = m.exact, float(m.exact.max()), float(sim.throughput[r_sim - 1])
    for meth, r in methods.items():
        row[f"r_{meth}"] = r
    for meth, r in methods.items():
        row[f"relerr_{meth}"] = math.nan if r is None else relative_gap(float(r), float(r_sim))
    row["relerr_mf_continuous"] = relative_gap(m.mf_opt.r_continuous, float(r_sim))
    for meth, r in methods.items():
        row[f"regret_{meth}"] = math.nan if r is None else 1 - ex[r - 1] / ex_best
    for meth, r in methods.items():
        ok = r is not None and r <= r_sim_max
        row[f"mc_regret_{meth}"] = 1 - sim.throughput[r - 1] / sim_best if ok else math.nan


def _grid_idle(row: dict, methods: dict, m: MethodCurves, sim, r_sim_max: int) -> None:
    """Add the recommended r and the idle fractions and exact throughput at r = 1, at the
    naive r and at the recommended r to ``row``."""
    r_rec = methods["optimiser"] if methods["optimiser"] is not None else methods["exact"]
    row["r_recommended"] = r_rec
    for label, r in (("r1", 1), ("naive", methods["naive_mean_field"]), ("recommended", r_rec)):
        ok = r <= r_sim_max
        row[f"idle_{label}"] = sim.idle_bundle[r - 1] if ok else math.nan
        row[f"barrier_share_{label}"] = sim.barrier_share[r - 1] if ok else math.nan
        row[f"idle_attn_{label}"] = sim.idle_attn[r - 1] if ok else math.nan
        row[f"idle_ffn_{label}"] = sim.idle_ffn[r - 1] if ok else math.nan
        row[f"exact_tp_{label}"] = m.exact[r - 1]


def _grid_row(key: dict, st, m: MethodCurves, sim, methods: dict, optimiser, r_sim_max: int):
    """One row of workloads.csv (``key``: workload, batch, regime)."""
    theta, batch, mo = float(st.theta), key["batch"], m.mf_opt
    r_sim = int(np.argmax(sim.throughput)) + 1
    # r indistinguishable from the best (CIs overlap): the resolution of the sim optimum
    close = np.nonzero(sim.ci_high >= sim.ci_low[r_sim - 1])[0] + 1
    row = dict(
        **key,
        regime_mean_field=mo.regime,
        theta=theta,
        naive_mean_sum=float(st.naive_mean_sum),
        sqrt_v=math.sqrt(float(st.slot_var)),
        cv_worker_load=math.sqrt(float(st.slot_var) / batch) / theta,
        r_mf_continuous=mo.r_continuous,
        r_gaussian_continuous=m.gauss_cont,
        r_optimiser_continuous=optimiser[0],
        r_sim=r_sim,
        r_sim_low=int(close.min()),
        r_sim_high=int(close.max()),
        sim_best=float(sim.throughput[r_sim - 1]),
        exact_best=float(m.exact.max()),
    )
    _grid_errors(row, methods, m, sim, r_sim, r_sim_max)
    _grid_idle(row, methods, m, sim, r_sim_max)
    return row


def _grid_curves(key: dict, m: MethodCurves, sim, r_max: int, r_sim_max: int) -> list[dict]:
    """The rows of workload_curves.csv of one scenario (``key``: workload, batch, regime)."""
    curves = []
    for k in range(r_max):
        inside = k < r_sim_max
        curves.append(
            dict(
                **key,
                r=k + 1,
                mean_field=m.mean_field[k],
                gaussian=m.gaussian[k],
                exact=m.exact[k],
                mc=sim.throughput[k] if inside else None,
                mc_ci_low=sim.ci_low[k] if inside else None,
                mc_ci_high=sim.ci_high[k] if inside else None,
            )
        )
    return curves


def _grid_scenario(cfg: dict, w, st, key: dict):
    """(workloads.csv row, workload_curves.csv rows) of one (workload, B, regime)."""
    batch, r_max, r_sim_max = key["batch"], cfg["grid_r_max"], cfg["grid_sim_r_max"]
    lat, opts = regime_latency(float(st.theta), batch, key["regime"])
    m = methods_curve(w, lat, opts, batch, r_max, cfg["slot_bins"])
    optimiser = optimiser_choice(m.pmf, st, lat, opts, batch, r_max, cfg["optimiser"])
    sim = simulate_stationary(
        w,
        lat,
        opts,
        batch,
        r_sim_max,
        cfg["grid_sim_steps"],
        cfg["grid_sim_replications"],
        cfg["seed"],
    )
    methods = _grid_choices(m, st, lat, opts, batch, r_max, optimiser)
    row = _grid_row(key, st, m, sim, methods, optimiser, r_sim_max)
    return row, _grid_curves(key, m, sim, r_max, r_sim_max)


@float64
def part_grid(cfg: dict, parts: Path, name: str, batch: int, traces_dir) -> None:
    """grid_<name>_B<batch>.csv and its _curves.csv: the three regimes of one (workload, B)."""
    tag = grid_tag(name, batch)
    if part_done(parts, [f"{tag}.csv", f"{tag}_curves.csv"]):
        log(f"{tag}: done already (resume)")
        return
    log(f"{tag}")
    w = load_workload(name, traces_dir)
    st = workload_stats(w)
    rows, curves = [], []
    for regime in REGIMES:
        key = dict(workload=name, batch=batch, regime=regime)
        row, scenario_curves = _grid_scenario(cfg, w, st, key)
        rows.append(row)
        curves += scenario_curves
    write_part_csv(parts / f"{tag}_curves.csv", curves)
    write_part_csv(parts / f"{tag}.csv", rows)

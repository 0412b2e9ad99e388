"""The research reproduction (issue 7): the paper's claims checked at scale, one entry point.

``run_reproduction(out, quick=False, seed=0, traces_dir=None)`` writes into ``out``:

* ``v1_curves.csv``   the v1 setup (MODEL.md 6), per r: mean-field, Gaussian and exact
  throughput, stationary Monte Carlo (``simulate``, barrier kernel) with its CI, and the
  paper's cold-start finite-pool simulator (:mod:`afd_jax.montecarlo.pool`: nominal FFN tokens; a
  subset
  of r also with active-token FFN cost) with its CI across pools.
* ``v1_summary.csv``  one row per quantity: every method's r*, the simulation optima and the
  relative gaps; the r = 32 shortfall against mean field and the part the barriers explain.
* ``v1_drain.csv``    the r = 32 cold-start shortfall as the pool grows (the drain hypothesis).
* ``workloads.csv``   one row per (workload, B, regime): r* of every method, relative error
  against the simulation optimum, throughput regret, idle fractions at r = 1, at the naive
  E[P]+E[D] mean-field r and at the recommended r.
* ``workload_curves.csv`` per scenario and r: mean-field, Gaussian, exact, MC throughput.
* ``report.md`` (claims that hold and fail, with numbers), ``*.png`` figures, ``meta.json``
  (timings, device: not part of the reproducible tables).

Floats in the CSVs are written with 6 significant digits, so the same seed regenerates them
byte for byte. Every part is written to ``out/parts/<config hash>/`` as soon as it is done; a
rerun with the same configuration skips finished parts (resume).

Latency scenarios. The v1 setup uses the ``paper-v1`` preset (r* = 9.3 at theta = 599,
B = 256). Elsewhere, coefficient sets are ``paper-v1`` rescaled to each (workload, B) so the
optimum lands in a chosen regime (verified with :func:`afd_jax.model.theory.mean_field_optimum`):
with ``s = tA_bar / tA_bar_v1`` (``tA_bar = alpha_A B theta + beta_A``, Attention coefficients
kept), every FFN/communication intercept is multiplied by s and every slope by ``s * 256 / B``
("attention": the balance point stays r* = 9.3); "communication": the per-worker
communication time is raised to ``1.25 tA_bar`` (plateau, then the FFN crossover at r = 12.5);
"ffn": ``beta_F = 1.1 tA_bar`` with the FFN peak ``sqrt(beta_F / (alpha_F B)) = 8``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from afd_jax.errors import InputError
from afd_jax.model.latency import Latency, ModelOptions

__all__ = ["CONFIGS", "config", "regime_latency", "run_reproduction"]

V1_TA_BAR = 0.01 * 256 * 599 + 100.0  # paper-v1 tA_bar at theta = 599, B = 256 (us)
PAPER_R = (1, 2, 4, 8, 16, 24, 32)
REGIMES = ("attention", "communication", "ffn")

PARAMETRIC = {
    "geometric": "paper-v1",
    "deterministic": "deterministic:prompt=100,decode=500",
    "lognormal": "lognormal:prompt=800,decode=150,sigma=0.8,decode_max=2000",
    "zipf": "zipf:prompt=1..16000,decode=1..2000,exponent=1.1",
    "copula": "lognormal:prompt=800,decode=150,sigma=0.8,decode_max=2000,corr=0.6",
}
TRACES = {
    "azure-conv": "azure_llm_2023_conv.csv",
    "azure-code": "azure_llm_2023_code.csv",
    "mooncake": "mooncake_conversation.jsonl",
}

CONFIGS = {
    "full": dict(
        v1_batch=256,
        v1_r_max=64,
        v1_pool_requests=10_000,
        v1_pool_replications=4,
        v1_pool_r=list(range(1, 65)),
        v1_active_r=list(PAPER_R),
        v1_drain_requests=[10_000, 20_000, 40_000, 80_000],
        v1_drain_replications=2,
        v1_sim_steps=2048,
        v1_sim_replications=2,
        completion_fraction=0.8,
        slot_bins=2048,
        workloads=list(PARAMETRIC) + list(TRACES),
        batches=[32, 64, 128, 256],
        grid_r_max=64,
        grid_sim_r_max=32,
        grid_sim_steps=512,
        grid_sim_replications=2,
        optimiser=True,
    ),
    "quick": dict(
        v1_batch=64,
        v1_r_max=32,
        v1_pool_requests=2500,
        v1_pool_replications=2,
        v1_pool_r=[1, 2, 4, 8, 9, 10, 12, 16, 24, 32],
        v1_active_r=[32],
        v1_drain_requests=[2500, 5000],
        v1_drain_replications=2,
        v1_sim_steps=256,
        v1_sim_replications=2,
        completion_fraction=0.8,
        slot_bins=1024,
        workloads=["geometric", "zipf"],
        batches=[64],
        grid_r_max=32,
        grid_sim_r_max=32,
        grid_sim_steps=128,
        grid_sim_replications=2,
        optimiser=False,  # compiling the optimiser alone takes ~17 s on the 2-core CPU
    ),
}


def config(quick: bool, seed: int) -> dict:
    """The configuration of a run (a plain dict; its hash names the parts folder)."""
    cfg = dict(CONFIGS["quick" if quick else "full"])
    cfg["mode"] = "quick" if quick else "full"
    cfg["seed"] = int(seed)
    return cfg


# ------------------------------------------------------------------------------ CSV helpers


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if abs(v) < 1e-7:
            # Below the float32 resolution of the kernels and the round-off of 1 - a/b:
            # such a value is zero, and its digits would differ across JAX versions.
            return "0"
        s = f"{v:.6g}"
        return "0" if s == "-0" else s
    return str(v)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write rows (dicts with the same keys) atomically, floats at 6 significant digits
    (magnitudes below 1e-7 as 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        if rows:
            wr = csv.writer(f, lineterminator="\n")
            keys = list(rows[0])
            wr.writerow(keys)
            for row in rows:
                wr.writerow([_fmt(row.get(k)) for k in keys])
    os.replace(tmp, path)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# ------------------------------------------------------------------------------ scenarios


def regime_latency(theta: float, batch: int, regime: str) -> tuple[Latency, ModelOptions]:
    """paper-v1 rescaled to (theta, B) with the optimum in ``regime`` (module docstring)."""
    from afd_jax.model.latency_io import resolve_latency

    base, opts = resolve_latency("paper-v1")
    ta = float(base.alpha_attn) * batch * theta + float(base.beta_attn)
    s = ta / V1_TA_BAR
    k = s * 256.0 / batch
    lat = base._replace(
        alpha_ffn=float(base.alpha_ffn) * k,
        beta_ffn=float(base.beta_ffn) * s,
        alpha_comm=float(base.alpha_comm) * k,
        beta_comm=float(base.beta_comm) * s,
    )
    if regime == "communication":
        lat = lat._replace(beta_comm=1.25 * ta - float(lat.alpha_comm) * batch)
    elif regime == "ffn":
        beta_f = 1.1 * ta
        lat = lat._replace(beta_ffn=beta_f, alpha_ffn=beta_f / (batch * 64.0))
    elif regime != "attention":
        raise InputError(f"unknown regime {regime!r}", field="regime")
    return lat, opts


def _load_workload(name: str, traces_dir: Path | None):
    from afd_jax.workload.specs import resolve_workload

    if name in PARAMETRIC:
        return resolve_workload(PARAMETRIC[name])
    return resolve_workload(str(traces_dir / TRACES[name]))


def available_workloads(cfg: dict, traces_dir: Path | None) -> tuple[list[str], list[str]]:
    """(used, skipped) workload names: traces are skipped in quick mode and when missing."""
    used, skipped = [], []
    for name in cfg["workloads"]:
        if name in TRACES and (traces_dir is None or not (traces_dir / TRACES[name]).is_file()):
            skipped.append(name)
        else:
            used.append(name)
    return used, skipped


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b if b else math.nan


def _log(msg: str) -> None:
    print(f"[reproduce] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ v1 setup


def _v1_latency(batch: int):
    from afd_jax.model.latency_io import resolve_latency

    if batch == 256:
        return resolve_latency("paper-v1")
    return regime_latency(599.0, batch, "attention")


def _methods_curve(w, lat, opts, batch: int, r_max: int, slot_bins: int):
    """Mean-field, Gaussian, exact throughput for r = 1..r_max and the optima (host floats)."""
    import jax.numpy as jnp

    from afd_jax.model.exact import exact_throughput, worker_load_pmf
    from afd_jax.model.theory import (
        gaussian_optimum_continuous,
        gaussian_throughput_jit,
        mean_field_optimum,
    )
    from afd_jax.workload.slotload import slot_load_pmf
    from afd_jax.workload.statistics import workload_stats

    st = workload_stats(w)
    pmf = slot_load_pmf(w, load_offset=int(opts.load_offset), max_bins=slot_bins)
    wp = worker_load_pmf(pmf, batch)
    rs = np.arange(1, r_max + 1, dtype=np.float64)
    theta, var = float(st.theta) + opts.load_offset, float(st.slot_var)
    mf_curve = np.array([_mf(lat, theta, float(r), batch, opts) for r in rs])
    gauss = np.asarray(
        gaussian_throughput_jit(lat, theta, var, jnp.asarray(rs), float(batch), opts, "tail"),
        np.float64,
    )
    exact = exact_throughput(pmf, lat, batch, r_max, opts, worker_pmf=wp)
    mo = mean_field_optimum(lat, theta, batch, opts, r_max)
    g_cont = gaussian_optimum_continuous(lat, theta, var, batch, opts, r_max)
    return dict(
        stats=st,
        pmf=pmf,
        wp=wp,
        mean_field=mf_curve,
        gaussian=gauss,
        exact=exact,
        mf_opt=mo,
        gauss_cont=g_cont,
    )


def _mf(lat, theta, r, batch, opts) -> float:
    from afd_jax.model.theory import _mf_throughput_host

    return _mf_throughput_host(lat, theta, r, float(batch), opts)


def _optimiser(pmf, st, lat, opts, batch: int, r_max: int, enabled: bool = True):
    """The gradient optimiser's (r_continuous, r) or (nan, None) when unavailable/disabled."""
    if not enabled:
        return math.nan, None
    try:
        from afd_jax.studies.optimize import optimize
    except ImportError:  # pragma: no cover - optimiser module missing
        return math.nan, None
    theta = float(st.theta) + opts.load_offset
    res = optimize(pmf, theta, float(st.slot_var), lat, opts, batch=batch, r_max=r_max)
    return float(res.r_continuous), int(res.r)


def _simulate_stationary(w, lat, opts, batch, r_max, steps, reps, seed):
    from afd_jax.montecarlo.simulate import simulate

    return simulate(
        w,
        lat,
        batch,
        r_max,
        kernel="barrier",
        steps=steps,
        replications=reps,
        seed=seed,
        opts=opts,
    )


def _part_v1(cfg: dict, parts: Path) -> None:
    from afd_jax.montecarlo.pool import pool_simulate
    from afd_jax.workload.specs import resolve_workload

    if (parts / "v1_curves.csv").exists() and (parts / "v1_summary.csv").exists():
        _log("v1: done already (resume)")
        return
    b, r_max, seed = cfg["v1_batch"], cfg["v1_r_max"], cfg["seed"]
    w = resolve_workload("paper-v1")
    lat, opts = _v1_latency(b)
    _log(f"v1: analytic curves (B = {b}, r = 1..{r_max})")
    m = _methods_curve(w, lat, opts, b, r_max, cfg["slot_bins"])
    r_opt_c, r_opt = _optimiser(m["pmf"], m["stats"], lat, opts, b, r_max, cfg["optimiser"])
    _log("v1: stationary Monte Carlo")
    sim = _simulate_stationary(
        w, lat, opts, b, r_max, cfg["v1_sim_steps"], cfg["v1_sim_replications"], seed
    )
    _log(f"v1: cold-start pool ({cfg['v1_pool_requests']} requests, {len(cfg['v1_pool_r'])} r)")
    kw = dict(
        n_requests=cfg["v1_pool_requests"],
        completion_fraction=cfg["completion_fraction"],
        replications=cfg["v1_pool_replications"],
        seed=seed,
        opts=opts,
    )
    cold = pool_simulate(w, lat, b, cfg["v1_pool_r"], **kw)
    active = pool_simulate(w, lat, b, cfg["v1_active_r"], ffn_tokens="active", **kw)
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
                mean_field=m["mean_field"][k],
                gaussian=m["gaussian"][k],
                exact=m["exact"][k],
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
    # summary
    mo = m["mf_opt"]
    r_stat = int(np.argmax(sim.throughput)) + 1
    r_cold = cold.r_best
    paper_idx = [cold_i[r] for r in PAPER_R if r in cold_i]
    r_cold_paper = int(cold.r[paper_idx][np.argmax(cold.throughput[paper_idx])]) if paper_idx else 0
    r_exact = int(np.argmax(m["exact"])) + 1
    r_gauss = int(np.argmax(m["gaussian"])) + 1
    summary = [
        ("theta", float(m["stats"].theta)),
        ("batch", b),
        ("r_star_mean_field_continuous", mo.r_continuous),
        ("r_star_mean_field", mo.r_best),
        ("mean_field_regime", mo.regime),
        ("r_star_gaussian_continuous", m["gauss_cont"]),
        ("r_star_gaussian", r_gauss),
        ("r_star_exact", r_exact),
        ("r_star_optimiser_continuous", r_opt_c),
        ("r_star_optimiser", r_opt),
        ("r_sim_stationary", r_stat),
        ("r_sim_cold_pool", r_cold),
        ("r_sim_cold_pool_paper_grid", r_cold_paper),
        ("gap_mean_field_continuous_vs_stationary", _rel(mo.r_continuous, r_stat)),
        ("gap_mean_field_continuous_vs_cold_pool", _rel(mo.r_continuous, r_cold)),
        ("gap_mean_field_continuous_vs_cold_pool_paper_grid", _rel(mo.r_continuous, r_cold_paper)),
    ]
    if 32 <= r_max:
        k = 31
        mf32 = m["mean_field"][k]
        summary += [
            ("r32_mean_field", mf32),
            ("r32_gaussian", m["gaussian"][k]),
            ("r32_exact", m["exact"][k]),
            ("r32_stationary_mc", sim.throughput[k]),
            ("r32_shortfall_gaussian", 1 - m["gaussian"][k] / mf32),
            ("r32_shortfall_exact", 1 - m["exact"][k] / mf32),
            ("r32_shortfall_stationary_mc", 1 - sim.throughput[k] / mf32),
        ]
        if 32 in cold_i:
            c = cold_i[32]
            summary += [
                ("r32_cold_pool", cold.throughput[c]),
                ("r32_shortfall_cold_pool", 1 - cold.throughput[c] / mf32),
                ("r32_cold_active_fraction", cold.active_fraction[c]),
            ]
        if 32 in act_i:
            summary.append(
                ("r32_shortfall_cold_pool_active_ffn", 1 - active.throughput[act_i[32]] / mf32)
            )
    write_csv(parts / "v1_curves.csv", rows)
    write_csv(parts / "v1_summary.csv", [dict(quantity=q, value=v) for q, v in summary])


def _part_drain(cfg: dict, parts: Path) -> None:
    from afd_jax.montecarlo.pool import pool_simulate
    from afd_jax.workload.specs import resolve_workload

    if (parts / "v1_drain.csv").exists():
        _log("drain: done already (resume)")
        return
    b = cfg["v1_batch"]
    w = resolve_workload("paper-v1")
    lat, opts = _v1_latency(b)
    r = 32 if cfg["v1_r_max"] >= 32 else cfg["v1_r_max"]
    mf = _mf(lat, 599.0, float(r), b, opts)
    from afd_jax.montecarlo.pool import draw_pools

    n_max = max(cfg["v1_drain_requests"])
    pools = draw_pools(w, n_max, cfg["v1_drain_replications"], cfg["seed"], int(opts.load_offset))
    rows = []
    for n in cfg["v1_drain_requests"]:
        for ffn in ("nominal", "active"):
            _log(f"drain: N = {n}, ffn tokens {ffn}")
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
    write_csv(parts / "v1_drain.csv", rows)


# ------------------------------------------------------------------------------ workloads grid


def _part_grid(cfg: dict, parts: Path, name: str, batch: int, traces_dir) -> None:
    from afd_jax.model.theory import mean_field_optimum

    tag = f"grid_{name}_B{batch}"
    if (parts / f"{tag}.csv").exists() and (parts / f"{tag}_curves.csv").exists():
        _log(f"{tag}: done already (resume)")
        return
    _log(f"{tag}")
    w = _load_workload(name, traces_dir)
    r_max, r_sim_max = cfg["grid_r_max"], cfg["grid_sim_r_max"]
    rows, curves = [], []
    base = None
    for regime in REGIMES:
        from afd_jax.workload.statistics import workload_stats

        st = workload_stats(w) if base is None else base["stats"]
        theta, naive = float(st.theta), float(st.naive_mean_sum)
        lat, opts = regime_latency(theta, batch, regime)
        m = _methods_curve(w, lat, opts, batch, r_max, cfg["slot_bins"])
        base = m
        mo = m["mf_opt"]
        r_opt_c, r_opt = _optimiser(m["pmf"], st, lat, opts, batch, r_max, cfg["optimiser"])
        sim = _simulate_stationary(
            w,
            lat,
            opts,
            batch,
            r_sim_max,
            cfg["grid_sim_steps"],
            cfg["grid_sim_replications"],
            cfg["seed"],
        )
        r_sim = int(np.argmax(sim.throughput)) + 1
        sim_best = float(sim.throughput[r_sim - 1])
        # r indistinguishable from the best (CIs overlap): the resolution of the sim optimum
        close = np.nonzero(sim.ci_high >= sim.ci_low[r_sim - 1])[0] + 1
        ex = m["exact"]
        ex_best = float(ex.max())
        r_naive = mean_field_optimum(lat, naive, batch, opts, r_max).r_best
        r_gauss = int(np.argmax(m["gaussian"])) + 1
        r_exact = int(np.argmax(ex)) + 1
        methods = {
            "mean_field": mo.r_best,
            "gaussian": r_gauss,
            "exact": r_exact,
            "optimiser": r_opt,
            "naive_mean_field": r_naive,
        }
        row = dict(
            workload=name,
            batch=batch,
            regime=regime,
            regime_mean_field=mo.regime,
            theta=theta,
            naive_mean_sum=naive,
            sqrt_v=math.sqrt(float(st.slot_var)),
            cv_worker_load=math.sqrt(float(st.slot_var) / batch) / theta,
            r_mf_continuous=mo.r_continuous,
            r_gaussian_continuous=m["gauss_cont"],
            r_optimiser_continuous=r_opt_c,
            r_sim=r_sim,
            r_sim_low=int(close.min()),
            r_sim_high=int(close.max()),
            sim_best=sim_best,
            exact_best=ex_best,
        )
        for meth, r in methods.items():
            row[f"r_{meth}"] = r
        for meth, r in methods.items():
            row[f"relerr_{meth}"] = math.nan if r is None else _rel(float(r), float(r_sim))
        row["relerr_mf_continuous"] = _rel(mo.r_continuous, float(r_sim))
        for meth, r in methods.items():
            row[f"regret_{meth}"] = math.nan if r is None else 1 - ex[r - 1] / ex_best
        for meth, r in methods.items():
            ok = r is not None and r <= r_sim_max
            row[f"mc_regret_{meth}"] = 1 - sim.throughput[r - 1] / sim_best if ok else math.nan
        r_rec = r_opt if r_opt is not None else r_exact
        row["r_recommended"] = r_rec
        for label, r in (("r1", 1), ("naive", r_naive), ("recommended", r_rec)):
            ok = r <= r_sim_max
            row[f"idle_{label}"] = sim.idle_bundle[r - 1] if ok else math.nan
            row[f"barrier_share_{label}"] = sim.barrier_share[r - 1] if ok else math.nan
            row[f"idle_attn_{label}"] = sim.idle_attn[r - 1] if ok else math.nan
            row[f"idle_ffn_{label}"] = sim.idle_ffn[r - 1] if ok else math.nan
            row[f"exact_tp_{label}"] = ex[r - 1]
        rows.append(row)
        for k in range(r_max):
            inside = k < r_sim_max
            curves.append(
                dict(
                    workload=name,
                    batch=batch,
                    regime=regime,
                    r=k + 1,
                    mean_field=m["mean_field"][k],
                    gaussian=m["gaussian"][k],
                    exact=ex[k],
                    mc=sim.throughput[k] if inside else None,
                    mc_ci_low=sim.ci_low[k] if inside else None,
                    mc_ci_high=sim.ci_high[k] if inside else None,
                )
            )
    write_csv(parts / f"{tag}_curves.csv", curves)
    write_csv(parts / f"{tag}.csv", rows)


# ------------------------------------------------------------------------------ entry point


def _config_hash(cfg: dict) -> str:
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def run_reproduction(
    out,
    quick: bool = False,
    seed: int = 0,
    traces_dir=None,
    plots: bool = True,
) -> dict:
    """Run (or resume) the reproduction into ``out``; returns the meta dict (module docstring).

    ``traces_dir``: folder with the shared traces (default ``../shared/traces`` next to the
    repository when it exists). Quick mode never uses traces (deterministically skipped).
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    out = Path(out)
    cfg = config(quick, seed)
    if traces_dir is None:
        guess = Path(__file__).resolve().parents[2] / "shared" / "traces"
        traces_dir = guess if guess.is_dir() else None
    traces_dir = None if traces_dir is None else Path(traces_dir)
    if traces_dir is not None and not traces_dir.is_dir():
        raise InputError("traces folder not found", path=str(traces_dir))
    used, skipped = available_workloads(cfg, None if quick else traces_dir)
    parts = out / "parts" / _config_hash(cfg)
    parts.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings = {}

    def timed(label, fn, *a):
        t = time.perf_counter()
        fn(*a)
        timings[label] = round(time.perf_counter() - t, 2)

    timed("v1", _part_v1, cfg, parts)
    timed("drain", _part_drain, cfg, parts)
    for name in used:
        for b in cfg["batches"]:
            timed(f"grid_{name}_B{b}", _part_grid, cfg, parts, name, b, traces_dir)
    # assemble the final tables
    for f in ("v1_curves.csv", "v1_summary.csv", "v1_drain.csv"):
        write_csv(out / f, read_csv(parts / f))
    grid_rows, grid_curves = [], []
    for name in used:
        for b in cfg["batches"]:
            grid_rows += read_csv(parts / f"grid_{name}_B{b}.csv")
            grid_curves += read_csv(parts / f"grid_{name}_B{b}_curves.csv")
    write_csv(out / "workloads.csv", grid_rows)
    write_csv(out / "workload_curves.csv", grid_curves)
    write_report(out, cfg, used, skipped)
    if plots:
        write_plots(out)
    from afd_jax.montecarlo.simulate import device_name

    meta = dict(
        mode=cfg["mode"],
        seed=seed,
        config=cfg,
        config_hash=_config_hash(cfg),
        workloads=used,
        skipped_workloads=skipped,
        wall_seconds=round(time.perf_counter() - t0, 2),
        part_seconds=timings,
        device=device_name(),
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ------------------------------------------------------------------------------ report


def _pct(x) -> str:
    x = _num(x)
    return "n/a" if math.isnan(x) else f"{100 * x:.1f} %"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


GRID_METHODS = ("mean_field", "gaussian", "exact", "optimiser", "naive_mean_field")


def write_report(out: Path, cfg: dict, used: list[str], skipped: list[str]) -> None:
    """``out/report.md`` from the CSVs in ``out`` (claims, numbers, failures)."""
    summ = {r["quantity"]: r["value"] for r in read_csv(out / "v1_summary.csv")}
    drain = read_csv(out / "v1_drain.csv")
    grid = read_csv(out / "workloads.csv")
    f = _num
    lines = [f"# Reproduction report ({cfg['mode']} mode, seed {cfg['seed']})", ""]
    lines += [
        "Generated by `afd-jax reproduce`; numbers from the CSV files next to this report. "
        "Throughput is tokens/s per instance. Latency coefficients are illustrative "
        "(docs/latency_presets.md), so absolute numbers mean nothing; ratios and optima do.",
        "",
        "## 1. The v1 setup (MODEL.md 6)",
        "",
        f"paper-v1 workload (theta = {f(summ['theta']):.1f}), B = {summ['batch']}, "
        f"{'paper-v1 latency' if cfg['v1_batch'] == 256 else 'paper-v1 latency rescaled to B'}; "
        f"cold start: {cfg['v1_pool_requests']} requests, throughput over the first "
        f"{100 * cfg['completion_fraction']:.0f} % of completions, {cfg['v1_pool_replications']} "
        "pools; stationary start: barrier-kernel Monte Carlo.",
        "",
    ]
    rmf = f(summ["r_star_mean_field_continuous"])
    rs, rc, rcp = (
        int(f(summ["r_sim_stationary"])),
        int(f(summ["r_sim_cold_pool"])),
        int(f(summ["r_sim_cold_pool_paper_grid"])),
    )
    lines += _table(
        ["method", "r* (continuous)", "r* (integer)"],
        [
            ["mean field (closed form)", f"{rmf:.2f}", summ["r_star_mean_field"]],
            [
                "Gaussian barrier",
                f"{f(summ['r_star_gaussian_continuous']):.2f}",
                summ["r_star_gaussian"],
            ],
            ["exact steady state", "", summ["r_star_exact"]],
            [
                "gradient optimiser",
                f"{f(summ['r_star_optimiser_continuous']):.2f}",
                summ["r_star_optimiser"],
            ],
            ["simulation, stationary start", "", rs],
            ["simulation, cold start + finite pool (all r)", "", rc],
            ["simulation, cold start, paper grid {1,2,4,8,16,24,32}", "", rcp],
        ],
    )
    g1, g2, g3 = (
        f(summ["gap_mean_field_continuous_vs_stationary"]),
        f(summ["gap_mean_field_continuous_vs_cold_pool"]),
        f(summ["gap_mean_field_continuous_vs_cold_pool_paper_grid"]),
    )

    def verdict(gap):
        return "HOLDS" if gap <= 0.10 else "FAILS"

    lines += [
        "",
        f"**Claim: closed-form r* = 9.3 within 10 % of the simulated optimum.** Against the "
        f"stationary simulation: **{verdict(g1)}** (optimum r = {rs}, gap {_pct(g1)}). Against "
        f"the paper's cold-start finite-pool simulator: **{verdict(g2)}** (optimum r = {rc}, gap "
        f"{_pct(g2)}); on the paper's coarse grid {{1, 2, 4, 8, 16, 24, 32}} the cold-start "
        f"optimum is r = {rcp} (gap {_pct(g3)}): that grid cannot resolve 10 % around 9.3. The "
        "cold start favours smaller r: fresh requests start at load P, below theta, so the "
        "Attention side is lighter early in the window.",
        "",
    ]
    if "r32_mean_field" in summ:
        lines += [
            "### The r = 32 shortfall against mean field",
            "",
        ]
        rows = [
            ["mean field", f"{f(summ['r32_mean_field']):.0f}", "0"],
            [
                "Gaussian barrier",
                f"{f(summ['r32_gaussian']):.0f}",
                _pct(summ["r32_shortfall_gaussian"]),
            ],
            [
                "exact steady state",
                f"{f(summ['r32_exact']):.0f}",
                _pct(summ["r32_shortfall_exact"]),
            ],
            [
                "stationary Monte Carlo",
                f"{f(summ['r32_stationary_mc']):.0f}",
                _pct(summ["r32_shortfall_stationary_mc"]),
            ],
        ]
        if "r32_cold_pool" in summ:
            rows.append(
                [
                    "cold start, finite pool (nominal FFN tokens)",
                    f"{f(summ['r32_cold_pool']):.0f}",
                    _pct(summ["r32_shortfall_cold_pool"]),
                ]
            )
        if "r32_shortfall_cold_pool_active_ffn" in summ:
            rows.append(
                [
                    "cold start, finite pool (FFN charged for active slots only)",
                    "",
                    _pct(summ["r32_shortfall_cold_pool_active_ffn"]),
                ]
            )
        lines += _table(["model", "throughput at r = 32", "shortfall vs mean field"], rows)
        sc = f(summ.get("r32_shortfall_cold_pool", "nan"))
        se = f(summ["r32_shortfall_exact"])
        af = f(summ.get("r32_cold_active_fraction", "nan"))
        lines += [
            "",
            f"**Claim: about 15 % below mean field at r = 32 (the barrier).** The stationary "
            f"barrier explains {_pct(se)} (exact; Gaussian "
            f"{_pct(summ['r32_shortfall_gaussian'])}): "
            "at r = 32 the paper-v1 step is FFN-bound, so the barrier max of the Attention "
            "loads is hidden behind t_F. "
            f"The cold-start finite-pool simulator gives {_pct(sc)}: with r B slots for "
            f"{cfg['v1_pool_requests']} requests the pool empties early and on average only "
            f"{_pct(af)} of the slots are busy over the measurement window (the drain), while "
            "the FFN is charged for the nominal r B tokens. Charging the FFN only for active "
            f"slots gives {_pct(summ.get('r32_shortfall_cold_pool_active_ffn', 'nan'))}. "
            "The ~15 % is therefore not a barrier effect in this model; the paper's number "
            "lies between our two cold-start accountings, consistent with a drain artefact "
            "of its simulator (hypothesis of docs/latency_presets.md: supported, not proven, "
            "since the paper's coefficients and FFN accounting are unknown).",
            "",
            "Drain check (r = 32): the shortfall shrinks as the pool grows relative to the "
            "r B slots:",
            "",
        ]
        lines += _table(
            ["pool N", "r B / N", "FFN tokens", "throughput", "shortfall", "busy slots"],
            [
                [
                    d["n_requests"],
                    f"{f(d['slots_per_request']):.2f}",
                    d["ffn_tokens"],
                    f"{f(d['throughput']):.0f}",
                    _pct(d["shortfall"]),
                    _pct(d["active_fraction"]),
                ]
                for d in drain
            ],
        )
        lines.append("")
    # ---- workloads
    lines += ["## 2. Across workloads, batch sizes and regimes", ""]
    lines.append(
        f"Workloads: {', '.join(used)}; B in {cfg['batches']}; regimes "
        f"{', '.join(REGIMES)} ({len(grid)} scenarios). Simulation optimum: argmax of the "
        f"stationary Monte Carlo throughput over r = 1..{cfg['grid_sim_r_max']} "
        f"({cfg['grid_sim_steps'] * cfg['grid_sim_replications']} barrier snapshots per "
        "scenario). Regret: 1 - exact throughput at the method's r / best exact throughput."
    )
    if skipped:
        why = "quick mode never reads traces" if cfg["mode"] == "quick" else "trace files not found"
        lines.append(f"Skipped: {', '.join(skipped)} ({why}).")
    mism = [g for g in grid if g["regime"] != g["regime_mean_field"]]
    lines += [
        "",
        f"Regime check with theory.mean_field_optimum: {len(grid) - len(mism)} of {len(grid)} "
        "scenarios land in the intended regime"
        + (
            ": mismatches "
            + ", ".join(
                f"{g['workload']}/B={g['batch']}/{g['regime']}->{g['regime_mean_field']}"
                for g in mism
            )
            if mism
            else "."
        ),
        "",
    ]
    rows = []
    for meth in GRID_METHODS:
        err = np.array([f(g[f"relerr_{meth}"]) for g in grid])
        reg = np.array([f(g[f"regret_{meth}"]) for g in grid])
        ok = ~np.isnan(err)
        if not ok.any():
            rows.append([meth, "n/a", "", "", "", ""])
            continue
        e, rg = err[ok], reg[ok]
        rows.append(
            [
                meth,
                f"{np.mean(e <= 0.10) * 100:.0f} % ({int(np.sum(e <= 0.10))}/{e.size})",
                _pct(np.median(e)),
                _pct(e.max()),
                _pct(np.median(rg)),
                _pct(rg.max()),
            ]
        )
    lines += _table(
        [
            "method",
            "within 10 % of sim r*",
            "median rel. error",
            "max rel. error",
            "median regret",
            "max regret",
        ],
        rows,
    )
    lines.append("")
    lines.append("By regime (share within 10 %; max regret):")
    lines.append("")
    rows = []
    for reg_name in REGIMES:
        sub = [g for g in grid if g["regime"] == reg_name]
        if not sub:
            continue
        cells = [reg_name]
        for meth in GRID_METHODS:
            err = np.array([f(g[f"relerr_{meth}"]) for g in sub])
            rg = np.array([f(g[f"regret_{meth}"]) for g in sub])
            ok = ~np.isnan(err)
            cells.append(
                "n/a"
                if not ok.any()
                else f"{np.mean(err[ok] <= 0.1) * 100:.0f} %; {_pct(rg[ok].max())}"
            )
        rows.append(cells)
    lines += _table(["regime", *GRID_METHODS], rows)
    lines.append("")
    # failures
    fails = []
    for g in grid:
        for meth in ("mean_field", "gaussian"):
            if f(g[f"regret_{meth}"]) > 0.005:
                fails.append((f(g[f"regret_{meth}"]), meth, g))
    fails.sort(key=lambda t: -t[0])
    lines += ["### Where a method fails (regret > 0.5 %)", ""]
    if fails:
        lines += _table(
            [
                "method",
                "workload",
                "B",
                "regime",
                "cv worker load",
                "r method",
                "r exact",
                "r sim",
                "regret",
            ],
            [
                [
                    m,
                    g["workload"],
                    g["batch"],
                    g["regime"],
                    f"{f(g['cv_worker_load']):.3f}",
                    g[f"r_{m}"],
                    g["r_exact"],
                    g["r_sim"],
                    _pct(rg),
                ]
                for rg, m, g in fails[:25]
            ],
        )
        lines += [
            "",
            "Why: the mean field ignores the barrier (E[max_j T_j] > B theta) and stops at the "
            "balance point, one r short of the optimum; its error grows with the coefficient "
            "of variation of a worker's load, sqrt(v/B)/theta (small B, heavy tails).",
        ]
        if any(m == "gaussian" for _, m, _ in fails):
            lines.append(
                "The Gaussian barrier corrects the mean but not the tail shape: on skewed loads "
                "at small B the max of r loads exceeds the Gaussian's."
            )
        lines += []
    else:
        lines.append(
            "None: every mean-field and Gaussian choice is within 0.5 % of the best exact "
            "throughput."
        )
    lines.append("")
    naive_diff = [g for g in grid if g["r_naive_mean_field"] != g["r_mean_field"]]
    lines += [
        "### Naive statistics and idle time",
        "",
        f"Using E[P]+E[D] instead of theta changes the mean-field r in {len(naive_diff)} of "
        f"{len(grid)} scenarios (median regret "
        f"{_pct(np.median([f(g['regret_naive_mean_field']) for g in grid]))}, "
        f"max {_pct(max(f(g['regret_naive_mean_field']) for g in grid))}).",
        "",
        "Mean bundle idle fraction (and barrier share of it), stationary Monte Carlo:",
        "",
    ]
    rows = []
    for reg_name in REGIMES:
        sub = [g for g in grid if g["regime"] == reg_name]
        if not sub:
            continue
        cells = [reg_name]
        for lab in ("r1", "naive", "recommended"):
            idle = np.nanmean([f(g[f"idle_{lab}"]) for g in sub])
            bs = np.nanmean([f(g[f"barrier_share_{lab}"]) for g in sub])
            tp = np.mean([f(g[f"exact_tp_{lab}"]) / f(g["exact_best"]) for g in sub])
            cells.append(f"{_pct(idle)} ({_pct(bs)}); tp {_pct(tp)} of best")
        rows.append(cells)
    lines += _table(["regime", "r = 1", "naive E[P]+E[D] r", "recommended r (optimiser)"], rows)
    lines += [
        "",
        "## Files",
        "",
        "v1_curves.csv, v1_summary.csv, v1_drain.csv, workloads.csv, workload_curves.csv; "
        "figures v1_throughput.png, workload_errors.png, idle_breakdown.png; meta.json "
        "(timings, device). docs/reproduction.md explains every column.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


def write_plots(out: Path) -> None:
    """v1_throughput.png, workload_errors.png, idle_breakdown.png from the CSVs in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = _num
    v1 = read_csv(out / "v1_curves.csv")
    r = np.array([int(x["r"]) for x in v1])
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, label, style in (
        ("mean_field", "mean field", "-"),
        ("gaussian", "Gaussian barrier", "--"),
        ("exact", "exact steady state", ":"),
    ):
        ax.plot(r, [f(x[key]) for x in v1], style, label=label)
    mc = np.array([f(x["stationary_mc"]) for x in v1])
    lo = np.array([f(x["stationary_ci_low"]) for x in v1])
    hi = np.array([f(x["stationary_ci_high"]) for x in v1])
    ax.errorbar(r, mc, yerr=[mc - lo, hi - mc], fmt=".", ms=3, label="stationary MC (95 % CI)")
    cold = [
        (int(x["r"]), f(x["cold_pool"]), f(x["cold_ci_low"]), f(x["cold_ci_high"]))
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
    act = [(int(x["r"]), f(x["cold_pool_active_ffn"])) for x in v1 if x["cold_pool_active_ffn"]]
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

    grid = read_csv(out / "workloads.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for i, meth in enumerate(GRID_METHODS):
        err = [f(g[f"relerr_{meth}"]) for g in grid]
        reg = [f(g[f"regret_{meth}"]) for g in grid]
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

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels, idle, barrier = [], [], []
    for reg_name in REGIMES:
        sub = [g for g in grid if g["regime"] == reg_name]
        if not sub:
            continue
        for lab, name in (("r1", "r=1"), ("naive", "naive"), ("recommended", "rec.")):
            labels.append(f"{reg_name[:4]}\n{name}")
            i = np.nanmean([f(g[f"idle_{lab}"]) for g in sub])
            b = np.nanmean([f(g[f"barrier_share_{lab}"]) for g in sub])
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

"""``--latency FILE.toml`` with measured (table) stages through the CLI: provision, simulate,
optimize and sweep run on tests/data/moe_table.toml and agree with each other; a bad table
exits 2 with one line naming the file and field; the finite pool and the dynamics kernel run on
a shipped table preset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from afd_jax import exact_throughput, resolve_latency, resolve_workload, workload_stats
from afd_jax.cli import main
from afd_jax.model import latency as L
from afd_jax.model.theory import mean_field_throughput_host
from afd_jax.studies import sweep as S
from afd_jax.workload.slotload import slot_load_pmf

DATA = Path(__file__).parent / "data" / "moe_table.toml"
WORKLOAD = "uniform:prompt=50..150,decode=100..300"
COMMON = ["--workload", WORKLOAD, "--latency", str(DATA), "--batch", "16"]


def _json(capsys, args):
    assert main(args + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_table_latency_in_simulate_and_sweep(capsys, tmp_path):
    """simulate and sweep on the table file against the exact curve and mean field of the
    library (provision's table path is tested with the CLI below, optimize's in the next
    test)."""
    lat, _ = resolve_latency(str(DATA))
    w = resolve_workload(WORKLOAD)
    exact = exact_throughput(slot_load_pmf(w, max_bins=4096), lat, 16, 48)
    theta = float(workload_stats(w).theta)
    mf = np.array([mean_field_throughput_host(lat, theta, r, 16) for r in range(1, 49)])

    # Monte Carlo (barrier: exact steady state) within 4 standard errors of exact
    sim = _json(
        capsys,
        ["simulate", *COMMON, "--r-max", "48", "--kernel", "barrier", "--steps", "1024"],
    )
    for row in sim["results"]:
        ref = 1e6 * row["r"] * 16 / ((row["r"] + 1) * row["mean_tau"])
        assert row["throughput"] == pytest.approx(ref, rel=1e-12)
        assert abs(row["throughput"] - exact[row["r"] - 1]) < 4 * row["se"]

    spec = tmp_path / "s.toml"
    out = tmp_path / "o.csv"
    spec.write_text(
        f'r_max = 48\nmethods = ["mean_field", "exact"]\noutput = "{out}"\nbatch = [16]\n'
        f'[workloads]\nspecs = ["{WORKLOAD}"]\n[latency]\nbase = "{DATA}"\n'
        "[exact]\nslot_bins = 4096\n"
    )
    assert main(["sweep", str(spec), "--quiet"]) == 0
    t = S.read_table(out)
    np.testing.assert_allclose(np.asarray(t["tput_exact"], float), exact, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(t["tput_mean_field"], float), mf, rtol=1e-12)


@pytest.mark.slow
def test_table_provision_and_bad_table_exits_2(capsys, tmp_path):
    prov = _json(capsys, ["provision", *COMMON, "--r-max", "8", "--slot-bins", "256"])
    assert prov["r_best"]["exact"] >= 1 and "alpha_attn" not in prov["latency"]
    bad = tmp_path / "bad.toml"
    bad.write_text(DATA.read_text().replace("time_us = [300.0, 500.0", "time_us = [300.0, 200.0"))
    for cmd in (["provision", "--r-max", "4"], ["simulate", "--r-max", "4"]):
        args = [*cmd, "--workload", WORKLOAD, "--latency", str(bad), "--batch", "16"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "bad.toml" in err and "latency.ffn.time_us" in err
    assert main(["provision", *COMMON[:4], "--batch", "64", "--r-max", "4"]) == 2
    assert "batches: 8, 16, 32" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, rtol",
    [
        pytest.param(
            ["--steps", "128", "--routing", "balanced", "--precision", "float64"],
            1e-12,
            marks=pytest.mark.skipif(
                os.environ.get("AFD_HEAVY_TESTS") != "1",
                reason="about 40 s on a 2-core CPU, mostly the idealised r* (provision's Gaussian "
                "on a table preset) a dynamics run prints: set AFD_HEAVY_TESTS=1 (routed dynamics "
                "on tables: tests/test_mc_tables.py)",
            ),
        ),
        (["--window", "completions", "--requests", "64"], 1e-6),
    ],
)
def test_table_preset_runs_in_the_pool_and_dynamics_simulators(capsys, extra, rtol):
    """The dynamics kernel and the finite pool on a shipped table preset. At B = 8 with these
    short requests DeepSeek-V3 on H200 is FFN-bound at every step (t_A <= 5 ms < G(1) = 30
    ms), so tau = G(r) = max(t_C, t_F) every step (latency.other_stages, float64): mean tau
    and throughput 1e6 r B / ((r c_A + c_F) G(r)) times the busy fraction (1 in the steps
    window; the pool drains) to float32 rounding (float64: 1e-12)."""
    preset = "deepseek-v3@h200_sxm"
    lat, opts = resolve_latency(preset)
    args = ["simulate", "--workload", WORKLOAD, "--latency", preset, "--batch", "8"]
    out = _json(capsys, [*args, "--r-max", "2", "--replications", "2", "--quiet", *extra])
    assert out["precision"] == ("float64" if "float64" in extra else "float32")
    r = np.array([row["r"] for row in out["results"]], dtype=np.float64)
    g = L.other_stages(L.host_latency(lat), r, 8, opts)
    assert float(L.t_attn(L.host_latency(lat), 8 * 449.0, 8)) < g.min()  # FFN-bound
    got = np.array([row["mean_tau"] for row in out["results"]])
    np.testing.assert_allclose(got, g, rtol=rtol)
    tput, busy = (
        np.array([row[k] for row in out["results"]]) for k in ("throughput", "active_fraction")
    )
    np.testing.assert_allclose(tput, L.throughput(lat, r, 8, g) * busy, rtol=rtol)


PRESET_CASES = [("qwen3-235b-a22b@gb200", 16), ("qwen3-235b-a22b@gb200", 64)]
PRESET_CASES += [("deepseek-v3@h200_sxm", 64)]  # every shipped preset has the same table shapes


@pytest.mark.slow
def test_table_optimiser_lands_on_the_exact_grid_optimum():
    """The CI part of the check below (one compile of the solver, about 18 s): on shipped measured
    presets the continuous optimum of the smoothed objective lies next to the argmax of the exact
    grid (provision's exact curve), the better of its two integer neighbours, at a fixed B and
    jointly in (r, B) (a bound B* is the bound itself). optimize's integer step, the best of
    those neighbours by exact evaluation, is checked on affine models in tests/test_optimize.py;
    the whole CLI with its elasticities in the opt-in test below."""
    from afd_jax.studies.optimize import make_scenario, solve_continuous

    w = resolve_workload(WORKLOAD)
    st, pmf = workload_stats(w), slot_load_pmf(w, max_bins=4096)

    def best_neighbour(curve, r_c):
        lo, hi = int(np.floor(r_c)), int(np.ceil(r_c))
        return max((lo, hi), key=lambda r: curve[r - 1])

    for preset, batch in PRESET_CASES:
        lat, opts = resolve_latency(preset)
        scen = make_scenario(lat, st.theta, st.slot_var, float(batch), r_min=1.0, r_max=48.0)
        sol = solve_continuous(scen, opts=opts)
        exact = exact_throughput(pmf, lat, batch, 48, opts)
        assert bool(sol.converged), preset
        assert best_neighbour(exact, float(sol.r)) == int(np.argmax(exact)) + 1, (preset, batch)
    lat, opts = resolve_latency("qwen3-235b-a22b@gb200")
    kw = dict(r_min=1.0, r_max=32.0, batch_min=1.0, batch_max=40.0)
    sol = solve_continuous(make_scenario(lat, st.theta, st.slot_var, 40.0, **kw), opts=opts)
    grid = np.array([exact_throughput(pmf, lat, b, 32, opts) for b in range(1, 41)])
    b_best, r_best = np.unravel_index(int(np.argmax(grid)), grid.shape)
    b_c = float(sol.batch)
    assert b_best + 1 in (int(np.floor(b_c)), int(np.ceil(b_c)))
    assert best_neighbour(grid[b_best], float(sol.r)) == r_best + 1


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("AFD_HEAVY_TESTS") != "1",
    reason="compiles the table optimiser once, about 45-65 s on the shared 2-core CPU (over the "
    "CI time budget; docs/benchmarks.md): set AFD_HEAVY_TESTS=1",
)
def test_table_latency_optimize_finds_the_exact_grid_optimum(capsys):
    """On shipped measured presets: optimize's r* (and joint (r*, B*)) is the argmax of the exact
    grid (provision's exact curve), and its elasticities match central differences of re-solved
    optima along each input (table directions included). One compilation serves every case."""
    import jax

    from afd_jax.studies.elasticity import INPUTS, elasticities, input_tangent
    from afd_jax.studies.optimize import make_scenario, solve_continuous

    pmf = slot_load_pmf(resolve_workload(WORKLOAD), max_bins=4096)
    for preset, batch in PRESET_CASES:
        lat, opts = resolve_latency(preset)
        exact = exact_throughput(pmf, lat, batch, 48, opts)
        args = ["optimize", "--workload", WORKLOAD, "--latency", preset, "--batch", str(batch)]
        opt = _json(capsys, [*args, "--r-max", "48"])
        assert opt["converged"] and opt["r"] == int(np.argmax(exact)) + 1, preset
        assert opt["throughput"] == pytest.approx(float(exact.max()), rel=1e-12)
    grid = np.array([exact_throughput(pmf, lat, b, 32, opts) for b in range(1, 41)])
    args = ["optimize", "--workload", WORKLOAD, "--latency", preset, "--optimize-batch"]
    opt = _json(capsys, [*args, "--batch-max", "40", "--r-max", "32"])
    b_best, r_best = np.unravel_index(int(np.argmax(grid)), grid.shape)
    assert (opt["r"], opt["batch"]) == (r_best + 1, b_best + 1)
    assert opt["throughput"] == pytest.approx(float(grid.max()), rel=1e-12)

    st = workload_stats(resolve_workload(WORKLOAD))
    scen = make_scenario(lat, st.theta, st.slot_var, 64.0, r_min=1.0, r_max=48.0)
    el = elasticities(scen, solve_continuous(scen, opts=opts), opts=opts)
    h = 1e-4
    for name in INPUTS:
        tan = input_tangent(scen, name)
        log_r = []
        for s in (1 + h, 1 - h):
            moved = jax.tree_util.tree_map(lambda a, t, s=s: a + (s - 1) * t, scen, tan)
            log_r.append(np.log(float(solve_continuous(moved, opts=opts).r)))
        fd = (log_r[0] - log_r[1]) / (2 * h)
        assert el["r_star"][name] == pytest.approx(fd, rel=1e-3, abs=1e-4), name

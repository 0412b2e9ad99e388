"""``afd-jax optimize`` end to end: JSON keys, agreement with the library, exit status 2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from afd_jax.cli import main
from afd_jax.model.exact import exact_step_times, worker_load_pmf
from afd_jax.model.latency_io import resolve_latency
from afd_jax.studies.optimize import optimize
from afd_jax.workload.slotload import slot_load_pmf
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats
from afd_jax.workload.traces import load_trace

LAT = [
    "--alpha-attn", "0.01", "--beta-attn", "50", "--alpha-ffn", "0.05",
    "--beta-ffn", "100", "--alpha-comm", "0.01", "--beta-comm", "20",
]  # fmt: skip


@pytest.fixture
def trace(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "small.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(400):
        rows.append(f"2023-11-16 18:15:{i % 60:02d}.0,{rng.integers(0, 200)},{rng.geometric(0.03)}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_joint_batch_with_constraints(capsys, trace):
    argv = ["optimize", "--workload", str(trace), *LAT, "--optimize-batch", "--batch-max", "48"]
    argv += ["--kv-capacity", "7000", "--kv-epsilon", "1e-2", "--step-slo", "150", "--r-max", "40"]
    code, out, _ = _run(capsys, [*argv, "--json"])
    assert code == 0
    obj = json.loads(out)
    for key in ("r_continuous", "r", "batch", "throughput", "iterations", "converged"):
        assert key in obj
    assert set(obj["sensitivities"]) == {"r", "batch"}
    assert "theta" in obj["sensitivities"]["r"] and "alpha_ffn" in obj["sensitivities"]["r"]
    assert {"kv_capacity", "step_slo", "r_max", "batch_max"} <= set(obj["constraints"])
    # the same problem through the library
    w = load_trace(trace)
    keys = [a[2:].replace("-", "_") for a in LAT[::2]]
    lat, opts = resolve_latency(overrides=dict(zip(keys, map(float, LAT[1::2]), strict=True)))
    pmf = slot_load_pmf(w, max_bins=4096)
    st = workload_stats(w)
    res = optimize(
        pmf, st.theta, st.slot_var, lat, opts, optimize_batch=True, batch_max=48,
        kv_capacity=7000, kv_epsilon=1e-2, step_slo=150, r_max=40,
    )  # fmt: skip
    assert (obj["r"], obj["batch"]) == (res.r, res.batch)
    # constraints hold under the exact law
    wp = worker_load_pmf(pmf, obj["batch"])
    assert float(np.sum(wp.pmf[wp.support > 7000])) <= 1e-2
    assert exact_step_times(pmf, lat, obj["batch"], obj["r"], opts, wp)[-1] <= 150


def test_human_output(capsys, trace):
    code, out, _ = _run(capsys, ["optimize", "--workload", str(trace), *LAT, "--batch", "16"])
    assert code == 0
    assert "chosen: r =" in out and "dr*/dtheta" in out
    assert "tokens/s per instance" in out
    # other costs: per unit cost, as provision says (it said "per instance": a review)
    code, out, _ = _run(
        capsys, ["optimize", "--workload", str(trace), *LAT, "--batch", "16", "--cost-attn", "3"]
    )
    assert code == 0 and "tokens/s per unit cost" in out and "per instance" not in out


@pytest.mark.parametrize(
    "extra",
    [
        ["--batch", "0"],
        ["--optimize-batch"],  # no --batch-max
        ["--batch", "16", "--batch-max", "32"],
        ["--batch", "16", "--step-slo", "-5"],
        ["--batch", "16", "--step-slo", "1"],  # infeasible
        ["--batch", "16", "--kv-capacity", "10"],  # B = 16 cannot fit
        ["--batch", "16", "--kv-epsilon", "2", "--kv-capacity", "1e6"],
        ["--batch", "16", "--r-min", "5", "--r-max", "3"],
    ],
)
def test_bad_input_exits_2(capsys, trace, extra):
    code, out, err = _run(capsys, ["optimize", "--workload", str(trace), *LAT, *extra])
    assert code == 2
    assert out == "" and "error" in err and "Traceback" not in err


@pytest.mark.parametrize("slo", ["--step-slo", "--step-slo-p99"])
def test_infeasible_slo_names_the_slo_not_met(capsys, trace, slo):
    """Every (r, B) violating a P99 SLO was blamed on the mean SLO, which was not given (an
    audit, session 25): the error names the constraint that no candidate meets."""
    code, out, err = _run(
        capsys, ["optimize", "--workload", str(trace), *LAT, "-B", "16", slo, "1"]
    )
    field = slo[2:].replace("-", "_")
    assert code == 2 and out == ""
    assert f"field {field}:" in err and f"violates {field};" in err
    assert "at r = 1, B = 16" in err


@pytest.mark.parametrize(
    ("extra", "needs"),
    [
        (["--attn-gpus", "2"], "--kv-capacity auto"),
        (["--memory-attn-gib", "80", "--kv-capacity", "1e6"], "--kv-capacity auto"),
        (["--kv-reserved", "0.5"], "--kv-capacity auto"),
        (["--kv-epsilon", "0.01"], "--kv-capacity"),
        (["--batch-min", "4"], "--optimize-batch"),
    ],
)
def test_options_the_run_would_not_read_are_refused(capsys, extra, needs):
    """Each gave the same JSON as without it (a review of session 22); the price and power
    flags, which optimize never reads, are no longer offered."""
    argv = ["optimize", "--workload", "paper-v1", "--batch", "16", *extra]
    code, out, err = _run(capsys, argv)
    assert code == 2 and out == ""
    assert f"field {extra[0]}: applies with {needs} only" in err
    with pytest.raises(SystemExit):
        main(["optimize", "--workload", "paper-v1", "--batch", "16", "--price-attn", "3"])


def _paper_continuous_r(flags: dict, theta_scale: float = 1.0) -> float:
    """r_continuous of the library's optimize on paper-v1 at B = 64 (the CLI's inputs), theta
    scaled: an independent reference for the CLI's elasticities by finite differences."""
    w = resolve_workload("paper-v1")
    lat, opts = resolve_latency("paper-v1")
    st = workload_stats(w)
    pmf = slot_load_pmf(w, load_offset=opts.load_offset)
    theta = (st.theta + opts.load_offset) * theta_scale
    return optimize(pmf, theta, st.slot_var, lat, opts, batch=64, **flags).r_continuous


@pytest.mark.parametrize(
    "extra,flags,bound",
    [
        # the continuous optimum (3.89 unconstrained) sits on r_min inside the r_values range
        (["--r-values", "3,5", "--r-min", "4"], {"r_values": [3, 5], "r_min": 4}, "r_min"),
        (["--r-step", "3", "--r-min", "4"], {"r_values": [3, 6, 9, 12, 15], "r_min": 4}, "r_min"),
        # ... on r_max (--r-max 3 from flags), the largest allowed r
        (["--r-values", "2,3"], {"r_values": [2, 3], "r_max": 3}, "r_max"),
    ],
)
def test_bound_pinning_r_continuous_pins_the_elasticities(capsys, extra, flags, bound):
    """With --r-values/--r-step, a bound that pins r_continuous pins r* for the elasticities too:
    0 for every input (finite differences of r_continuous in theta are 0), and the elasticities
    equal those of the same bound without the ratio set."""
    flags = {"r_max": 16, **flags}
    argv = ["optimize", "--workload", "paper-v1", "--latency", "paper-v1", "-B", "64", "--json"]
    argv += ["--r-max", str(flags["r_max"])]
    code, out, _ = _run(capsys, [*argv, *extra])
    assert code == 0
    obj = json.loads(out)
    assert obj["r_continuous"] == pytest.approx(flags[bound], rel=1e-12)
    assert obj["sensitivities"]["r"][bound] == pytest.approx(1.0)
    assert obj["sensitivities"]["r"]["theta"] == 0.0
    h = 1e-3
    fd = math.log(_paper_continuous_r(flags, 1 + h) / _paper_continuous_r(flags, 1 - h)) / (2 * h)
    assert fd == pytest.approx(0.0, abs=1e-9)
    assert set(obj["elasticities"]["r_star"].values()) == {0.0}
    # the same bound alone (no ratio set): the same continuous optimum, the same elasticities
    code, out, _ = _run(capsys, [*argv, f"--{bound.replace('_', '-')}", str(flags[bound])])
    assert code == 0
    alone = json.loads(out)
    assert alone["r_continuous"] == pytest.approx(obj["r_continuous"], rel=1e-12)
    assert alone["elasticities"] == obj["elasticities"]


def test_r_values_interior_optimum_keeps_its_elasticities(capsys):
    """--r-values alone: the continuous optimum is searched between the extremes (3.89 in
    [3, 5]), free; its theta elasticity matches finite differences of r_continuous."""
    argv = ["optimize", "--workload", "paper-v1", "--latency", "paper-v1", "-B", "64"]
    code, out, _ = _run(capsys, [*argv, "--r-max", "16", "--r-values", "3,5", "--json"])
    assert code == 0
    obj = json.loads(out)
    assert 3 < obj["r_continuous"] < 5
    flags = {"r_max": 16, "r_values": [3, 5]}
    h = 1e-3
    fd = math.log(_paper_continuous_r(flags, 1 + h) / _paper_continuous_r(flags, 1 - h)) / (2 * h)
    assert fd > 0.1
    assert obj["elasticities"]["r_star"]["theta"] == pytest.approx(fd, abs=0.01)

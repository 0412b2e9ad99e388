"""`afd-jax provision`: JSON contract, agreement with the library functions, plot, exit 2 on
bad coefficients."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax.cli import main
from afd_jax.model.exact import exact_throughput
from afd_jax.model.latency_io import resolve_latency
from afd_jax.model.theory import gaussian_throughput, mean_field_throughput
from afd_jax.workload.slotload import slot_load_pmf
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

BASE = ["provision", "--workload", "paper-v1", "--batch", "256", "--r-max", "16"]


@pytest.fixture(scope="module")
def paper_json():
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(BASE + ["--latency", "paper-v1", "--json"]) == 0
    return json.loads(buf.getvalue())


def test_json_contract_and_values(paper_json):
    d = paper_json
    for key in ("theta", "slot_std", "regime", "r_star", "r_best", "curve", "throughput_unit"):
        assert key in d
    assert set(d["r_star"]) >= {"mean_field", "gaussian"}
    assert set(d["r_best"]) == {"mean_field", "gaussian", "exact"}
    assert all(isinstance(v, int) for v in d["r_best"].values())
    assert d["theta"] == pytest.approx(599.0, rel=1e-9)  # the paper's v1 workload
    assert d["r_star"]["mean_field"] == pytest.approx(9.3, rel=1e-9)
    assert d["regime"] == "attention"
    assert d["throughput_unit"] == "tokens/s per instance"
    assert [row["r"] for row in d["curve"]] == list(range(1, 17))
    # the barrier only lowers throughput: exact, Gaussian <= mean field
    for row in d["curve"]:
        assert row["exact"] <= row["mean_field"] * (1 + 1e-12)
        assert row["gaussian"] <= row["mean_field"] * (1 + 1e-12)
    for method in ("mean_field", "gaussian", "exact"):
        ys = [row[method] for row in d["curve"]]
        assert d["r_best"][method] == int(np.argmax(ys)) + 1
    assert abs(d["r_star"]["gaussian"] - d["r_best"]["gaussian"]) < 1.0


def test_curve_matches_library(paper_json):
    w = resolve_workload("paper-v1")
    st = workload_stats(w)
    lat, opts = resolve_latency("paper-v1")
    rs = jnp.arange(1.0, 17.0)
    mf = np.asarray(mean_field_throughput(lat, st.theta, rs, 256, opts))
    ga = np.asarray(gaussian_throughput(lat, st.theta, st.slot_var, rs, 256, opts))
    ex = exact_throughput(slot_load_pmf(w, max_bins=4096), lat, 256, 16, opts)
    curve = paper_json["curve"]
    np.testing.assert_allclose([r["mean_field"] for r in curve], mf, rtol=1e-12)
    np.testing.assert_allclose([r["gaussian"] for r in curve], ga, rtol=1e-12)
    np.testing.assert_allclose([r["exact"] for r in curve], ex, rtol=1e-12)


def test_flags_costs_plot_and_text(tmp_path, capsys):
    plot = tmp_path / "prov.png"
    args = [
        "provision",
        "--workload",
        "paper-v1",
        "--batch",
        "32",
        "--r-max",
        "8",
        "--alpha-attn",
        "0.01",
        "--beta-attn",
        "50",
        "--alpha-ffn",
        "0.5",
        "--beta-ffn",
        "400",
        "--alpha-comm",
        "0.1",
        "--beta-comm",
        "20",
        "--cost-ffn",
        "3",
        "--plot",
        str(plot),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "tokens/s per unit cost" in out and "regime" in out
    assert len([ln for ln in out.splitlines() if ln.strip()[:1].isdigit()]) >= 8
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra",
    [
        ["--batch", "0"],
        ["--r-max", "0"],
        ["--latency", "paper-v1", "--alpha-attn", "-1"],
        ["--latency", "paper-v1", "--beta-ffn", "nan"],
        ["--latency", "paper-v1", "--beta-comm", "inf"],
        ["--latency", "paper-v1", "--cost-ffn", "0"],
        ["--latency", "no-such-latency.toml"],
        ["--alpha-attn", "0.1"],  # partial flags without --latency
        ["--workload", "no-such-workload"],
    ],
)
def test_bad_input_exits_2(extra, capsys):
    args = BASE + extra
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1

"""Stage-time scales in sweeps (``attn_scale``, ``ffn_scale``, ``comm_scale``; docs/sweep.md):
scale 1 is bit for bit the unscaled sweep; on affine stages a scale s is the affine model with
(s alpha, s beta); on table stages it is the table of s times its knot times; the measured
preset runs from the CLI; raw coefficients of a table stage stay rejected, pointing at them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from afd_jax.cli import main
from afd_jax.errors import InputError
from afd_jax.model import exact, theory
from afd_jax.model import latency as L
from afd_jax.model.stages import AttnTable, table_stage
from afd_jax.studies import sweep as S
from afd_jax.workload.slotload import slot_load_pmf

DATA = Path(__file__).parent / "data" / "moe_table.toml"
WORKLOAD = "uniform:prompt=50..150,decode=100..300"
R_MAX = 12  # and chunks of 5: the shapes of tests/test_sweep.py (kernels compiled once)
AFFINE = {
    "alpha_attn": 0.02,
    "beta_attn": 30.0,
    "alpha_ffn": 0.15,
    "beta_ffn": 60.0,
    "alpha_comm": 0.05,
    "beta_comm": 20.0,
}


def _plan(latency: dict, methods=("mean_field", "gaussian", "exact")):
    return S.make_plan(
        S.parse_sweep_spec(
            {
                "r_max": R_MAX,
                "methods": list(methods),
                "batch": [16],
                "workloads": {"specs": [WORKLOAD]},
                "latency": latency,
            },
            "scale.toml",
        )
    )


def _evaluate(plan) -> dict:
    return S.Evaluator(plan, 5).evaluate(0, plan.n_scenarios)


def _references(plan, i: int, lat) -> dict:
    """Mean field, Gaussian and exact throughput of scenario i computed directly for ``lat``."""
    e = plan.workloads[int(plan.wl_index[i])]
    b, r = int(plan.batch[i]), np.arange(1.0, R_MAX + 1)
    return {
        "tput_mean_field": theory.mean_field_throughput(lat, e.theta, r, b, plan.opts),
        "tput_gaussian": theory.gaussian_throughput(lat, e.theta, e.slot_var, r, b, plan.opts),
        "tput_exact": exact.exact_throughput(slot_load_pmf(e.workload), lat, b, R_MAX, plan.opts),
    }


METHODS = ("tput_mean_field", "tput_gaussian", "tput_exact")


def test_affine_scale_is_scaled_coefficients_and_scale_one_is_bit_identical():
    base = _plan({"set": AFFINE})
    scaled = _plan({"set": AFFINE, "grid": {"attn_scale": [1.0, 1.3], "ffn_scale": [1.0, 0.7]}})
    assert scaled.n_scenarios == 4 and scaled.swept == ("attn_scale", "ffn_scale")
    assert base.scales is None and scaled.columns()[11:14] == list(S.fields.SCALE_FIELDS)
    ref, got = _evaluate(base), _evaluate(scaled)
    for key in ("regime", *METHODS):  # scales (1, 1): bit for bit
        assert np.array_equal(got[key][0], ref[key][0]), key
    for i, (sa, sf, sc) in enumerate(scaled.scales):
        lat = L.Latency(*scaled.coeffs[i])
        lat = lat._replace(
            alpha_attn=sa * lat.alpha_attn,
            beta_attn=sa * lat.beta_attn,
            alpha_ffn=sf * lat.alpha_ffn,
            beta_ffn=sf * lat.beta_ffn,
            alpha_comm=sc * lat.alpha_comm,
            beta_comm=sc * lat.beta_comm,
        )
        for key, want in _references(scaled, i, lat).items():
            np.testing.assert_allclose(got[key][i], np.asarray(want), rtol=1e-12, err_msg=key)


def _knots_scaled(tables, s_attn: float, s_comm: float):
    """The measured stages rebuilt from scaled knot times (an independent construction)."""
    attn = AttnTable(
        tables.attn.batches,
        tuple(table_stage(row.x, s_attn * row.y) for row in tables.attn.rows),
    )
    comm = table_stage(tables.comm.x, s_comm * tables.comm.y)
    return L.table_latency(attn, tables.ffn, comm)


def test_table_scale_is_the_table_of_scaled_knots():
    """Exact only (mean field, always run for the regime, is checked bit for bit at scale 1):
    the analytic references on tables cost seconds of compiling each."""
    grid = {"attn_scale": [1.0, 1.5], "comm_scale": [1.0, 0.8]}
    base = _plan({"base": str(DATA)}, ("exact",))
    scaled = _plan({"base": str(DATA), "grid": grid}, ("exact",))
    ref, got = _evaluate(base), _evaluate(scaled)
    for key in ("regime", "tput_mean_field", "tput_exact"):
        assert np.array_equal(got[key][0], ref[key][0]), key
    assert not np.array_equal(got["tput_exact"][2], ref["tput_exact"][0])
    for i in (1, 2, 3):
        sa, _, sc = scaled.scales[i]
        e = scaled.workloads[0]
        lat = _knots_scaled(scaled.tables, sa, sc)
        want = exact.exact_throughput(slot_load_pmf(e.workload), lat, 16, R_MAX, scaled.opts)
        np.testing.assert_allclose(got["tput_exact"][i], want, rtol=1e-11)


def test_scale_errors_name_the_key():
    with pytest.raises(InputError, match="ffn_scale in latency.set, .grid or .random"):
        _plan({"base": str(DATA), "grid": {"beta_ffn": [1.0, 2.0]}})
    for latency, key in (
        ({"set": {**AFFINE, "comm_scale": 0.0}}, "latency.set.comm_scale"),
        ({"set": AFFINE, "grid": {"attn_scale": [1.0, -2.0]}}, "latency.grid.attn_scale"),
        (
            {"set": AFFINE, "random": {"ffn_scale": {"uniform": [0.0, 1.0]}}},
            "latency.random.ffn_scale.uniform",
        ),
        ({"set": {**AFFINE, "attn_scael": 1.0}}, "latency.set.attn_scael"),
    ):
        with pytest.raises(InputError) as err:
            _plan(latency)
        assert err.value.field == key and err.value.path == "scale.toml"


def test_measured_preset_sweep_with_scales_from_the_cli(tmp_path, capsys):
    out = tmp_path / "o.csv"
    spec = tmp_path / "s.toml"
    spec.write_text(
        f"""r_max = 4
methods = ["mean_field", "exact"]
output = "{out}"
batch = [64]
[workloads]
specs = ["{WORKLOAD}"]
[latency]
base = "deepseek-v3@h200_sxm"
[latency.grid]
attn_scale = [1.0, 1.2]
ffn_scale = [0.7, 1.0]
"""
    )
    assert main(["sweep", str(spec), "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_scenarios"] == 4
    t = S.read_table(out)
    tput = t["tput_exact"].reshape(4, 4)
    assert t["attn_scale"][::4].tolist() == [1.0, 1.0, 1.2, 1.2]
    assert t["ffn_scale"][::4].tolist() == [0.7, 1.0, 0.7, 1.0]
    # slower stages never raise the throughput; a faster FFN lifts it where the FFN binds
    assert np.all(tput[2:] <= tput[:2]) and np.all(tput[0] >= tput[1])
    assert np.any(tput[0] > tput[1])


def test_random_scales_are_sampled_on_their_own_streams():
    rnd = {"n": 5, "seed": 3, "beta_ffn": {"uniform": [40.0, 80.0]}}
    base = _plan({"set": AFFINE, "random": rnd})
    rnd["attn_scale"] = {"loguniform": [0.8, 1.25]}
    scaled = _plan({"set": AFFINE, "random": rnd})
    assert np.array_equal(scaled.coeffs, base.coeffs)  # adding a scale draws nothing else
    s = scaled.scales[:, 0]
    assert np.all((s >= 0.8) & (s <= 1.25)) and np.unique(s).size == 5
    assert np.all(scaled.scales[:, 1:] == 1.0) and "attn_scale" in scaled.swept
    lat = scaled.latency(np.arange(5))
    np.testing.assert_array_equal(lat.alpha_attn, s * AFFINE["alpha_attn"])
    np.testing.assert_array_equal(lat.beta_ffn, scaled.coeffs[:, 3])

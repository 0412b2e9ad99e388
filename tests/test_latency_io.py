"""Latency presets, TOML files and overrides (afd_jax.model.latency_io): validation names the file
and
key; presets ship as package data; files round-trip."""

from __future__ import annotations

import math

import pytest

from afd_jax.errors import InputError
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.latency_io import (
    format_latency_toml,
    list_presets,
    read_latency_file,
    resolve_latency,
    scalar_items,
)
from afd_jax.model.theory import mean_field_optimum

GOOD = """
[meta]
name = "test"

[latency]
alpha_attn = 0.01
beta_attn = 100
alpha_ffn = 0.5
beta_ffn = 443.04
alpha_comm = 0.5
beta_comm = 100.0
comm_scaling = "per_worker"
"""


def write(tmp_path, text, name="lat.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_presets_ship_and_validate():
    names = list_presets()
    assert {"paper-v1", "deepseek-v3-h100"} <= set(names)
    for name in names:
        lat, opts = resolve_latency(name)
        # measured presets give stages as tables: their affine pairs are absent (NaN)
        assert all(math.isfinite(v) and v >= 0 for _, v in scalar_items(lat))
        assert lat.cost_attn > 0 and lat.cost_ffn > 0
        if "@" in name:
            assert lat.tables is not None and lat.tables.attn is not None


def test_paper_v1_preset_reproduces_r_star_9_3():
    lat, opts = resolve_latency("paper-v1")
    assert opts == ModelOptions(comm_scaling="per_worker", overlap="pipelined")
    opt = mean_field_optimum(lat, 599.0, 256, opts, 64)  # the paper's v1 workload: theta = 599
    assert opt.r_continuous == pytest.approx(9.3, rel=1e-12)


def test_file_defaults_and_overrides(tmp_path):
    p = write(tmp_path, GOOD)
    lat, opts = resolve_latency(str(p))
    assert lat == Latency(0.01, 100.0, 0.5, 443.04, 0.5, 100.0, 1.0, 1.0)
    assert opts == ModelOptions("per_worker", "pipelined", 0)
    lat2, opts2 = resolve_latency(
        str(p),
        overrides={"beta_ffn": 7.0, "cost_ffn": 2.0, "alpha_attn": None},
        comm_scaling="aggregate",
        overlap="serial",
        load_offset=1,
    )
    assert (lat2.beta_ffn, lat2.cost_ffn, lat2.alpha_attn) == (7.0, 2.0, 0.01)
    assert opts2 == ModelOptions("aggregate", "serial", 1)


def test_flags_only_and_missing_coefficient():
    six = dict(alpha_attn=1, beta_attn=2, alpha_ffn=3, beta_ffn=4, alpha_comm=5, beta_comm=6)
    lat, opts = resolve_latency(None, overrides=six)
    assert lat[:6] == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0) and opts == ModelOptions()
    del six["beta_comm"]
    with pytest.raises(InputError, match="beta_comm"):
        resolve_latency(None, overrides=six)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("beta_attn = 100", "beta_attn = -1"), "beta_attn"),
        (("alpha_ffn = 0.5", "alpha_ffn = nan"), "alpha_ffn"),
        (("alpha_ffn = 0.5", "alpha_ffn = inf"), "alpha_ffn"),
        (("beta_comm = 100.0", 'beta_comm = "fast"'), "beta_comm"),
        (("beta_comm = 100.0", "beta_comm = 100.0\nalpha_disk = 3"), "alpha_disk"),
        (('comm_scaling = "per_worker"', 'comm_scaling = "global"'), "comm_scaling"),
        (('comm_scaling = "per_worker"', "cost_ffn = 0"), "cost_ffn"),
        (("[meta]", "[hardware]"), "hardware"),
    ],
)
def test_bad_file_names_file_and_key(tmp_path, edit, field):
    p = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(InputError) as err:
        resolve_latency(str(p))
    assert err.value.field == field
    assert err.value.path == str(p)
    assert str(p) in str(err.value)


def test_bad_overrides_and_unknown_spec(tmp_path):
    with pytest.raises(InputError, match="alpha_attn"):
        resolve_latency("paper-v1", overrides={"alpha_attn": -0.5})
    with pytest.raises(InputError, match="beta_ffn"):
        resolve_latency("paper-v1", overrides={"beta_ffn": float("nan")})
    with pytest.raises(InputError, match="unknown latency preset"):
        resolve_latency("no-such-preset")
    with pytest.raises(InputError, match="cannot read"):
        resolve_latency(str(tmp_path / "missing.toml"))
    with pytest.raises(InputError, match="invalid TOML"):
        resolve_latency(str(write(tmp_path, "[latency\nalpha_attn = 1")))
    # integers Python will not convert: over 4300 digits (tomllib's ValueError), beyond float
    with pytest.raises(InputError, match="invalid TOML: a number too long"):
        resolve_latency(str(write(tmp_path, "[meta]\nn = " + "9" * 5000 + "\n[latency]\n")))
    with pytest.raises(InputError, match="must be <= ") as err:
        huge = GOOD.replace("beta_attn = 100", "beta_attn = 1" + "0" * 320)
        resolve_latency(str(write(tmp_path, huge)))
    assert err.value.field == "beta_attn"
    for value, says in (("nan", "got nan"), ("-1" + "0" * 320, "got -inf")):
        text = GOOD.replace("beta_attn = 100", f"beta_attn = {value}")
        with pytest.raises(InputError, match=says):
            resolve_latency(str(write(tmp_path, text)))
    with pytest.raises(InputError, match=r"missing \[latency\]"):
        resolve_latency(str(write(tmp_path, "[meta]\nname = 'x'\n")))


def test_format_round_trip(tmp_path):
    lat = Latency(0.00375, 1043.0, 1.53, 8760.0, 1.02, 976.0, 1.0, 4.0)
    opts = ModelOptions("aggregate", "serial")
    p = write(tmp_path, format_latency_toml(lat, opts, {"source": 'a "quoted" name', "n": 3}))
    assert resolve_latency(str(p)) == (lat, opts)
    assert read_latency_file(p)["overlap"] == "serial"

"""`afd-jax hardware` and the measured MODEL@SYSTEM presets (docs/hardware.md).

Without the extra: the committed presets parse, are monotone, carry provenance and the licence
notice; the cleanup and its fit error are checked against hand computations; `hardware`
exits 2 with one line. With the extra (AIConfigurator; CI installs it, so there a missing
extra fails instead of skipping): `hardware build` stores every table point within the error
it prints, rebuilds a committed preset byte for byte, and `hardware list` covers every preset.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tomllib

import numpy as np
import pytest

from afd_jax.cli import main
from afd_jax.errors import InputError
from afd_jax.model.latency_io import list_presets, resolve_latency
from afd_jax.studies.hardware import (
    check_preset,
    fit_error,
    list_hardware_presets,
    monotone_table,
    preset_path,
    read_preset,
)

HAVE_EXTRA = all(importlib.util.find_spec(m) for m in ("aiconfigurator", "aiconfigurator_core"))
REASON = "the hardware extra (aiconfigurator) is not installed: pip install -e '.[hardware]'"
if not HAVE_EXTRA and os.environ.get("CI") == "true":
    raise RuntimeError("CI=true but the hardware extra is not importable (.ci/run installs it)")
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason=REASON)


# ------------------------------------------------------------------ without the extra


def test_monotone_table_is_the_running_max():
    t = monotone_table([1, 2, 4, 8], [5.0, 4.0, 6.0, 5.5])
    assert t.stored.tolist() == [5.0, 5.0, 6.0, 6.0]
    e = fit_error([t])
    assert e.mape == pytest.approx((0.25 + 0.5 / 5.5) / 4, rel=1e-12)
    assert e.worst == pytest.approx(0.25, rel=1e-12) and e.worst_x == 2.0 and e.n == 4


def test_monotone_table_rejects_bad_points():
    with pytest.raises(ValueError, match="strictly increasing"):
        monotone_table([1, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="> 0"):
        monotone_table([1, 2], [0.0, 2.0])


def test_shipped_presets_cover_the_required_models_and_systems():
    names = set(list_hardware_presets())
    for model in ("deepseek-v3", "qwen3-235b-a22b", "qwen3-coder-480b-a35b"):
        for system in ("h100_sxm", "h200_sxm", "b200_sxm", "gb200"):
            assert f"{model}@{system}" in names
    assert {"paper-v1", "deepseek-v3-h100"} <= set(list_presets())
    for name in set(list_presets()) & names:  # listed once the reader takes table stages
        resolve_latency(name)


@pytest.mark.parametrize("name", list_hardware_presets())
def test_preset_parses_is_monotone_and_carries_provenance(name):
    data = read_preset(preset_path(name))  # layout, monotone, keys present (check_preset)
    meta, hw, lat = data["meta"], data["hardware"], data["latency"]
    assert meta["name"] == name and meta["licence"] == "Apache-2.0"
    assert "NVIDIA" in meta["notice"] and "Apache License 2.0" in meta["notice"]
    assert meta["aiconfigurator_version"] and meta["framework_version"]
    assert meta["table_files"] and all(f.endswith(".parquet") for f in meta["table_files"])
    assert all(hw["attn_system"] in f or hw["ffn_system"] in f for f in meta["table_files"])
    assert name.split("@")[1] == hw["attn_system"]
    assert hw["attn_parallelism"] == f"TP{hw['attn_gpus']}"
    assert hw["ffn_parallelism"] == f"EP{hw['ffn_gpus']}"
    assert hw["kv_bytes_per_token"] > 0 and hw["ffn_weight_bytes"] > hw["attn_weight_bytes"] > 0
    first = lat["attn"]["table"][0]
    for t in lat["attn"]["table"]:  # x = B * context: the same contexts for every batch
        ctx = np.asarray(t["kv_tokens"]) / t["batch"]
        assert ctx.tolist() == (np.asarray(first["kv_tokens"]) / first["batch"]).tolist()
    for stage in ("attn", "ffn", "comm"):
        assert 0 <= meta[f"fit_mape_{stage}"] <= meta[f"fit_worst_{stage}"] < 0.5


def test_check_preset_names_the_broken_field(tmp_path):
    data = tomllib.loads(preset_path(list_hardware_presets()[0]).read_text())
    data["latency"]["ffn"]["time_us"][3] = data["latency"]["ffn"]["time_us"][2] / 2
    with pytest.raises(InputError, match=r"latency\.ffn.*non-decreasing"):
        check_preset(data, "x.toml")
    del data["meta"]["notice"]
    with pytest.raises(InputError, match="field meta: missing key"):
        check_preset(data, "x.toml")


def test_hardware_without_the_extra_exits_2_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "aiconfigurator", None)  # import fails as if absent
    assert main(["hardware", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afd-jax[hardware]" in err
    args = ["hardware", "build", "--model", "deepseek-ai/DeepSeek-V3", "--system", "h200_sxm"]
    assert main([*args, "--out", "x.toml"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ------------------------------------------------------------------ with the extra

REBUILT = "qwen3-235b-a22b@h200_sxm"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """Rebuild one shipped preset with the CLI (its own recorded command); fit errors as JSON."""
    folder = tmp_path_factory.mktemp("hw")
    flags = read_preset(preset_path(REBUILT))["meta"]["built_with"].split()[3:]
    out = folder / f"{REBUILT}.toml"
    flags[flags.index("--out") + 1] = str(out)
    return out, flags


@needs_extra
@pytest.mark.slow
def test_build_stores_every_point_within_the_printed_error(rebuilt, capsys):
    from afd_jax.studies import aic

    out, flags = rebuilt
    assert main(["hardware", "build", *flags, "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["fit"]
    data = read_preset(out)
    hw = data["hardware"]
    dep = aic.Deployment(
        hw["model"], hw["attn_system"], hw["ffn_system"], hw["framework"],
        hw["attn_gpus"], hw["ffn_gpus"],
    )  # fmt: skip
    points = aic.measure(dep)  # the table points, queried afresh
    lat = data["latency"]
    pairs = {
        "attn": [(t["time_us"], points["attn"][t["batch"]]) for t in lat["attn"]["table"]],
        "ffn": [(lat["ffn"]["time_us"], points["ffn"])],
        "comm": [(lat["comm"]["time_us"], points["comm"])],
    }
    for stage, rows in pairs.items():
        rel = np.concatenate([np.abs(np.subtract(s, m)) / np.asarray(m) for s, m in rows])
        assert rel.max() <= fit[stage]["worst"] * (1 + 1e-9) + 1e-15, stage
        assert rel.mean() == pytest.approx(fit[stage]["mape"], rel=1e-9, abs=1e-15), stage
        for stored, measured in rows:  # a cleanup never goes below a point beyond rounding
            assert np.all(np.asarray(stored) >= np.asarray(measured) - 5e-4)
    assert out.read_text() == preset_path(REBUILT).read_text()  # the shipped file, exactly


@needs_extra
def test_list_covers_every_shipped_preset(capsys):
    assert main(["hardware", "list", "--json"]) == 0
    cov = json.loads(capsys.readouterr().out)
    for name in list_hardware_presets():
        data = read_preset(preset_path(name))
        hw, meta = data["hardware"], data["meta"]
        assert hw["model"] in cov["models"], name
        for system in (hw["attn_system"], hw["ffn_system"]):
            versions = cov["systems"][system][hw["framework"]]
            assert meta["framework_version"] in versions, name
        assert meta["aiconfigurator_version"] == cov["aiconfigurator_version"]


@needs_extra
def test_build_rejects_a_split_that_does_not_fit(tmp_path, capsys):
    # 694 GB of FP8 expert weights on 8 x 80 GB H100: AIConfigurator's memory model says no
    args = ["hardware", "build", "--model", "deepseek-ai/DeepSeek-V3", "--system", "h100_sxm"]
    assert main([*args, "--ffn-gpus", "8", "--out", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ffn_gpus" in err
    # a split that trips an assert inside AIConfigurator (128 heads over 1,024 GPUs): its
    # message in one line, exit 2, not its traceback
    assert main([*args, "--ffn-gpus", "1024", "--out", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "divisible" in err and "Traceback" not in err


@needs_extra
def test_stages_match_aiconfigurators_own_afd_decode_step():
    """Our per-stage sums equal AIConfigurator's AFD session (its decode step at context
    isl + 1 = 1024, one microbatch): t_A(B, T = 1024 B), t_F(N = workers * B), t_C(B)."""
    from aiconfigurator.sdk.config import RuntimeConfig

    from afd_jax.studies import aic

    dep = aic.Deployment("Qwen/Qwen3-235B-A22B-FP8", "h200_sxm", "h200_sxm", "trtllm", 4, 8)
    session = aic._session(dep, dep.attn_system)
    a_model, f_model = session._build_models()
    batch = 64
    session._afd_config.a_batch_size = batch
    step = session._simulate_phase(
        phase="decode",
        runtime_config=RuntimeConfig(isl=1023, osl=2, batch_size=batch),
        a_model=a_model,
        f_model=f_model,
        free_gpu_memory_fraction=None,
        max_seq_len=None,
    )
    layers_ms_to_us = a_model._num_layers * 1000.0
    workers = session._afd_config.n_a_workers  # 2 TP4 Attention workers share the FFN here
    points = aic.measure(dep)
    ours = {
        "t_a_layer": points["attn"][batch][aic.CONTEXTS.index(1024)],
        "t_f_layer": points["ffn"][aic.FFN_TOKENS.index(workers * batch)],
        "t_c_layer": points["comm"][aic.COMM_TOKENS.index(batch)],
    }
    for key, value in ours.items():
        assert value == pytest.approx(step[key] * layers_ms_to_us, rel=1e-12), key


@needs_extra
@pytest.mark.slow
def test_mixed_pools_take_each_side_and_the_slower_link(tmp_path):
    """H200 Attention + GB200 FFN: attention = the H200 preset's, FFN = the GB200 preset's,
    link = the pointwise max of both (the running max commutes with the max)."""
    out = tmp_path / "mixed.toml"
    args = ["hardware", "build", "--model", "deepseek-ai/DeepSeek-V3", "--system", "h200_sxm"]
    assert main([*args, "--ffn-system", "gb200", "--ffn-gpus", "16", "--out", str(out)]) == 0
    mixed = read_preset(out)["latency"]
    h200 = read_preset(preset_path("deepseek-v3@h200_sxm"))["latency"]
    gb200 = read_preset(preset_path("deepseek-v3@gb200"))["latency"]
    assert mixed["attn"] == h200["attn"] and mixed["ffn"] == gb200["ffn"]
    link = np.maximum(h200["comm"]["time_us"], gb200["comm"]["time_us"])
    assert mixed["comm"]["time_us"] == link.tolist()
    assert h200["comm"]["time_us"] != gb200["comm"]["time_us"]  # the max has work to do


@needs_extra
@pytest.mark.parametrize(
    "flags, field",
    [
        (["--model", "foo/bar", "--system", "h200_sxm"], "field model"),
        (["--model", "deepseek-ai/DeepSeek-V3", "--system", "h999"], "field system"),
        (["--model", "deepseek-ai/DeepSeek-V3", "--system", "b60"], "field framework"),
        (["--model", "deepseek-ai/DeepSeek-V3", "--system", "h200_sxm", "--ffn-gpus", "12"],
         "field ffn_gpus"),
    ],
)  # fmt: skip
def test_build_names_the_bad_flag_before_work(flags, field, tmp_path, capsys):
    assert main(["hardware", "build", *flags, "--out", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err
    assert not (tmp_path / "x.toml").exists()

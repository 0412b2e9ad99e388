"""`afd-jax plan` (and the hardware flags of `provision` / `optimize`): the --json schema, the
figure files, the text report, bad flags -> one line on stderr and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from afd_jax import plan
from afd_jax.cli import main
from afd_jax.model.hardware import kv_capacity_tokens, read_hardware

DATA = Path(__file__).parent / "data"
SMALL = str(DATA / "plan-small.toml")
WORKLOAD = "uniform:prompt=0..20,decode=1..10"
BASE = ["plan", "--workload", WORKLOAD, "--latency", SMALL, "--batches", "4,8,16,32"]
BASE += ["--r-max", "12", "--no-elasticities"]
# the --json "front" schema of the task: {r, batch, tokens_per_s_per_gpu, tokens_per_dollar,
# tpot_p50_ms, tpot_p99_ms, regime}
FRONT_KEYS = set("r batch tokens_per_s_per_gpu tokens_per_dollar tpot_p50_ms tpot_p99_ms".split())
FRONT_KEYS.add("regime")


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_schema_and_library_agree(capsys):
    code, out, _ = _run(capsys, [*BASE, "--tpot-p99", "0.5", "--budget-gpus", "12", "--json"])
    assert code == 0
    obj = json.loads(out)
    for key in ("front", "best", "ranked", "workload", "latency_source", "hardware", "r_values"):
        assert key in obj
    assert (obj["tpot_p99_slo_ms"], obj["budget_gpus"], obj["objective"]) == (0.5, 12, "per_gpu")
    assert obj["batches"] == [4, 8, 16, 32] and obj["r_values"] == list(range(1, 13))
    assert obj["front"] and all(set(p) == FRONT_KEYS for p in obj["front"])
    best = obj["best"]
    assert best["tpot_p99_ms"] <= 0.5 and best["gpus"] <= 12 and best["violates"] == []
    for key in ("cost_per_million_tokens", "joules_per_token", "barrier_share", "regime"):
        assert key in best
    assert all({"regime", "barrier_share"} <= set(p) for p in obj["ranked"])
    res = plan(
        WORKLOAD, SMALL, hardware=read_hardware(SMALL), batches=(4, 8, 16, 32), r_max=12,
        tpot_p99_ms=0.5, budget_gpus=12, elasticities=False,
    )  # fmt: skip
    assert best == res.best
    assert obj["front"] == [{k: p[k] for k in FRONT_KEYS} for p in res.front]
    assert obj["kv_batch_limit"] == res.kv_batch_limit


def test_text_report_and_figure(capsys, tmp_path):
    fig = tmp_path / "front.png"
    code, out, err = _run(capsys, [*BASE, "--r-values", "2,4,8", "--plot", str(fig)])
    assert code == 0
    assert "Pareto front" in out and "best          r = " in out and "KV capacity" in out
    assert "top " in out and "barrier" in out
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000
    assert f"wrote {fig}" in err


def test_hardware_flags_override_the_file(capsys):
    argv = [*BASE, "--json", "--attn-gpus", "2", "--price-attn", "1.5", "--power-ffn", "500"]
    code, out, err = _run(capsys, argv)
    hw = json.loads(out)["hardware"]
    assert code == 0 and (hw["attn_gpus"], hw["ffn_gpus"]) == (2, 2)
    assert (hw["price_attn_usd_per_gpu_hour"], hw["power_ffn_w"]) == (1.5, 500.0)
    # the file's stage times are for its own GPU count: said, once (a planner's review)
    warned = [ln for ln in err.splitlines() if "warning: --attn-gpus 2 differs" in ln]
    assert len(warned) == 1 and "the stage times stay those of its hardware" in warned[0]
    code, _, err = _run(capsys, [*BASE, "--json", "--price-attn", "1.5"])
    assert code == 0 and "differs" not in err


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--r-values", "2,x"], "field r_values"),
        (["--r-values", "2,40"], "field r_values"),
        (["--r-step", "0"], "field r_step"),
        (["--batches", "8,-1"], "field batches"),
        (["--tpot-p99", "-1"], "field tpot_p99"),
        (["--budget-gpus", "0"], "field budget_gpus"),
        (["--kv-reserved", "1.5"], "field kv_reserved"),
        (["--kv-epsilon", "2"], "field kv_epsilon"),
        (["--tornado", "t.png"], "field tornado"),
        (["--attn-gpus", "0"], "field attn_gpus"),
        (["--price-ffn", "-2"], "field price_ffn"),
    ],
)
def test_bad_flags_exit_2(capsys, extra, needle):
    code, out, err = _run(capsys, [*BASE, *extra])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_missing_gpu_counts_and_prices(capsys, tmp_path):
    code, _, err = _run(capsys, ["plan", "--workload", WORKLOAD, "--latency", "paper-v1"])
    assert code == 2 and "field attn_gpus" in err and "[hardware]" in err
    argv = ["plan", "--workload", WORKLOAD, "--latency", "paper-v1", "--attn-gpus", "1"]
    argv += ["--ffn-gpus", "1", "--objective", "per_dollar", "--no-elasticities"]
    code, _, err = _run(capsys, argv)
    assert code == 2 and "field price" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(SMALL).read_text().replace("[costs]", "[costs]\nbogus = 1"))
    code, _, err = _run(capsys, ["plan", "--workload", WORKLOAD, "--latency", str(bad)])
    assert code == 2 and f"{bad}: field costs: unknown key 'bogus'" in err


def test_provision_r_values_and_user_terms(capsys):
    argv = ["provision", "--workload", WORKLOAD, "--latency", SMALL, "-B", "8", "--r-max", "12"]
    code, out, _ = _run(capsys, [*argv, "--r-step", "3", "--json"])
    obj = json.loads(out)
    assert code == 0 and obj["r_values"] == [3, 6, 9, 12]
    assert all(r in (3, 6, 9, 12) for r in obj["r_best"].values())
    assert obj["user_terms"]["gpus"] == obj["r_best"]["exact"] + 2
    code, out, _ = _run(capsys, argv)
    assert code == 0 and "tokens/s per GPU" in out and "USD per million output tokens" in out
    with pytest.raises(SystemExit) as exc:  # argparse: mutually exclusive flags
        main([*argv, "--r-values", "3", "--r-step", "3"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_elasticities_and_tornado(capsys, tmp_path):
    """The full report: elasticities (rounded) in text and JSON, and the tornado figure."""
    fig = tmp_path / "tornado.svg"
    argv = [a for a in BASE if a != "--no-elasticities"]
    code, out, _ = _run(capsys, [*argv, "--json", "--tornado", str(fig)])
    obj = json.loads(out)
    assert code == 0 and set(obj["elasticities"]) == {"r_star", "throughput"}
    el = obj["elasticities"]["throughput"]
    assert sum(el[k] for k in ("attn_time", "ffn_time", "comm_time")) == pytest.approx(-1, abs=0.02)
    assert fig.read_text().lstrip().startswith("<?xml") and obj["tornado"] == str(fig)


@pytest.mark.slow
def test_optimize_r_values_and_elasticities(capsys, tmp_path):
    argv = ["optimize", "--workload", WORKLOAD, "--latency", SMALL, "-B", "8", "--r-max", "12"]
    code, out, _ = _run(capsys, [*argv, "--r-values", "2,5,9", "--kv-capacity", "auto", "--json"])
    obj = json.loads(out)
    capacity = kv_capacity_tokens(read_hardware(SMALL), 0.1)
    assert obj["constraints"]["kv_capacity"]["limit"] == pytest.approx(capacity, rel=1e-15)
    assert code == 0 and obj["r"] in (2, 5, 9) and obj["constraints"]["r_values"]["limit"] == [
        2, 5, 9,
    ]  # fmt: skip
    assert set(obj["elasticities"]["r_star"]) >= {"theta", "batch", "attn_time", "cost_ffn"}
    fig = tmp_path / "tornado.png"
    code, out, _ = _run(capsys, [*argv, "--tornado", str(fig)])
    assert code == 0 and "elasticities at B = 8" in out and "dr*/dtheta" in out
    assert fig.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--kv-capacity", "lots"], "expected a number or auto"),
        (["--kv-capacity", "-5"], "must be > 0"),
        (["--kv-capacity", "auto", "--latency", "paper-v1"], "auto needs attn_gpus"),
        (["--r-values", "0"], "field r_values"),
    ],
)
def test_optimize_bad_kv_and_r_flags(capsys, extra, needle):
    argv = ["optimize", "--workload", WORKLOAD, "--latency", SMALL, "-B", "8", *extra]
    code, out, err = _run(capsys, argv)
    assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1

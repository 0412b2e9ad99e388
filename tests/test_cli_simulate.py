"""``afd-jax simulate``: the JSON contract and exit status 2 on bad input."""

from __future__ import annotations

import json

import pytest
from conftest import trace_path

from afd_jax.cli import main

KEYS = {
    "r",
    "throughput",
    "ci_low",
    "ci_high",
    "idle_attn",
    "idle_ffn",
    "barrier_share",
    "step_p50",
    "step_p90",
    "step_p99",
}


def _args(**over):
    base = {
        "--workload": str(trace_path("azure_code")),
        "--batch": "4",
        "--r-max": "4",
        "--steps": "256",
        "--replications": "2",
        "--latency": "paper-v1",
    }
    base.update(over)
    out = ["simulate", "--quiet"]
    for k, v in base.items():
        out += [k, v]
    return out


def test_json_output(capsys, tmp_path):
    fig = tmp_path / "sim.png"
    assert main(_args(**{"--kernel": "fast", "--plot": str(fig)}) + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {
        "results",
        "r_best",
        "slot_steps",
        "wall_seconds",
        "slot_steps_per_second",
        "device",
    } <= set(out)
    assert [row["r"] for row in out["results"]] == [1, 2, 3, 4]
    for row in out["results"]:
        assert KEYS <= set(row)
        assert row["ci_low"] <= row["throughput"] <= row["ci_high"]
        assert row["step_p50"] <= row["step_p90"] <= row["step_p99"]
        assert 0.0 <= row["idle_attn"] <= 1.0 and 0.0 <= row["barrier_share"] <= 1.0
    best = max(out["results"], key=lambda row: row["throughput"])["r"]
    assert out["r_best"] == best
    assert out["slot_steps"] == 256 * 2 * 4 * 4
    assert fig.stat().st_size > 0


def test_human_output(capsys):
    assert main(_args(**{"--kernel": "barrier"})) == 0
    text = capsys.readouterr().out
    assert "best r =" in text and "tokens/s/inst" in text


@pytest.mark.parametrize(
    "over",
    [
        {"--batch": "0"},
        {"--steps": "0"},
        {"--workload": "/nonexistent/trace.csv"},
        {"--kernel": "barrier", "--init": "cold"},
        {"--latency": "no-such-preset"},
    ],
)
def test_bad_input_exits_2(capsys, over):
    assert main(_args(**over)) == 2
    err = capsys.readouterr().err
    assert err.startswith("afd-jax simulate: error:") and err.count("\n") == 1

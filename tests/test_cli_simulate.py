"""``afd-jax simulate``: the JSON contract and exit status 2 on bad input."""

from __future__ import annotations

import json

import numpy as np
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
    assert out["throughput_unit"] == "tokens/s per instance"
    assert fig.stat().st_size > 0


def test_human_output(capsys):
    assert main(_args(**{"--kernel": "barrier"})) == 0
    text = capsys.readouterr().out
    assert "best r =" in text and "tokens/s/inst" in text
    # with other costs the throughput is per unit cost, and said so (a planner's review)
    assert main(_args(**{"--kernel": "barrier", "--cost-attn": "2"})) == 0
    assert "tokens/s/cost" in capsys.readouterr().out
    assert main(_args(**{"--kernel": "barrier", "--cost-attn": "2"}) + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["throughput_unit"] == "tokens/s per unit cost"


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


# ------------------------------------------------ --window completions (the pool simulator)

# Attention-bound at these sizes (loads of thousands of tokens): the barrier, the idle
# fractions and the step-time spread are all non-trivial.
POOL_LAT = {
    "--alpha-attn": "0.02",
    "--beta-attn": "15",
    "--alpha-ffn": "2",
    "--beta-ffn": "30",
    "--alpha-comm": "0.5",
    "--beta-comm": "5",
}
POOL_ARGS = {
    "--batch": "2",
    "--r-max": "3",
    "--replications": "3",
    "--window": "completions",
    "--requests": "40",
    "--completion-fraction": "0.75",
    "--seed": "5",
}


def _pool_args(**over):
    args = _args(**{**POOL_ARGS, **over})
    # drop the steps-window defaults of _args that the completions window refuses
    for flag in ("--steps", "--latency"):
        if flag not in over:
            i = args.index(flag)
            del args[i : i + 2]
    for k, v in POOL_LAT.items():
        args += [k, v]
    return args


def _pool_latency():
    from afd_jax.model.latency_io import resolve_latency

    over = {k[2:].replace("-", "_"): float(v) for k, v in POOL_LAT.items()}
    return resolve_latency(None, overrides=over)


def test_completions_window_json_equals_pool_simulate(capsys):
    from afd_jax.montecarlo.pool import pool_simulate
    from afd_jax.workload.specs import resolve_workload

    assert main(_pool_args() + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"r_best", "slot_steps", "wall_seconds", "slot_steps_per_second", "device"} <= set(out)
    assert out["window"] == {"kind": "completions", "requests": 40, "fraction": 0.75}
    assert out["kernel"] == "pool" and out["init"] == "cold" and out["ffn_tokens"] == "nominal"
    lat, opts = _pool_latency()
    ref = pool_simulate(
        resolve_workload(str(trace_path("azure_code"))),
        lat,
        2,
        [1, 2, 3],
        n_requests=40,
        completion_fraction=0.75,
        replications=3,
        seed=5,
        opts=opts,
        diagnostics=True,
    )
    rows = out["results"]
    assert [row["r"] for row in rows] == [1, 2, 3]
    for i, row in enumerate(rows):
        assert KEYS <= set(row)
        for k in sorted(KEYS - {"r"}):
            assert row[k] == float(getattr(ref, k)[i]), k
        assert row["ci_low"] < row["throughput"] < row["ci_high"]
        assert row["step_p50"] <= row["step_p90"] <= row["step_p99"]
        assert 0 < row["idle_attn"] < 1 and 0 < row["idle_ffn"] < 1
        # one worker has no barrier; more workers wait for the slowest
        assert (row["barrier_share"] == 0) == (row["r"] == 1)
    assert out["r_best"] == ref.r_best
    assert out["slot_steps"] == round(float(np.sum(ref.steps * ref.r)) * 2 * 3)


def test_completions_window_human_output(capsys):
    assert main(_pool_args(**{"--ffn-tokens": "active", "--init": "cold"})) == 0
    text = capsys.readouterr().out
    assert "pool kernel (cold start)" in text and "first 75% of completions" in text
    assert "best r =" in text and "busy" in text


def _reference_pool(prompt, decode, r, batch, lat, target, ffn_tokens):
    """float64 reference of the cold-start finite pool (docs/model.md 6, pipelined, aggregate
    communication): per-step tau, total and largest worker load, t_F; tokens."""
    n = len(prompt)
    slots = r * batch
    req = np.full(slots, -1)
    age = np.zeros(slots, np.int64)
    req[: min(slots, n)] = np.arange(min(slots, n))
    nxt, done, tokens = min(slots, n), 0, 0
    taus, tot, mx, tfs = [], [], [], []
    while done < target and (req >= 0).any():
        active = req >= 0
        load = np.where(active, prompt[np.maximum(req, 0)] + age, 0).reshape(r, batch).sum(1)
        x = float(slots if ffn_tokens == "nominal" else active.sum())
        t_f = lat.alpha_ffn * x + lat.beta_ffn
        t_c = lat.alpha_comm * x + lat.beta_comm
        taus.append(max(lat.alpha_attn * load.max() + lat.beta_attn, t_c, t_f))
        tot.append(float(load.sum()))
        mx.append(float(load.max()))
        tfs.append(t_f)
        tokens += int(active.sum())
        age += active
        for s in range(slots):  # finished slots refill in slot order
            if req[s] >= 0 and age[s] >= decode[req[s]]:
                done += 1
                age[s] = 0
                req[s] = nxt if nxt < n else -1
                nxt = min(nxt + 1, n)
    return tokens, np.array(taus), np.array(tot), np.array(mx), np.array(tfs)


def test_pool_diagnostics_against_float64_reference():
    """Throughput, idle fractions, barrier share and percentiles of pool_simulate(...,
    diagnostics=True) against a float64 re-simulation of the same pools; the diagnostics loop
    gives the same integers as the plain kernel loop."""
    from afd_jax.montecarlo.pool import draw_pools, pool_simulate, tau_range
    from afd_jax.workload.specs import resolve_workload

    w = resolve_workload(str(trace_path("azure_code")))
    lat, opts = _pool_latency()
    batch, n, frac, reps, seed, rs = 2, 30, 0.8, 2, 3, [2, 3]
    target = 24
    kw = dict(n_requests=n, completion_fraction=frac, replications=reps, seed=seed, opts=opts)
    res = pool_simulate(w, lat, batch, rs, ffn_tokens="active", diagnostics=True, **kw)
    plain = pool_simulate(w, lat, batch, rs, ffn_tokens="active", **kw)
    np.testing.assert_array_equal(res.tokens, plain.tokens)
    np.testing.assert_array_equal(res.steps, plain.steps)
    np.testing.assert_allclose(res.throughput, plain.throughput, rtol=1e-6)
    assert plain.idle_attn is None and plain.step_p50 is None
    prompt, decode = (np.asarray(a, np.int64) for a in draw_pools(w, n, reps, seed))
    cost = np.asarray(rs, np.float64) * lat.cost_attn + lat.cost_ffn
    for i, r in enumerate(rs):
        runs = [
            _reference_pool(prompt[p], decode[p], r, batch, lat, target, "active")
            for p in range(reps)
        ]
        tp = [1e6 * tok / (cost[i] * taus.sum()) for tok, taus, *_ in runs]
        np.testing.assert_allclose(res.per_pool_throughput[i], tp, rtol=1e-6)
        taus = np.concatenate([x[1] for x in runs])
        s_tau = taus.sum()
        s_tot = sum(x[2].sum() for x in runs)
        s_max = sum(x[3].sum() for x in runs)
        s_f = sum(x[4].sum() for x in runs)
        idle_a = 1 - (lat.alpha_attn * s_tot + r * lat.beta_attn * len(taus)) / (r * s_tau)
        barrier = lat.alpha_attn * (r * s_max - s_tot) / (r * s_tau)
        # float32 Kahan sums vs float64: 1e-6 relative on the sums
        assert res.idle_attn[i] == pytest.approx(idle_a, abs=1e-5)
        assert res.idle_ffn[i] == pytest.approx(1 - s_f / s_tau, abs=1e-5)
        assert res.barrier_share[i] == pytest.approx(barrier, abs=1e-5)
        assert barrier > 0.01
        # docs/model.md 3 bundle idle: sum_j (tau - t_A,j) + (tau - t_F) over (r + 1) tau
        attn_idle = r * s_tau - (lat.alpha_attn * s_tot + r * lat.beta_attn * len(taus))
        bundle = (attn_idle + (s_tau - s_f)) / ((r + 1) * s_tau)
        assert res.idle_bundle[i] == pytest.approx(bundle, abs=1e-5)
        # histogram percentiles: within two log bins of the exact order statistic
        _, inv_w = tau_range(lat, batch, r, int((prompt + decode - 1).max()), opts)
        pcts = (res.step_p50, res.step_p90, res.step_p99)
        for q, est in zip((0.5, 0.9, 0.99), pcts, strict=True):
            exact = np.quantile(taus, q, method="inverted_cdf")
            assert abs(np.log(est[i]) - np.log(exact)) <= 2 / inv_w, q


@pytest.mark.parametrize(
    "over",
    [
        {"--requests": "0"},
        {"--completion-fraction": "0"},
        {"--completion-fraction": "1.5"},
        {"--init": "stationary"},
        {"--warmup": "10"},
        {"--steps": "100"},
        {"--kernel": "fast"},
        {"--replications": "0"},
    ],
)
def test_completions_window_bad_input_exits_2(capsys, over):
    assert main(_pool_args(**over)) == 2
    err = capsys.readouterr().err
    assert err.startswith("afd-jax simulate: error:") and err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--requests", "--completion-fraction", "--ffn-tokens"])
def test_pool_flags_need_completions_window(capsys, flag):
    value = "nominal" if flag == "--ffn-tokens" else "1"
    assert main(_args(**{flag: value})) == 2
    err = capsys.readouterr().err
    assert "--window completions" in err and err.count("\n") == 1


def test_untrustworthy_interval_is_said_on_stderr_and_in_json(capsys):
    argv = _args(**{"--workload": "geometric:prompt=100,decode=5000", "--batch": "8"})
    argv = [*argv, "--replications", "1", "--steps", "2048", "--kernel", "fast"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "afd-jax simulate: warning: one replication of 2048 steps is shorter than" in err
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["warnings"][0].startswith("one replication of 2048 steps")

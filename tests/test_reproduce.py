"""Tests of the finite-pool cold-start simulator (vs a plain Python event loop) and of the
reproduction: quick mode regenerates the committed CSVs byte for byte."""

from __future__ import annotations

import filecmp
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax.errors import InputError
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.theory import mean_field_optimum
from afd_jax.montecarlo.pool import pool_simulate
from afd_jax.studies.reproduce import REGIMES, regime_latency

ROOT = Path(__file__).resolve().parents[1]


def reference_pool(prompt, decode, r, batch, lat, opts, target, ffn_tokens="nominal"):
    """Plain Python event loop of the paper's v1 simulator: slot j*B+b, requests in pool order,
    refills in slot order. Returns (tokens, steps, completed, elapsed) in float64."""
    n = len(prompt)
    slots = [None] * (r * batch)  # [prompt, decode, age] or None (idle)
    nxt = 0
    for s in range(r * batch):
        if nxt < n:
            slots[s] = [int(prompt[nxt]), int(decode[nxt]), 0]
            nxt += 1
    tokens = steps = completed = 0
    elapsed = 0.0
    while completed < target and any(x is not None for x in slots):
        loads = [
            sum(x[0] + x[2] for x in slots[j * batch : (j + 1) * batch] if x) for j in range(r)
        ]
        busy = [sum(1 for x in slots[j * batch : (j + 1) * batch] if x) for j in range(r)]
        t_attn = lat.alpha_attn * max(loads) + lat.beta_attn
        if ffn_tokens == "nominal":
            xf = r * batch
            xc = r * batch if opts.comm_scaling == "aggregate" else batch
        else:
            xf = sum(busy)
            xc = xf if opts.comm_scaling == "aggregate" else max(busy)
        tf = lat.alpha_ffn * xf + lat.beta_ffn
        tc = lat.alpha_comm * xc + lat.beta_comm
        tau = t_attn + tf + tc if opts.overlap == "serial" else max(t_attn, tf, tc)
        elapsed += tau
        tokens += sum(busy)
        steps += 1
        for s, x in enumerate(slots):
            if x is None:
                continue
            x[2] += 1
            if x[2] == x[1]:
                completed += 1
                if nxt < n:
                    slots[s] = [int(prompt[nxt]), int(decode[nxt]), 0]
                    nxt += 1
                else:
                    slots[s] = None
    return tokens, steps, completed, elapsed


LAT = Latency(0.013, 37.0, 0.61, 95.0, 0.2, 30.0)


@pytest.mark.parametrize(
    "r,batch,n,fraction,opts,ffn",
    [
        (1, 3, 17, 0.8, ModelOptions(comm_scaling="per_worker"), "nominal"),
        (3, 2, 9, 0.8, ModelOptions(), "nominal"),  # r*B < n, drain
        (3, 4, 7, 1.0, ModelOptions(), "active"),  # more slots than requests
        (2, 3, 25, 0.6, ModelOptions(overlap="serial"), "nominal"),
        (4, 2, 30, 0.9, ModelOptions(comm_scaling="per_worker"), "active"),
    ],
)
def test_pool_matches_reference(r, batch, n, fraction, opts, ffn):
    rng = np.random.default_rng(r * 100 + n)
    reps = 3
    prompt = rng.integers(0, 60, size=(reps, n)).astype(np.int32)
    decode = rng.integers(1, 9, size=(reps, n)).astype(np.int32)
    res = pool_simulate(
        None,
        LAT,
        batch,
        [r],
        completion_fraction=fraction,
        opts=opts,
        ffn_tokens=ffn,
        pools=(jnp.asarray(prompt), jnp.asarray(decode)),
        n_requests=None,
    )
    target = math.ceil(fraction * n)
    cost = r + 1.0
    tps = []
    for i in range(reps):
        tok, steps, done, el = reference_pool(
            prompt[i], decode[i], r, batch, LAT, opts, target, ffn
        )
        tps.append(1e6 * tok / (cost * el))
        assert res.per_pool_throughput.shape == (1, reps)
        assert done >= target
    tok_ref = [
        reference_pool(prompt[i], decode[i], r, batch, LAT, opts, target, ffn) for i in range(reps)
    ]
    np.testing.assert_array_equal(res.tokens[0], np.mean([t[0] for t in tok_ref]))
    np.testing.assert_array_equal(res.steps[0], np.mean([t[1] for t in tok_ref]))
    # float32 Kahan-summed tau vs float64: relative 1e-6
    np.testing.assert_allclose(res.elapsed_us[0], np.mean([t[3] for t in tok_ref]), rtol=1e-6)
    np.testing.assert_allclose(res.per_pool_throughput[0], tps, rtol=1e-6)


def test_pool_prefix_and_padding_consistency():
    """A pool of n given as the prefix of a longer array, and r inside a padded bucket,
    equal the exact-size run (masking is invisible)."""
    rng = np.random.default_rng(7)
    prompt = rng.integers(0, 40, size=(2, 40)).astype(np.int32)
    decode = rng.integers(1, 12, size=(2, 40)).astype(np.int32)
    opts = ModelOptions()
    full = pool_simulate(None, LAT, 3, [3, 5], pools=(prompt, decode), n_requests=25, opts=opts)
    cut = pool_simulate(
        None, LAT, 3, [3, 5], pools=(prompt[:, :25], decode[:, :25]), n_requests=None, opts=opts
    )
    np.testing.assert_array_equal(full.tokens, cut.tokens)
    np.testing.assert_array_equal(full.elapsed_us, cut.elapsed_us)
    for i, r in enumerate((3, 5)):
        ref = reference_pool(prompt[0, :25], decode[0, :25], r, 3, LAT, opts, 20)
        assert full.per_pool_throughput[i, 0] == pytest.approx(
            1e6 * ref[0] / ((r + 1) * ref[3]), rel=1e-6
        )


def test_pool_drain_lowers_throughput_only_with_nominal_ffn():
    """Large r B / N: with nominal FFN tokens the drain costs throughput (busy fraction < 1);
    one slot and a long pool: throughput equals tokens/time of a single always-busy slot."""
    d = np.full((1, 64), 5, np.int32)
    p = np.zeros((1, 64), np.int32)
    lat = Latency(0.0, 100.0, 0.0, 10.0, 0.0, 10.0)  # tau = 100 every step
    res = pool_simulate(None, lat, 1, [1], pools=(p, d), n_requests=None, completion_fraction=1.0)
    assert res.throughput[0] == pytest.approx(1e6 / (2 * 100.0))
    assert res.active_fraction[0] == 1.0


def test_pool_bad_input():
    with pytest.raises(InputError):
        pool_simulate(
            None, LAT, 2, [0], pools=(np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32))
        )
    with pytest.raises(InputError):
        pool_simulate(
            None,
            LAT,
            2,
            [1],
            completion_fraction=0.0,
            pools=(np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32)),
        )
    with pytest.raises(InputError):
        pool_simulate(
            None,
            LAT,
            2,
            [1],
            pools=(np.zeros((1, 4), np.int32), np.zeros((1, 4), np.int32)),
            n_requests=None,
        )


@pytest.mark.parametrize("batch", [32, 256])
@pytest.mark.parametrize("theta", [599.0, 13125.4])
def test_regime_latency_lands_in_regime(theta, batch):
    for regime in REGIMES:
        lat, opts = regime_latency(theta, batch, regime)
        mo = mean_field_optimum(lat, theta, batch, opts, 64)
        assert mo.regime == regime
    lat, opts = regime_latency(theta, batch, "attention")
    assert mean_field_optimum(lat, theta, batch, opts, 64).r_continuous == pytest.approx(9.3)


def test_quick_mode_regenerates_committed_csvs(tmp_path):
    from afd_jax.studies.reproduce import run_reproduction

    committed = ROOT / "experiments" / "results" / "quick"
    run_reproduction(tmp_path, quick=True, seed=0, plots=False)
    names = sorted(p.name for p in committed.glob("*.csv"))
    assert names == sorted(
        ["v1_curves.csv", "v1_summary.csv", "v1_drain.csv", "workloads.csv", "workload_curves.csv"]
    )
    for name in names:
        assert filecmp.cmp(tmp_path / name, committed / name, shallow=False), name
    # rerun resumes: no part is recomputed and the tables stay identical
    run_reproduction(tmp_path, quick=True, seed=0, plots=False)
    for name in names:
        assert filecmp.cmp(tmp_path / name, committed / name, shallow=False), name

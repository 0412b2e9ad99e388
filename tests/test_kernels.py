"""Monte Carlo kernels against the exact steady state and against each other.

Statistical tests: fixed seeds, tolerance 4 Monte Carlo standard errors (plus float32 round-off
where the SE is 0). The reference E[tau(r)] is the exact FFT computation (afd_jax.exact) of a
slot-load law pi built here independently from the request table by difference arrays.
All three workloads share one padded alias-table shape, so each kernel compiles once.
"""

from __future__ import annotations

import numpy as np
import pytest
from afd_jax.kernels import sampling as KS
from conftest import trace_path

from afd_jax.exact import exact_step_times
from afd_jax.latency import Latency, ModelOptions
from afd_jax.simulate import simulate
from afd_jax.slotload import SlotLoadPMF
from afd_jax.traces import load_trace

B, R_MAX, TABLE = 8, 32, 1 << 18


def _table(name):
    if name == "geometric":  # P ~ Geometric on {0..700} mean ~60, D ~ Geometric on {1..250}
        a, q = 60 / 61, 1 / 20
        p_vals, d_vals = np.arange(701), np.arange(1, 251)
        wp, wd = (1 - a) * a**p_vals, q * (1 - q) ** (d_vals - 1)
        pp, dd = np.meshgrid(p_vals, d_vals, indexing="ij")
        return pp.ravel(), dd.ravel(), np.outer(wp, wd).ravel()
    w = load_trace(trace_path(name))
    keep = w.decode > 0
    return w.prompt[keep], w.decode[keep], np.ones(int(keep.sum()))


def _slot_pmf(p, d, w):
    """pi(l) = sum_k w_k [p_k <= l < p_k + d_k] / sum_k w_k d_k (MODEL.md 4), float64."""
    diff = np.zeros(int((p + d).max()) + 1)
    np.add.at(diff, p, w)
    np.add.at(diff, p + d, -w)
    return SlotLoadPMF(start=0, width=1, pmf=np.cumsum(diff)[:-1] / np.dot(w, d))


def _theta(p, d, w):
    return float(np.dot(w, d * p + d * (d - 1) / 2) / np.dot(w, d))


def _latency(theta):
    # mean Attention time 120 us; the FFN line reaches it at r = 32, so the barrier max binds
    # for every r (where tau = G almost surely, rare excursions make replication means too
    # skewed for a t-based 4 SE test)
    return Latency(
        alpha_attn=100.0 / (B * theta),
        beta_attn=20.0,
        alpha_ffn=0.3125,
        beta_ffn=40.0,
        alpha_comm=0.01,
        beta_comm=5.0,
    )


@pytest.fixture(scope="module", params=["azure_conv", "azure_code", "geometric"])
def case(request):
    p, d, w = _table(request.param)
    sampler = KS.alias_sampler(p, d, w, size=TABLE)
    theta = _theta(p, d, w)
    lat = _latency(theta)
    exact = exact_step_times(_slot_pmf(p, d, w), lat, B, R_MAX, ModelOptions())
    return dict(
        sampler=sampler,
        max_load=int((p + d - 1).max()),
        lat=lat,
        exact=exact,
        theta=theta,
        name=request.param,
    )


RUNS = {
    "barrier": dict(steps=4096, replications=2),
    "trajectory": dict(steps=256, replications=32),
    "fast": dict(steps=256, replications=32),
}


@pytest.mark.parametrize("kernel", ["barrier", "trajectory", "fast"])
def test_steady_state_matches_exact(case, kernel):
    res = simulate(
        case["sampler"],
        case["lat"],
        B,
        R_MAX,
        kernel=kernel,
        seed=3,
        max_slot_load=case["max_load"],
        **RUNS[kernel],
    )
    err = np.abs(res.mean_tau - case["exact"])
    tol = 4.0 * res.se_tau + 1e-5 * case["exact"]
    assert np.all(err <= tol), (case["name"], kernel, np.max(err / tol))
    # the comparison has power: the barrier moves tau by many SEs between r = 1 and r = 8
    assert case["exact"][7] - case["exact"][0] > 10 * res.se_tau[7]
    # FFN idle fraction 1 - t_F / E[tau]: error propagated from the SE of E[tau]
    lat, ex = case["lat"], case["exact"]
    t_ffn = lat.alpha_ffn * B * np.arange(1, R_MAX + 1) + lat.beta_ffn
    err_idle = np.abs(res.idle_ffn - (1.0 - t_ffn / ex))
    assert np.all(err_idle <= 4.0 * t_ffn * res.se_tau / ex**2 + 1e-5)
    assert res.barrier_share[0] == pytest.approx(0.0, abs=1e-6)  # one worker never waits
    # slot load equals theta (length-biased mean) within MC error
    assert abs(res.mean_slot_load - case["theta"]) <= 4.0 * res.se_slot_load

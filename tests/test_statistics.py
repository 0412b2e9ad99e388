"""Workload statistics: docs/model.md 7 table, slot-step expansion, closed forms, CI coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import trace_path

from afd_jax.errors import InputError
from afd_jax.workload.statistics import (
    theta_confidence_interval,
    theta_interval_note,
    trace_stats,
    workload_stats,
)
from afd_jax.workload.traces import load_trace

# docs/model.md section 7: rows, mean P, mean D, E[P]+E[D], theta, sqrt(v) (printed to 0.1).
TABLE7 = {
    "azure_conv": (19366, 1154.7, 211.1, 1365.8, 1226.5, 712.9),
    "azure_code": (8819, 2047.8, 27.9, 2075.7, 2130.4, 1951.6),
    "mooncake": (12031, 12035.1, 342.6, 12377.7, 13125.4, 16516.4),
}


@pytest.mark.parametrize("name", sorted(TABLE7))
def test_model_md_table7(name):
    rows, mp, md, naive, theta, sd = TABLE7[name]
    s = workload_stats(load_trace(trace_path(name)))
    assert s.n_requests == rows
    assert s.n_zero_decode == 0
    got = (s.mean_prompt, s.mean_decode, s.naive_mean_sum, s.theta, s.slot_std)
    for g, want in zip(got, (mp, md, naive, theta, sd), strict=True):
        assert round(g, 1) == pytest.approx(want, abs=1e-9), (name, got)


def expanded_history(prompt, decode):
    """Every slot-step load P_i + k, k = 0..D_i-1, listed explicitly."""
    return np.array(
        [p + k for p, d in zip(prompt, decode, strict=True) for k in range(d)], dtype=np.float64
    )


def random_small_traces(count=200, seed=0):
    """Seeded random small traces (1-30 rows, P in 0..300, D in 0..40 with some D = 0 rows),
    each with at least one D > 0."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(1, 31))
        prompt = rng.integers(0, 301, size=n)
        decode = rng.integers(0, 41, size=n) * (rng.random(n) > 0.2)
        if not np.any(decode > 0):
            decode[rng.integers(0, n)] = int(rng.integers(1, 41))
        yield prompt.astype(np.int64), decode.astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1])
def test_estimators_equal_expanded_history(seed):
    for prompt, decode in random_small_traces(seed=seed):
        _check_against_history(prompt, decode)


def _check_against_history(prompt, decode):
    hist = expanded_history(prompt, decode)
    s = trace_stats(prompt, decode)
    np.testing.assert_allclose(s.theta, hist.mean(), rtol=1e-12)
    np.testing.assert_allclose(s.slot_var, hist.var(), rtol=1e-9, atol=1e-9)
    assert s.n_requests == prompt.size
    assert s.n_zero_decode == int(np.sum(decode == 0))
    np.testing.assert_allclose(s.mean_prompt, prompt.mean(), rtol=1e-12)
    np.testing.assert_allclose(s.mean_decode, decode.mean(), rtol=1e-12)
    # docs/model.md 4's raw-moment form of v agrees with the centred form used in the code.
    p, d = prompt.astype(float), decode.astype(float)
    m2 = np.sum(d * p**2 + p * d * (d - 1) + d * (d - 1) * (2 * d - 1) / 6) / d.sum()
    np.testing.assert_allclose(s.slot_var, m2 - s.theta**2, rtol=1e-9, atol=1e-6)


def test_small_example_by_hand():
    # loads: 10, 11 | (D=0 row: nothing) | 0  -> theta = 7, v = ((3)^2 + 4^2 + 7^2)/3
    s = trace_stats([10, 99, 0], [2, 0, 1])
    assert s.theta == 7.0
    assert s.slot_var == pytest.approx((9 + 16 + 49) / 3)
    assert s.n_zero_decode == 1
    assert s.mean_prompt == pytest.approx(109 / 3)  # all rows, D = 0 included
    assert s.mean_decode == 1.0
    assert s.naive_mean_sum == pytest.approx(109 / 3 + 1)
    # correlation over the rows with D > 0 only: two points, P and D both increase together
    assert s.corr_prompt_decode == pytest.approx(1.0)


def test_fixed_decode_closed_form():
    # fixed D = d: theta = E[P] + (d-1)/2 exactly, v = Var(P) + (d^2-1)/12.
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, 5000, size=1000)
    decode = np.full(1000, 64)
    s = trace_stats(prompt, decode)
    assert s.theta == pytest.approx(prompt.mean() + 63 / 2, rel=1e-13)
    assert s.slot_var == pytest.approx(prompt.var() + (64**2 - 1) / 12, rel=1e-12)


def test_bad_arrays():
    with pytest.raises(InputError, match="empty"):
        trace_stats([], [])
    with pytest.raises(InputError, match="every decode length is 0"):
        trace_stats([1, 2], [0, 0])
    with pytest.raises(InputError, match="level"):
        theta_confidence_interval([1, 2], [1, 2], level=1.5)
    with pytest.raises(InputError, match="CI method"):
        theta_confidence_interval([1, 2], [1, 2], method="jackknife")


# ------------------------------------------------------------------ confidence interval


def geometric_trace(rng, n, q, p):
    """P geometric on {0,1,..} (mean (1-q)/q), D geometric on {1,2,..} (mean 1/p), independent:
    theta = E[P] + (1-p)/p (docs/model.md 4)."""
    return rng.geometric(q, n) - 1, rng.geometric(p, n)


Q, PD = 0.02, 0.1
THETA_GEOM = (1 - Q) / Q + (1 - PD) / PD  # 49 + 9 = 58


def _coverage(method, n, reps, n_boot, level=0.95, seed=11):
    rng = np.random.default_rng(seed)
    hits = 0
    for rep in range(reps):
        prompt, decode = geometric_trace(rng, n, Q, PD)
        lo, hi = theta_confidence_interval(
            prompt, decode, level=level, method=method, n_boot=n_boot, seed=rep
        )
        hits += lo <= THETA_GEOM <= hi
    return hits / reps


def test_delta_ci_coverage():
    reps, level = 1000, 0.95
    cover = _coverage("delta", n=2000, reps=reps, n_boot=0, level=level)
    bound = 4 * math.sqrt(level * (1 - level) / reps)  # 4 binomial standard errors
    assert abs(cover - level) <= bound, cover


def test_bootstrap_ci_coverage():
    reps, level = 200, 0.9
    cover = _coverage("bootstrap", n=500, reps=reps, n_boot=300, level=level)
    bound = 4 * math.sqrt(level * (1 - level) / reps)
    assert abs(cover - level) <= bound, cover


def test_ci_properties():
    rng = np.random.default_rng(5)
    prompt, decode = geometric_trace(rng, 3000, Q, PD)
    theta = trace_stats(prompt, decode).theta
    lo, hi = theta_confidence_interval(prompt, decode)
    assert lo < theta < hi
    lo99, hi99 = theta_confidence_interval(prompt, decode, level=0.99)
    assert lo99 < lo and hi < hi99
    b1 = theta_confidence_interval(prompt, decode, method="bootstrap", n_boot=500, seed=1)
    assert b1 == theta_confidence_interval(prompt, decode, method="bootstrap", n_boot=500, seed=1)
    assert b1 != theta_confidence_interval(prompt, decode, method="bootstrap", n_boot=500, seed=2)
    # Bootstrap and delta half-widths agree to within bootstrap noise (~10 % at 500 resamples).
    assert (b1[1] - b1[0]) == pytest.approx(hi - lo, rel=0.15)
    # Zero-decode rows are sampling units too: appending them keeps theta, widens nothing much.
    p0 = np.concatenate([prompt, [7, 8]])
    d0 = np.concatenate([decode, [0, 0]])
    assert trace_stats(p0, d0).theta == theta


def test_theta_interval_note_names_a_zero_width_interval():
    """Issue 13 class 7: a zero-width interval never goes unexplained."""
    lo, hi = theta_confidence_interval([100], [20])
    assert lo == hi
    assert "only 1 request row" in theta_interval_note([20], lo, hi)
    lo, hi = theta_confidence_interval([100, 7], [20, 0])  # the D = 0 row holds no slot
    assert lo == hi and "only 1 request row" in theta_interval_note([20, 0], lo, hi)
    lo, hi = theta_confidence_interval([5, 5, 5], [4, 4, 4])  # identical rows: se = 0
    assert lo == hi and "no spread" in theta_interval_note([4, 4, 4], lo, hi)
    lo, hi = theta_confidence_interval([5, 50, 9], [4, 3, 8])
    assert hi > lo and theta_interval_note([4, 3, 8], lo, hi) is None

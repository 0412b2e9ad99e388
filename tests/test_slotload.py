"""Stationary slot-load law pi: mean/var equal theta/v (trace: the expanded slot-step history;
parametric: parametric_stats), binning keeps the mean and adds <= width^2/4 variance."""

from __future__ import annotations

import numpy as np
import pytest

from afd_jax.errors import InputError
from afd_jax.workload import families as fam
from afd_jax.workload import slotload
from afd_jax.workload.containers import TraceWorkload
from afd_jax.workload.slotload import MAX_LATTICE, coarsen, slot_load_pmf
from afd_jax.workload.statistics import trace_stats


def _random_trace(seed, n=300):
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 400, n)
    d = rng.geometric(1 / 40, n) - rng.integers(0, 2, n)  # some zero-decode rows
    return TraceWorkload("t", p.astype(np.int64), d.astype(np.int64))


@pytest.mark.parametrize("seed", [0, 1])
def test_trace_pi_is_expanded_history(seed):
    w = _random_trace(seed)
    loads = np.concatenate([p + np.arange(d) for p, d in zip(w.prompt, w.decode, strict=True)])
    pi = slot_load_pmf(w)
    assert pi.width == 1
    hist = np.bincount(loads - pi.start, minlength=pi.pmf.size) / loads.size
    np.testing.assert_allclose(pi.pmf, hist, atol=1e-15)
    assert pi.mean() == pytest.approx(loads.mean(), rel=1e-13)
    assert pi.var() == pytest.approx(loads.var(), rel=1e-12)
    shifted = slot_load_pmf(w, load_offset=1)
    assert shifted.start == pi.start + 1 and np.array_equal(shifted.pmf, pi.pmf)


WORKLOADS = {
    "paper-v1": fam.independent(fam.geometric(100.0, min=0), fam.geometric(500.0)),
    "copula": fam.copula(
        fam.lognormal(0.9, median=700, lo=0, hi=8000),
        fam.lognormal(0.8, median=120, lo=1, hi=1500),
        0.45,
    ),
    "mixture": fam.mixture(
        [
            (0.3, fam.independent(fam.deterministic(5), fam.uniform(1, 10))),
            (0.7, fam.copula(fam.zipf(1.2, hi=3000), fam.geometric(50.0), -0.4)),
        ]
    ),
}


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_parametric_pi_moments(name):
    w = WORKLOADS[name]
    s = fam.parametric_stats(w)
    pi = slot_load_pmf(w)
    assert pi.width == 1 and pi.pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert pi.mean() == pytest.approx(s.theta, rel=1e-10)
    assert pi.var() == pytest.approx(s.slot_var, rel=1e-9)
    binned = slot_load_pmf(w, max_bins=257)
    assert binned.pmf.size <= 257 and binned.width > 1
    assert binned.mean() == pytest.approx(pi.mean(), rel=1e-12)
    extra = binned.var() - pi.var()
    assert -1e-9 * pi.var() <= extra <= binned.width**2 / 4 + 1e-9 * pi.var()


def test_independent_pi_closed_form_deterministic_decode():
    # P uniform on {0..9}, D = 3: pi(l) = Pr(l-2 <= P <= l) / 3
    w = fam.independent(fam.uniform(0, 9), fam.deterministic(3))
    pi = slot_load_pmf(w)
    ref = np.array([sum(0.1 for p in range(10) if p <= lv <= p + 2) / 3 for lv in range(12)])
    assert pi.start == 0
    np.testing.assert_allclose(pi.pmf, ref, atol=1e-15)


def test_coarsen_exact_small():
    pmf = np.array([0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0])  # support 10..16
    out = coarsen(10, pmf, max_bins=4)  # width 2: lattice 10, 12, 14, 16
    assert out.width == 2 and out.start == 10
    np.testing.assert_allclose(out.pmf, [0.1 + 0.1, 0.1 + 0.3 + 0.2, 0.2, 0.0][: out.pmf.size])
    x = 10 + np.arange(7.0)
    assert out.mean() == pytest.approx(pmf @ x)


# ------------------------------------------------- memory is bounded before allocating (issue 13)


def test_wide_trace_is_binned_without_the_unit_lattice():
    """A row with P = 1e12 made a 7 TiB bincount; now pi goes straight to <= max_bins points."""
    w = TraceWorkload("wide", np.array([1, 5, 10**12]), np.array([20, 200, 3]))
    pi = slot_load_pmf(w, max_bins=4096)
    assert pi.pmf.size <= 4096 and pi.width > 1
    assert pi.pmf.sum() == pytest.approx(1.0, abs=1e-12) and np.all(pi.pmf >= 0)
    assert pi.mean() == pytest.approx(trace_stats(w.prompt, w.decode).theta, rel=1e-9)
    shifted = slot_load_pmf(w, load_offset=1, max_bins=4096)
    assert shifted.start == pi.start + 1 and shifted.width == pi.width


@pytest.mark.parametrize("seed", range(6))
def test_direct_coarse_path_equals_coarsen(monkeypatch, seed):
    """The direct coarse binning gives coarsen()'s masses (rounding only) on random traces."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    p = rng.integers(0, int(rng.integers(1, 5000)), n)
    d = rng.integers(0, int(rng.integers(2, 800)), n)
    d[0] = max(d[0], 1)
    w = TraceWorkload("t", p.astype(np.int64), d.astype(np.int64))
    max_bins = int(rng.integers(2, 200))
    ref = slot_load_pmf(w, max_bins=max_bins)
    monkeypatch.setattr(slotload, "MAX_LATTICE", max_bins)  # force the direct path
    got = slot_load_pmf(w, max_bins=max_bins)
    assert (got.start, got.width, got.pmf.size) == (ref.start, ref.width, ref.pmf.size)
    np.testing.assert_allclose(got.pmf, ref.pmf, rtol=0, atol=1e-12)


def test_lattice_over_the_limit_is_an_input_error():
    wide = TraceWorkload("wide", np.array([0, 10**12]), np.array([1, 1]))
    with pytest.raises(InputError, match="--slot-bins") as info:
        slot_load_pmf(wide, max_bins=MAX_LATTICE + 1)
    assert info.value.field == "slot_bins" and f"{MAX_LATTICE:,}" in str(info.value)
    far = fam.mixture(
        [
            (0.5, fam.independent(fam.deterministic(0), fam.deterministic(1))),
            (0.5, fam.independent(fam.deterministic(10**12), fam.deterministic(1))),
        ],
        name="far",
    )
    with pytest.raises(InputError, match="lattice points") as info:
        slot_load_pmf(far)
    assert info.value.field == "workload" and f"{MAX_LATTICE:,}" in str(info.value)

"""Parametric families: exact theta / v against closed forms, a brute-force bivariate-normal
reference, and large-sample estimates from the JAX samplers (tolerance: 5 Monte Carlo SE)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from afd_jax.errors import InputError
from afd_jax.kernels import CopulaSampler, sample_requests
from afd_jax.montecarlo.samplers import make_sampler
from afd_jax.workload import families as fam
from afd_jax.workload.specs import list_presets, resolve_workload


def _stats_from_joint(pv, dv, joint):
    """theta, v, corr from an explicit joint pmf matrix joint[i, j] = Pr(P=pv[i], D=dv[j])."""
    P, D = np.meshgrid(pv.astype(float), dv.astype(float), indexing="ij")
    ed = (joint * D).sum()
    theta = (joint * (D * P + D * (D - 1) / 2)).sum() / ed
    second = (joint * (D * P**2 + P * D * (D - 1) + D * (D - 1) * (2 * D - 1) / 6)).sum() / ed
    return theta, second - theta**2


def test_geometric_closed_form_paper_v1():
    w = resolve_workload("paper-v1")
    s = fam.parametric_stats(w)
    assert s.theta == pytest.approx(599.0, rel=1e-10, abs=0)
    assert s.mean_prompt == pytest.approx(100.0, rel=1e-10)
    assert s.mean_decode == pytest.approx(500.0, rel=1e-10)
    # v for independent P, geometric D: Var P + Var_pi(age) + ..., check against the
    # explicit formula E[D P^2 + P D(D-1) + D(D-1)(2D-1)/6]/E[D] - theta^2
    p = 1 / 500
    ed, ed2, ed3 = 1 / p, (2 - p) / p**2, (6 - 6 * p + p * p) / p**3
    q = 1 / 101  # prompt geometric on {0,..}: mean (1-q)/q = 100
    ep, ep2 = (1 - q) / q, (1 - q) * (2 - q) / q**2
    second = (ed * ep2 + ep * (ed2 - ed) + (2 * ed3 - 3 * ed2 + ed) / 6) / ed
    assert s.slot_var == pytest.approx(second - 599.0**2, rel=1e-9)


@pytest.mark.parametrize("mean_d", [2.0, 37.5])
def test_geometric_decode_theta(mean_d):
    w = fam.independent(fam.uniform(3, 40), fam.geometric(mean_d))
    p = 1 / mean_d
    assert fam.parametric_stats(w).theta == pytest.approx(21.5 + (1 - p) / p, rel=1e-10)


def test_deterministic_decode_theta():
    w = fam.independent(fam.geometric(30.0, min=0), fam.deterministic(11))
    s = fam.parametric_stats(w)
    assert s.theta == pytest.approx(30.0 + 5.0, rel=1e-10)
    # with D fixed, v = Var P + Var(uniform age on 0..d-1) = 30*31 + (d^2-1)/12
    assert s.slot_var == pytest.approx(30 * 31 + (11**2 - 1) / 12, rel=1e-9)


def test_marginal_means():
    assert fam.geometric(7.0, min=0).mean() == pytest.approx(7.0, rel=1e-12)
    assert fam.uniform(4, 10).mean() == pytest.approx(7.0)
    m = fam.lognormal(0.5, mean=200.0, lo=0, hi=None)
    assert m.mean() == pytest.approx(200.0, rel=2e-4)  # rounding to integers: O(1/mean^2)
    z = fam.zipf(1.5, hi=50)
    k = np.arange(1, 51.0)
    assert z.mean() == pytest.approx((k**-0.5).sum() / (k**-1.5).sum())
    with pytest.raises(InputError):
        fam.geometric(0.5, min=1)


@pytest.mark.parametrize("rank_corr", [0.6, -0.35])
def test_copula_matches_bivariate_normal_reference(rank_corr):
    """Small supports: the joint pmf from bivariate-normal rectangle probabilities."""
    pm = fam.lognormal(0.9, median=6.0, lo=0, hi=25)
    dm = fam.geometric(4.0)
    w = fam.copula(pm, dm, rank_corr)
    rho = fam.gaussian_corr(rank_corr)
    from scipy.special import ndtri

    a = ndtri(np.clip(np.cumsum(pm.pmf), 0, 1))
    b = ndtri(np.clip(np.cumsum(dm.pmf), 0, 1))
    a, b = np.clip(a, -12, 12), np.clip(b, -12, 12)
    mvn = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]], abseps=1e-12, releps=1e-12)
    grid = np.stack(np.meshgrid(a, b, indexing="ij"), axis=-1)
    cdf = mvn.cdf(grid.reshape(-1, 2)).reshape(a.size, b.size)
    cdf = np.pad(cdf, ((1, 0), (1, 0)))
    joint = np.diff(np.diff(cdf, axis=0), axis=1)
    theta_ref, v_ref = _stats_from_joint(pm.values, dm.values, joint)
    s = fam.parametric_stats(w)
    assert s.theta == pytest.approx(theta_ref, rel=1e-7)
    assert s.slot_var == pytest.approx(v_ref, rel=1e-6)


def test_mixture_combines_length_biased():
    a = fam.independent(fam.deterministic(10), fam.deterministic(4))
    b = fam.independent(fam.deterministic(100), fam.deterministic(1))
    s = fam.parametric_stats(fam.mixture([(0.25, a), (0.75, b)]))
    # slot-steps: 0.25 * (10+11+12+13) + 0.75 * 100 over 0.25*4 + 0.75*1
    assert s.theta == pytest.approx((0.25 * 46 + 0.75 * 100) / 1.75)


def _mc_check(w, n, seed, draw=None):
    """theta, the second moment and corr(P, D) of n fresh requests against the exact values
    (5 SE). ``draw(key, n) -> (p, d)``: default the sampler's own draw."""
    st = fam.parametric_stats(w)
    if draw is None:
        fn = jax.jit(sample_requests, static_argnums=2)
        p, d = fn(jax.random.key(seed), make_sampler(w), (n,))
    else:
        p, d = draw(jax.random.key(seed), n)
    p, d = np.asarray(p, np.float64).ravel(), np.asarray(d, np.float64).ravel()
    num = d * p + d * (d - 1) / 2
    theta_hat = num.sum() / d.sum()
    se = np.sqrt(np.mean((num - theta_hat * d) ** 2) / n) / d.mean()  # delta method
    assert abs(theta_hat - st.theta) < 5 * se
    sec = d * p**2 + p * d * (d - 1) + d * (d - 1) * (2 * d - 1) / 6
    m2 = sec.sum() / d.sum()
    se2 = np.sqrt(np.mean((sec - m2 * d) ** 2) / n) / d.mean()
    assert abs(m2 - (st.slot_var + st.theta**2)) < 5 * se2 + 2 * theta_hat * 5 * se
    corr = np.corrcoef(p, d)[0, 1]
    assert abs(corr - st.corr_prompt_decode) < 5 * (1 - corr**2) / math.sqrt(n) * 3


def _copula_mixture():
    return fam.mixture(
        [
            (
                0.8,
                fam.copula(
                    fam.lognormal(0.8, median=800, lo=0, hi=6000),
                    fam.lognormal(0.7, median=150, lo=1, hi=1000),
                    0.5,
                ),
            ),
            (0.2, fam.copula(fam.zipf(1.1, lo=1, hi=3000), fam.geometric(40.0), -0.4)),
        ]
    )


def test_copula_stats_match_large_sample():
    _mc_check(_copula_mixture(), 1_000_000, 0)


def test_copula_draws_of_the_fast_kernel_and_without_alias_tables():
    """The copula sampler's other two ways to a request, each 10^6 against the exact theta,
    second moment and correlation: the fast kernel's (blocks from its slot counters,
    ``fresh_requests``), and D by the CDFs' binary search (what a decode marginal too wide
    for an alias table gets: the tables emptied here)."""
    from afd_jax.kernels.fast import fresh_requests

    w = _copula_mixture()
    s = make_sampler(w)
    drawn = jax.numpy.zeros((1000, 100), jax.numpy.int32)
    fast = jax.jit(lambda k: fresh_requests(k, drawn, s, 10))
    _mc_check(w, 1_000_000, 1, lambda k, n: fast(k))
    empty = jax.numpy.zeros(s.decode_alias.shape[:1] + (0, 4), jax.numpy.int32)
    searched = s._replace(decode_alias=empty, decode_lb_alias=empty)
    fn = jax.jit(sample_requests, static_argnums=2)
    _mc_check(w, 1_000_000, 2, lambda k, n: fn(k, searched, (n,)))


def test_presets_are_labelled():
    ps = list_presets()
    assert {"paper-v1", "azure-conv-fit", "azure-code-fit", "mooncake-fit"} <= set(ps)
    for name in ("azure-conv-fit", "azure-code-fit", "mooncake-fit"):
        w = resolve_workload(name)
        assert w.label.startswith("fit to ") and "illustrative" in w.label


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("nosuchfamily:prompt=1,decode=2", "workload"),
        ("not-a-preset", "workload"),
        ("geometric:prompt=100", "decode"),
        ("geometric:prompt=abc,decode=5", "prompt"),
        ("geometric:prompt=100,decode=0.5", "decode"),
        ("geometric:prompt=100,decode=5,colour=red", "colour"),
        ("deterministic:prompt=1.5,decode=2", "prompt"),
        ("deterministic:prompt=1,decode=0", "decode"),
        ("uniform:prompt=5..2,decode=1", "prompt"),
        ("lognormal:prompt=100,decode=5", "sigma"),
        ("zipf:prompt=1..10,decode=1..5", "exponent"),
        ("geometric:prompt=1,decode=2,corr=1.5", "corr"),
        ("-1*geometric:prompt=1,decode=2;geometric:prompt=1,decode=3", "weight"),
        ("geometric:prompt=nan,decode=2", "prompt"),
        ("deterministic:prompt=1_000,decode=2", "prompt"),  # int() would read 1000
        ("geometric:prompt=100,decode=\u0661\u0660", "decode"),  # Arabic-Indic 10
    ],
)
def test_bad_specs(spec, field):
    with pytest.raises(InputError) as err:
        resolve_workload(spec)
    assert err.value.field == field


def test_lognormal_cap_past_its_mass_costs_nothing():
    """A log-normal cap far beyond the mass (prompt_max = 1e8, sigma = 1: ndtr is exactly 1.0
    from e^(mu + 8.3 sigma) on) is cut to e^(mu + 9 sigma): the same marginal as a cap there,
    bit for bit, where the full lattice (1e8 points) was refused."""
    far = resolve_workload("lognormal:prompt=800,decode=150,sigma=1,prompt_max=100000000")
    near = resolve_workload("lognormal:prompt=800,decode=150,sigma=1,prompt_max=5000000")
    (a,), (b,) = far.components, near.components
    assert np.array_equal(a.prompt.values, b.prompt.values) and a.prompt.values.max() < 5e6
    assert np.array_equal(a.prompt.pmf, b.prompt.pmf)


def test_spec_grammar():
    w = resolve_workload(
        "0.7*geometric:prompt=100,decode=500;0.3*deterministic:prompt=2000,decode=20"
    )
    assert len(w.components) == 2 and np.allclose(w.weights, [0.7, 0.3])
    w = resolve_workload("lognormal:prompt=800,decode=150,sigma=0.8,decode_max=2000,corr=0.3")
    assert w.components[0].rank_corr == 0.3 and w.components[0].decode.values[-1] == 2000
    w = resolve_workload("uniform:prompt=0..200,decode=5")
    assert fam.parametric_stats(w).theta == pytest.approx(100 + 2)


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ("lognormal:prompt=800,decode=150,sigma=100,corr=0", "prompt", "upper bound"),
        ("lognormal:prompt=800,decode=150,sigma=1e200,prompt_max=9,decode_max=9", "decode", None),
        ("geometric:prompt=1e300,decode=1e300", "prompt", "must be <="),
        ("geometric:prompt=1e7,decode=10", "prompt", "support too large"),
        ("deterministic:prompt=1e30,decode=5", "prompt", "must be <="),
        ("deterministic:prompt=5,decode=1e30", "decode", "must be <="),
        ("deterministic:prompt=1" + "0" * 400 + ",decode=5", "prompt", "must be <="),
        ("zipf:prompt=1..1000000000,decode=1..100,exponent=1.1", "prompt", "support too large"),
        ("uniform:prompt=0..1e20,decode=1", "prompt", "must be <="),
        ("uniform:prompt=0..100000000,decode=1", "prompt", "support too large"),
        (  # the cap is cut where the log-normal's mass is exactly 0, but still too wide
            "lognormal:prompt=800,decode=150,sigma=3,prompt_max=100000000,decode_max=9",
            "prompt",
            None,
        ),
        ("lognormal:prompt=800,decode=150,sigma=1,prompt_step=1e30", "prompt", "must be <="),
    ],
)
def test_huge_parameters_refused_before_building(monkeypatch, spec, field, words):
    """Sizes are predicted from the parameters: no array past MAX_SUPPORT is ever built, and
    no OverflowError / ValueError leaks (each is an InputError naming the spec key)."""
    arange = np.arange

    def guarded(*args, **kwargs):
        lo, hi, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
        assert (float(hi) - float(lo)) / float(step) <= fam.MAX_SUPPORT + 1, args
        return arange(*args, **kwargs)

    monkeypatch.setattr(fam.np, "arange", guarded)
    with pytest.raises(InputError, match=words) as err:
        resolve_workload(spec)
    assert err.value.field == field


def test_copula_top_eps_word_is_finite():
    """eps from the top 24-bit word: u + 2^-25 rounds to 1.0 in float32, so ndtri gave +inf and
    every such request got the largest prompt whatever its D (a review found it); clipped as
    the latent is, P still follows D (rank correlation 0.999 here)."""
    from afd_jax.kernels.copula import copula_from_words

    w = fam.copula(fam.uniform(1, 10), fam.uniform(1, 10), 0.999)
    s = make_sampler(w)
    rng = np.random.default_rng(0)
    a0, a1, b0 = (
        jax.numpy.asarray(rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32))
        for _ in range(3)
    )
    top = jax.numpy.full(1000, 0xFFFFFFFF, jax.numpy.uint32)
    p, d = (np.asarray(x) for x in copula_from_words(s, [(a0, a1), (b0, top)]))
    assert len(set(p.tolist())) > 1
    assert np.corrcoef(p, d)[0, 1] > 0.9


def _bivariate_cells(pm, dm, rho):
    """Exact joint pmf of a copula's (P, D) atoms from bivariate-normal rectangles (SciPy)."""
    from scipy.special import ndtri

    a = np.clip(ndtri(np.clip(np.cumsum(pm.pmf), 0, 1)), -12, 12)
    b = np.clip(ndtri(np.clip(np.cumsum(dm.pmf), 0, 1)), -12, 12)
    mvn = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]], abseps=1e-12, releps=1e-12)
    grid = np.stack(np.meshgrid(a, b, indexing="ij"), axis=-1)
    cdf = np.pad(mvn.cdf(grid.reshape(-1, 2)).reshape(a.size, b.size), ((1, 0), (1, 0)))
    return np.diff(np.diff(cdf, axis=0), axis=1)


@pytest.mark.parametrize("rank_corr", [0.7, -0.5])
def test_copula_sampler_joint_law(rank_corr):
    """The copula sampler's (P, D) against the exact bivariate-normal cell probabilities, cell
    by cell: a chi-square over every atom pair expected 5 times or more, 10^6 requests by the
    sampler and 10^6 by the fast kernel's draw (P found by the guided search of the latent
    normal's thresholds, D by its alias table)."""
    from scipy.stats import chi2

    from afd_jax.kernels.fast import fresh_requests

    pm = fam.lognormal(0.9, median=6.0, lo=0, hi=25)
    dm = fam.geometric(4.0)
    w = fam.copula(pm, dm, rank_corr)
    joint = _bivariate_cells(pm, dm, fam.gaussian_corr(rank_corr))
    s = make_sampler(w)
    n = 1_000_000
    fresh = jax.jit(sample_requests, static_argnums=2)(jax.random.key(31), s, (n,))
    drawn = jax.numpy.zeros((1000, 100), jax.numpy.int32)
    fast = jax.jit(lambda k: fresh_requests(k, drawn, s, 10))(jax.random.key(32))
    for p, d in (fresh, fast):
        p, d = np.asarray(p).ravel(), np.asarray(d).ravel()
        obs = np.zeros_like(joint)
        np.add.at(obs, (np.searchsorted(pm.values, p), np.searchsorted(dm.values, d)), 1)
        exp = joint * p.size
        keep = exp >= 5
        stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
        assert chi2.sf(stat, int(keep.sum()) - 1) > 1e-3
        assert obs[~keep].sum() < 5 * max(exp[~keep].sum(), 1.0) + 10


def test_guided_search_counts_thresholds():
    """The copula's guided search of P (``kernels.copula``) against NumPy's searchsorted over
    rows built to be hard: ties, -inf leading thresholds (atoms of no mass), a far tail beyond
    the guide's range, 3,000 thresholds in one bin; z on and next to every bin edge, outside
    [-8, 8), and at random."""
    from afd_jax.kernels.copula import (
        GUIDE_BINS,
        GUIDE_LOW,
        GUIDE_SCALE,
        _prompt_index,
        guided_rows,
    )

    rng = np.random.default_rng(5)
    dense = np.sort(rng.uniform(0.25, 0.2539, 3000))
    row0 = np.concatenate([[-np.inf, -np.inf], np.sort(rng.normal(size=500)), dense, [9.0]])
    row1 = np.concatenate([np.repeat(np.sort(rng.normal(size=40)), 3), [np.inf] * 4])
    rows = [np.concatenate([np.sort(r), [np.inf]]).astype(np.float32) for r in (row0, row1)]
    table, guide, steps = guided_rows(rows)
    assert guide.shape == (2, GUIDE_BINS) and (steps == 2 ** np.arange(len(steps))[::-1]).all()
    edges = (GUIDE_LOW + np.arange(GUIDE_BINS + 1) / GUIDE_SCALE).astype(np.float32)
    z = np.concatenate(
        [
            edges,
            np.nextafter(edges, np.float32(-np.inf)),
            np.nextafter(edges, np.float32(np.inf)),
            rows[0][2:-1],
            rows[1][:-5],
            np.float32([-30.0, -8.5, 8.5, 30.0]),
            rng.normal(size=20_000).astype(np.float32),
        ]
    ).astype(np.float32)
    n_p = max(len(r) for r in rows)
    s = CopulaSampler(*[None] * len(CopulaSampler._fields))._replace(
        prompt_values=jax.numpy.zeros((2, n_p), jax.numpy.int32),
        prompt_z=jax.numpy.asarray(table),
        prompt_guide=jax.numpy.asarray(guide),
        prompt_steps=jax.numpy.asarray(steps),
    )
    index = jax.jit(_prompt_index)
    for k, row in enumerate(rows):
        got = np.asarray(index(s, jax.numpy.full(z.shape, k, jax.numpy.int32), z))
        want = np.minimum(np.searchsorted(row, z, side="right"), n_p - 1)
        np.testing.assert_array_equal(got, want)


def test_copula_prompt_thresholds_keep_the_tail():
    """P's thresholds in the latent normal's scale give every atom its float64 probability to
    within 2.9e-8 (two thresholds, each within phi(z) ulp(z) / 2 < 1.45e-8: the bound
    kernels/copula.py states), and a far tail of atoms of ~1e-11 each keeps its mass to 1e-5,
    where a float32 CDF (as P was drawn before) is off by a quarter of it."""
    from scipy.special import ndtr

    pm = fam.zipf(2.5, lo=1, hi=20_000)
    w = fam.copula(pm, fam.geometric(5.0), 0.5)
    z = np.asarray(make_sampler(w).prompt_z[0], np.float64)[: pm.pmf.size]
    implied = np.diff(ndtr(z), prepend=0.0)
    assert np.abs(implied - pm.pmf).max() < 2.9e-8
    tail = pm.pmf[-5000:].sum()
    assert abs(implied[-5000:].sum() - tail) < 1e-5 * tail
    cdf32 = np.cumsum(pm.pmf).astype(np.float32).astype(np.float64)
    assert abs((1.0 - cdf32[-5001]) - tail) > 0.2 * tail

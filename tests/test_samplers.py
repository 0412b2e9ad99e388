"""JAX samplers: chi-square goodness of fit of the stationary slot-load sampler against the
exact pmf pi (fixed seeds, cells with expected count >= 5), jit vs eager, load_offset."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chi2

from afd_jax.kernels import CopulaSampler, TableSampler, sample_requests, sample_slot_load
from afd_jax.montecarlo.samplers import make_sampler
from afd_jax.workload import families as fam
from afd_jax.workload.containers import TraceWorkload
from afd_jax.workload.slotload import slot_load_pmf

N = 200_000


def _trace():
    rng = np.random.default_rng(3)
    n = 500
    p = np.round(rng.lognormal(5.0, 0.8, n)).astype(np.int64)
    d = np.round(rng.lognormal(3.0, 0.9, n)).astype(np.int64)  # includes zeros
    return TraceWorkload("trace-like", p, d)


def _copula():
    return fam.mixture(
        [
            (
                0.7,
                fam.copula(
                    fam.lognormal(0.7, median=300, lo=0, hi=3000),
                    fam.lognormal(0.9, median=40, lo=1, hi=600),
                    0.6,
                ),
            ),
            (0.3, fam.independent(fam.geometric(50.0, min=0), fam.deterministic(7))),
        ]
    )


def _chi2_pvalue(loads, pi):
    """Merge consecutive lattice points into cells of expected count >= 5; Pearson chi2."""
    idx = loads - pi.start
    assert np.all(idx >= 0) and np.all(idx < pi.pmf.size)
    observed = np.bincount(idx, minlength=pi.pmf.size)
    expected = pi.pmf * loads.size
    cells_o, cells_e, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o += o
        acc_e += e
        if acc_e >= 5:
            cells_o.append(acc_o)
            cells_e.append(acc_e)
            acc_o = acc_e = 0.0
    cells_o[-1] += acc_o
    cells_e[-1] += acc_e
    o, e = np.array(cells_o), np.array(cells_e)
    stat = ((o - e) ** 2 / e).sum()
    return chi2.sf(stat, o.size - 1), o.size


@pytest.mark.parametrize("kind", ["trace", "copula"])
def test_stationary_sampler_goodness_of_fit(kind):
    w = _trace() if kind == "trace" else _copula()
    s = make_sampler(w)
    assert isinstance(s, TableSampler if kind == "trace" else CopulaSampler)
    loads = jax.jit(sample_slot_load, static_argnums=2)(jax.random.key(11), s, (N,))
    assert loads.dtype == jnp.int32
    pi = slot_load_pmf(w)
    pvalue, cells = _chi2_pvalue(np.asarray(loads, np.int64), pi)
    assert cells > 50
    assert pvalue > 1e-3


def test_jit_matches_eager_and_load_offset():
    w = _copula()
    s0, s1 = make_sampler(w), make_sampler(w, load_offset=1)
    key = jax.random.key(5)
    eager = sample_requests(key, s0, (1000,))
    jitted = jax.jit(sample_requests, static_argnums=2)(key, s0, (1000,))
    assert np.array_equal(np.asarray(eager[0]), np.asarray(jitted[0]))
    assert np.array_equal(np.asarray(eager[1]), np.asarray(jitted[1]))
    assert eager[0].dtype == jnp.int32 and eager[1].dtype == jnp.int32
    loads = jax.jit(sample_slot_load, static_argnums=2)
    l0, l1 = loads(key, s0, (1000,)), loads(key, s1, (1000,))
    assert np.array_equal(np.asarray(l1), np.asarray(l0) + 1)
    assert slot_load_pmf(w, load_offset=1).start == slot_load_pmf(w).start + 1


def test_marginals_and_zero_decode_rows():
    w = _copula()
    p, d = jax.jit(sample_requests, static_argnums=2)(jax.random.key(2), make_sampler(w), (N,))
    d = np.asarray(d)
    # D marginal of the mixture: chi-square on its atoms 1..600 plus the point mass at 7
    st = fam.parametric_stats(w)
    se = d.std() / np.sqrt(N)
    assert abs(d.mean() - st.mean_decode) < 5 * se
    pp = np.asarray(p)
    assert abs(pp.mean() - st.mean_prompt) < 5 * pp.std() / np.sqrt(N)
    tw = _trace()
    _, dd = sample_requests(jax.random.key(0), make_sampler(tw), (10_000,))
    assert np.asarray(dd).min() >= 1  # zero-decode rows carry no weight


def test_trace_samplers_are_built_once_per_content():
    """The alias table of a trace is built once (a sweep's mc method calls simulate once per
    scenario with the same trace): the same rows give the same sampler object, and rows
    changed in place, another offset or another draw give a new one, equal to a fresh
    build."""
    from afd_jax.montecarlo import samplers as MS

    rng = np.random.default_rng(4)
    w = TraceWorkload(name="t", prompt=rng.integers(0, 500, 300), decode=rng.integers(0, 90, 300))
    first = make_sampler(w, draw="alias")
    copy = TraceWorkload(name="u", prompt=w.prompt.copy(), decode=w.decode.copy())
    assert make_sampler(copy, draw="alias") is first  # same rows
    assert make_sampler(w, load_offset=1, draw="alias") is not first
    assert isinstance(make_sampler(w), TableSampler)  # the draw is part of the key
    w.decode[0] += 7  # changed in place: a new table, as if built from scratch
    changed = make_sampler(w, draw="alias")
    assert changed is not first
    fresh = MS._build_trace_sampler(np.asarray(w.prompt), np.asarray(w.decode), 0, "alias")
    for a, b in zip(changed, fresh, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for i in range(MS._TRACE_SAMPLERS_KEPT + 1):  # older entries leave
        make_sampler(TraceWorkload(name="v", prompt=w.prompt + i + 10, decode=w.decode))
    assert make_sampler(copy, draw="alias") is not first

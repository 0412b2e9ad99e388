"""The trace-fitted presets reproduce their trace's slot-load statistics.

The exact theta and sqrt(v) of each preset (``families.parametric_stats``, docs/model.md 4) are
compared with the trace's (``statistics.workload_stats``, float64 over all rows): the fit
(experiments/fit_presets.py) matches them to < 0.01 %; the test allows 0.5 % (margin for the
6-digit constants and the copula quadrature). E[P], E[D] are matched to < 0.1 % (allowed: 1 %).
The Spearman correlation (fit error < 0.002) is checked on a 200k-request draw from the
preset's exact law: sampling s.e. ~0.0022, allowed 0.02 (~9 s.e.). fit_presets.json lists
the achieved values. Reads the shared traces via
``conftest.trace_path`` (skips without the folder, fails under CI=true).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import trace_path
from scipy.special import ndtr
from scipy.stats import spearmanr

from afd_jax.workload import families
from afd_jax.workload.specs import list_presets, resolve_workload
from afd_jax.workload.statistics import workload_stats
from afd_jax.workload.traces import load_trace

PRESET_TRACE = {
    "azure-conv-fit": "azure_conv",
    "azure-code-fit": "azure_code",
    "mooncake-fit": "mooncake",
}
TOL_SLOT = 0.005  # theta, sqrt(v): relative
TOL_MEAN = 0.01  # E[P], E[D]: relative
TOL_RANK = 0.02  # Spearman: absolute


@pytest.mark.parametrize("name", sorted(PRESET_TRACE))
def test_preset_matches_trace_statistics(name):
    trace = load_trace(str(trace_path(PRESET_TRACE[name])))
    ts = workload_stats(trace)
    w = resolve_workload(name)
    fs = families.parametric_stats(w)
    assert fs.theta == pytest.approx(ts.theta, rel=TOL_SLOT)
    assert fs.slot_std == pytest.approx(ts.slot_std, rel=TOL_SLOT)
    assert fs.mean_prompt == pytest.approx(ts.mean_prompt, rel=TOL_MEAN)
    assert fs.mean_decode == pytest.approx(ts.mean_decode, rel=TOL_MEAN)
    # Spearman of the preset from a large exact-law draw (inverse-CDF, fixed seed): the
    # sampling s.e. of Spearman at n = 200k is ~0.0022 (TOL_RANK ~ 9 s.e.).
    rng = np.random.default_rng(7)
    comp = rng.choice(len(w.components), size=200_000, p=np.asarray(w.weights))
    p = np.empty(comp.size, np.int64)
    d = np.empty(comp.size, np.int64)
    for k, c in enumerate(w.components):
        sel = np.nonzero(comp == k)[0]
        rho = families.gaussian_corr(c.rank_corr)
        z = rng.standard_normal((sel.size, 2))
        zp = rho * z[:, 0] + np.sqrt(1.0 - rho * rho) * z[:, 1]
        for out, m, zz in ((d, c.decode, z[:, 0]), (p, c.prompt, zp)):
            u = ndtr(zz)
            idx = np.searchsorted(np.cumsum(m.pmf), u)
            out[sel] = m.values[np.minimum(idx, m.values.size - 1)]
    rank_fit = spearmanr(p, d).statistic
    rank_trace = spearmanr(trace.prompt, trace.decode).statistic
    assert abs(rank_fit - rank_trace) < TOL_RANK


@pytest.mark.parametrize("name", sorted(PRESET_TRACE))
def test_preset_is_labelled_as_fit(name):
    assert "fit" in list_presets()[name]
    w = resolve_workload(name)
    assert "fit" in w.label and "illustrative" in w.label

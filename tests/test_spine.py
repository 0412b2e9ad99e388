"""The Monte Carlo spine: the kernel contract (a new kernel plugs into the one chunk function
and chunk loop), the shared estimators, the one result type of both windows, the sampler
factory and its explicit dispatch table."""

from __future__ import annotations

import math
from functools import cache

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from afd_jax.kernels import DRAWS, AliasSampler, CopulaSampler, ProductSampler, TableSampler
from afd_jax.kernels import sampling as KS
from afd_jax.kernels.barrier import BLOCK, TauHistogram
from afd_jax.kernels.contract import Kernel, SegmentInfo, SegmentParams
from afd_jax.kernels.step import StepModel, kahan_add
from afd_jax.model.latency import Latency
from afd_jax.montecarlo import estimators as E
from afd_jax.montecarlo.pool import PoolResult, pool_simulate
from afd_jax.montecarlo.result import ROW_FIELDS, MonteCarloResult
from afd_jax.montecarlo.samplers import make_sampler, max_slot_load
from afd_jax.montecarlo.simulate import SimulationResult, simulate
from afd_jax.montecarlo.spine import Chunk, Window, block_totals, run_chunks, segment_chunk
from afd_jax.workload.containers import TraceWorkload

LAT = Latency(0.05, 10.0, 0.5, 20.0, 0.01, 2.0)


@cache
def _ramp_kernel(r_max: int, length: int) -> Kernel:
    """A toy kernel: worker j's load at absolute step t is (j + 1) * (t + 1); state = the
    number of segments run."""

    def init(key, params):
        return jnp.zeros((), jnp.int32)

    def segment(key, state, params):
        t = params.t0 + jnp.arange(length, dtype=jnp.int32)
        loads = (t[:, None] + 1) * jnp.arange(1, r_max + 1, dtype=jnp.int32)[None, :]
        return state + 1, SegmentInfo(loads, jnp.asarray(True))

    return Kernel("ramp", init, segment)


def test_a_new_kernel_runs_through_the_chunk_loop():
    r_max, length, total, warmup = 3, BLOCK, 3 * BLOCK, 64
    kernel = _ramp_kernel(r_max, length)
    model = StepModel(
        jnp.float32(1.0), jnp.float32(0.0), jnp.zeros(r_max, jnp.float32), jnp.zeros(r_max)
    )
    hist = TauHistogram(jnp.float32(0.0), jnp.float32(1.0))
    taus = []

    def advance(c, t0, state):
        params = SegmentParams(None, jnp.int32(t0))
        window = Window(jnp.int32(t0), jnp.int32(warmup), jnp.full((2,), total), jnp.int32(1))
        kw = dict(kernel=kernel, batch=1, serial=False)
        state, sums, covered = segment_chunk(c.rows, state, params, window, model, hist, **kw)
        assert bool(covered)
        return state, sums

    def record(c, t0, sums):
        taus.append(np.asarray(sums.tau, np.float64))

    def start(c):
        return jnp.zeros((2,), jnp.int32)

    run_chunks([Chunk(jnp.arange(2), 1, tuple(range(0, total, length)))], start, advance, record)
    tau = np.concatenate(taus, axis=1)  # [rows, blocks, r_max]
    # tau(r) = max_{j<=r} (j + 1)(t + 1) = r (t + 1); steps warmup..total-1 of row 0 count
    t = np.arange(warmup, total)
    expected = np.arange(1, r_max + 1) * (t + 1).sum()
    np.testing.assert_array_equal(tau[0].sum(axis=0), expected)
    assert not tau[1].any()  # the padding row counts nowhere


def test_block_totals_are_the_exact_sums_of_the_blocks():
    """The device totals of float32 block sums (float64, under jit) are their exact sums
    (``math.fsum``), whatever their magnitudes within the stated span (here 2**-5 to 2**16:
    21 binary orders, the most for 157 blocks)."""
    import math

    import jax

    from afd_jax.kernels.barrier import StepSums

    rng = np.random.default_rng(3)
    rows, nb, r_max = 5, 157, 4

    def floats(*shape):
        x = (0.5 + 0.5 * rng.random(shape)) * 2.0 ** rng.integers(-4, 17, shape)
        return x.astype(np.float32)

    blocks = StepSums(
        *(floats(rows, nb, r_max) for _ in range(4)),
        floats(rows, nb),
        floats(rows, nb),
        rng.integers(0, BLOCK + 1, (rows, nb)).astype(np.int32),
        rng.integers(0, 9, (r_max, 16)).astype(np.int32),
    )
    got = jax.jit(block_totals)(blocks)
    for name in StepSums._fields[:-1]:
        x, total = getattr(blocks, name), np.asarray(getattr(got, name))
        assert total.shape == (rows, 1) + x.shape[2:], name
        assert total.dtype == (np.int32 if name == "count" else np.float64), name
        exact = np.apply_along_axis(lambda v: math.fsum(v.astype(np.float64)), 1, x)
        np.testing.assert_array_equal(total[:, 0], exact, err_msg=name)
        # the host's float64 sum (what the accumulator did with every block) agrees
        np.testing.assert_array_equal(total[:, 0], x.astype(np.float64).sum(axis=1))
    np.testing.assert_array_equal(np.asarray(got.hist), blocks.hist)


def test_run_chunks_records_each_segment_after_the_next_dispatch():
    """Every segment is recorded once, in order, after the next segment (of its chunk or the
    next chunk) has been advanced: the device works while the host records."""
    log = []

    def advance(c, seg, state):
        log.append(("advance", c.data, seg))
        return state + 1, (c.data, seg, state)

    def record(c, seg, info):
        assert info == (c.data, seg, info[2])
        log.append(("record", c.data, seg))

    chunks = [Chunk(None, 1, (0, 10), "a"), Chunk(None, 1, (0,), "b")]
    run_chunks(chunks, lambda c: 0, advance, record)
    assert log == [
        ("advance", "a", 0),
        ("advance", "a", 10),
        ("record", "a", 0),
        ("advance", "b", 0),
        ("record", "a", 10),
        ("record", "b", 0),
    ]
    run_chunks([], lambda c: 0, advance, record)  # nothing to do: nothing recorded


def test_estimators():
    assert E.stage_bounds((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), serial=True) == (6.0, 15.0)
    assert E.stage_bounds((1.0, 2.0), (4.0, 5.0), serial=False) == (2.0, 5.0)
    log_lo, inv_w = E.tau_bins(10.0, 1000.0)
    assert log_lo < math.log(10.0) and log_lo + E.N_BINS / inv_w > math.log(1000.0)
    # percentiles of several histograms equal those of each alone
    rng = np.random.default_rng(0)
    hist = rng.integers(0, 5, (3, E.N_BINS))
    both = E.percentiles(hist, log_lo, inv_w)
    for i in range(3):
        np.testing.assert_array_equal(both[:, i], E.percentiles(hist[i], log_lo, inv_w))
    assert np.isnan(E.percentiles(np.zeros(E.N_BINS, np.int64), log_lo, inv_w)).all()
    x = rng.normal(size=(2, 5))
    mean, se, q = E.sample_mean_se(x, 0.95)
    np.testing.assert_allclose(se, x.std(axis=1, ddof=1) / math.sqrt(5))
    assert q == pytest.approx(2.776445, rel=1e-6)
    # Kahan: a float32 sum of 10^5 x 0.1 stays within float32 rounding of the exact value
    tot = comp = jnp.float32(0.0)
    for _ in range(1000):
        tot, comp = kahan_add(tot, comp, jnp.float32(0.1))
    assert abs(float(tot) - 1000 * float(np.float32(0.1))) < 1e-3


def test_group_means_se_weights_each_group_by_its_steps():
    """Batches of 128, 128, 128 and 1 steps (a partial last block): the SE of the overall
    mean is sigma / sqrt(n) on average (its square unbiased). Unweighted, the 1-step batch
    counted as a full one: E[se^2] came out 25x too large here (an audit, session 25)."""
    rng = np.random.default_rng(2)
    counts = np.array([128, 128, 128, 1])
    draws, sigma = 200_000, 3.0
    means = 5.0 + sigma * rng.standard_normal((draws, 4)) / np.sqrt(counts)
    se2 = np.empty(draws)
    for i in range(0, draws, 50_000):  # mean_se over the group axis, many draws at once
        t = (means[i : i + 50_000] * counts).T
        se2[i : i + 50_000] = E.mean_se(t, counts, 0.95)[1] ** 2
    target = sigma**2 / counts.sum()
    # the mean of 200,000 draws of a chi-square(3)-like estimate: 5 SE ~ 1.2 %
    assert se2.mean() == pytest.approx(target, rel=0.02)
    equal = np.array([100, 100, 100])  # equal groups: the SD of the means over sqrt(k)
    t = rng.normal(size=(3, 2)) * 100
    np.testing.assert_allclose(
        E.mean_se(t, equal, 0.95)[1], (t / 100).std(axis=0, ddof=1) / math.sqrt(3), rtol=1e-12
    )


def _ar1(rng, phi: float, m: int, n: int) -> np.ndarray:
    """n independent stationary AR(1) series of length m, unit variance: float64[m, n]."""
    x = np.empty((m, n))
    x[0] = rng.standard_normal(n)
    eps = rng.standard_normal((m, n)) * math.sqrt(1 - phi**2)
    for t in range(1, m):
        x[t] = phi * x[t - 1] + eps[t]
    return x


def test_iact_of_an_ar1_series():
    """The integrated autocorrelation time of AR(1) is (1 + phi) / (1 - phi) (closed form)."""
    rng = np.random.default_rng(4)
    for phi in (0.0, 0.5, 0.8):
        want = (1 + phi) / (1 - phi)
        got = E.iact(_ar1(rng, phi, 100_000, 1)[:, 0])
        assert got == pytest.approx(want, rel=0.1), phi
    assert E.iact(np.ones((50, 3))) == 1.0  # constant columns (a step time that never moves)


@pytest.mark.slow
def test_batch_means_se_of_a_correlated_run():
    """One replication's blocks are correlated when a request outlives a block: batch means
    of fixed count understate the SE (20 batches of 16 blocks at an autocorrelation time of 9
    blocks: E[se^2] about half the true variance of the mean). Batches of at least
    BATCH_IACTS autocorrelation times: E[se^2] within 15 % of the closed-form variance of an
    AR(1) mean, sum_{i,j} phi^|i - j| / m^2, over 4,000 series."""
    rng = np.random.default_rng(5)
    phi, m, n = 0.8, 320, 4_000
    lags = np.abs(np.subtract.outer(np.arange(m), np.arange(m)))
    target = float((phi**lags).sum()) / m**2
    se2, long_enough = [], 0
    for _ in range(0, n, 500):  # iact takes the largest over columns: series one by one
        x = _ar1(rng, phi, m, 500)
        for j in range(x.shape[1]):
            bm = E.batch_means([x[:, j]], [np.ones(m, np.int64)])
            se2.append(E.mean_se(bm.totals, bm.counts, 0.95)[1] ** 2)
            long_enough += bm.long_enough
    ratio = float(np.mean(se2)) / target
    assert 0.85 < ratio < 1.15 and long_enough > 0.95 * n, (ratio, long_enough)
    # a run that is one slow drift (a ramp over 40 blocks): two batches, and said too short
    short = E.batch_means([np.linspace(0.0, 1.0, 40)], [np.ones(40, np.int64)])
    assert not short.long_enough and short.totals.shape[0] == 2


def test_sampler_factory_and_dispatch():
    w = TraceWorkload(name="t", prompt=np.array([5, 7, 9]), decode=np.array([1, 0, 4]))
    table = make_sampler(w)
    alias = make_sampler(w, load_offset=1, draw="alias")
    assert isinstance(table, TableSampler) and isinstance(alias, AliasSampler)
    assert alias.req_table.shape[0] == 1024  # padded: one compile for small tables
    assert max_slot_load(w, 1) == 9 + 4 - 1 + 1 and max_slot_load(w, 1, given=100) == 100
    assert make_sampler(table) is table and isinstance(
        make_sampler(table, draw="alias"), AliasSampler
    )
    assert set(DRAWS) == {TableSampler, AliasSampler, CopulaSampler, ProductSampler}
    p, d = KS.sample_requests(jr.key(0), alias, (64,))
    assert set(np.asarray(d).tolist()) <= {1, 4} and set(np.asarray(p).tolist()) <= {6, 10}


def test_both_windows_return_one_result_type():
    assert SimulationResult is MonteCarloResult and PoolResult is MonteCarloResult
    s = KS.alias_sampler(np.arange(20), np.full(20, 3), size=1024)
    steps = simulate(s, LAT, 2, 2, kernel="barrier", steps=128, replications=2, max_slot_load=21)
    pools = (np.tile(np.arange(12, dtype=np.int32), (2, 1)), np.full((2, 12), 3, np.int32))
    done = pool_simulate(None, LAT, 2, [1, 2], pools=pools, n_requests=None, diagnostics=True)
    for res in (steps, done):
        rows = res.results_table()
        assert [row["r"] for row in rows] == [1, 2]
        assert all(set(row) == {"r", *ROW_FIELDS} for row in rows)
        js = res.to_json()
        assert js["r_max"] == 2 and js["window"]["kind"] in ("steps", "completions")
    assert steps.active_fraction.tolist() == [1.0, 1.0] and steps.attn_fraction is None
    assert done.se_tau is None and done.window == {
        "kind": "completions",
        "requests": 12,
        "fraction": 0.8,
    }


_PLACE_CHECK = """
import numpy as np
from afd_jax.kernels import sampling as KS
from afd_jax.montecarlo.spine import RowMesh
rng = np.random.default_rng(0)
s = KS.alias_sampler(rng.integers(0, 300, 500), rng.integers(1, 60, 500), size=1024)
s2 = s._replace(decode=s.decode + 1)  # shares the first array (prompt) with s
mesh = RowMesh()
a, b, c = (mesh.replicate(x, keep=True) for x in (s, s2, s2))
assert mesh.n == 2 and c is b
assert np.array_equal(np.asarray(a.decode), np.asarray(s.decode))
assert np.array_equal(np.asarray(b.decode), np.asarray(s2.decode))
print("ok")
"""


def test_placed_sampler_is_reused_only_for_the_same_arrays():
    """RowMesh.replicate(keep=True) places a sampler on every device once and reuses the copy
    only for a tree of the very same arrays (2 forced CPU devices, in a subprocess)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", _PLACE_CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_decode_moments_are_the_alias_table_law():
    """Exact mean and SD of D under an alias table: the weighted trace moments (rows with
    D = 0 dropped), to float64 round-off; None for other samplers."""
    rng = np.random.default_rng(1)
    p, d, w = rng.integers(0, 50, 300), rng.integers(0, 90, 300), rng.random(300)
    s = KS.alias_sampler(p, d, w, size=512)
    keep = d > 0
    mean = np.average(d[keep], weights=w[keep])
    sd = np.sqrt(np.average((d[keep] - mean) ** 2, weights=w[keep]))
    from afd_jax.montecarlo.samplers import decode_moments

    got = decode_moments(s)
    assert abs(got[0] - mean) <= 1e-6 * mean and abs(got[1] - sd) <= 1e-5 * sd  # 2**-24 rounding
    assert decode_moments(KS.table_sampler(p, d + 1)) is None


def _two_component_copula():
    """A parametric mixture whose components have decode tables of different lengths (the
    shorter row padded)."""
    from afd_jax.workload import families as fam

    return fam.mixture(
        [
            (0.7, fam.copula(fam.lognormal(0.7, median=300, lo=0, hi=3000),
                             fam.lognormal(0.9, median=40, lo=1, hi=600), 0.6)),
            (0.3, fam.independent(fam.geometric(50.0, min=0), fam.deterministic(7))),
        ]
    )  # fmt: skip


def test_decode_moments_of_a_copula_sampler_are_its_draws():
    """Mean and SD of D from a CopulaSampler's tables against 2**21 of its draws: within 5
    standard errors each (the SE of the SD from the sample's fourth moment)."""
    from afd_jax.montecarlo.samplers import decode_moments, make_sampler

    s = make_sampler(_two_component_copula())
    assert np.asarray(s.decode_cdf).max() > 1.0  # a padded row: the case that needs care
    mean, sd = decode_moments(s)
    _, d = KS.sample_requests(jr.key(5), s, (1 << 21,))
    d = np.asarray(d, np.float64)
    m4 = np.mean((d - d.mean()) ** 4)
    assert abs(d.mean() - mean) <= 5 * d.std() / np.sqrt(d.size)
    assert abs(d.std() - sd) <= 5 * np.sqrt((m4 - d.var() ** 2) / (4 * d.var() * d.size))


def test_exact_copula_moments_size_k_without_changing_results(monkeypatch):
    """The fast kernel's K from the copula's table moments instead of a 65,536-draw pilot: the
    pilot is not compiled, and the numbers are the pilot-sized run's bit for bit."""
    from afd_jax.model.latency import Latency
    from afd_jax.montecarlo import simulate as S

    lat = Latency(0.05, 10.0, 0.5, 20.0, 0.01, 2.0)
    w = _two_component_copula()

    def run():
        kw = dict(kernel="fast", steps=1_500, warmup=100, replications=2, seed=4)
        return S.simulate(w, lat, 8, 6, segment_steps=512, **kw)

    exact = run()
    monkeypatch.setattr(S, "decode_moments", lambda s: None)  # the former pilot
    pilot = run()
    for name in ("mean_tau", "se_tau", "idle_attn", "step_p99", "mean_slot_load"):
        np.testing.assert_array_equal(getattr(exact, name), getattr(pilot, name), err_msg=name)

    def no_pilot(*a, **k):
        raise AssertionError("the pilot ran")

    monkeypatch.undo()
    monkeypatch.setattr(S, "_pilot_decode", no_pilot)
    run()

"""The simulate driver: chunk-size independence, the cold-start lockstep artefact, the int32
overflow guard and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from afd_jax.errors import InputError
from afd_jax.kernels import sampling as KS
from afd_jax.model.latency import Latency
from afd_jax.montecarlo.simulate import simulate

LAT = Latency(
    alpha_attn=0.05, beta_attn=10.0, alpha_ffn=0.5, beta_ffn=20.0, alpha_comm=0.01, beta_comm=2.0
)
FIELDS = (
    "mean_tau",
    "se_tau",
    "throughput",
    "idle_attn",
    "idle_ffn",
    "barrier_share",
    "step_p50",
    "step_p99",
)


@pytest.fixture(scope="module")
def small_sampler():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 300, 500)
    d = rng.integers(1, 60, 500)
    return KS.alias_sampler(p, d, size=1024), int((p + d - 1).max())


def _same(a, b):
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.mean_slot_load == b.mean_slot_load


@pytest.mark.parametrize("kernel", ["trajectory", "fast"])
def test_trajectory_results_do_not_depend_on_chunking(small_sampler, kernel):
    s, m = small_sampler
    kw = dict(kernel=kernel, steps=600, warmup=100, replications=3, seed=7, max_slot_load=m)
    a = simulate(s, LAT, 4, 8, segment_steps=128, replications_per_call=1, **kw)
    b = simulate(s, LAT, 4, 8, segment_steps=512, replications_per_call=3, **kw)
    _same(a, b)
    # 2 does not divide 3: the padded copy of the last replication must not count anywhere
    # (percentile histogram included)
    _same(a, simulate(s, LAT, 4, 8, segment_steps=512, replications_per_call=2, **kw))
    c = simulate(s, LAT, 4, 8, segment_steps=512, replications_per_call=3, **{**kw, "seed": 8})
    assert not np.array_equal(a.mean_tau, c.mean_tau)  # the seed matters


@pytest.mark.parametrize("kernel", ["trajectory", "fast"])
def test_device_totals_equal_the_host_sums_of_every_block(small_sampler, kernel, monkeypatch):
    """Several replications fetch each replication's totals (float64 sums on the device)
    instead of its blocks: the results are those of the host's sums of every block, bit for
    bit (two chunks of two segments, a padded row)."""
    from afd_jax.montecarlo import simulate as S

    s, m = small_sampler
    kw = dict(kernel=kernel, steps=900, warmup=100, replications=3, seed=5, max_slot_load=m)
    kw.update(segment_steps=512, replications_per_call=2)
    calls = []
    chunk = S.segment_chunk

    def spy(*a, **k):
        calls.append(k["totals"])
        return chunk(*a, **k)

    monkeypatch.setattr(S, "segment_chunk", spy)
    device = simulate(s, LAT, 4, 8, **kw)
    monkeypatch.setattr(S, "_device_totals", lambda run, acc: False)
    host = simulate(s, LAT, 4, 8, **kw)
    assert calls == [True] * 4 + [False] * 4
    _same(device, host)
    np.testing.assert_array_equal(device.idle_ffn, host.idle_ffn)
    np.testing.assert_array_equal(device.step_p90, host.step_p90)


def test_fast_kernel_on_8_word_alias_rows_draws_the_same(small_sampler, monkeypatch):
    """The fast kernel's driver pads the alias rows to 8 words (``aligned_rows``): the same
    draws, so the same results as on the 5-word rows; other samplers pass through."""
    import jax
    import jax.numpy as jnp

    from afd_jax.montecarlo import simulate as S

    s, m = small_sampler
    wide = KS.aligned_rows(s)
    assert wide.req_table.shape == (1024, 8) and wide.lb_table.shape == (1024, 8)
    words = jax.random.bits(jax.random.key(3), (2, 4096), jnp.uint32)
    for table, narrow in ((wide.req_table, s.req_table), (wide.lb_table, s.lb_table)):
        for a, b in zip(KS.alias_pick(table, *words), KS.alias_pick(narrow, *words), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    table = KS.table_sampler([1, 2], [3, 4])
    assert KS.aligned_rows(table) is table and KS.aligned_rows(wide) is wide
    kw = dict(kernel="fast", steps=700, warmup=100, replications=2, seed=3, max_slot_load=m)
    seen = []
    monkeypatch.setattr(S, "_ALIGNED", {})
    monkeypatch.setattr(KS, "aligned_rows", lambda x: seen.append(x) or wide)
    a = simulate(s, LAT, 4, 8, **kw)
    monkeypatch.setattr(S, "_ALIGNED", {})
    monkeypatch.setattr(KS, "aligned_rows", lambda x: seen.append(x) or x)
    b = simulate(s, LAT, 4, 8, **kw)
    assert len(seen) == 2
    _same(a, b)


def test_barrier_accelerator_path_draws_the_same(small_sampler, monkeypatch):
    """On accelerators the barrier kernel draws word by word from 8-word alias rows in one
    wide vmap; on CPU both halves of a block at once from 5-word rows, row by row: the same
    results (the accelerator's path, run here on CPU)."""
    import jax

    from afd_jax.montecarlo import simulate as S

    s, m = small_sampler
    kw = dict(kernel="barrier", steps=1000, replications=3, seed=4, max_slot_load=m)
    halves, kernel = [], S.barrier_kernel
    monkeypatch.setattr(S, "barrier_kernel", lambda *a, **k: halves.append(k) or kernel(*a, **k))
    cpu = simulate(s, LAT, 4, 8, **kw)
    seen, wide = [], KS.aligned_rows
    monkeypatch.setattr(S, "_ALIGNED", {})
    monkeypatch.setattr(KS, "aligned_rows", lambda x: seen.append(x) or wide(x))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    accelerator = simulate(s, LAT, 4, 8, **kw)
    assert len(seen) == 1 and halves == [{"halves": True}, {"halves": False}]
    _same(cpu, accelerator)


def test_chunks_keep_the_histogram_within_int32():
    """One slot per bundle and a 64 GiB budget (or an explicit chunk size) would put more than
    2**31 steps of a call into one bin of the int32 histogram: the chunk is capped (barrier
    blocks of snapshots, and trajectory replications x segment steps)."""
    import types

    import jax

    from afd_jax.kernels.barrier import BLOCK
    from afd_jax.montecarlo import simulate as S

    run = S.StepsRun(
        kernel="barrier", batch=1, r_max=1, steps=10**9, warmup=0, replications=10**6,
        init="stationary", seed=0, level=0.95, serial=False, budget=1 << 36,
        segment_steps=None, reps_per_call=None,
    )  # fmt: skip
    n_blocks = -(-run.steps // BLOCK)
    assert S._barrier_chunk(run, n_blocks) * BLOCK * 2 <= 2**31
    assert S._barrier_chunk(run._replace(reps_per_call=1 << 30), n_blocks) * BLOCK * 2 <= 2**31
    small = run._replace(r_max=64, batch=256, budget=1 << 30)  # the budget decides
    per_slot = 48 if jax.default_backend() == "cpu" else 12
    assert S._barrier_chunk(small, n_blocks) == (1 << 30) // (BLOCK * 64 * 256 * per_slot)
    # 16 blocks, at most 10 per call: two calls of 8, not 10 + 6 padded to 10
    fits = small._replace(steps=16 * BLOCK, replications=1, budget=10 * BLOCK * 64 * 256 * per_slot)
    assert S._barrier_chunk(fits, 16) == 8 and S._barrier_chunk(fits, 16, devices=2) == 8
    traj = run._replace(kernel="trajectory", steps=1 << 22, segment_steps=1 << 21)
    setup = types.SimpleNamespace(sampler=KS.alias_sampler([1], [4]), max_load=4)  # K: 2**19 + 8
    for rows in (None, 1 << 11):
        plan = S._plan(traj._replace(reps_per_call=rows), setup)
        assert plan.length == 1 << 21 and 0 < plan.reps_per_call * plan.length * 2 <= 2**31


def test_barrier_results_do_not_depend_on_chunking(small_sampler):
    s, m = small_sampler
    kw = dict(kernel="barrier", steps=300, replications=2, seed=7, max_slot_load=m)
    a = simulate(s, LAT, 4, 8, replications_per_call=1, **kw)
    b = simulate(s, LAT, 4, 8, replications_per_call=4, **kw)
    _same(a, b)


def test_cold_start_lockstep_shrinks_the_barrier():
    """Fixed D: a cold start keeps every slot at the same age forever (lockstep), so worker
    loads differ only through P; the stationary start has uniform ages and a larger barrier.
    Both have the same mean slot load E[P] + (d - 1)/2 over a window of whole cycles."""
    d, r_max, batch = 64, 8, 4  # the shapes of the other tests here: no extra compiles
    p = np.arange(21)  # P uniform on 0..20: Var P = 36.7 << Var(age) = (d^2 - 1)/12 = 341
    s = KS.alias_sampler(p, np.full(p.size, d), size=1024)
    lat = Latency(0.05, 10.0, 0.0, 0.0, 0.0, 0.0)  # Attention only: tau = the barrier
    kw = dict(
        steps=10 * d,
        replications=8,
        seed=1,
        max_slot_load=20 + d - 1,
        segment_steps=128,
        replications_per_call=1,
    )
    res = {
        (k, init): simulate(s, lat, batch, r_max, kernel=k, init=init, **kw)
        for k in ("trajectory", "fast")
        for init in ("cold", "stationary")
    }
    theta = 10.0 + (d - 1) / 2
    for (k, init), r in res.items():
        assert abs(r.mean_slot_load - theta) <= 4 * r.se_slot_load + 1e-9 * theta, (k, init)
    for k in ("trajectory", "fast"):
        cold, stat = res[(k, "cold")], res[(k, "stationary")]
        assert cold.barrier_share[-1] < 0.5 * stat.barrier_share[-1]
        # in lockstep the barrier excess is only the max over workers of sum P - B E[P]
        assert cold.mean_tau[-1] + 4 * cold.se_tau[-1] < stat.mean_tau[-1] - 4 * stat.se_tau[-1]
    # the two trajectory kernels draw the same requests: the same numbers, cold or stationary
    for init in ("cold", "stationary"):
        _same(res[("trajectory", init)], res[("fast", init)])


@pytest.mark.parametrize("workload", ["trace", "paper-v1"])
def test_trajectory_kernel_equals_the_fast_kernel(small_sampler, workload):
    """The step-by-step kernel and the renewal kernel take every slot's fresh requests from
    the same per-slot streams (kernels/streams.py), so every output is the same bit for bit
    (an exact check of the renewal arithmetic, the difference array, the K-request scan and
    its tail, and the shape-bucket padding of the fast kernel: r_max = 9 pads to 10), for an
    alias table (a trace) and a parametric workload (the product sampler's
    blocks), several segments and chunks, both initial laws."""
    import afd_jax

    if workload == "trace":
        s, m = small_sampler
        kw = dict(max_slot_load=m)
    else:
        s, kw = afd_jax.resolve_workload("paper-v1"), {}
    kw.update(steps=700, warmup=60, replications=3, seed=11, segment_steps=256)
    for init in ("stationary", "cold"):
        a = simulate(s, LAT, 5, 9, kernel="trajectory", init=init, replications_per_call=2, **kw)
        b = simulate(s, LAT, 5, 9, kernel="fast", init=init, **kw)
        _same(a, b)


def test_trajectory_kernel_reruns_a_segment_its_requests_do_not_cover(small_sampler, monkeypatch):
    """K = 1 request drawn ahead per slot cannot cover 128 steps of requests of 1 to 59
    steps: every segment is rerun with twice the requests until it is covered (the kernel's
    ``enlarge``), and the results are those of a run that planned enough."""
    from afd_jax.kernels import trajectory as T
    from afd_jax.montecarlo import simulate as S

    s, m = small_sampler
    kw = dict(kernel="trajectory", steps=600, warmup=100, replications=2, seed=7)
    kw.update(max_slot_load=m, segment_steps=128)
    want = simulate(s, LAT, 4, 8, **kw)
    seen = []
    built = T.trajectory_kernel

    def kernel(*args):
        seen.append(args[3])
        return built(*args)

    monkeypatch.setattr(S, "_fast_requests", lambda *a, **k: 1)
    monkeypatch.setattr(T, "trajectory_kernel", kernel)
    _same(simulate(s, LAT, 4, 8, **kw), want)
    assert seen[:3] == [2, 4, 8]


def test_int32_overflow_guard_edge():
    batch = 2
    ok = 2**30 - 1  # B * max load = 2**31 - 2: the largest worker load fits int32
    s = KS.alias_sampler([ok], [1], size=1024)
    lat = Latency(1e-6, 1.0, 0.0, 0.0, 0.0, 0.0)
    res = simulate(s, lat, batch, 2, kernel="barrier", steps=128, replications=1)
    expected = 1e-6 * batch * ok + 1.0
    np.testing.assert_allclose(res.mean_tau, expected, rtol=1e-6)
    big = KS.alias_sampler([ok + 1], [1], size=1024)  # B * max load = 2**31: refused
    with pytest.raises(InputError, match="overflow"):
        simulate(big, lat, batch, 2, kernel="barrier", steps=128, replications=1)
    with pytest.raises(InputError, match="overflow"):  # the fast kernel also needs room for t
        simulate(s, lat, batch, 2, kernel="fast", steps=128, replications=1)


def test_bad_inputs(small_sampler):
    s, m = small_sampler
    for kw in (
        dict(kernel="nope"),
        dict(init="warm"),
        dict(steps=0),
        dict(replications=0),
        dict(kernel="barrier", init="cold"),
        dict(level=1.5),
    ):
        with pytest.raises(InputError):
            simulate(s, LAT, 4, 8, max_slot_load=m, **kw)
    with pytest.raises(InputError):
        simulate(s, LAT, 0, 8, max_slot_load=m)


def test_untrustworthy_intervals_are_said():
    """Two cases where the interval says less than it seems (a researcher's review): one
    replication shorter than two batches of 5 autocorrelation times (decodes of 5,000 steps
    on average, 2,048 steps: its batch-means SE is too small), and an r whose every step took
    the FFN time though the Attention barrier could exceed it (paper-v1, B = 64, r = 5..8 in
    4,096 steps; at 20,000 steps r = 7, 8, where the exact E[tau] is 3.9e-3 us above the
    constant step the run saw). An r whose step
    time cannot vary (decodes of 20 steps at B = 8) is not a warning."""
    import jax

    from afd_jax import resolve_latency, resolve_workload

    lat, opts = resolve_latency("paper-v1")

    def run(spec, batch, r_max, steps, seed=0):
        with jax.enable_x64(True):
            return simulate(
                resolve_workload(spec), lat, batch, r_max, opts=opts, kernel="fast",
                steps=steps, replications=1, seed=seed,
            )  # fmt: skip

    long = run("geometric:prompt=100,decode=5000", 8, 4, 2048)
    assert long.se_warning.startswith("one replication of 2048 steps is shorter than")
    assert long.warnings() == [long.se_warning] and "warnings" in long.to_json()
    rare = run("paper-v1", 64, 8, 4096, seed=3)
    assert rare.fixed_step_r == () and list(rare.se[4:]) == [0.0] * 4 and np.all(rare.se[:4] > 0)
    assert sum(w.startswith("at r = 5, 6, 7, 8 every measured step") for w in rare.warnings()) == 1
    fixed = run("geometric:prompt=100,decode=20", 8, 4, 2048)
    assert fixed.fixed_step_r == (1, 2, 3, 4) and np.all(fixed.se == 0)
    assert fixed.warnings() == [] and "warnings" not in fixed.to_json()
    from afd_jax.kernels.dynamics import Dynamics  # the dynamics driver says the same

    with jax.enable_x64(True):
        routed = simulate(
            resolve_workload("geometric:prompt=100,decode=20"), lat, 8, 4, opts=opts,
            steps=512, replications=2, dynamics=Dynamics(routing="balanced"),
        )  # fmt: skip
    assert routed.fixed_step_r == (1, 2, 3, 4) and np.all(routed.se == 0)
    assert routed.warnings() == []

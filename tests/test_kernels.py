"""Monte Carlo kernels against the exact steady state and against each other.

Statistical tests: fixed seeds, tolerance 4 Monte Carlo standard errors (plus float32 round-off
where the SE is 0). The reference E[tau(r)] is the exact FFT computation (afd_jax.model.exact) of a
slot-load law pi built here independently from the request table by difference arrays.
All three workloads share one padded alias-table shape, so each kernel compiles once.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import trace_path

from afd_jax.kernels import sampling as KS
from afd_jax.model.exact import exact_step_times
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.montecarlo.simulate import simulate
from afd_jax.workload.slotload import SlotLoadPMF
from afd_jax.workload.traces import load_trace

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
    """pi(l) = sum_k w_k [p_k <= l < p_k + d_k] / sum_k w_k d_k (docs/model.md 4), float64."""
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


@pytest.mark.parametrize("kernel", ["trajectory", "fast"])
def test_independent_parametric_workload_matches_exact(kernel):
    """A parametric workload with P and D independent draws its requests from alias tables of
    its marginals (a ProductSampler; the fast kernel from its own counters): E[tau(r)] within
    4 SE of the exact computation on pi from the marginals' convolution (slot_load_pmf), the
    slot load at theta."""
    from afd_jax.kernels.sampling import ProductSampler
    from afd_jax.montecarlo.samplers import make_sampler
    from afd_jax.workload import families as fam
    from afd_jax.workload.slotload import slot_load_pmf

    w = fam.independent(fam.geometric(60.0, min=0), fam.geometric(20.0))
    assert isinstance(make_sampler(w), ProductSampler)
    pi = slot_load_pmf(w, max_bins=1 << 20)
    assert pi.width == 1
    lat = _latency(pi.mean())
    exact = exact_step_times(pi, lat, B, R_MAX, ModelOptions())
    res = simulate(w, lat, B, R_MAX, kernel=kernel, seed=3, **RUNS[kernel])
    err = np.abs(res.mean_tau - exact)
    assert np.all(err <= 4.0 * res.se_tau + 1e-5 * exact), np.max(err / res.se_tau)
    assert exact[7] - exact[0] > 10 * res.se_tau[7]
    assert abs(res.mean_slot_load - pi.mean()) <= 4.0 * res.se_slot_load


def test_barrier_of_a_workload_matches_exact():
    """``simulate(kernel="barrier")`` of a trace workload draws pi from its alias table of
    loads (``load_alias_for``): E[tau(r)] within 4 SE of the exact computation on pi built
    here by difference arrays, the slot load at theta, and the same numbers whatever the
    chunk size."""
    from afd_jax.kernels.sampling import LoadAliasSampler
    from afd_jax.montecarlo.samplers import load_alias_for
    from afd_jax.workload.containers import TraceWorkload

    p, d, w = _table("azure_conv")
    trace = TraceWorkload("azure_conv", p, d)
    assert isinstance(load_alias_for(trace), LoadAliasSampler)
    theta = _theta(p, d, w)
    lat = _latency(theta)
    exact = exact_step_times(_slot_pmf(p, d, w), lat, B, R_MAX, ModelOptions())
    runs = [
        simulate(
            trace,
            lat,
            B,
            R_MAX,
            kernel="barrier",
            steps=4096,
            replications=2,
            seed=5,
            replications_per_call=k,
        )  # fmt: skip
        for k in (None, 3)
    ]
    res = runs[0]
    np.testing.assert_array_equal(res.mean_tau, runs[1].mean_tau)
    err = np.abs(res.mean_tau - exact)
    assert np.all(err <= 4.0 * res.se_tau + 1e-5 * exact), np.max(err / res.se_tau)
    assert exact[7] - exact[0] > 10 * res.se_tau[7]
    assert abs(res.mean_slot_load - theta) <= 4.0 * res.se_slot_load


def test_threefry_matches_jax_and_random123():
    """The unrolled Threefry-2x32 of the kernels is JAX's threefry_2x32 bit for bit, and
    reproduces the Random123 known-answer vectors (threefry2x32_20)."""
    import jax.numpy as jnp
    from jax.extend.random import threefry_2x32

    from afd_jax.kernels.fast import request_bits, threefry2x32

    kat = [  # (key, counter, expected output) from Random123's kat_vectors
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ]
    for key, ctr, out in kat:
        u = [jnp.asarray(v, jnp.uint32) for v in key + ctr]
        assert tuple(int(x) for x in threefry2x32(*u)) == out
    rng = np.random.default_rng(5)
    words = rng.integers(0, 2**32, (7, 2), dtype=np.uint64).astype(np.uint32)
    counts = rng.integers(0, 2**32, (5, 7), dtype=np.uint64).astype(np.uint32)
    b0, b1 = request_bits(jnp.asarray(words), jnp.asarray(counts))
    for i in range(7):
        c = jnp.asarray(np.stack([counts[:, i], np.zeros(5, np.uint32)]))
        ref = threefry_2x32(jnp.asarray(words[i]), c)
        np.testing.assert_array_equal(np.asarray(b0[:, i]), np.asarray(ref[0]))
        np.testing.assert_array_equal(np.asarray(b1[:, i]), np.asarray(ref[1]))


def test_threefry_pair_keeps_every_bit():
    """The cipher's words carried as one complex64 pair (the fast kernel's loop carry) come
    back bit for bit, also the words that read as signalling or quiet NaNs, denormals,
    infinities and -0.0 (moved as float32, never computed on: a flush or a NaN quieting would
    change them), in a scan carry, under jit and under vmap."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from afd_jax.kernels.threefry import threefry2x32, threefry2x32_pair, unpack_pair

    special = np.array(
        [0x7F800001, 0x7FBFFFFF, 0xFF800001, 0x7FC00000, 0xFFFFFFFF, 0x00000001, 0x807FFFFF]
        + [0x7F800000, 0xFF800000, 0x80000000, 0, 0x3F800000],
        dtype=np.uint32,
    )
    words = jnp.asarray(np.stack([special, special[::-1]]))
    pair = lax.complex(*(lax.bitcast_convert_type(w, jnp.float32) for w in words))

    def carried(pair):  # the pair as a scan carry
        return unpack_pair(jax.lax.scan(lambda c, _: (c, None), pair, None, length=3)[0])

    for got in (unpack_pair(pair), jax.jit(unpack_pair)(pair), jax.jit(carried)(pair)):
        np.testing.assert_array_equal(np.asarray(jnp.stack(got)), np.asarray(words))

    rng = np.random.default_rng(11)
    k0, k1 = (
        jnp.asarray(rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)) for _ in "ab"
    )

    def chain(f, unpack):  # 6 blocks per lane, each counter the previous block's first word
        def body(c, i):
            x0, x1 = unpack(c)
            return f(k0, k1, x0 + i, x1), None

        start = f(k0, k1, jnp.zeros_like(k0), k1)
        return unpack(jax.lax.scan(body, start, jnp.arange(6, dtype=jnp.uint32))[0])

    want = chain(threefry2x32, lambda c: c)
    got = jax.jit(lambda: chain(threefry2x32_pair, unpack_pair))()
    np.testing.assert_array_equal(np.asarray(jnp.stack(got)), np.asarray(jnp.stack(want)))
    kinds = lax.bitcast_convert_type(jnp.concatenate(got), jnp.float32)
    assert bool(jnp.isnan(kinds).any()) and bool((jnp.abs(kinds) < 1.2e-38).any())
    batched = jax.vmap(lambda a, b: unpack_pair(threefry2x32_pair(a, b, b, a)))(k0, k1)
    np.testing.assert_array_equal(
        np.asarray(jnp.stack(batched)), np.asarray(jnp.stack(threefry2x32(k0, k1, k1, k0)))
    )


@pytest.mark.parametrize("partitionable", [False, True])
def test_random_bits_are_jax_random_bits(partitionable):
    """``random_bits`` (the samplers' words, unrolled cipher) is ``jax.random.bits`` bit for
    bit, in both Threefry modes (the drivers run non-partitionable; the other mode and raw
    keys go to jax.random itself), for odd and even sizes, under jit and under vmap over keys;
    the fast kernel's slot key words are those of ``fold_in``."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from afd_jax.kernels.streams import slot_words as _slot_words
    from afd_jax.kernels.threefry import random_bits, threefry2x32_pair, unpack_pair

    def ref(k, shape):
        return jr.bits(k, shape, dtype=jnp.uint32)

    with jax.threefry_partitionable(partitionable):
        key = jr.key(2024)
        for shape in [(1,), (5,), (2, 3, 7), (3, 64, 33)]:
            got = jax.jit(random_bits, static_argnums=1)(key, shape)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref(key, shape)))
        keys = jr.split(key, 4)
        batched = jax.vmap(lambda k: random_bits(k, (3, 5)))(keys)
        np.testing.assert_array_equal(
            np.asarray(batched), np.asarray(jax.vmap(lambda k: ref(k, (3, 5)))(keys))
        )
        raw = jr.PRNGKey(3)  # a raw uint32 key: jax.random's own bits
        got = random_bits(raw, (4,))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref(raw, (4,))))
        ids = jnp.asarray([0, 1, 7, 1000, 2**31 - 1], jnp.int32)
        slot_keys = jax.vmap(jr.fold_in, in_axes=(None, 0))(key, ids)
        want = np.asarray(jr.key_data(slot_keys))
        paired = unpack_pair(_slot_words(key, ids, threefry2x32_pair))
        for words in (_slot_words(key, ids), paired):  # two arrays, or one pair per slot
            np.testing.assert_array_equal(np.asarray(jnp.stack(words, axis=1)), want)


@pytest.mark.parametrize("partitionable", [False, True])
def test_three_words_by_halves_are_random_bits(partitionable):
    """The barrier's paired draw: ``three_words_by_halves`` gives the words of
    ``random_bits(key, (3,) + shape)`` of the first and the second half of axis 0, bit for bit,
    under jit and vmap; None (fall back to the words one by one) in the partitionable mode,
    for raw keys and for an odd axis 0."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from afd_jax.kernels.threefry import random_bits, three_words_by_halves

    key = jr.key(77)
    with jax.threefry_partitionable(partitionable):
        if partitionable:
            assert three_words_by_halves(key, (4, 3)) is None
            return
        assert three_words_by_halves(key, (3, 4)) is None
        assert three_words_by_halves(jr.PRNGKey(1), (4, 3)) is None
        for shape in [(2,), (4, 7), (128, 3, 5)]:
            h = shape[0] // 2
            want = np.asarray(random_bits(key, (3,) + shape))
            got = jax.jit(three_words_by_halves, static_argnums=1)(key, shape)
            np.testing.assert_array_equal(np.stack([np.asarray(w) for w in got[0]]), want[:, :h])
            np.testing.assert_array_equal(np.stack([np.asarray(w) for w in got[1]]), want[:, h:])
        keys = jr.split(key, 3)
        lo, hi = jax.vmap(lambda k: three_words_by_halves(k, (4, 2)))(keys)
        ref = jax.vmap(lambda k: random_bits(k, (3, 4, 2)))(keys)
        np.testing.assert_array_equal(np.asarray(jnp.stack(lo, 1)), np.asarray(ref)[:, :, :2])
        np.testing.assert_array_equal(np.asarray(jnp.stack(hi, 1)), np.asarray(ref)[:, :, 2:])


@pytest.mark.parametrize("partitionable", [False, True])
def test_block_words_are_one_threefry_block_per_element(partitionable):
    """``block_words`` (the barrier's draw of pi): element e's two words are the two outputs of
    JAX's threefry_2x32 on the counter (offset + e, 0), in either Threefry mode, under jit and
    vmap over keys; parts with offsets are the whole draw; keys of another implementation
    get ``jax.random.bits``."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    from jax.extend.random import threefry_2x32

    from afd_jax.kernels.threefry import block_words

    def ref(key, n, offset=0):
        e = np.arange(offset, offset + n, dtype=np.uint32)
        out = threefry_2x32(jr.key_data(key), jnp.asarray(np.stack([e, np.zeros_like(e)])))
        return np.asarray(out).reshape(2, n)

    key = jr.key(31)
    with jax.threefry_partitionable(partitionable):
        for shape in [(1,), (6,), (4, 3, 5)]:
            n = int(np.prod(shape))
            got = jax.jit(block_words, static_argnums=(1, 2))(key, shape, 0)
            want = ref(key, n)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(np.asarray(g).ravel(), w)
        whole = np.stack([np.asarray(w) for w in block_words(key, (8, 3))])
        parts = [np.stack([np.asarray(w) for w in block_words(key, (4, 3), o)]) for o in (0, 12)]
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
        np.testing.assert_array_equal(whole[:, :2].reshape(2, -1), ref(key, 6))  # prefix
        keys = jr.split(key, 3)
        batched = jax.vmap(lambda k: jnp.stack(block_words(k, (5,))))(keys)
        for i in range(3):
            np.testing.assert_array_equal(np.asarray(batched[i]), ref(keys[i], 5))
    rbg = jr.key(3, impl="rbg")
    want = np.asarray(jr.bits(rbg, (2, 4), dtype=jnp.uint32))
    np.testing.assert_array_equal(np.stack([np.asarray(w) for w in block_words(rbg, (4,))]), want)
    with pytest.raises(ValueError, match="offset"):
        block_words(rbg, (4,), offset=4)


def _small_alias():
    rng = np.random.default_rng(5)
    p, d = rng.integers(0, 900, 300), rng.integers(1, 400, 300)
    return KS.alias_sampler(p, d, rng.random(300), size=512), KS.table_sampler(p, d)


def test_barrier_halves_draw_the_same_loads():
    """``barrier_loads(halves=True)`` (both halves of the snapshots drawn in one loop, the CPU
    path) gives the worker loads of the word-by-word draw exactly, under jit and vmap over
    block keys, for request alias tables and for alias tables of pi; samplers (and keys)
    without the paired draw fall back to it."""
    import jax
    import jax.random as jr

    from afd_jax.kernels.barrier import barrier_loads

    keys = jr.split(jr.key(9), 3)
    with jax.threefry_partitionable(False):  # the drivers' mode
        alias, table = _small_alias()
        rng = np.random.default_rng(2)
        loads = KS.load_alias_sampler(40, rng.random(700))
        assert KS.slot_load_halves(keys[0], alias, (128, 5, 7)) is not None  # the paired path
        assert KS.slot_load_halves(keys[0], loads, (128, 5, 7)) is not None
        assert KS.slot_load_halves(keys[0], table, (128, 5, 7)) is None  # falls back
        assert KS.slot_load_halves(jr.key(1, impl="rbg"), loads, (128, 5, 7)) is None
        for sampler in (alias, table, loads):
            got = [
                np.asarray(
                    jax.jit(
                        jax.vmap(lambda k, s, h=h: barrier_loads(k, s, r_max=5, batch=7, halves=h))
                    )(keys, jax.tree_util.tree_map(lambda x: np.stack([x] * 3), sampler))
                )
                for h in (False, True)
            ]
            assert got[0].shape == (3, 128, 5)
            np.testing.assert_array_equal(got[0], got[1])


@pytest.mark.parametrize("init", ["stationary", "cold"])
def test_trajectory_segment_is_advance_step_by_step(init):
    """The trajectory kernel's carry (load, steps left, requests taken), its requests drawn
    ahead and its unrolled loop reproduce :func:`advance` on (P, D, age) step by step: the
    same worker loads and end state (request counters included), for 1, 2 and 8 (the
    accelerators') steps per loop iteration (bench_kernels.py --step-unroll), the packed
    carry (and K = 300, past which it is the plain one) and K from just enough to 4x more
    (from a cold start: the CPU's and the accelerators' settings), under jit and vmap over
    key streams, on short requests (D in 1..5: hundreds of renewals, some at every step) and
    long ones; one request fewer than a slot needs is reported as uncovered."""
    import jax
    import jax.random as jr

    from afd_jax.kernels.trajectory import advance, init_slots, load_state, trajectory_segment

    rng = np.random.default_rng(8)
    short = KS.alias_sampler(rng.integers(0, 50, 40), rng.integers(1, 6, 40), size=64)
    streams = jr.split(jr.key(4), 2)
    length = 32
    with jax.threefry_partitionable(False):
        for sampler in (short, _small_alias()[0]):
            state = jax.vmap(lambda k, s=sampler: init_slots(k, s, (3, 4), init))(streams)
            want, st, renewals = [], state, 0
            step = jax.jit(jax.vmap(lambda k, s, sm=sampler: advance(k, s, sm)))
            for _ in range(length):
                want.append((st.prompt + st.age).sum(axis=-1))
                st = step(streams, st)
                renewals += int((np.asarray(st.age) == 0).sum())
            assert renewals > (200 if sampler is short else 0)
            want = np.stack([np.asarray(w) for w in want], axis=1)
            need = int((np.asarray(st.drawn) - np.asarray(state.drawn)).max())
            assert need >= (8 if sampler is short else 1)
            cases = ((1, need), (1, need, True), (8, need + 1, True), (1, need - 1))
            if init == "stationary":  # the start state is all the init changes
                cases += ((2, 4 * need), (8, need + 1), (1, need - 1, True), (1, 300, True))
            for unroll, k, *packed in (c for c in cases if c[1] >= 1):
                run = jax.jit(
                    jax.vmap(
                        lambda s_, st_, u=unroll, sm=sampler, k=k, p=bool(packed): (
                            trajectory_segment(
                                s_, st_, sm, length=length, n_requests=k, unroll=u, packed=p
                            )
                        )
                    )
                )
                end, loads, covered = run(streams, load_state(state))
                if k < need:
                    assert not np.all(np.asarray(covered))
                    continue
                assert np.all(np.asarray(covered))
                np.testing.assert_array_equal(np.asarray(loads), want)
                for a, b in zip(end, load_state(st), strict=True):
                    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="unroll must divide"):
        trajectory_segment(streams[0], load_state(st), short, length=length, n_requests=4, unroll=3)


def test_packed_trajectory_carry_reports_a_decode_too_long_for_it():
    """The packed carry keeps a slot's steps left in 24 bits: a segment that draws a D of
    2**24 or more (or starts with steps left outside 0 .. 2**24 - 1) is uncovered (never a
    wrong load), while the plain carry (and the packed one past K = 254, where it is plain)
    runs it; the driver then packs only below the limit."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from afd_jax.kernels.trajectory import (
        PACKED_LEFT_LIMIT,
        LoadState,
        trajectory_segment,
    )
    from afd_jax.montecarlo import simulate as S

    long = KS.alias_sampler([3, 5], [PACKED_LEFT_LIMIT + 2, 2], size=64)
    st = LoadState(*(jnp.ones((2, 4), jnp.int32) for _ in range(3)))  # every slot done at once
    key = jr.key(1)
    covered = {}
    for packed, k in ((True, 64), (False, 64), (True, 300)):  # K > 32 steps: always enough
        seg = jax.jit(
            lambda s_, p=packed, k=k: trajectory_segment(
                key, s_, long, length=32, n_requests=k, packed=p
            )
        )
        end, loads, covered[packed, k] = seg(st)
    assert not bool(covered[True, 64])
    assert bool(covered[False, 64]) and bool(covered[True, 300])
    short = KS.alias_sampler([3, 5], [2, 1], size=64)  # fits, but a negative steps left does not
    seg = jax.jit(lambda s_: trajectory_segment(key, s_, short, length=32, n_requests=254,
                                                packed=True))  # fmt: skip
    for left, want in ((1, True), (-1, False), (2 - 2**31, False)):  # the last: taken bits 128
        assert bool(seg(st._replace(left=st.left.at[0, 0].set(left)))[2]) == want
    run = S.StepsRun(
        kernel="trajectory", batch=4, r_max=2, steps=256, warmup=0, replications=1,
        init="stationary", seed=0, level=0.95, serial=False, budget=1 << 30,
        segment_steps=None, reps_per_call=None,
    )  # fmt: skip
    plans = {m: S._plan(run, S.StepsSetup(long, None, None, None, None, m)) for m in (9, 1 << 24)}
    assert plans[9].packed and not plans[1 << 24].packed


def test_fast_kernel_z_scores_are_standard():
    """Over independent seeds the fast kernel's z = (estimate - exact) / SE behaves like
    Student t with replications - 1 df (~N(0, 1)): mean, mean |z| and the fraction beyond 2
    within 4 standard errors (binomial for the fraction). One r per seed (cycling through
    1..32), so the z's are independent. Catches a biased generator or a wrong SE."""
    import scipy.stats

    p, d, w = _table("azure_conv")
    sampler = KS.alias_sampler(p, d, w, size=TABLE)
    lat = _latency(_theta(p, d, w))
    exact = exact_step_times(_slot_pmf(p, d, w), lat, B, R_MAX, ModelOptions())
    r_list = (1, 2, 4, 8, 16, 32)
    n, reps = 30, RUNS["fast"]["replications"]
    z = np.empty(n)
    for i in range(n):
        res = simulate(
            sampler, lat, B, R_MAX, kernel="fast", seed=1000 + i,
            max_slot_load=int((p + d - 1).max()), **RUNS["fast"],
        )  # fmt: skip
        r = r_list[i % len(r_list)]
        z[i] = (res.mean_tau[r - 1] - exact[r - 1]) / res.se_tau[r - 1]
    df = reps - 1
    e_abs = float(scipy.stats.t.expect(abs, args=(df,)))
    sd_abs = np.sqrt(df / (df - 2) - e_abs**2)
    p2 = float(2 * scipy.stats.t.sf(2.0, df))
    assert abs(z.mean()) <= 4 * np.sqrt(df / (df - 2) / n), z
    assert abs(np.abs(z).mean() - e_abs) <= 4 * sd_abs / np.sqrt(n), z
    assert np.mean(np.abs(z) > 2) <= p2 + 4 * np.sqrt(p2 * (1 - p2) / n), z

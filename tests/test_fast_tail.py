"""The fast kernel's two-phase request scan (kernels.fast._tail): the first K1 requests over
every slot, the remaining K - K1 only over the slots still short of the segment's end,
gathered. It must give the single-phase scan's numbers bit for bit (loads, end state, request
counters, coverage), for the alias path (carried Threefry bits) and the generic path (inverse-CDF
table), with padded slots, and report an overflow of its gathered lanes as "not covered" so
that the driver reruns the segment (and then gives the same numbers)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from conftest import trace_path

from afd_jax.kernels import fast as fast_module
from afd_jax.kernels import sampling as KS
from afd_jax.kernels.fast import fast_segment, fresh_requests
from afd_jax.kernels.trajectory import init_slots
from afd_jax.model.latency import Latency
from afd_jax.montecarlo import simulate as S
from afd_jax.montecarlo.samplers import decode_moments, make_sampler
from afd_jax.workload import families as fam
from afd_jax.workload.traces import load_trace

RNG = np.random.default_rng(3)
PROMPT, DECODE = RNG.integers(0, 400, 700), RNG.geometric(1 / 25, 700)
ALIAS = KS.alias_sampler(PROMPT, DECODE, size=1024)


def _segment(sampler, state, *, length, n_requests, n_bulk, real_batch=None, paired=True, **kw):
    f = jax.jit(
        lambda k, s: fast_segment(
            k, s, sampler, length=length, n_requests=n_requests, n_bulk=n_bulk,
            real_batch=real_batch, paired=paired, **kw,
        )
    )  # fmt: skip
    return jax.tree_util.tree_map(np.asarray, f(jr.key(11), state))


def _same(a, b) -> bool:
    return all(
        np.array_equal(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


def test_two_phase_equals_one_phase_alias():
    """40 x 16 slots padded from 13 per worker, 256 gathered lanes (about 10 requests cover
    256 steps, so after 13 the short slots fit): the loads, the end state and the coverage
    equal the single-phase scan's."""
    state = init_slots(jr.key(2), ALIAS, (40, 16), "stationary")
    kw = dict(length=256, n_requests=40, real_batch=jnp.int32(13))
    one = _segment(ALIAS, state, n_bulk=None, **kw)
    two = _segment(ALIAS, state, n_bulk=13, **kw)
    assert bool(one[2]) and bool(two[2]), "K = 40 covers 256 steps of mean-25 requests"
    assert _same(one, two)
    # the random words carried as two arrays instead of one complex64 pair: the same bits
    assert _same(two, _segment(ALIAS, state, n_bulk=13, paired=False, **kw))
    assert _same(one, _segment(ALIAS, state, n_bulk=None, paired=False, **kw))
    # four requests per loop iteration (accelerators), 13 + 27 of them: a remainder in both
    # loops; the same numbers
    assert _same(two, _segment(ALIAS, state, n_bulk=13, paired=False, unroll=4, **kw))


def test_paired_words_under_debug_nans():
    """With ``jax_debug_nans`` on, op by op (``disable_jit``), a paired carry would raise on
    the words that read as float NaNs (1 in 256): the kernel then carries them as two arrays,
    and gives the jitted numbers."""
    state = init_slots(jr.key(2), ALIAS, (8, 16), "stationary")
    # small, since every op runs eagerly; without the fallback this raises (checked)
    kw = dict(length=32, n_requests=4, n_bulk=2)
    want = _segment(ALIAS, state, **kw)
    with jax.debug_nans(True), jax.disable_jit():
        got = fast_segment(jr.key(11), state, ALIAS, paired=True, **kw)
    assert _same(want, jax.tree_util.tree_map(np.asarray, got))


def test_two_phase_equals_one_phase_generic_sampler():
    """The generic path (requests drawn up front, [K, slots]) with an inverse-CDF table."""
    sampler = KS.table_sampler(PROMPT, DECODE)
    state = init_slots(jr.key(4), sampler, (20, 16), "stationary")  # 320 slots, 256 lanes
    one = _segment(sampler, state, length=128, n_requests=24, n_bulk=None)
    two = _segment(sampler, state, length=128, n_requests=24, n_bulk=8)
    assert _same(two, _segment(sampler, state, length=128, n_requests=24, n_bulk=8, unroll=3))
    assert bool(one[2]) and bool(two[2]) and _same(one, two)


def _drawn_up_front(key_stream, drawn, sampler, n_requests, slot_ids, paired=True):
    """The request scan's draws as the fast kernel took them for parametric samplers before
    it hashed request k in step k: all K requests of every slot up front (fresh_requests)."""
    p, d = fresh_requests(key_stream, drawn, sampler, n_requests, slot_ids)
    xs = (p.reshape(n_requests, -1), d.reshape(n_requests, -1))
    return (), lambda consts, extra, pd: (pd[0], pd[1], extra), (), xs


@pytest.mark.parametrize("kind", ["copula", "product"])
def test_parametric_requests_hashed_in_the_scan(monkeypatch, kind):
    """Parametric samplers (WORD_DRAWS) hash request k's blocks inside the scan's step k, so
    the tail's lanes hash only their own requests: the same loads, end state and coverage as
    with every slot's K requests drawn up front (fresh_requests, whose law
    tests/test_families.py checks), in one phase, two (320 slots, 256 lanes, 13 of 16 slots
    real per worker) and with 3 requests per loop iteration."""
    pm, dm = fam.lognormal(0.8, median=60, lo=0, hi=600), fam.geometric(12.0)
    w = fam.copula(pm, dm, 0.5) if kind == "copula" else fam.independent(pm, dm)
    sampler = make_sampler(w)
    state = init_slots(jr.key(4), sampler, (20, 16), "stationary")
    kw = dict(length=128, n_requests=30, real_batch=jnp.int32(13))
    # the phases and the unroll are the scan's, whatever the sampler: every variant for the
    # copula, the default two phases for independent marginals (their draw is the other code)
    plans = ((None, 1), (10, 1), (10, 3)) if kind == "copula" else ((10, 1),)
    got = [_segment(sampler, state, n_bulk=n_bulk, unroll=unroll, **kw) for n_bulk, unroll in plans]
    monkeypatch.setattr(fast_module, "_draws", _drawn_up_front)
    want = _segment(sampler, state, n_bulk=None, **kw)
    assert bool(want[2]), "K = 30 covers 128 steps of mean-12 requests"
    assert all(_same(want, g) for g in got)


KW = dict(kernel="fast", steps=1500, warmup=200, replications=2, seed=9, segment_steps=1024)
LAT = Latency(0.05, 10.0, 0.5, 20.0, 0.01, 2.0)


@functools.cache
def _reference():
    return S.simulate(ALIAS, LAT, 32, 16, **KW, max_slot_load=int((PROMPT + DECODE - 1).max()))


def _carry():
    """The driver's fast-kernel carry in :func:`_rerun` (words paired there; the request loop
    unrolled on an accelerator), so that the tests name the kernels it calls on any backend."""
    on_cpu = jax.default_backend() == "cpu"
    return dict(paired=True, unroll=1 if on_cpu else S._ACCELERATOR_UNROLL)


def _rerun(monkeypatch, change):
    """simulate with the plan changed by ``change``: the calls' ("covered" flag, kernel, start
    step); the numbers must be the default run's (:func:`_reference`, run before the
    change). The driver dispatches a segment before it knows the one before is covered, so
    a short segment's successor may also be called with the short kernel: that call is
    discarded and repeated after the rerun."""
    kw = dict(KW, max_slot_load=int((PROMPT + DECODE - 1).max()))
    ref = _reference()
    plan = S._plan
    monkeypatch.setattr(S, "_plan", lambda *a, **k: change(plan(*a, **k)))
    monkeypatch.setattr(S, "_paired", lambda mesh: True)  # the kernels the tests name
    seen, chunk = [], S.segment_chunk

    def record(*a, **k):
        out = chunk(*a, **k)
        seen.append((bool(out[2]), k["kernel"], int(a[2].t0)))
        return out

    monkeypatch.setattr(S, "segment_chunk", record)
    got = S.simulate(ALIAS, LAT, 32, 16, **kw)
    for name in ("mean_tau", "se_tau", "idle_attn", "step_p99", "mean_slot_load"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    return seen


def test_driver_reruns_a_short_segment_with_twice_the_requests_in_the_lanes(monkeypatch):
    """K = K1 + 1 (the bulk as planned): some slots need more requests than K, so a segment is
    "not covered" and rerun with 2K and the same bulk (the added requests run only in the
    gathered lanes), which covers it and every later segment; same numbers."""
    plans = []

    def change(p):
        plans.append(p)
        return p._replace(n_requests=p.n_bulk + 1)

    seen = _rerun(monkeypatch, change)
    k1 = plans[0].n_bulk
    grown = S.fast_kernel((16, 32), "stationary", 1024, 2 * (k1 + 1), k1, grown=True, **_carry())
    first = [c for c, k, _ in seen if k is not grown]
    assert first[0] is False and len(first) <= 2, seen  # short; at most one successor ahead
    assert all(c for c, k, _ in seen if k is grown), seen  # 2K suffices
    assert [t for _, k, t in seen if k is grown] == [0, 1024], seen  # each segment once


def test_driver_reruns_an_overflowing_segment_over_all_slots(monkeypatch):
    """K1 = 1: after one request almost all 512 slots are short of the 1,024-step segment,
    more than its 256 gathered lanes. The segment is "not covered"; rerun with 2K and the same
    bulk, it overflows again, and then runs with 2K over all slots; same numbers."""
    plans = []
    seen = _rerun(monkeypatch, lambda p: plans.append(p) or p._replace(n_bulk=1))
    one_phase = S.fast_kernel((16, 32), "stationary", 1024, 2 * plans[0].n_requests, **_carry())
    assert all(c == (k is one_phase) for c, k, _ in seen), seen  # only one phase covers
    assert [t for _, k, t in seen if k is one_phase] == [0, 1024], seen


def _requests_needed(rng, decode, length: int, n: int) -> np.ndarray:
    """NumPy reference: the fresh requests each of ``n`` slots needs to cover ``length`` steps
    from the stationary state (the current request's remaining steps are uniform on 1..D of a
    length-biased D), decode lengths drawn from ``decode``."""
    biased = rng.choice(decode, n, p=decode / decode.sum())
    end, need = rng.integers(1, biased + 1), np.zeros(n, np.int64)
    short = np.nonzero(end <= length)[0]
    while short.size:
        end[short] += rng.choice(decode, short.size)
        need[short] += 1
        short = short[end[short] <= length]
    return need


def test_requests_per_segment_cover_large_runs():
    """K (the fresh requests per slot and segment) must cover every slot of a large run, or
    segments rerun (docs/cpu-speed.md, round 4). With the Azure conversation trace's decode
    law, a NumPy simulation of 1,000,000 slots (a call of 61 x 16,384) gives the most requests
    one of them needs at 5,120, 10,112 and 16,384 steps. The count's tail falls by a factor of
    about 0.6 per request at 10,112 steps (faster for shorter segments), so 8 requests beyond
    that maximum cover about 1 in 5e7 slots (a run of 64 replications x 20 segments x 16,384
    slots is 2e7 slot-segments): K must be at least the maximum plus 8. The former 5-sigma
    bound was not (10,112 steps: 80 against maxima of 76 to 79 over four seeds), and 32
    replications of 10,000 steps reran a call."""
    w = load_trace(trace_path("azure_conv"))
    decode = np.asarray(w.decode, np.int64)
    decode = decode[decode > 0]
    mean, sd = decode_moments(make_sampler(w, 0, draw="alias"))
    rng = np.random.default_rng(2026)
    most = {t: _requests_needed(rng, decode, t, 1_000_000).max() for t in (5_120, 10_112, 16_384)}
    for length, n in most.items():
        assert S._fast_requests(length, mean, sd) >= n + 8, (length, n)
    five = S._renewal_quantile(10_112, mean, sd, sigmas=5.0, extra=4.0, octave=8)
    assert five < most[10_112] + 8  # tells them apart


def test_bulk_leaves_few_slots_to_the_lanes():
    """K1 (the requests every slot runs, ``simulate._bulk_requests``) is sized so that the
    slots still short of the segment fit the gathered lanes (S/16, 6.25 %) with room for
    chance: in a NumPy simulation of 50,000 slots from the stationary state, at most 2.5 % of
    them need more than K1, for the three traces' and the paper workload's decode laws and
    segments of 512 to 16,384 steps (up to 1.6 % in runs of 40,000 to 200,000 slots at every
    multiple of 128 steps). A bulk of 1.5 instead of 2 standard deviations and no + 1 leaves
    up to 6 % and fails. K1 must not exceed K."""
    from afd_jax.workload.specs import resolve_workload

    rng = np.random.default_rng(7)
    laws = {}
    for name in ("azure_conv", "azure_code", "mooncake"):
        w = load_trace(trace_path(name))
        decode = np.asarray(w.decode, np.int64)
        laws[name] = (decode[decode > 0], decode_moments(make_sampler(w, 0, draw="alias")))
    paper = make_sampler(resolve_workload("paper-v1"), 0)
    decode = np.asarray(KS.sample_requests(jr.key(0), paper, (200_000,))[1], np.int64)
    laws["paper-v1"] = (decode, decode_moments(paper))
    loosest = 0.0
    for name, (decode, (mean, sd)) in laws.items():
        for length in (512, 2_048, 5_120, 16_384):
            k1 = S._bulk_requests(length, mean, sd)
            need = _requests_needed(rng, decode, length, 50_000)
            short = np.mean(need > k1)
            assert short <= 0.025, (name, length, k1, short)
            assert k1 <= S._fast_requests(length, mean, sd)
            loose = S._renewal_quantile(length, mean, sd, sigmas=1.5, extra=0.0, octave=16)
            loosest = max(loosest, np.mean(need > loose))
    assert loosest > 0.025, loosest  # the check tells the two rules apart

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

from afd_jax.kernels import sampling as KS
from afd_jax.kernels.fast import fast_segment
from afd_jax.kernels.trajectory import init_slots
from afd_jax.model.latency import Latency
from afd_jax.montecarlo import simulate as S

RNG = np.random.default_rng(3)
PROMPT, DECODE = RNG.integers(0, 400, 700), RNG.geometric(1 / 25, 700)
ALIAS = KS.alias_sampler(PROMPT, DECODE, size=1024)


def _segment(sampler, state, *, length, n_requests, n_bulk, real_batch=None):
    f = jax.jit(
        lambda k, s: fast_segment(
            k, s, sampler, length=length, n_requests=n_requests, n_bulk=n_bulk,
            real_batch=real_batch,
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


def test_two_phase_equals_one_phase_generic_sampler():
    """The generic path (requests drawn up front, [K, slots]) with an inverse-CDF table."""
    sampler = KS.table_sampler(PROMPT, DECODE)
    state = init_slots(jr.key(4), sampler, (20, 16), "stationary")  # 320 slots, 256 lanes
    one = _segment(sampler, state, length=128, n_requests=24, n_bulk=None)
    two = _segment(sampler, state, length=128, n_requests=24, n_bulk=8)
    assert bool(one[2]) and bool(two[2]) and _same(one, two)


KW = dict(kernel="fast", steps=1500, warmup=200, replications=2, seed=9, segment_steps=1024)
LAT = Latency(0.05, 10.0, 0.5, 20.0, 0.01, 2.0)


@functools.cache
def _reference():
    return S.simulate(ALIAS, LAT, 32, 16, **KW, max_slot_load=int((PROMPT + DECODE - 1).max()))


def _rerun(monkeypatch, change):
    """simulate with the plan changed by ``change``: the calls' ("covered" flag, kernel); the
    numbers must be the default run's (:func:`_reference`, run before the change)."""
    kw = dict(KW, max_slot_load=int((PROMPT + DECODE - 1).max()))
    ref = _reference()
    plan = S._plan
    monkeypatch.setattr(S, "_plan", lambda *a, **k: change(plan(*a, **k)))
    seen, chunk = [], S.segment_chunk

    def record(*a, **k):
        out = chunk(*a, **k)
        seen.append((bool(out[2]), k["kernel"]))
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
    flags = [c for c, _ in seen]
    assert flags.count(False) == 1, flags  # one rerun, then K suffices
    k1 = plans[0].n_bulk
    grown = S.fast_kernel((16, 32), "stationary", 1024, 2 * (k1 + 1), k1, grown=True)
    assert all(k is grown for _, k in seen[flags.index(False) + 1 :])


def test_driver_reruns_an_overflowing_segment_over_all_slots(monkeypatch):
    """K1 = 1: after one request almost all 512 slots are short of the 1,024-step segment,
    more than its 256 gathered lanes. The segment is "not covered"; rerun with 2K and the same
    bulk, it overflows again, and then runs with 2K over all slots; same numbers."""
    plans = []
    seen = _rerun(monkeypatch, lambda p: plans.append(p) or p._replace(n_bulk=1))
    assert [c for c, _ in seen] == [False, False] + [True] * (len(seen) - 2), seen
    one_phase = S.fast_kernel((16, 32), "stationary", 1024, 2 * plans[0].n_requests)
    assert all(k is one_phase for _, k in seen[2:])

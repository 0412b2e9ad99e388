"""Fast trajectory kernel: work proportional to the number of requests, not slot-steps.

Exactly the model of :mod:`kernels.trajectory` (same slot state, same initial laws, same
measurement), computed per segment of ``L`` steps as renewal sequences:

* each slot continues its current request (P_0, D_0) that started at local time ``s_0 = -age``
  and then runs fresh requests k = 1..K starting at ``s_k = s_{k-1} + D_{k-1}``;
* a request contributes the load ``P + (t - s)`` on ``[s, s + D)``. Every slot holds exactly one
  request at every step, so a worker's load is ``T_j(t) = C_j(t) + B t`` with
  ``C_j(t) = sum over active requests of (P - s)``: one scatter per request of the change
  ``c_k - c_{k-1}`` (``c = P - s``) at its start into an int32[r_max, L + 1] difference array,
  then a cumulative sum over t. The driver checks ``B * (max slot load + L + 1) < 2**31``.
* the state at the end of the segment is the request active at local time L.

Randomness is counter-based per request (:mod:`.streams`: the n-th fresh request of slot i, the
stream the trajectory kernel draws from too), so the numbers do not depend on the segment
length, on K or on how replications are chunked. ``K`` (static) must cover the segment: the
kernel returns a flag, and the driver redoes the segment with a larger K when some slot falls short.
Pure and un-jitted. No imports from afd_jax.
"""

from __future__ import annotations

from functools import cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .contract import Kernel, SegmentInfo
from .sampling import WORD_DRAWS, AliasSampler, alias_requests_from_bits
from .streams import block_counters, fresh_requests, request_bits, slot_layout, slot_words
from .threefry import threefry2x32, threefry2x32_pair, unpack_pair
from .trajectory import SlotState, init_slots


def _cumsum0(x):
    """Inclusive int32 prefix sum over axis 0 (exact; a parallel scan, several times faster
    than ``jnp.cumsum`` on XLA:CPU)."""
    return jax.lax.associative_scan(jnp.add, x, axis=0)


class _Slots(NamedTuple):
    """Per-slot constants of the request scan: each slot's worker ``rows``, ``real`` (bool, or
    None: all real) and the sampler's draw constants ``consts`` (alias tables: the Threefry
    key words and the first request number; else ())."""

    rows: jax.Array
    real: jax.Array | None
    consts: tuple


def _request_scan(slots: _Slots, carry, xs, *, draw, length: int, r_max: int, unroll: int = 1):
    """The renewal scan of :func:`fast_segment` over the requests ``xs`` (leading axis) of
    every slot of ``slots`` (``unroll`` requests per loop iteration): returns the carry (end
    and change of the last request, the request active at local time L, requests ended, the
    difference array, the draw state)."""

    def body(carry, x):
        end_prev, c_prev, act_p, act_d, act_s, n_ended, diff, extra = carry
        p, d, extra = draw(slots.consts, extra, x)
        start = end_prev
        end = start + d
        c = p - start if slots.real is None else jnp.where(slots.real, p - start, 0)
        active = (start <= length) & (end > length)
        # slot constant c_0 from t = 0 (base below), then c_k - c_{k-1} from the start of
        # request k; starts at or beyond L land in the spare row L
        flat = jnp.minimum(start, length) * jnp.int32(r_max) + slots.rows
        diff = diff.at[flat].add(c - c_prev, mode="promise_in_bounds")
        carry = (
            end,
            c,
            jnp.where(active, p, act_p),
            jnp.where(active, d, act_d),
            jnp.where(active, start, act_s),
            n_ended + (end <= length).astype(jnp.int32),
            diff,
            extra,
        )
        return carry, None

    return jax.lax.scan(body, carry, xs, unroll=unroll)[0]


def _tail(scan, slots: _Slots, carry, xs, *, length: int, cap: int):
    """The remaining requests ``xs`` of the slots whose requests so far end within the
    segment, gathered into ``cap`` lanes (static): the other slots would only add their
    requests beyond L to the spare row. Entries past the count are copies of slot 0 that add
    zeros and are not written back; when more than ``cap`` slots need requests, the rest stay
    uncovered and the driver reruns the segment with a larger K."""
    end_prev = carry[0]
    n_slots = end_prev.shape[0]
    need = end_prev <= length
    (idx,) = jnp.nonzero(need, size=cap, fill_value=0)
    ok = jnp.arange(cap) < need.sum()
    take = partial(jax.tree_util.tree_map, lambda x: x[idx])
    real = ok if slots.real is None else ok & slots.real[idx]
    sub = _Slots(slots.rows[idx], real, take(slots.consts))
    part = (*take(carry[:6]), carry[6], take(carry[7]))
    part = (part[0], jnp.where(ok, part[1], 0), *part[2:])  # lanes past the count add zeros
    per_slot = partial(jax.tree_util.tree_map, lambda x: x[:, idx] if x.ndim == 2 else x)
    part = scan(sub, part, per_slot(xs))  # request numbers [K] or requests [K, slots]
    dest = jnp.where(ok, idx, n_slots)
    pairs = zip(carry[:6], part[:6], strict=True)
    out = [full.at[dest].set(new, mode="drop") for full, new in pairs]
    return (*out, part[6], carry[7])


def _draws(key_stream, drawn, sampler, n_requests: int, slot_ids, paired: bool = True):
    """How the request scan draws: ``(consts, draw, extra0, xs)`` with ``draw(consts, extra,
    x) -> (prompt, decode, extra)``. An :class:`AliasSampler` draws request k from Threefry
    bits carried from the step before, ``paired`` as one complex64 pair per slot, else as two
    arrays (consts: the slot key words, paired the same way, and the first request number;
    xs: the request numbers 0..K-1); the samplers of :data:`~.sampling.WORD_DRAWS` hash
    request k's blocks in step k (consts: the slot key words and the first request number;
    xs: 0..K-1), so that the tail's lanes hash only their own requests (1.65x on
    ``azure-conv-fit`` and ``paper-v1``, docs/cpu-speed.md round 16); other samplers take their
    requests from :func:`fresh_requests` (xs: prompt and decode [K, slots]). Under
    ``jax_debug_nans`` the words are never paired: a word that reads as a float NaN would raise
    outside jit."""
    n_slots = drawn.size
    if isinstance(sampler, AliasSampler):
        n0 = drawn.reshape(n_slots).astype(jnp.uint32)
        if paired and not jax.config.jax_debug_nans:
            pack, unpack = threefry2x32_pair, unpack_pair
        else:
            pack, unpack = threefry2x32, tuple
        consts = (slot_words(key_stream, slot_ids, pack), n0)  # a loop operand: hashed once

        def draw(consts, bits, k):  # request k from its carried bits; bits of request k + 1
            (k0, k1), n0 = unpack(consts[0]), consts[1]
            p, d = alias_requests_from_bits(sampler, *unpack(bits))
            return p, d, pack(k0, k1, n0 + (k + jnp.uint32(1)), jnp.zeros_like(k0))

        extra0 = pack(*unpack(consts[0]), n0, jnp.zeros_like(n0))
        return consts, draw, extra0, jnp.arange(n_requests, dtype=jnp.uint32)

    if type(sampler) in WORD_DRAWS:
        return _word_draws(key_stream, drawn, sampler, n_requests, slot_ids)

    p_new, d_new = fresh_requests(key_stream, drawn, sampler, n_requests, slot_ids)

    def draw_given(consts, extra, pd):
        return pd[0], pd[1], extra

    xs = (p_new.reshape(n_requests, n_slots), d_new.reshape(n_requests, n_slots))
    return (), draw_given, (), xs


def _word_draws(key_stream, drawn, sampler, n_requests: int, slot_ids):
    """:func:`_draws` of a :data:`~.sampling.WORD_DRAWS` sampler: request k's blocks hashed in
    the scan's step k from the slot counters, the blocks :func:`fresh_requests` takes."""
    wd = WORD_DRAWS[type(sampler)]
    blocks = wd.blocks(sampler)
    consts = (slot_words(key_stream, slot_ids), drawn.reshape(drawn.size).astype(jnp.uint32))

    def draw_words(consts, extra, k):
        (k0, k1), n0 = consts
        zero = jnp.zeros_like(k0)
        words = [threefry2x32(k0, k1, c, zero) for c in block_counters(n0 + k, blocks)]
        # materialised once: XLA would otherwise rehash inside every gather that reads them
        p, d = wd.from_words(sampler, jax.lax.optimization_barrier(words))
        return p, d, extra

    return consts, draw_words, (), jnp.arange(n_requests, dtype=jnp.uint32)


def fast_segment(
    key_stream,
    state: SlotState,
    sampler,
    *,
    length: int,
    n_requests: int,
    n_bulk: int | None = None,
    real_batch=None,
    workers=None,
    paired: bool = True,
    unroll: int = 1,
):
    """Run the next ``length`` steps with K = ``n_requests`` fresh requests per slot (static).

    Same contract as :func:`kernels.trajectory.trajectory_segment` (B is the slot axis of the
    state). Returns ``(state, worker loads int32[length, r_max], covered)``; ``covered`` (bool
    scalar) is False when some slot's K requests end before the segment does (the results are
    then invalid and the driver reruns with a larger K: the request stream does not depend on
    K, so the rerun is reproducible).

    One ``lax.scan`` over the K fresh requests, each step a vector over all r_max * B slots:
    draw request k (the requests of :func:`fresh_requests`), its start
    ``s_k = s_{k-1} + D_{k-1}``, scatter-add its change ``c_k - c_{k-1}`` (``c = P - s``: the
    load at local time t is ``c + t``) into the difference array ``int32[(L + 1) * r_max]``
    (row ``min(s_k, L)``, laid out ``[L + 1, r_max]`` so that the prefix sum runs over the
    leading axis), and keep the request active at local time L. For an
    :class:`AliasSampler` the Threefry bits of request k + 1 are computed in step k and
    carried (the loop state is materialised, so XLA does not recompute the hash inside each
    table gather); parametric samplers hash request k's blocks in step k, the others take
    their requests from :func:`fresh_requests` (the same requests in every case).
    ``paired`` (static): carry the two words as one complex64 pair, so that one fusion hashes
    each block (:func:`kernels.threefry.threefry2x32_pair`); False: as two arrays, which
    XLA:CPU computes in two fusions (twice the hashing, but at the same time when a core is
    free: faster on one device with a spare core, docs/cpu-speed.md, round 7). Same bits.
    ``unroll`` (static): requests per iteration of the scans' loops (fewer iterations: on a
    GPU each costs a launch of the loop body's kernels). Same numbers.
    ``n_bulk`` (static): None, or run only the first ``n_bulk`` requests over all slots and the
    remaining K - ``n_bulk`` over the few slots still short of L, gathered into
    max(256, slots / 16) lanes (:func:`_tail`; the same numbers, less work: K must cover the
    slot that needs most requests, the typical slot needs far fewer). With no more slots than
    lanes it is ignored.
    ``real_batch``: None, or (traced int32) the real slots per worker when B is padded to a
    shape bucket: the real slots draw the unpadded layout's requests, the padded ones add no
    load (their changes are scattered as zeros). ``workers``: None, or (first, total) traced
    int32 when ``state`` holds a slice of a bundle's workers (:func:`~.streams.slot_layout`):
    the slots draw the requests they draw in the whole bundle.
    """
    r_max, batch = state.prompt.shape
    n_slots = r_max * batch
    rows = jnp.repeat(jnp.arange(r_max, dtype=jnp.int32), batch)  # worker of each slot
    slot_ids, real = slot_layout((r_max, batch), real_batch, workers)
    cur_p, cur_d, cur_age = (x.reshape(n_slots) for x in state[:3])
    rem0 = cur_d - cur_age  # steps left of the current request, >= 1
    still = rem0 > length  # the current request is still active at local time L
    c0 = cur_p + cur_age  # current request: c = P - (-age); padded slots: no load
    c0 = c0 if real is None else jnp.where(real, c0, 0)

    consts, draw, extra0, xs = _draws(
        key_stream, state.drawn, sampler, n_requests, slot_ids, paired
    )
    diff0 = jnp.zeros(((length + 1) * r_max,), jnp.int32)
    ended0 = jnp.where(still, 0, 1).astype(jnp.int32)
    carry = (rem0, c0, cur_p, cur_d, -cur_age, ended0, diff0, extra0)
    slots = _Slots(rows, real, consts)
    scan = partial(_request_scan, draw=draw, length=length, r_max=r_max, unroll=unroll)
    cap = max(256, n_slots // 16)  # gathered lanes; fewer slots than that: one phase
    bulk = n_requests if n_bulk is None or cap >= n_slots else min(n_bulk, n_requests)
    carry = scan(slots, carry, jax.tree_util.tree_map(lambda x: x[:bulk], xs))
    if bulk < n_requests and cap < n_slots:  # the few slots still short run the remaining K
        tail = jax.tree_util.tree_map(lambda x: x[bulk:], xs)
        carry = _tail(scan, slots, carry, tail, length=length, cap=cap)
    end_k, _, act_p, act_d, act_s, n_ended, diff, _ = carry
    covered = jnp.all(end_k > length)

    base = c0.reshape(r_max, batch).sum(axis=-1, dtype=jnp.int32)
    t_local = jnp.arange(length, dtype=jnp.int32)[:, None]
    per_step = jnp.int32(batch) if real_batch is None else real_batch  # real slots per worker
    worker_loads = _cumsum0(diff.reshape(length + 1, r_max))[:length] + (
        base[None, :] + per_step * t_local
    )  # [L, r_max]
    shape = (r_max, batch)
    new_state = SlotState(
        act_p.reshape(shape),
        act_d.reshape(shape),
        (jnp.int32(length) - act_s).reshape(shape),
        state.drawn + n_ended.reshape(shape),
    )
    return new_state, worker_loads, covered


def fast_kernel(
    shape: tuple,
    init: str,
    length: int,
    n_requests: int,
    n_bulk: int | None = None,
    grown: bool = False,
    paired: bool = True,
    unroll: int = 1,
) -> Kernel:
    """The fast renewal kernel under the contract of :mod:`kernels.contract`: the initial state
    of :func:`kernels.trajectory.init_slots`, ``segment`` = :func:`fast_segment` (the next
    ``length`` steps, K = ``n_requests`` fresh requests per slot, the first ``n_bulk`` of them
    over all slots). ``enlarge()`` first (``grown`` False) doubles K with the same bulk, so
    that the added requests run only in the tail's lanes (a slot that needs more than K is
    rare, and the more slots a call holds, the likelier one is: a rerun over all slots with
    2K would make the rest of a large run 2.5x slower); a second shortfall means more short
    slots than lanes, and runs those requests over all slots; later ones double K again.
    ``paired``, ``unroll``: how the request scan carries its random words and how many
    requests each loop iteration runs (:func:`fast_segment`). The same configuration gives
    the same :class:`Kernel`, however the arguments are passed."""
    args = (n_requests, n_bulk, grown, paired, unroll)
    return _fast_kernel(tuple(shape), init, length, *args)


@cache
def _fast_kernel(shape, init, length, n_requests, n_bulk, grown, paired, unroll) -> Kernel:
    """:func:`fast_kernel`, cached on its positional arguments."""

    def init_fn(key, params):
        return init_slots(key, params.sampler, shape, init)

    def segment(key_stream, state, params):
        kw = dict(length=length, n_requests=n_requests, n_bulk=n_bulk, paired=paired)
        kw.update(unroll=unroll)
        kw.update(real_batch=params.batch, workers=params.workers)
        state, loads, covered = fast_segment(key_stream, state, params.sampler, **kw)
        return state, SegmentInfo(loads, covered)

    def enlarge():
        more = partial(fast_kernel, shape, init, length, paired=paired, unroll=unroll)
        if n_bulk is not None and not grown:  # twice the requests, the added ones in the lanes
            return more(2 * n_requests, n_bulk, grown=True)
        if n_bulk is not None:  # short again: more short slots than lanes, so one phase
            return more(n_requests)
        return more(2 * n_requests)

    return Kernel("fast", init_fn, segment, enlarge)


@cache
def padded_init(shape: tuple, init: str, real: tuple) -> Kernel:
    """The initial state of a fast kernel of ``shape`` (r_pad, B_pad) padded from ``real`` =
    (workers, B) (a shape bucket): :func:`kernels.trajectory.init_slots` of (workers, B), i.e.
    the unpadded kernel's state, then the last real worker and slot repeated into the padding.
    Real slot (j, b) draws its requests from ``fold_in(key_stream, j * B + b)`` as unpadded
    (:func:`fast_segment` with ``real_batch`` = B), padded workers come after the real ones and
    padded slots carry no load, so the real workers' loads are those of the unpadded kernel.
    Only ``init`` is set (``segment`` is the padded :func:`fast_kernel`'s)."""

    def init_fn(key, params):
        state = init_slots(key, params.sampler, tuple(real), init)
        pad = tuple((0, n - m) for n, m in zip(shape, real, strict=True))
        return SlotState(*(jnp.pad(x, pad, mode="edge") for x in state))

    return Kernel("fast-init", init_fn, None)


__all__ = [
    "fast_kernel",
    "fast_segment",
    "fresh_requests",
    "padded_init",
    "request_bits",
    "threefry2x32",
]

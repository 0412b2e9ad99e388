"""Step kernel with serving dynamics (docs/dynamics.md): request routing across Attention
workers, slot slack, KV-capacity-limited admission, micro-batch loads, stage-time noise and
stragglers, and expert-parallel rank loads of the FFN.

The backlog is saturated (decode-saturated, as in the paper): every step the requests that
finished free their slots and fresh i.i.d. requests refill the bundle to r*B.

* ``routing="in-place"``: a freed slot takes its own fresh request (the paper), the next of
  its own stream (:mod:`.streams`, as the trajectory and fast kernels); workers are
  independent, so one r_max-worker bundle serves every r (workers 1..r, common random numbers).
  Without a KV capacity the slots evolve exactly as :func:`.trajectory.advance`.
* ``"balanced"`` / ``"power-of-d"`` / ``"lookahead"``: the step's fresh requests are routed
  one by one (``lax.while_loop``) to a worker with room (at most B + s requests; a worker below
  B - s is served first): ``balanced`` takes them longest prompt first and sends each to the
  lightest worker (greedy LPT); ``power-of-d`` takes them in draw order and sends each to the
  lighter of d workers drawn uniformly among those with room; ``lookahead`` k holds up to k - 1
  requests back: each new request joins them, the lightest worker with room is chosen and of
  the k it takes the one that brings it nearest the mean worker load (k = 1: each request in
  draw order to the lightest worker). Routing couples workers,
  so bundle b (b + 1 workers, padded to r_max) is simulated for every r (``n_bundles = r_max``).
  The step's fresh requests are the next requests of the bundle's empty slots' streams (the
  same streams in every bundle), so one worker routes exactly as in place.
* ``kv_capacity`` C > 0: a request is admitted only if its worker's load plus its prompt stays
  <= C. In place, an empty slot keeps its pending request and retries each step, first in slot
  order (head of line per worker); routed, a request that fits nowhere ends the step's routing.

Per step :class:`DynamicsInfo` gives, per bundle and worker, the loads of the ``m``
micro-batches (slots ``b`` with ``b % m == i``), the occupied slots, the stage-time noise
(lognormal with mean one and CV ``jitter_cv``, times ``straggler_s`` with probability
``straggler_p``) and the tokens per expert-parallel rank (each of the B tokens picks top-k of E
experts by Gumbel top-k over Zipf weights ``(e + 1)^-skew``, uniform routing rank by rank;
rank = expert // (E / G)). The step time is computed from these by the driver
(``afd_jax.montecarlo.dynamics``, through ``afd_jax.model.latency``). Pure and un-jitted; the
configuration is static. No imports from afd_jax.
"""

from __future__ import annotations

import math
from functools import cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
from jax.custom_batching import custom_vmap

from .contract import Kernel
from .options import ROUTINGS
from .sampling import sample_requests
from .streams import next_requests
from .trajectory import SlotState, drawn_ahead, init_slots, take_next

_NOISE_TAG, _EXPERT_TAG, _ROUTE_TAG = 1, 2, 3


class Dynamics(NamedTuple):
    """Static configuration of the dynamics (hashable). Defaults are the paper's bundle.

    routing: one of :data:`ROUTINGS`; routing_d: candidates of power-of-d; lookahead k: the
    waiting requests a lookahead router chooses from; slot_slack s: a
    worker holds B - s .. B + s requests; kv_capacity: tokens per worker (0: unlimited);
    microbatches m (0: off, the overlap switch decides; m >= 1: the ping-pong schedule);
    jitter_cv, straggler_p, straggler_s: Attention-time noise; experts E (0: off), expert_k,
    expert_ranks G, expert_skew (0: uniform routing over experts)."""

    routing: str = "in-place"
    routing_d: int = 2
    lookahead: int = 1
    slot_slack: int = 0
    kv_capacity: int = 0
    microbatches: int = 0
    jitter_cv: float = 0.0
    straggler_p: float = 0.0
    straggler_s: float = 1.0
    experts: int = 0
    expert_k: int = 1
    expert_ranks: int = 1
    expert_skew: float = 0.0

    @property
    def routed(self) -> bool:
        """True when workers are coupled (one bundle per r)."""
        return self.routing != "in-place"

    @property
    def noisy(self) -> bool:
        return self.jitter_cv > 0 or (self.straggler_p > 0 and self.straggler_s != 1)


class DynState(NamedTuple):
    """Slots of ``n_bundles x r_max x S`` (S = B, or B + s when routed): request (prompt,
    decode, age) int32 and ``occ`` bool (the slot holds an admitted request; an empty in-place
    slot keeps its pending request). ``queue``: int32[n_bundles, k - 1, 3] the (prompt,
    decode, valid) of the requests a lookahead router holds back (None for other policies).
    ``drawn``: int32 like ``age``, the requests taken from each slot's stream
    (:class:`.trajectory.SlotState`; routed: the requests drawn at the slot, wherever they
    went)."""

    prompt: jax.Array
    decode: jax.Array
    age: jax.Array
    occ: jax.Array
    queue: jax.Array | None = None
    drawn: jax.Array | None = None


class DynamicsInfo(NamedTuple):
    """Per segment: ``loads`` int32[L, nb, r_max, m] micro-batch loads; ``occupied``
    int32[L, nb, r_max]; ``noise`` float32[L, nb, r_max] (None when noiseless); ``ranks``
    int32[L, nb, r_max, G] tokens per expert rank (None when off). ``covered``: bool
    scalar, False when a slot took more requests than were drawn ahead for the segment (in
    place; the driver then runs it again drawing each step, the same numbers)."""

    loads: jax.Array
    occupied: jax.Array
    noise: jax.Array | None
    ranks: jax.Array | None
    covered: jax.Array | None = None


# ---------------------------------------------------------------- per-step draws


def attention_noise(key, cfg: Dynamics, shape):
    """Multiplicative noise of mean one per worker: lognormal of CV ``jitter_cv`` times
    ``straggler_s`` with probability ``straggler_p`` (float32 of ``shape``)."""
    k_j, k_s = jr.split(key)
    sigma2 = jnp.log1p(jnp.float32(cfg.jitter_cv) ** 2)
    z = jr.normal(k_j, shape, jnp.float32)
    eps = jnp.exp(jnp.sqrt(sigma2) * z - sigma2 / 2)
    slow = jr.uniform(k_s, shape, jnp.float32) < jnp.float32(cfg.straggler_p)
    return eps * jnp.where(slow, jnp.float32(cfg.straggler_s), jnp.float32(1.0))


def uniform_ranks(cfg: Dynamics) -> bool:
    """Whether :func:`expert_rank_loads` draws each token's rank counts directly (uniform
    routing, skew 0, and k G <= E: k draws over G ranks cost less than E scores)."""
    return cfg.expert_skew == 0 and cfg.expert_k * cfg.expert_ranks <= cfg.experts


def expert_rank_loads(key, cfg: Dynamics, shape):
    """Tokens per expert-parallel rank: each of the ``shape[-1]`` tokens of ``shape`` picks
    top-k distinct experts of E (Gumbel top-k over weights (e + 1)^-skew), summed per rank
    ``expert // (E / G)``: int32[*shape[:-1], G] (sums to k * shape[-1]). Where
    :func:`uniform_ranks`, the same law from k words per token (:func:`_uniform_rank_loads`)."""
    if uniform_ranks(cfg):
        return _uniform_rank_loads(key, cfg, shape)
    e, g = cfg.experts, cfg.expert_ranks
    logw = -jnp.float32(cfg.expert_skew) * jnp.log(jnp.arange(1, e + 1, dtype=jnp.float32))
    gumbel = jr.gumbel(key, tuple(shape) + (e,), jnp.float32) + logw.reshape(
        (1,) * len(shape) + (e,)
    )
    _, top = jax.lax.top_k(gumbel, cfg.expert_k)
    rank = top // (e // g)
    hits = rank[..., None] == jnp.arange(g, dtype=jnp.int32).reshape((1,) * rank.ndim + (g,))
    return hits.sum(axis=(-3, -2), dtype=jnp.int32)


def _uniform_rank_loads(key, cfg: Dynamics, shape):
    """:func:`expert_rank_loads` of uniform routing at the rank level: a uniform k-subset of
    the E experts puts its j-th pick (j = 0..k-1) on rank g with probability (experts of g
    not yet picked) / (E - j), so each token keeps G counts and draws one word per pick
    (word ``mod (E - j)``: bias <= E / 2**32, as the alias draws), never E scores."""
    e, k, g = cfg.experts, cfg.expert_k, cfg.expert_ranks
    left0 = jnp.full(tuple(shape) + (g,), e // g, jnp.int32)  # experts of each rank not picked
    ranks = jnp.arange(g, dtype=jnp.int32).reshape((1,) * len(shape) + (g,))

    def pick(j, left):
        word = jr.bits(jr.fold_in(key, j), tuple(shape), jnp.uint32)
        t = (word % (jnp.uint32(e) - j.astype(jnp.uint32))).astype(jnp.int32)
        upto = jax.lax.associative_scan(jnp.add, left, axis=-1)  # unpicked in ranks 0..g
        rank = jnp.sum(upto <= t[..., None], axis=-1, dtype=jnp.int32)
        return left - (ranks == rank[..., None]).astype(jnp.int32)

    left = jax.lax.fori_loop(0, k, pick, left0, unroll=min(k, 8))
    return (e // g - left).sum(axis=-2, dtype=jnp.int32)


def microbatch_loads(load, occ, m: int):
    """Loads of the m micro-batches (slots b with b % m == i): int32[..., m]."""
    s = load.shape[-1]
    member = (jnp.arange(s, dtype=jnp.int32) % m)[:, None] == jnp.arange(m, dtype=jnp.int32)[
        None, :
    ]
    return jnp.where(occ, load, 0) @ member.astype(jnp.int32)


# ---------------------------------------------------------------- in-place advance


def admit_in_place(prompt, age, occ, capacity):
    """KV admission per worker (last axis = slots): the empty slots' pending requests enter
    in slot order while the worker's load plus their prompts stays <= capacity."""
    load = jnp.where(occ, prompt + age, 0).sum(axis=-1, keepdims=True, dtype=jnp.int32)
    pending = jnp.where(occ, 0, prompt)
    over = (load + jnp.cumsum(pending, axis=-1, dtype=jnp.int32)) > capacity
    blocked = jnp.cumsum(over & ~occ, axis=-1, dtype=jnp.int32) > 0
    return occ | ~blocked


def advance_in_place(st: DynState, nxt, cfg: Dynamics) -> DynState:
    """One step in place given every slot's next request ``nxt`` = (prompt, decode) (the
    request ``drawn`` of its stream): :func:`.trajectory.take_next` (every slot occupied),
    or with a KV capacity: a finished slot takes it as pending, then :func:`admit_in_place`."""
    prompt, decode = nxt
    if cfg.kv_capacity <= 0:
        s = take_next(SlotState(st.prompt, st.decode, st.age, st.drawn), prompt, decode)
        return st._replace(prompt=s.prompt, decode=s.decode, age=s.age, drawn=s.drawn)
    age = jnp.where(st.occ, st.age + 1, 0)
    done = st.occ & (age >= st.decode)
    occ = st.occ & ~done
    new = DynState(
        jnp.where(done, prompt, st.prompt),
        jnp.where(done, decode, st.decode),
        jnp.where(occ, age, 0),
        occ,
        None,
        st.drawn + done.astype(jnp.int32),
    )
    return new._replace(occ=admit_in_place(new.prompt, new.age, occ, cfg.kv_capacity))


# ---------------------------------------------------------------- routed advance


class _Route(NamedTuple):
    i: jax.Array
    occ: jax.Array
    load: jax.Array
    count: jax.Array
    stop: jax.Array
    queue: jax.Array | None
    dest: jax.Array  # int32[K]: the flat slot request i went to (r_max S when not routed)
    prompt: jax.Array  # int32[K]: request i's prompt and decode (lookahead: from its window)
    decode: jax.Array


def _from_window(rt: _Route, new, j, active, cfg: Dynamics):
    """Lookahead: of the held-back requests and the new one, the one that brings worker j
    nearest the mean worker load, |T_j + p - (sum T + p) / n|, (p, d, src, queue); the new
    request takes the chosen one's place. Else the new request (p, d, src) itself."""
    if cfg.routing != "lookahead":
        return (*new, rt.queue)
    p, d, src = new
    window = jnp.concatenate([rt.queue, jnp.stack([p, d, jnp.int32(1)])[None, :]])
    n = active.sum(dtype=jnp.int32).astype(jnp.float32)
    total = jnp.where(active, rt.load, 0).sum(dtype=jnp.int32)
    wp = window[:, 0]
    gap = jnp.abs((rt.load[j] + wp).astype(jnp.float32) - (total + wp).astype(jnp.float32) / n)
    c = jnp.argmin(jnp.where(window[:, 2] > 0, gap, jnp.inf)).astype(jnp.int32)
    last = window.shape[0] - 1
    src = jnp.where(c == last, src, jnp.int32(-1))
    return window[c, 0], window[c, 1], src, window.at[c].set(window[last])[:last]


def _choose_worker(words, rt: _Route, p, active, cfg: Dynamics, batch: int):
    """The worker of a request of prompt p, and whether any worker could take it.
    ``words``: power-of-d's d random words (uint32[d]) for its candidates, each a uniform
    pick among the workers of the pool (``word mod n``, the m-th of them: a bias below n /
    2^32), the lightest candidate taken (ties: the first drawn)."""
    room = active & (rt.count < batch + cfg.slot_slack)
    if cfg.kv_capacity > 0:
        room = room & (rt.load + p <= cfg.kv_capacity)
    short = room & (rt.count < batch - cfg.slot_slack)
    pool = jnp.where(short.any(), short, room)
    big = jnp.iinfo(jnp.int32).max
    if cfg.routing in ("balanced", "lookahead"):
        return jnp.argmin(jnp.where(pool, rt.load, big)).astype(jnp.int32), room.any()
    if cfg.routing != "power-of-d":  # a new policy names its own choice, never falls through
        raise ValueError(f"no worker choice for routing {cfg.routing!r}")
    count = jnp.cumsum(pool, dtype=jnp.int32)  # pool workers up to each worker
    m = (words % jnp.maximum(count[-1], 1).astype(jnp.uint32)).astype(jnp.int32)
    cand = jnp.argmax(count[None, :] > m[:, None], axis=-1)  # the m-th worker of the pool
    return cand[jnp.argmin(rt.load[cand])].astype(jnp.int32), room.any()


@custom_vmap
def any_member(flag):
    """``flag`` (a bool scalar), and under ``vmap`` whether it holds for any member of the
    mapped axis, unbatched (under every ``vmap`` around it: for any member of all). A
    ``while_loop`` whose condition differs between the members of a ``vmap`` runs until every
    member is done and passes each member's whole carry through a select at every iteration
    (here each bundle's slots: a routed step of one row at r_max = 64, B = 256 took 15 ms, 11
    ms without, on a 2-core CPU); with this condition, and a body that changes nothing a
    member that is done reads after the loop, it stops at the same iteration without them."""
    return flag


@any_member.def_vmap
def _any_member_vmap(axis_size, in_batched, flag):
    del axis_size
    return any_member(jnp.any(flag, axis=0) if in_batched[0] else flag), False


def route_bundle(key, st: DynState, fresh, n_active, cfg: Dynamics, batch: int):
    """Route the fresh requests of one bundle (st: [r_max, S] after the finished requests
    left, ages advanced). fresh = (prompt, decode, flat slot it was drawn at) [k], the head
    of the routing order (k: :func:`fresh_prefix`, or r_max S); the first ``n_active * B -
    occupied`` are routed, each into its own slot when that is on the chosen worker and free
    (so one worker routes exactly as in place), else into the worker's first free slot. When
    they are more than k (a step that does not fit), the reads past k are clamped and the
    writes dropped: that state is discarded and the step run again with k = r_max S. Under
    ``vmap`` the loop runs until every bundle is done (:func:`any_member`); the iterations
    past a bundle's count, or past its request that fit nowhere, route nothing (they write
    only request vectors at positions that stay unrouted)."""
    active = jnp.arange(st.occ.shape[0], dtype=jnp.int32) < n_active
    load = jnp.where(st.occ, st.prompt + st.age, 0).sum(axis=-1, dtype=jnp.int32)
    count = st.occ.sum(axis=-1, dtype=jnp.int32)
    n_fresh = n_active * batch - count.sum(dtype=jnp.int32)
    n_slots = st.occ.shape[1]
    k = fresh[0].size
    words = None  # power-of-d: request i's candidates from the key fold_in(key, i)
    if cfg.routing == "power-of-d":
        draw = partial(jr.bits, shape=(cfg.routing_d,), dtype=jnp.uint32)
        words = jax.vmap(lambda i: draw(jr.fold_in(key, i)))(jnp.arange(k, dtype=jnp.int32))

    def live(rt: _Route):
        return (rt.i < n_fresh) & ~rt.stop

    def body(rt: _Route):
        live_i = live(rt)
        new = (fresh[0][rt.i], fresh[1][rt.i], fresh[2][rt.i])
        w = None if words is None else words[rt.i]
        j, ok = _choose_worker(w, rt, new[0], active, cfg, batch)
        p, d, src, queue = _from_window(rt, new, j, active, cfg)
        if cfg.routing == "lookahead" and cfg.kv_capacity > 0:
            ok = ok & (rt.load[j] + p <= cfg.kv_capacity)
        own = (src // n_slots == j) & ~rt.occ[j, src % n_slots]
        slot = jnp.where(own, src % n_slots, jnp.argmin(rt.occ[j]).astype(jnp.int32))
        put = ok & live_i
        return _Route(
            rt.i + 1,
            rt.occ.at[j, slot].set(rt.occ[j, slot] | put),
            rt.load.at[j].add(put.astype(jnp.int32) * p),
            rt.count.at[j].add(put.astype(jnp.int32)),
            rt.stop | (live_i & ~ok),
            None if queue is None else jnp.where(put, queue, rt.queue),
            rt.dest.at[rt.i].set(jnp.where(put, j * n_slots + slot, st.occ.size)),
            rt.prompt.at[rt.i].set(p),
            rt.decode.at[rt.i].set(d),
        )

    none = jnp.full(k, st.occ.size, jnp.int32)
    rt = _Route(jnp.int32(0), st.occ, load, count, jnp.bool_(False), st.queue, none, fresh[0],
                fresh[1])  # fmt: skip
    rt = jax.lax.while_loop(lambda r: any_member(live(r)), body, rt)

    # each routed request into its slot (one request per slot), after the loop: in it, four
    # arrays of the bundle's slots updated per request cost more than its choices
    def place(x, v):
        return x.reshape(-1).at[rt.dest].set(v, mode="drop").reshape(x.shape)

    prompt, decode = place(st.prompt, rt.prompt), place(st.decode, rt.decode)
    age = place(st.age, 0)
    # every live request is taken from its slot's stream, routed or not: those the routing
    # left (a KV stop) are dropped, as a fresh draw would be; kept, balanced routing (longest
    # first) would hand the next step the short ones it left, a biased draw (a review)
    taken = (jnp.arange(k, dtype=jnp.int32) < n_fresh).astype(jnp.int32)
    drawn = st.drawn.reshape(-1).at[fresh[2]].add(taken).reshape(st.drawn.shape)
    return DynState(prompt, decode, age, rt.occ, rt.queue, drawn)


def fresh_order(done, occ, k=None):
    """The first ``k`` (static; None: all) slots of a bundle in routing order (flat int32
    indices): the freed slots (``done``) first, then the other empty ones, then the
    occupied, each in slot order; the stable argsort of those three ranks, computed as a
    counting sort (two prefix counts, the third by difference, and one scatter that keeps
    the first k; no sort: about 10x faster on XLA:CPU)."""
    free, empty = done.reshape(-1), ~(occ | done).reshape(-1)
    k = free.size if k is None else k
    n_free = jnp.cumsum(free, dtype=jnp.int32)  # inclusive counts
    n_empty = jnp.cumsum(empty, dtype=jnp.int32)
    n_occ = jnp.arange(1, free.size + 1, dtype=jnp.int32) - n_free - n_empty
    pos = jnp.where(
        free,
        n_free - 1,
        jnp.where(empty, n_free[-1] + n_empty - 1, n_free[-1] + n_empty[-1] + n_occ - 1),
    )
    slots = jnp.arange(free.size, dtype=jnp.int32)
    return jnp.zeros(k, jnp.int32).at[pos].set(slots, mode="drop")


def longest_first(p, n_fresh):
    """Order of the first ``n_fresh`` entries of ``p`` by decreasing prompt (ties in their
    order), the rest after them unchanged: the stable argsort of ``where(live, -p, 1)``."""
    live = jnp.arange(p.size, dtype=jnp.int32) < n_fresh
    return jnp.argsort(jnp.where(live, -p, 1), stable=True).astype(jnp.int32)


def advance_routed(key, key_stream, st: DynState, sampler, cfg: Dynamics, batch: int, prefix=None):
    """One routed step of every bundle: finished requests leave; the fresh requests (each
    slot's next request from its stream, :mod:`.streams`, the slots of every bundle sharing
    the streams of their positions; the freed slots' first, then the other empty slots', in
    slot order, :func:`fresh_order`; for ``balanced`` longest prompt first,
    :func:`longest_first`) are routed by :func:`route_bundle`, which counts the requests it
    took. Only the first ``prefix`` (static; None: all) slots of that order are drawn and
    sorted: a step frees few slots. ``key``: the step's key (the routers' own draws),
    ``key_stream``: the run's stream key. Returns (state, ``fits``): False when some bundle
    had more fresh requests than ``prefix`` (the caller reruns with every slot drawn)."""
    age = jnp.where(st.occ, st.age + 1, 0)
    done = st.occ & (age >= st.decode)
    occ = st.occ & ~done
    left = DynState(st.prompt, st.decode, jnp.where(occ, age, 0), occ, st.queue, st.drawn)
    k_route = jr.fold_in(key, _ROUTE_TAG)
    nb = st.occ.shape[0]
    bundles = jnp.arange(nb, dtype=jnp.int32)
    n_fresh = (bundles + 1) * batch - left.occ.sum(axis=(1, 2), dtype=jnp.int32)
    k = st.occ[0].size if prefix is None else min(prefix, st.occ[0].size)

    def one(b, bundle: DynState, done_b, n_b):
        order = fresh_order(done_b, bundle.occ, k)
        drawn = bundle.drawn.reshape(-1)[order]
        p, d = next_requests(key_stream, drawn, sampler, slot_ids=order)
        if cfg.routing == "balanced":
            by_len = longest_first(p, n_b)
            p, d, order = p[by_len], d[by_len], order[by_len]
        return route_bundle(jr.fold_in(k_route, b), bundle, (p, d, order), b + 1, cfg, batch)

    return jax.vmap(one)(bundles, left, done, n_fresh), n_fresh.max() <= k


# ---------------------------------------------------------------- kernel


def init_dynamics(key, sampler, r_max: int, batch: int, init: str, cfg: Dynamics) -> DynState:
    """In place: :func:`.trajectory.init_slots` of (r_max, B) (the trajectory kernel's state).
    Routed: the same slots for every bundle b, workers > b and slack slots empty."""
    s = init_slots(key, sampler, (r_max, batch), init)
    if not cfg.routed:
        full = jnp.ones((1, r_max, batch), bool)
        return DynState(s.prompt[None], s.decode[None], s.age[None], full, None, s.drawn[None])
    pad = ((0, 0), (0, cfg.slot_slack))
    one = [jnp.pad(x, pad) for x in (s.prompt, s.decode, s.age)]
    one[1] = jnp.where(jnp.arange(batch + cfg.slot_slack)[None, :] < batch, one[1], 1)
    w = jnp.arange(r_max, dtype=jnp.int32)
    occ = (w[None, :, None] <= w[:, None, None]) & (
        jnp.arange(batch + cfg.slot_slack)[None, None, :] < batch
    )
    queue = None
    if cfg.routing == "lookahead":  # k - 1 requests already waiting (the same for every bundle)
        qp, qd = sample_requests(jr.fold_in(key, _ROUTE_TAG), sampler, (cfg.lookahead - 1,))
        one_q = jnp.stack([qp, qd, jnp.ones_like(qp)], axis=-1)
        queue = jnp.broadcast_to(one_q[None], (r_max, cfg.lookahead - 1, 3))
    one.append(jnp.zeros_like(s.drawn, shape=one[0].shape))  # the slots' request counters
    return DynState(*(jnp.broadcast_to(x, occ.shape) for x in one[:3]), occ, queue,
                    jnp.broadcast_to(one[3], occ.shape))  # fmt: skip


def step_info(key, st: DynState, cfg: Dynamics, batch: int):
    """The step's (loads [nb, r_max, m], occupied, ranks) before the slots advance (the
    noise, which does not depend on the state, is :func:`step_noise`)."""
    m = max(cfg.microbatches, 1)
    loads = microbatch_loads(st.prompt + st.age, st.occ, m)
    occupied = st.occ.sum(axis=-1, dtype=jnp.int32)
    nb, n_w = occupied.shape
    ranks = None
    if cfg.experts > 0:
        r = expert_rank_loads(jr.fold_in(key, _EXPERT_TAG), cfg, (n_w, batch))
        ranks = jnp.broadcast_to(r, (nb, n_w, cfg.expert_ranks))
    return loads, occupied, ranks


def step_noise(key_stream, steps, cfg: Dynamics, shape):
    """The Attention noise of absolute steps ``steps`` (int32[L]) for ``shape`` = (bundles,
    workers): float32[L, *shape], step t's from ``fold_in(fold_in(key_stream, t), tag)``, the
    same for every bundle; drawn for all the steps at once, before the segment's loop (a few
    numbers per step: inside the loop their small operations cost as much as the step)."""
    nb, n_w = shape

    def one(t):
        return attention_noise(jr.fold_in(jr.fold_in(key_stream, t), _NOISE_TAG), cfg, (n_w,))

    eps = jax.vmap(one)(steps)
    return jnp.broadcast_to(eps[:, None, :], (steps.shape[0], nb, n_w))


def dynamics_segment(
    key_stream, st: DynState, t0, sampler, cfg: Dynamics, *, batch, length, n_requests=0,
    prefix=None,
):  # fmt: skip
    """Absolute steps t0 .. t0 + length - 1: (state, DynamicsInfo with a leading [length]).
    In place with ``n_requests`` K > 0 (static) each slot's next K requests are drawn before
    the loop (:func:`.trajectory.drawn_ahead`) and gathered in it, as the trajectory kernel
    does; else each step draws every slot's next request. The same numbers either way, as
    long as no slot takes more than K (``covered``). Routed, ``prefix``: see
    :func:`advance_routed` (``covered``: every step's fresh requests fitted in it)."""
    ahead = n_requests > 0 and not cfg.routed
    if ahead:
        next_of = drawn_ahead(key_stream, st.drawn, sampler, n_requests)

    def body(carry, i):
        key = jr.fold_in(key_stream, t0 + i)
        info = step_info(key, carry, cfg, batch)
        if cfg.routed:
            new, fits = advance_routed(key, key_stream, carry, sampler, cfg, batch, prefix)
            return new, (info, fits)
        if ahead:
            nxt = next_of(carry.drawn - st.drawn)
        else:
            nxt = next_requests(key_stream, carry.drawn, sampler)
        return advance_in_place(carry, nxt, cfg), (info, jnp.asarray(True))

    steps = jnp.arange(length, dtype=jnp.int32)
    end, ((loads, occ, ranks), fits) = jax.lax.scan(body, st, steps)
    covered = jnp.all(end.drawn - st.drawn <= n_requests) if ahead else jnp.all(fits)
    noise = step_noise(key_stream, t0 + steps, cfg, st.occ.shape[:2]) if cfg.noisy else None
    return end, DynamicsInfo(loads, occ, noise, ranks, covered)


def fresh_prefix(r_max: int, batch: int, cfg: Dynamics, mean_decode: float):
    """How many slots of a bundle a routed step draws requests for (and ``balanced`` sorts
    by prompt), at the head of the routing order: a power of two (few programs) at least m +
    6 sqrt(m) + 16, m = r_max B / E[D] the requests the largest bundle's workers finish per
    step in the steady state, above which a step is rare; None (every slot) when that is not
    fewer than the bundle's slots, when not routed, or with a KV capacity (the empty slots
    whose requests wait for room count as fresh: the prefix would often fall short). The
    numbers do not depend on it: a step that does not fit is run again over every slot."""
    n = r_max * (batch + cfg.slot_slack)
    m = r_max * batch / max(float(mean_decode), 1.0)
    prefix = 1 << max(0, math.ceil(math.log2(m + 6 * math.sqrt(m) + 16)))
    return prefix if cfg.routed and cfg.kv_capacity <= 0 and prefix < n else None


@cache
def dynamics_kernel(
    r_max: int, batch: int, init: str, length: int, cfg: Dynamics, n_requests: int = 0,
    prefix: int | None = None,
):  # fmt: skip
    """The dynamics kernel under the contract of :mod:`.contract` (``segment`` returns
    :class:`DynamicsInfo`; the driver summarises it). In place with ``n_requests`` K > 0
    each segment draws K requests per slot ahead (:func:`dynamics_segment`) and
    ``enlarge()`` is the kernel that draws at every step (no K to fall short of; the same
    numbers). Routed with a ``prefix`` (:func:`fresh_prefix`), each step draws for the first
    ``prefix`` slots of each bundle's routing order and ``enlarge()`` is the kernel that
    draws for all of them (the same numbers, when the prefix held every fresh request).
    Else ``enlarge`` is None."""
    ahead = n_requests > 0 and not cfg.routed
    prefix = prefix if cfg.routed else None

    def init_fn(key, params):
        return init_dynamics(key, params.sampler, r_max, batch, init, cfg)

    def segment(key_stream, state, params):
        kw = dict(batch=batch, length=length, n_requests=n_requests if ahead else 0)
        kw.update(prefix=prefix)
        return dynamics_segment(key_stream, state, params.t0, params.sampler, cfg, **kw)

    def enlarge():
        return dynamics_kernel(r_max, batch, init, length, cfg)

    return Kernel("dynamics", init_fn, segment, enlarge if ahead or prefix else None)


__all__ = [
    "ROUTINGS",
    "DynState",
    "Dynamics",
    "DynamicsInfo",
    "any_member",
    "attention_noise",
    "dynamics_kernel",
    "expert_rank_loads",
    "fresh_order",
    "fresh_prefix",
    "longest_first",
    "microbatch_loads",
    "uniform_ranks",
]

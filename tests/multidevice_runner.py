"""Run by tests/test_multidevice.py in a subprocess (the device count is fixed at JAX start):
small simulate runs (the fast kernel: the replication path the trajectory kernel shares, and
one replication split over the devices by workers; the barrier kernel: blocks of snapshots;
the dynamics kernel) and a pool_simulate run, printed as one JSON object.

    python tests/multidevice_runner.py            # one process, every run
    python tests/multidevice_runner.py ADDR N I   # process I of N, jax.distributed at ADDR:
                                                  # the fast (also with float64 on) and
                                                  # dynamics kernels, the pool
"""

from __future__ import annotations

import json
import sys
from functools import partial

import jax
import numpy as np


def runs(names=None) -> dict:
    """The named runs (default: all) as JSON-able dicts, each with ``lowered``: how often
    each of the spine's chunk programs was lowered during the run, by name (:func:`_listen`).
    Within a run of several segments each should be lowered once: a second lowering means
    that a segment saw other input shardings than the first (a start state that came out
    replicated recompiled the segment on several devices)."""
    from afd_jax.kernels import sampling as KS
    from afd_jax.kernels.dynamics import Dynamics
    from afd_jax.model.latency import Latency
    from afd_jax.montecarlo.pool import pool_simulate
    from afd_jax.montecarlo.simulate import simulate
    from afd_jax.studies.reproduce.runs import float64

    lat = Latency(0.05, 10.0, 0.5, 20.0, 0.01, 2.0)
    rng = np.random.default_rng(0)
    p, d = rng.integers(0, 300, 500), rng.integers(1, 60, 500)
    s, m = KS.alias_sampler(p, d, size=1024), int((p + d - 1).max())
    kw = dict(seed=7, max_slot_load=m)
    dyn = Dynamics(routing="power-of-d", slot_slack=1, jitter_cv=0.2)
    short, seg = dict(kw, segment_steps=256), dict(kw, segment_steps=1_024)
    two = dict(kw, segment_steps=128)
    one = dict(kw, segment_steps=2_816)
    make = {
        "fast": lambda: _collectives(  # three segments
            lambda: simulate(
                s, lat, 4, 8, kernel="fast", steps=600, warmup=100, replications=3, **short
            )
        ),
        # the same with float64 on (as the CLI): each segment returns float64 totals per
        # replication, summed on the device (spine.block_totals), not every block
        "fast_x64": lambda: float64(simulate)(
            s, lat, 4, 8, kernel="fast", steps=600, warmup=100, replications=3, **short
        ),
        # one replication (its workers split over the devices from 2,500 steps on,
        # spine.segment_split), in three segments
        "fast1": lambda: simulate(
            s, lat, 3, 8, kernel="fast", steps=2_600, warmup=100, replications=1, **seg
        ),
        # the same in one segment (started in the same program, spine.start_split), with
        # too few requests per slot: the segment falls short and is rerun with 2K
        "fast1_rerun": lambda: _short_requests(
            lambda: simulate(
                s, lat, 3, 8, kernel="fast", steps=2_600, warmup=100, replications=1, **one
            )
        ),
        # the step kernel's one replication, split by workers at any length: fast1's numbers
        "traj1": lambda: simulate(
            s, lat, 3, 8, kernel="trajectory", steps=2_600, warmup=100, replications=1, **seg
        ),
        # r_max = 15 on four devices: not split (15 workers; the fast kernel's bucket of 16
        # would divide, but the step kernel is never padded: shard_map failed, a review)
        "traj1_odd": lambda: simulate(
            s, lat, 2, 15, kernel="trajectory", steps=300, warmup=20, replications=1, **short
        ),
        "barrier": lambda: simulate(
            s, lat, 4, 8, kernel="barrier", steps=300, replications=2, **kw
        ),
        # the dynamics kernel (routed requests, noise): replications split like the others
        "dynamics": lambda: _collectives(
            lambda: simulate(
                s, lat, 4, 6, steps=200, warmup=50, replications=4, dynamics=dyn, **two
            ),
            "dynamics.dynamics_chunk",
        ),
        # in place (requests drawn ahead, each device's fallback its own lax.cond)
        "dynamics_in_place": lambda: simulate(
            s,
            lat,
            4,
            6,
            steps=200,
            warmup=50,
            replications=4,
            dynamics=Dynamics(jitter_cv=0.2),
            **two,
        ),
        "pool": lambda: _collectives(
            lambda: pool_simulate(
                s, lat, 4, [1, 3], n_requests=200, replications=3, seed=7, diagnostics=True
            ),
            "pool._pool_chunk",
        ),
    }
    out, lowered = {}, _LOWERED
    for name in names or make:
        lowered.clear()
        r = make[name]()
        # (result, {"calls": ...}): _short_requests; (result, {"collectives": ...}): _collectives
        r, extra = r if isinstance(r, tuple) else (r, {})
        js = r.to_json()
        js["lowered"] = {n: lowered.count(n) for n in lowered}
        for k in ("wall_seconds", "slot_steps_per_second", "device"):
            js.pop(k)
        js.update(extra)
        if r.per_pool_throughput is not None:
            js["per_pool"] = np.asarray(r.per_pool_throughput).tolist()
        out[name] = js
    return out


def _collectives(run, program: str = "simulate.segment_chunk"):
    """``(run(), {"collectives": counts})``: the cross-device operations compiled into the
    run's first call of ``program`` (``MODULE.FUNCTION`` of ``afd_jax.montecarlo``), by kind
    (``all-gather``, ``all-reduce``)."""
    import importlib

    module_name, name = program.split(".")
    module = importlib.import_module(f"afd_jax.montecarlo.{module_name}")
    chunk, seen = getattr(module, name), []

    def spy(*a, **k):
        if not seen:
            seen.append(chunk.lower(*a, **k).compile().as_text())
        return chunk(*a, **k)

    setattr(module, name, spy)
    try:
        res = run()
    finally:
        setattr(module, name, chunk)
    counts = {op: seen[0].count(f" {op}(") for op in ("all-gather", "all-reduce")}
    return res, {"collectives": counts}


def _short_requests(run):
    """``(run(), {"calls": calls})``: ``run()`` with the fast kernel planned at K = 64
    requests per slot and segment (K1 = 48 over all slots), where a slot of a 2,816-step
    segment needs about 94, so that the segment falls short once and is rerun with 2K;
    ``calls``: how often each chunk function of the spine ran."""
    from afd_jax.montecarlo import simulate as S

    plan, calls = S._plan, {}

    def counted(name):
        f = getattr(S, name)

        def call(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return f(*a, **k)

        return call

    saved = {n: getattr(S, n) for n in ("_plan", "start_split", "segment_split", "segment_chunk")}
    try:
        S._plan = lambda *a, **k: (lambda p: p._replace(n_requests=64, n_bulk=48))(plan(*a, **k))
        for name in ("start_split", "segment_split", "segment_chunk"):
            setattr(S, name, counted(name))
        res = run()
    finally:
        for name, f in saved.items():
            setattr(S, name, f)
    return res, {"calls": calls}


def _listen(names: list, event: str, secs: float, **info) -> None:
    """A jax.monitoring listener: the names of the chunk programs lowered."""
    name = info.get("fun_name", "?")  # "?": JAX's event has changed, and the test fails
    lowered = event == "/jax/core/compile/jaxpr_to_mlir_module_duration"
    if lowered and ("chunk" in name or "split" in name or name == "?"):
        names.append(name)


_LOWERED: list = []
jax.monitoring.register_event_duration_secs_listener(partial(_listen, _LOWERED))  # once


def main() -> None:
    if len(sys.argv) > 1:
        addr, n, i = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        jax.distributed.initialize(addr, num_processes=n, process_id=i)
        print(json.dumps(runs(("fast", "fast_x64", "dynamics", "pool"))))
        return
    print(json.dumps(runs()))


if __name__ == "__main__":
    main()

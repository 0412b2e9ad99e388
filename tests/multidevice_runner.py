"""Run by tests/test_multidevice.py in a subprocess (the device count is fixed at JAX start):
small simulate runs (the fast kernel: the replication path the trajectory kernel shares, and
one replication split over the devices by workers; the barrier kernel: blocks of snapshots;
the dynamics kernel) and a pool_simulate run, printed as one JSON object.

    python tests/multidevice_runner.py            # one process, every run
    python tests/multidevice_runner.py ADDR N I   # process I of N, jax.distributed at ADDR:
                                                  # the fast and dynamics kernels, the pool
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np


def runs(names=None) -> dict:
    """The named runs (default: all) as JSON-able dicts."""
    from afd_jax.kernels import sampling as KS
    from afd_jax.kernels.dynamics import Dynamics
    from afd_jax.model.latency import Latency
    from afd_jax.montecarlo.pool import pool_simulate
    from afd_jax.montecarlo.simulate import simulate

    lat = Latency(0.05, 10.0, 0.5, 20.0, 0.01, 2.0)
    rng = np.random.default_rng(0)
    p, d = rng.integers(0, 300, 500), rng.integers(1, 60, 500)
    s, m = KS.alias_sampler(p, d, size=1024), int((p + d - 1).max())
    kw = dict(seed=7, max_slot_load=m)
    dyn = Dynamics(routing="power-of-d", slot_slack=1, jitter_cv=0.2)
    seg = dict(kw, segment_steps=1_024)
    make = {
        "fast": lambda: simulate(
            s, lat, 4, 8, kernel="fast", steps=600, warmup=100, replications=3, **kw
        ),
        # one replication (its workers split over the devices from 2,500 steps on,
        # spine.segment_split), in three segments
        "fast1": lambda: simulate(
            s, lat, 3, 8, kernel="fast", steps=2_600, warmup=100, replications=1, **seg
        ),
        "barrier": lambda: simulate(
            s, lat, 4, 8, kernel="barrier", steps=300, replications=2, **kw
        ),
        # the dynamics kernel (routed requests, noise): replications split like the others
        "dynamics": lambda: simulate(
            s, lat, 4, 6, steps=200, warmup=50, replications=4, dynamics=dyn, **kw
        ),
        "pool": lambda: pool_simulate(
            s, lat, 4, [1, 3], n_requests=200, replications=3, seed=7, diagnostics=True
        ),
    }
    res = {name: make[name]() for name in names or make}
    out = {}
    for name, r in res.items():
        js = r.to_json()
        for k in ("wall_seconds", "slot_steps_per_second", "device"):
            js.pop(k)
        if r.per_pool_throughput is not None:
            js["per_pool"] = np.asarray(r.per_pool_throughput).tolist()
        out[name] = js
    return out


def main() -> None:
    if len(sys.argv) > 1:
        addr, n, i = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        jax.distributed.initialize(addr, num_processes=n, process_id=i)
        print(json.dumps(runs(("fast", "dynamics", "pool"))))
        return
    print(json.dumps(runs()))


if __name__ == "__main__":
    main()

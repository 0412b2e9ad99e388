"""Shape buckets of the fast kernel: a run pads r_max and B up to ``bucket_size`` so that
nearby shapes share one compiled program; padded workers are dropped, padded slots carry no
load, and the numbers are bit-identical to the unpadded run (same seed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_kernels import TABLE, _latency, _table, _theta

from afd_jax.kernels import sampling as KS
from afd_jax.montecarlo.simulate import bucket_size, simulate
from afd_jax.montecarlo.spine import segment_chunk


@pytest.fixture(scope="module")
def conv():
    p, d, w = _table("azure_conv")
    sampler = KS.alias_sampler(p, d, w, size=TABLE)
    return dict(
        sampler=sampler, max_slot_load=int((p + d - 1).max()), lat=_latency(_theta(p, d, w))
    )


def _run(case, r_max, batch, **kw):
    args = (case["sampler"], case["lat"], batch, r_max)
    kw.update(kernel="fast", steps=256, warmup=64, replications=3, seed=11)
    return simulate(*args, max_slot_load=case["max_slot_load"], **kw)


def _assert_identical(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "wall_seconds":
            continue
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y or (x != x and y != y), f.name


def test_buckets_are_few_and_tight():
    assert [bucket_size(n) for n in (1, 8, 9, 10, 15, 17, 31, 33, 60, 64, 65, 250)] == [
        1, 8, 10, 10, 16, 20, 32, 40, 64, 64, 80, 256,
    ]  # fmt: skip
    for n in range(1, 600):
        b = bucket_size(n)
        assert n <= b < 1.25 * n + 1 and bucket_size(b) == b


def test_padded_run_equals_unpadded_and_nearby_shapes_compile_once(conv):
    # r_max = 31, B = 15 runs padded to 32 workers of 16 slots: every number equals the run
    # compiled for 31 x 15 (stationary start, warmup, 3 replications: every estimate)
    padded = _run(conv, 31, 15)
    _assert_identical(padded, _run(conv, 31, 15, shape_buckets=False))
    assert padded.mean_tau.shape == (31,)
    # r_max = 29, B = 15 (also 32 x 16) reuse that program: no new compilation
    compiled = segment_chunk._cache_size()
    near = _run(conv, 29, 15)
    assert segment_chunk._cache_size() == compiled
    assert near.mean_tau.shape == (29,) and np.isfinite(near.mean_tau).all()

"""Shape buckets of the fast kernel: a run pads r_max up to ``bucket_workers(r_max)`` so that
nearby r_max share one compiled program; the padded workers are dropped and the numbers are
bit-identical to the unpadded run (same seed). The runs use tests/test_kernels.py's fast-kernel
shapes (B = 8, 32 workers, 256 steps, 32 replications), so its compiled program is shared."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_kernels import R_MAX, RUNS, TABLE, B, _latency, _table, _theta

from afd_jax.kernels import sampling as KS
from afd_jax.montecarlo.simulate import bucket_workers, simulate
from afd_jax.montecarlo.spine import segment_chunk


@pytest.fixture(scope="module")
def conv():
    p, d, w = _table("azure_conv")
    sampler = KS.alias_sampler(p, d, w, size=TABLE)
    return dict(
        sampler=sampler, max_slot_load=int((p + d - 1).max()), lat=_latency(_theta(p, d, w))
    )


def _run(case, r_max, **kw):
    args = (case["sampler"], case["lat"], B, r_max)
    return simulate(
        *args, kernel="fast", seed=11, max_slot_load=case["max_slot_load"], **RUNS["fast"], **kw
    )


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
    assert [bucket_workers(r) for r in (1, 8, 9, 10, 17, 31, 33, 60, 64, 65)] == [
        1, 8, 10, 10, 20, 32, 40, 64, 64, 80,
    ]  # fmt: skip
    for r in range(1, 600):
        b = bucket_workers(r)
        assert r <= b < 1.25 * r + 1 and bucket_workers(b) == b


def test_padded_run_equals_unpadded_and_nearby_r_max_compile_once(conv):
    # r_max = 31 runs padded to 32 workers: every number equals the run compiled for 31
    padded = _run(conv, R_MAX - 1)
    _assert_identical(padded, _run(conv, R_MAX - 1, shape_buckets=False))
    assert padded.mean_tau.shape == (R_MAX - 1,) and bucket_workers(R_MAX - 1) == R_MAX
    # r_max = 30 (and test_kernels' 32) reuse that program: no new segment compilation
    compiled = segment_chunk._cache_size()
    thirty = _run(conv, R_MAX - 2)
    assert segment_chunk._cache_size() == compiled
    assert thirty.mean_tau.shape == (R_MAX - 2,) and np.isfinite(thirty.mean_tau).all()

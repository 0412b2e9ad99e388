"""The curated public API: every exported name resolves, lazily."""

import afd_jax


def test_every_public_name_resolves():
    for name in afd_jax.__all__:
        assert getattr(afd_jax, name) is not None, name


def test_public_api_computes_theta():
    w = afd_jax.resolve_workload("paper-v1")
    assert abs(afd_jax.workload_stats(w).theta - 599.0) < 1e-6

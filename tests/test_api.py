"""The curated public API: every exported name resolves, lazily; each verb's docstring example
runs (doctests of provision, optimize, calibrate; the Monte Carlo and sweep verbs by the
examples below)."""

import doctest
from pathlib import Path

import numpy as np
import pytest

import afd_jax
from afd_jax import calibrate, optimize, provision, run_sweep, simulate

ROOT = Path(__file__).resolve().parents[1]
VERBS = ("provision", "simulate", "pool_simulate", "optimize", "run_sweep", "calibrate")


def test_every_public_name_resolves():
    for name in afd_jax.__all__:
        assert getattr(afd_jax, name) is not None, name


def test_verbs_are_exported():
    assert set(VERBS) <= set(afd_jax.__all__)
    assert {"ProvisionResult", "OptimizeResult"} <= set(afd_jax.__all__)
    for name in VERBS:
        assert callable(getattr(afd_jax, name)), name
        assert getattr(afd_jax, name).__doc__, name


def test_public_api_computes_theta():
    w = afd_jax.resolve_workload("paper-v1")
    assert abs(afd_jax.workload_stats(w).theta - 599.0) < 1e-6


@pytest.mark.parametrize(
    "verb", [afd_jax, provision, optimize, calibrate], ids=lambda f: f.__name__
)
def test_docstring_examples_run(verb, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples read examples/ relative to the repository
    tests = doctest.DocTestFinder(recurse=False).find(verb, verb.__name__, globs={})
    examples = sum(len(t.examples) for t in tests)
    assert examples > 0, f"{verb.__name__} has no docstring example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_simulate_example():
    w = afd_jax.resolve_workload("paper-v1")
    lat, opts = afd_jax.resolve_latency("paper-v1")
    res = simulate(w, lat, 16, 4, steps=256, replications=2, opts=opts)
    assert res.throughput.shape == (4,)
    assert np.all(np.isfinite(res.throughput)) and np.all(res.throughput > 0)


def test_pool_simulate_example():
    w = afd_jax.resolve_workload("paper-v1")
    lat, opts = afd_jax.resolve_latency("paper-v1")
    res = afd_jax.pool_simulate(w, lat, 8, [1, 2], n_requests=200, replications=2, opts=opts)
    assert res.throughput.shape == (2,) and np.all(res.throughput > 0)


def test_run_sweep_example(tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        'name = "tiny"\nr_max = 4\nmethods = ["mean_field", "exact"]\nbatch = [16]\n'
        '[workloads]\n[[workloads.family]]\nfamily = "geometric"\n'
        "params = { prompt = [100], decode = [50] }\n"
        '[latency]\nbase = "paper-v1"\n'
    )
    out = tmp_path / "tiny.csv"
    plan = afd_jax.make_plan(afd_jax.load_spec(spec))
    res = run_sweep(plan, output=str(out), progress=False)
    assert out.is_file() and res.n_scenarios == 1
    assert len(out.read_text().splitlines()) == 1 + 4  # header + r = 1..4

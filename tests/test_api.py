"""The curated public API: every exported name resolves, lazily; each verb's docstring example
runs (doctests of provision, optimize, calibrate; the Monte Carlo and sweep verbs by the
examples below)."""

import doctest
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import afd_jax
from afd_jax import calibrate, optimize, provision, run_sweep, simulate
from afd_jax.model.hardware import Hardware

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "examples" / "profile.csv"
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


def _api_calls():
    """(call, field) pairs of the library's verbs with bad arguments (a review of session 22:
    each gave another exception, a hang, or numbers from ignored or wrapped-around values)."""
    w = afd_jax.resolve_workload("paper-v1")
    lat = afd_jax.Latency(0.01, 100.0, 0.5, 10.0, 0.5, 10.0)
    bogus = afd_jax.ModelOptions(overlap="bogus")
    hw = Hardware(attn_gpus=1, ffn_gpus=1, attn_system="h100_sxm", ffn_system="h100_sxm")
    opt = partial(optimize, afd_jax.slot_load_pmf(w), 599.0, 2.6e5, lat, r_max=8)
    sim = partial(simulate, w, lat, 8, 4, steps=64, replications=2)
    pool = partial(afd_jax.pool_simulate, w, lat, 8)
    plan = partial(afd_jax.plan, w, lat, hardware=hw)
    nan = float("nan")
    return {
        "optimize-neighbourhood": (lambda: opt(batch=16, neighbourhood=-1), "neighbourhood"),
        "optimize-kv-nan": (lambda: opt(batch=16, kv_capacity=nan), "kv_capacity"),
        "optimize-batch-str": (lambda: opt(batch="16"), "batch"),
        "provision-r-max": (lambda: provision(w, lat, 16, r_max=10**9), "memory-budget"),
        "provision-batch-str": (lambda: provision(w, lat, "16"), "batch"),
        "provision-batch-half": (lambda: provision(w, lat, 16.5), "batch"),
        "provision-opts": (lambda: provision(w, lat, 16, opts=bogus), "overlap"),
        "simulate-seed": (lambda: sim(seed=2**32), "seed"),
        "simulate-latency": (
            lambda: simulate(w, lat._replace(alpha_attn=-1.0), 8, 4),
            "alpha_attn",
        ),
        "simulate-opts": (lambda: sim(opts=bogus), "overlap"),
        "pool-level": (lambda: pool([2], level=1.2), "level"),
        "pool-r": (lambda: pool(5), "r_values"),
        "pool-replications": (lambda: pool([2], replications=2.5), "replications"),
        "plan-top": (lambda: plan(batches=(8,), top=-1), "top"),
        "plan-budget": (lambda: plan(batches=(8,), budget_gpus=nan), "budget_gpus"),
        "plan-batches": (lambda: plan(batches=16), "batches"),
        "provision-no-latency": (lambda: provision(w, None, 16), "latency"),
        "calibrate-options": (lambda: calibrate(PROFILE, comm_scaling="bogus"), "comm_scaling"),
        "calibrate-cost": (lambda: calibrate(PROFILE, cost_ffn=nan), "cost_ffn"),
    }


API_CASES = (
    "optimize-neighbourhood", "optimize-kv-nan", "optimize-batch-str", "provision-r-max",
    "provision-batch-str", "provision-batch-half", "provision-opts", "simulate-seed",
    "simulate-latency", "simulate-opts", "pool-level", "pool-r", "pool-replications",
    "plan-top", "plan-budget", "plan-batches", "provision-no-latency", "calibrate-options",
    "calibrate-cost",
)  # fmt: skip


def test_api_cases_are_all_run():
    assert sorted(API_CASES) == sorted(_api_calls())


@pytest.mark.parametrize("case", API_CASES)
def test_library_verbs_refuse_bad_arguments(case):
    call, field = _api_calls()[case]
    with pytest.raises(afd_jax.InputError) as err:
        call()
    assert err.value.field == field

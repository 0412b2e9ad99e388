"""Test configuration: float64 available (the CLI enables it too), strict dtype and rank
promotion (catches silent int/float mixes), and the shared traces fixture."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

from afd_jax.cli import enable_compilation_cache

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

ROOT = Path(__file__).resolve().parents[1]
TRACES_DIR = Path(os.environ.get("AFD_TRACES_DIR", ROOT.parent / "shared" / "traces"))
TRACE_FILES = {
    "azure_conv": "azure_llm_2023_conv.csv",
    "azure_code": "azure_llm_2023_code.csv",
    "mooncake": "mooncake_conversation.jsonl",
}


def trace_path(name: str) -> Path:
    """Path of a shared trace; skips the test where the folder is absent (a user's fresh
    clone), fails under CI (CI=true) so the checks cannot silently vanish."""
    path = TRACES_DIR / TRACE_FILES[name]
    if not path.is_file():
        msg = f"shared trace {path} not found (tests read ../shared/traces/)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " and CI=true: the trace checks must run in CI")
        pytest.skip(msg)
    return path


MAX_WORKERS = 4
_OPT_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"
OPTIMISED_ENV = {_OPT_ENV: "0"}  # for a subprocess: compile as users do
_CACHE_ENV = "AFD_JAX_CACHE_DIR"
_HALF_WRITTEN = "Error reading persistent compilation cache entry"


def pytest_configure(config) -> None:
    """XLA compiles with most optimisations off (``jax_disable_most_optimizations``): the
    suite is bound by compilation of small runs, and this took its time from 778 s to 526 s
    on the 2-core CPU (docs/dependencies.md). The xdist workers and the CLI subprocesses inherit
    it through the environment. ``AFD_TEST_XLA_OPT=1`` compiles as users do; the tests of
    a sweep's same bytes whatever the chunking, devices and processes, which hold for the
    optimised programs only, run them in a subprocess with :data:`OPTIMISED_ENV`.

    One persistent XLA cache per test session, shared by the xdist workers and the CLI
    subprocesses they start (they inherit the environment): a program that several test files
    compile (the optimiser, the fast kernel at the README's shapes) compiles once. The folder is
    new and private to the session (hermetic: a user's own cache is never read) and removed at
    the end. AFD_TEST_XLA_CACHE=0 turns it off (every process compiles for itself)."""
    if os.environ.get("AFD_TEST_XLA_OPT", "0") != "1":
        os.environ[_OPT_ENV] = "1"
        jax.config.update("jax_disable_most_optimizations", True)
    if os.environ.get("AFD_TEST_XLA_CACHE", "1") == "0":
        os.environ["AFD_JAX_CACHE"] = "0"
        return
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        config._afd_cache = (tempfile.mkdtemp(prefix="afd-jax-test-xla-"), dict(os.environ))
        os.environ[_CACHE_ENV] = config._afd_cache[0]
    os.environ["AFD_JAX_CACHE"] = "1"
    # Without a size limit JAX writes entries unlocked: a process that reads one half-written
    # warns with this message and compiles anew (same program, same numbers). Keep that
    # warning out of the CLI subprocesses' stderr, which tests read.
    quiet, given = f"ignore:{_HALF_WRITTEN}", os.environ.get("PYTHONWARNINGS", "")
    if quiet not in given:
        os.environ["PYTHONWARNINGS"] = f"{given},{quiet}" if given else quiet
    enable_compilation_cache()  # the CLI's settings, here for the in-process tests


def pytest_unconfigure(config) -> None:
    folder, environ = getattr(config, "_afd_cache", (None, None))
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.clear()
        os.environ.update(environ)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject.toml): one pytest-xdist worker per available core, at most
    :data:`MAX_WORKERS`. The suite's time is mostly XLA compilation on one thread; every
    worker holds its own JAX and compiled programs (the largest process reached 3.1 to 3.3 GB
    of resident memory in a 2-worker run), hence the cap."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1))


@pytest.fixture
def traces_dir() -> Path:
    trace_path("azure_conv")
    return TRACES_DIR

"""Startup that does not need JAX does not import it: bare `afd-jax`, --help, --version,
every command's --help, a rejected flag or input (exit 2) and `afd-jax theta` on a trace (NumPy
only) run without loading JAX;
`simulate --help` builds its parser without running anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import NamedTuple

import pytest
from conftest import trace_path

from afd_jax.cli import SUBCOMMANDS

PROBE = (
    "import sys\n"
    "from afd_jax.cli import main\n"
    "try:\n    code = main(sys.argv[1:])\n"
    "except SystemExit as e:\n    code = e.code\n"
    "x64 = sys.modules['jax'].config.jax_enable_x64 if 'jax' in sys.modules else None\n"
    "print('JAX' if 'jax' in sys.modules else 'NOJAX', code, file=sys.stderr)\n"
    "print('x64', x64, file=sys.stderr)\n"
)


class Probe(NamedTuple):
    line: str  # 'JAX' or 'NOJAX', then the exit code
    out: str  # the command's stdout
    err: str  # the command's own stderr
    x64: str  # 'x64 True' / 'x64 False' / 'x64 None' (JAX not loaded)


def _probe(args, env=None) -> Probe:
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, env=env
    )
    *own, line, x64 = res.stderr.strip().splitlines()
    return Probe(line, res.stdout, "\n".join(own), x64)


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["theta", "paper-v1"]])
def test_no_jax_import(args):
    p = _probe(args)
    assert p.line == "NOJAX 0", p.line
    assert p.out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_command_help_without_jax(command):
    # the parsers take their choices from JAX-free homes (afd_jax.choices,
    # afd_jax.kernels.options); the commands import JAX when they run
    p = _probe([command, "--help"])
    assert p.line == "NOJAX 0", p.line
    assert f"afd-jax {command}" in p.out


REJECTED = [  # (arguments, what the error names)
    (["simulate", "--workload", "missing.csv", "-B", "8", "--r-max", "4"], "missing.csv"),
    (["simulate", "--workload", "paper-v1", "-B", "0", "--r-max", "4"], "field batch"),
    (
        ["simulate", "--workload", "paper-v1", "-B", "8", "--window", "completions"]
        + ["--requests", "0"],
        "field requests",
    ),
    (["provision", "--workload", "paper-v1", "--batch", "0"], "field batch"),
    (["optimize", "--workload", "missing.csv", "-B", "8"], "missing.csv"),
    (["plan", "--workload", "paper-v1", "--batches", "8,x"], "batches"),
    (["reproduce", "--seed", "-1", "--out", "{tmp}"], "field --seed"),
]


@pytest.mark.parametrize("case", REJECTED, ids=lambda c: c[0][0])
def test_rejected_input_exits_2_without_jax(case, tmp_path):
    # flags and inputs are checked before the study (and JAX) loads; x64 is set through the
    # environment JAX reads when it does load (cli.use_float64)
    args, names = case
    args = [a.format(tmp=tmp_path / "out") for a in args]
    if args[0] != "reproduce":
        args += ["--latency", "paper-v1"]
    p = _probe(args)
    assert p.line == "NOJAX 2", p.line
    assert names in p.err and "error" in p.err, p.err


def test_a_command_in_a_new_process_runs_in_float64():
    # JAX loads after the inputs are read; x64 comes from the environment cli.use_float64 set,
    # overriding the user's JAX_ENABLE_X64=0 as jax.config.update did
    env = dict(os.environ, JAX_ENABLE_X64="0")
    args = ["provision", "--workload", "paper-v1", "--latency", "paper-v1", "--batch", "64"]
    p = _probe(args + ["--r-max", "4", "--json"], env=env)
    assert p.line == "JAX 0", p.line
    assert p.x64 == "x64 True", p.x64
    assert json.loads(p.out)["r_max"] == 4


def test_use_float64_before_jax_loads():
    # what the commands rely on once they check their inputs before importing JAX; a user's
    # JAX_ENABLE_X64=0 is overridden, as jax.config.update did
    code = (
        "from afd_jax.cli import use_float64\n"
        "use_float64()\n"
        "import jax.numpy as jnp\n"
        "print(jnp.asarray(1.0).dtype)\n"
    )
    env = dict(os.environ, JAX_ENABLE_X64="0")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.stdout.strip() == "float64", res.stderr


_CACHE_PROBE = (
    "from afd_jax.cli import enable_compilation_cache\n"
    "enable_compilation_cache()\n"
    "import jax\n"
    "print(jax.config.jax_compilation_cache_dir,"
    " jax.config.jax_persistent_cache_min_compile_time_secs)\n"
)


def _cache_settings(folder) -> list[str]:
    env = dict(os.environ, AFD_JAX_CACHE="1", AFD_JAX_CACHE_DIR=str(folder))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
    cmd = [sys.executable, "-c", _CACHE_PROBE]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_the_compilation_cache_keeps_every_program(tmp_path):
    folder = tmp_path / "xla"
    assert _cache_settings(folder) == [str(folder), "0.0"]
    assert folder.is_dir() and not list(folder.iterdir())  # the write probe is gone


def test_a_compilation_cache_folder_that_takes_no_files_is_not_used():
    # /proc/1 exists on Linux and no one can create files in it; JAX would warn for every
    # program it failed to write there
    if not os.path.isdir("/proc/1"):
        pytest.skip("no /proc/1 here: a folder that refuses new files (Linux procfs) is needed")
    assert _cache_settings("/proc/1")[0] == "None"


def test_jax_free_homes_are_the_library_names():
    from afd_jax import choices
    from afd_jax.kernels import dynamics, options
    from afd_jax.montecarlo import dynamics as mc_dynamics
    from afd_jax.montecarlo import spine
    from afd_jax.studies import plan

    assert dynamics.ROUTINGS is options.ROUTINGS
    assert spine.PRECISIONS is choices.PRECISIONS
    assert mc_dynamics.DYNAMICS_KEYS is choices.DYNAMICS_KEYS
    assert plan.OBJECTIVES is choices.OBJECTIVES and plan.DEFAULT_BATCHES is choices.DEFAULT_BATCHES


def test_theta_on_a_trace_without_jax():
    p = _probe(["theta", str(trace_path("azure_conv")), "--json"])
    assert p.line == "NOJAX 0", p.line
    assert '"theta"' in p.out


def test_command_help_still_lists_its_flags():
    p = _probe(["simulate", "--help"])
    assert p.line.endswith(" 0")
    assert "--coordinator" in p.out and "--replications" in p.out

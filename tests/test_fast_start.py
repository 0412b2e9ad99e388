"""Startup that does not need JAX does not import it: bare `afd-jax`, --help, --version,
every command's --help and `afd-jax theta` on a trace (NumPy only) run without loading JAX;
`simulate --help` builds its parser without running anything."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import trace_path

from afd_jax.cli import SUBCOMMANDS

PROBE = (
    "import sys\n"
    "from afd_jax.cli import main\n"
    "try:\n    code = main(sys.argv[1:])\n"
    "except SystemExit as e:\n    code = e.code\n"
    "print('JAX' if 'jax' in sys.modules else 'NOJAX', code, file=sys.stderr)\n"
)


def _probe(args) -> tuple[str, str]:
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120
    )
    return res.stderr.strip().splitlines()[-1], res.stdout


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["theta", "paper-v1"]])
def test_no_jax_import(args):
    line, out = _probe(args)
    assert line == "NOJAX 0", line
    assert out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_command_help_without_jax(command):
    # the parsers take their choices from JAX-free homes (afd_jax.choices,
    # afd_jax.kernels.options); the commands import JAX when they run
    line, out = _probe([command, "--help"])
    assert line == "NOJAX 0", line
    assert f"afd-jax {command}" in out


def test_jax_free_homes_are_the_library_names():
    from afd_jax import choices
    from afd_jax.kernels import dynamics, options
    from afd_jax.montecarlo import spine
    from afd_jax.studies import plan

    assert dynamics.ROUTINGS is options.ROUTINGS
    assert spine.PRECISIONS is choices.PRECISIONS
    assert plan.OBJECTIVES is choices.OBJECTIVES and plan.DEFAULT_BATCHES is choices.DEFAULT_BATCHES


def test_theta_on_a_trace_without_jax():
    line, out = _probe(["theta", str(trace_path("azure_conv")), "--json"])
    assert line == "NOJAX 0", line
    assert '"theta"' in out


def test_command_help_still_lists_its_flags():
    line, out = _probe(["simulate", "--help"])
    assert line.endswith(" 0")
    assert "--coordinator" in out and "--replications" in out

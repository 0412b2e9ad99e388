"""The `afd-jax` shell: bare `afd-jax` lists the commands (one line each, exit 0) and
`afd-jax --version` prints the version."""

from __future__ import annotations

import subprocess
import sys

import pytest

import afd_jax
from afd_jax.cli import SUBCOMMANDS, main


def test_bare_command_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: afd-jax")
    lines = out.splitlines()
    for name in SUBCOMMANDS:
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        assert len(line.split()) > 1, line  # the command and its one-line help
    assert len(SUBCOMMANDS) == 9 and {"plan", "hardware"} <= set(SUBCOMMANDS)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"afd-jax {afd_jax.__version__}"


def test_bare_module_entry_point_exits_0():
    res = subprocess.run(
        [sys.executable, "-m", "afd_jax"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "provision" in res.stdout and "--version" in res.stdout

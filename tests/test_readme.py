"""Every example in the README runs: the main-job command, each `afd-jax ...` example line and
the Python snippet. Commands run in-process (one JAX runtime, shared compilations) from a
temporary folder that sees the repository's examples/ and experiments/ folders."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from afd_jax.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.strip().splitlines():
            cmd = line.split("&&")[-1].strip()
            if cmd.startswith("afd-jax "):
                out.append(cmd)
    return out


COMMANDS = _commands()


def test_readme_lists_the_main_commands():
    names = {shlex.split(c)[1] for c in COMMANDS}
    assert {"theta", "provision", "simulate", "optimize", "calibrate", "sweep"} <= names
    assert any("reproduce --quick" in c for c in COMMANDS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    for name in ("examples", "experiments"):
        (d / name).symlink_to(ROOT / name, target_is_directory=True)
    return d


# The reproduce quick mode is run (and compared with the committed results) by test_reproduce.
@pytest.mark.parametrize("cmd", [c for c in COMMANDS if " reproduce " not in c + " "])
def test_readme_command_runs(cmd, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(shlex.split(cmd)[1:]) == 0, cmd
    assert capsys.readouterr().out.strip(), "prints a result"


def test_readme_python_snippet_runs(capsys):
    snippet = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    exec(compile(snippet, "README.md", "exec"), {})
    first = capsys.readouterr().out.split()
    assert abs(float(first[0]) - 9.3) < 1e-6 and first[1] == "9" and first[2] == "attention"

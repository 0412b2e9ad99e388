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


def _blocks() -> list[list[str]]:
    """The `afd-jax ...` commands of each bash block (a block's commands run in order: the
    calibrate example writes the latency file the next line reads)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        cmds = [line.split("&&")[-1].strip() for line in block.strip().splitlines()]
        cmds = [c for c in cmds if c.startswith("afd-jax ")]
        if cmds:
            out.append(cmds)
    return out


BLOCKS = _blocks()
COMMANDS = [c for block in BLOCKS for c in block]


def test_readme_lists_the_main_commands():
    names = {shlex.split(c)[1] for c in COMMANDS}
    assert {"theta", "provision", "simulate", "optimize", "calibrate", "sweep"} <= names
    assert any("reproduce --quick" in c for c in COMMANDS)


# The reproduce quick mode is run (and compared with the committed results) by test_reproduce.
RUN = [b for b in BLOCKS if not any(" reproduce " in c for c in b)]


@pytest.mark.parametrize("block", RUN, ids=[b[0][:60] for b in RUN])
def test_readme_block_runs(block, tmp_path, monkeypatch, capsys):
    for name in ("examples", "experiments"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for cmd in block:
        assert main(shlex.split(cmd)[1:]) == 0, cmd
        assert capsys.readouterr().out.strip(), f"{cmd} prints a result"


def test_readme_python_snippet_runs(capsys):
    snippet = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    exec(compile(snippet, "README.md", "exec"), {})
    first = capsys.readouterr().out.split()
    assert abs(float(first[0]) - 9.3) < 1e-6 and first[1] == "9" and first[2] == "attention"

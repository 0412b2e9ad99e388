"""Crash guard: every subcommand (discovered from the CLI parser, so commands added later are
covered) over generated malformed inputs (random bytes, truncated and empty files, folders
where files belong, wrong types, extreme numbers, empty strings) exits 0 with finite output or
2 with exactly one line on stderr; never a traceback, an abort or a hang.

The generator and the runner are experiments/adversarial.py; the suite runs a fixed sample
(``PER_COMMAND`` cases per command in-process, a few as processes); the script runs them all
(docs/reliability.md records the counts)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from afd_jax.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("adversarial", ROOT / "experiments/adversarial.py")
adversarial = sys.modules.setdefault("adversarial", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(adversarial)

PER_COMMAND = 6
COMMANDS = list(adversarial.command_parsers(build_parser()))
SLOW = {"reproduce"}  # any valid --out (abc, nan, ...) runs the quick reproduction (20 s each)
RUNS = {"reproduce": {"abc", "nan"}}  # the suite leaves these out (experiments/adversarial.py)
# Values no option accepts (the fast sample: they are refused before any JAX work); the slow
# sample also draws the valid-but-extreme ones (0, 0.5, 1e12, ...), which may run the command.
REFUSED = {"", "abc", "\x00", "1e400", "nan", "99999999999999999999", "-9223372036854775809"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return adversarial.Corpus(tmp_path_factory.mktemp("corpus"), random.Random(0))


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    """Where the commands run: relative outputs (``--out nan``) land here, not in the repo."""
    return tmp_path_factory.mktemp("cwd")


def _cases(corpus, command):
    sub = adversarial.command_parsers(build_parser())[command]
    return adversarial.cases_for(command, sub, corpus)


def _check(outcomes):
    bad = [(o.case.argv, o.problem(), o.stderr[-400:]) for o in outcomes if o.problem()]
    assert not bad, bad


def test_every_subcommand_is_covered(corpus):
    cases = adversarial.all_cases(corpus)
    assert {c.command.split()[0] for c in cases} == set(build_parser().commands)
    for command in COMMANDS:
        mine = [c for c in cases if c.command == command]
        parser = adversarial.command_parsers(build_parser())[command]
        takes_values = any(a.nargs != 0 and a.dest != "help" for a in parser._actions)
        assert len(mine) >= 20 or not takes_values, command  # every input gets bad values
    noise = set(corpus.bad_files.values())
    with_values = {c.command for c in cases}
    assert {c.command for c in cases if noise & set(c.argv)} == with_values  # files too


@pytest.mark.parametrize(
    "command", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in COMMANDS]
)
def test_refused_inputs_in_process(corpus, cwd, command):
    files = set(corpus.bad_files.values())
    refused = REFUSED - RUNS.get(command, set())
    cases = [c for c in _cases(corpus, command) if c.value in refused | files]
    _check([adversarial.run_in_process(c, cwd) for c in adversarial.sample(cases, PER_COMMAND, 13)])


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in SLOW])
def test_malformed_inputs_in_process(corpus, cwd, command):
    runs = RUNS.get(command, set())
    cases = [c for c in _cases(corpus, command) if c.value not in runs]
    cases = adversarial.sample(cases, PER_COMMAND, seed=13)
    _check([adversarial.run_in_process(c, cwd) for c in cases])


def test_malformed_inputs_as_processes(corpus, cwd):
    """A real process: an XLA abort or an interpreter crash would show as a signal."""
    noise = corpus.bad_files["random bytes"]
    case = adversarial.Case("provision", ["provision", "--workload", noise, "-B", "4"], "noise")
    _check([adversarial.run_subprocess(case, cwd)])


@pytest.mark.slow
def test_more_malformed_inputs_as_processes(corpus, cwd):
    rng = random.Random(5)
    cases = [c for command in COMMANDS if command not in SLOW for c in _cases(corpus, command)]
    _check([adversarial.run_subprocess(c, cwd) for c in rng.sample(cases, 1)])

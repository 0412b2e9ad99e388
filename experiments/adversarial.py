"""Adversarial battery: every ``afd-jax`` subcommand over generated malformed inputs.

The subcommands and their options are discovered from the CLI parser (a subcommand added later
is covered without editing this file). For each one a valid small base command line is built
(known-good values by option name, small sizes), then one input at a time is replaced by a bad
value: random bytes, truncated, empty or missing files, a folder where a file is expected, a
path under a file, wrong types, empty strings, NaN/inf, negative, huge and overflowing numbers.

Contract checked for every case (docs/reliability.md): exit 0 with finite output (no ``nan`` /
``inf`` in stdout), or exit 2 with exactly one line on stderr; never a traceback, a process
abort or a hang (timeout). Runs in-process through ``afd_jax.cli.main`` (one JAX start), and a
few cases in subprocesses (a real process exit: aborts are seen).

    python experiments/adversarial.py [--per-command N] [--subprocess N] [--seed S]
        [--out experiments/results/adversarial.json]

tests/test_crash_guard.py runs a small sample of the same battery in the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # one case; a hang is a failure

BAD_NUMBERS = (
    "",
    "abc",
    "-1",
    "0",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "0.5",
    "1000000000000",
    "99999999999999999999",
    "-9223372036854775809",
    "\x00",
)
FILE_DESTS = {"workload", "latency", "trace", "profile", "spec", "traces_dir", "out", "plot"}
FILE_DESTS |= {"plot_dir"}
SPEC = """name = "adv"
batch = [4]
r_max = 3
[latency]
base = "paper-v1"
[workloads]
specs = ["geometric:prompt=200,decode=20", "paper-v1"]
"""


@dataclass
class Case:
    command: str
    argv: list
    what: str
    value: str = ""


@dataclass
class Outcome:
    case: Case
    rc: int | None
    stdout: str
    stderr: str
    seconds: float

    def problem(self) -> str | None:
        """Why this outcome breaks the contract, None when it keeps it."""
        err = self.stderr
        if self.rc is None:
            return "hang (timeout)"
        if "Traceback" in err:
            return "traceback"
        if self.rc == 0:
            out = self.stdout
            for value in self.case.argv:  # a file named "nan" is not a number
                out = out.replace(str(value), "") if len(str(value)) > 2 else out
            if re.search(r"\b(nan|inf|-inf)\b", out, flags=re.IGNORECASE):
                return "exit 0 with a non-finite number in the output"
            return None
        if self.rc == 2:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            lines = [ln for ln in lines if "warning" not in ln]
            return None if len(lines) == 1 else f"exit 2 with {len(lines)} lines on stderr"
        return f"exit {self.rc}"


class Corpus:
    """The generated files of one battery, in a temporary folder."""

    def __init__(self, folder: Path, rng: random.Random):
        self.folder = folder
        (folder / "outs").mkdir()
        good_trace = (ROOT / "examples" / "sample_trace.csv").read_bytes()
        self.good = {
            "trace": self._write("trace.csv", good_trace[:4000].rsplit(b"\n", 1)[0] + b"\n"),
            "profile": str(ROOT / "examples" / "profile.csv"),
            "spec": self._write("spec.toml", SPEC.encode()),
        }
        noise = bytes(rng.randrange(256) for _ in range(2048))
        self.bad_files = {
            "random bytes": self._write("noise.csv", noise),
            "random bytes .toml": self._write("noise.toml", noise),
            "empty file": self._write("empty.csv", b""),
            "truncated trace": self._write("cut.csv", good_trace[:47]),
            "header only": self._write("head.csv", good_trace.split(b"\n", 1)[0] + b"\n"),
            "truncated spec": self._write("cut.toml", SPEC.encode()[:70]),
            "latin-1 text": self._write("latin.csv", "P,D\n1,\xe9\n".encode("latin-1")),
            "missing file": str(folder / "no_such_file.csv"),
            "a folder": str(folder),
            "path under a file": str(folder / "noise.csv" / "x.csv"),
        }

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def out_path(self, tag: str, folder: bool) -> str:
        return str(self.folder / "outs" / (tag if folder else f"{tag}.csv"))


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    raise RuntimeError("no subcommands")


def command_parsers(parser) -> dict:
    """Every command line's parser by its words: ``"theta"``, ..., and for a command with its
    own subcommands (``hardware``) one entry per subcommand (``"hardware list"``)."""
    out = {}
    for name, sub in _subparsers(parser).items():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            out.update({f"{name} {n}": p for n, p in nested[0].choices.items()})
        else:
            out[name] = sub
    return out


def _good_value(dest: str, command: str, corpus: Corpus, tag: str) -> str:
    """A valid value for a required input, known by its name (fallback "1")."""
    if dest == "workload":
        return "geometric:prompt=200,decode=20"
    if dest in ("trace", "profile", "spec"):
        return corpus.good[dest]
    if dest == "out":
        return corpus.out_path(tag, folder=command == "reproduce")
    if dest == "batch":
        return "4"
    return "1"


SMALL = {
    "r_max": "3",
    "steps": "128",
    "replications": "2",
    "slot_bins": "256",
    "n_boot": "20",
}
FLAGS = ("quick", "quiet", "no_plots")


def base_argv(command: str, sub, corpus: Corpus, tag: str) -> tuple[list, dict]:
    """(argv, {dest: (flag or None, index of its value in argv)}) of a valid small run."""
    argv, where = command.split(), {}
    for action in sub._actions:
        if not action.option_strings and action.dest != "help":
            where[action.dest] = (None, len(argv))
            argv.append(_good_value(action.dest, command, corpus, tag))
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            if action.dest in FLAGS:
                argv.append(flag)
            continue
        need = action.required or action.dest in ("batch", "out")
        if need or action.dest in SMALL:
            value = SMALL.get(action.dest) or _good_value(action.dest, command, corpus, tag)
            argv += [flag, value]
            where[action.dest] = (flag, len(argv) - 1)
        else:
            where[action.dest] = (flag, None)
    return argv, where


def cases_for(command: str, sub, corpus: Corpus) -> list[Case]:
    """Every single-input mutation of the command's valid base line."""
    out = []
    for dest, (flag, _) in base_argv(command, sub, corpus, "probe")[1].items():
        action = next(a for a in sub._actions if a.dest == dest)
        values = list(BAD_NUMBERS)
        if dest in FILE_DESTS or action.type is None and not action.choices:
            values += list(corpus.bad_files.values())
        if action.choices:
            values = ["", "bogus"]
        for i, value in enumerate(values):
            tag = f"{command}-{dest}-{i}"
            argv, where = base_argv(command, sub, corpus, tag)
            _, index = where[dest]
            if index is None:
                argv += [flag, value]
            else:
                argv[index] = value
            out.append(Case(command, argv, f"{flag or dest} = {value!r}", value))
    return out


def all_cases(corpus: Corpus) -> list[Case]:
    from afd_jax.cli import build_parser

    subs = command_parsers(build_parser())
    return [c for name, sub in subs.items() for c in cases_for(name, sub, corpus)]


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def run_in_process(case: Case, cwd, timeout_s: float = TIMEOUT_S) -> Outcome:
    """Run one case through ``afd_jax.cli.main`` in this process, in the folder ``cwd`` (a
    relative output such as ``--out nan`` lands there), SIGALRM as the timeout."""
    from afd_jax.cli import main

    out, err = io.StringIO(), io.StringIO()
    rc = None
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(timeout_s))
    t0 = time.perf_counter()
    try:
        redirect = contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)
        with contextlib.chdir(cwd), redirect[0], redirect[1]:
            try:
                rc = main(case.argv)
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 2
            except _Timeout:
                rc = None
            except Exception:  # noqa: BLE001 (any escape is what the battery looks for)
                import traceback

                traceback.print_exc(file=err)
                rc = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return Outcome(case, rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0)


def run_subprocess(case: Case, cwd, timeout_s: float = TIMEOUT_S) -> Outcome:
    """Run one case as ``python -m afd_jax`` in ``cwd`` (a real exit status: an abort shows as
    a negative one). An argument with a NUL byte cannot reach a process (execve refuses it):
    such a case runs in-process instead."""
    if any("\x00" in a for a in case.argv):
        return run_in_process(case, cwd, timeout_s)
    t0 = time.perf_counter()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "AFD_JAX_CACHE": "0", "PYTHONPATH": path}
    try:
        p = subprocess.run(
            [sys.executable, "-m", "afd_jax", *case.argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            cwd=str(cwd),
        )
        rc, so, se = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        rc, so, se = None, "", ""
    return Outcome(case, rc, so, se, time.perf_counter() - t0)


def sample(cases: list[Case], per_command: int, seed: int) -> list[Case]:
    """``per_command`` cases of each subcommand, drawn with a fixed seed (all when 0)."""
    if per_command <= 0:
        return cases
    rng = random.Random(seed)
    out = []
    for name in dict.fromkeys(c.command for c in cases):
        mine = [c for c in cases if c.command == name]
        out += rng.sample(mine, min(per_command, len(mine)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-command", type=int, default=0, help="cases per command (0: all)")
    ap.add_argument("--subprocess", type=int, default=10, help="cases also run as processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the counts and failures as JSON")
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    os.environ.setdefault("AFD_JAX_CACHE", "0")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(Path(tmp), random.Random(args.seed))
        cases = sample(all_cases(corpus), args.per_command, args.seed)
        work = Path(tmp) / "cwd"
        work.mkdir()
        outcomes = [run_in_process(c, work) for c in cases]
        rng = random.Random(args.seed + 1)
        procs = rng.sample(cases, min(args.subprocess, len(cases)))
        outcomes += [run_subprocess(c, work) for c in procs]
    bad = [(o, o.problem()) for o in outcomes if o.problem()]
    report = {
        "cases": len(outcomes),
        "in_process": len(cases),
        "subprocess": len(procs),
        "passed": len(outcomes) - len(bad),
        "exit_0": sum(o.rc == 0 for o in outcomes),
        "exit_2": sum(o.rc == 2 for o in outcomes),
        "per_command": {
            c: sum(o.case.command == c for o in outcomes)
            for c in dict.fromkeys(o.case.command for o in outcomes)
        },  # fmt: skip
        "failures": [
            {"argv": o.case.argv, "what": o.case.what, "problem": why, "stderr": o.stderr[-600:]}
            for o, why in bad
        ],
    }
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}, indent=1))
    for f in report["failures"]:
        print(f"FAIL {f['problem']}: {' '.join(map(repr, f['argv']))}", file=sys.stderr)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())

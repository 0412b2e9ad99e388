"""The ``afd-jax`` command line.

Each subcommand lives in its own module ``afd_jax.cli.<name>`` exposing
``add_parser(subparsers)`` and ``run(args) -> int``; it parses, calls the library and formats.
Bad input (:class:`afd_jax.errors.InputError`) becomes one line on stderr and exit status 2.
Bare ``afd-jax`` lists the commands, one line each; ``afd-jax --version`` prints the version.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from pathlib import Path

from afd_jax import __version__
from afd_jax.errors import InputError, can_create_in
from afd_jax.memory import available_cores, budget, current_budget, format_bytes

# Each command's one-line help, in the order shown in --help and in the bare `afd-jax` listing.
# Kept here so that the listing, --help and --version import no command module (nor JAX).
COMMAND_HELP = {
    "theta": "workload statistics: theta (per-slot mean load), slot std, means, CI for theta",
    "provision": "recommend the A/F ratio r (mean field, Gaussian barrier, exact steady state)",
    "calibrate": "fit latency coefficients from measured (stage, tokens, time_us) rows",
    "simulate": "Monte Carlo simulation of the rA-1F bundle (JAX kernels)",
    "optimize": "gradient-based provisioning of r (and B) with KV-capacity and step-time SLOs",
    "plan": "Pareto front of throughput per GPU (or USD) vs P99 TPOT; best (r, B), elasticities",
    "sweep": "sensitivity sweep from a TOML spec (vmapped, multi-device, resumable)",
    "reproduce": "reproduce the paper's claims (v1 setup, workloads x B x regimes) into a folder",
    "hardware": "latency presets from NVIDIA AIConfigurator's measured kernel tables (extra)",
}
SUBCOMMANDS = tuple(COMMAND_HELP)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors also exit 2, in one line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Commands:
    """The subparsers action, recording each command's one-line help for the bare listing."""

    def __init__(self, action):
        self.action, self.help = action, {}

    def add_parser(self, name, **kwargs):
        kwargs.setdefault("help", COMMAND_HELP[name])
        self.help[name] = kwargs["help"]
        return self.action.add_parser(name, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``afd-jax`` parser; ``parser.commands`` maps each command to its one-line help.

    ``only``: import and build that command's arguments alone (the others are listed with their
    one-line help and no arguments); the empty string builds none (``--help``, ``--version``:
    no command module, and so no JAX, is imported)."""
    parser = _Parser(
        prog="afd-jax",
        description=(
            "Provisioning toolkit for Attention-FFN disaggregated LLM serving: workload "
            "statistics, closed-form and exact A/F ratios, Monte Carlo in JAX."
        ),
    )
    parser.add_argument("--version", action="version", version=f"afd-jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    commands = _Commands(sub)
    for name in SUBCOMMANDS:
        if only is None or only == name:
            importlib.import_module(f"{__name__}.{name}").add_parser(commands)
        else:
            commands.add_parser(name)
    parser.commands = commands.help
    return parser


def command_listing(parser: argparse.ArgumentParser) -> str:
    """What bare ``afd-jax`` prints: usage, then every command with its one-line help."""
    width = max(len(name) for name in parser.commands)
    about = textwrap.fill(parser.description, 100)
    lines = [parser.format_usage().rstrip(), "", about, "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in parser.commands.items()]
    lines += ["", "`afd-jax COMMAND --help` describes a command; `afd-jax --version` the version."]
    return "\n".join(lines) + "\n"


def enable_compilation_cache() -> None:
    """Persist XLA compilations across CLI runs (a second `afd-jax optimize` starts in seconds,
    not tens of seconds). Folder: $AFD_JAX_CACHE_DIR, else $XDG_CACHE_HOME/afd-jax/xla, else
    ~/.cache/afd-jax/xla; AFD_JAX_CACHE=0 turns it off. Every program is kept, however quick
    to compile: `provision` compiled 18 programs of 0.02 to 0.33 s (1.4 s in all) in every
    run while only programs over 0.5 s were kept (docs/cpu-speed.md)."""
    if os.environ.get("AFD_JAX_CACHE", "1") == "0":
        return
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = os.environ.get("AFD_JAX_CACHE_DIR") or str(Path(base) / "afd-jax" / "xla")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # read-only home: run without the cache
    if not can_create_in(folder):
        return  # a folder that exists but takes no entries: JAX would warn for every program
    _jax_settings(
        {"jax_compilation_cache_dir": folder, "jax_persistent_cache_min_compile_time_secs": 0},
        override=False,
    )


def use_float64() -> None:
    """``jax_enable_x64`` for a command's run, without importing JAX: the command checks its
    flags and reads its inputs first, so a rejected input exits in a fraction of a second
    instead of after the second that loading JAX takes."""
    _jax_settings({"jax_enable_x64": True}, override=True)


def _jax_settings(settings: dict, override: bool) -> None:
    """Set JAX config options now if JAX is loaded (in-process callers, tests), else in the
    environment JAX reads when (and if) a command imports it (``override=False`` keeps a
    value the user set there)."""
    if "jax" in sys.modules:
        for k, v in settings.items():
            sys.modules["jax"].config.update(k, v)
        return
    for k, v in settings.items():
        if override:
            os.environ[k.upper()] = str(v)
        else:
            os.environ.setdefault(k.upper(), str(v))


_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_MULTICORE_COMMANDS = ("simulate",)  # the steps-window Monte Carlo: rows split over devices


def cpu_device_flags(env) -> str | None:
    """The XLA_FLAGS that give JAX's CPU backend one device per available core (the Monte
    Carlo spine splits a chunk's rows over the devices: every core works, and the numbers are
    bit-identical whatever the device count), or None to leave ``env`` as it is: when JAX is
    already imported, XLA_FLAGS already sets the count, or AFD_JAX_CPU_DEVICES says otherwise
    (a count; 1 = one device, JAX's own default). Accelerators are unaffected."""
    flags = env.get("XLA_FLAGS", "")
    if "jax" in sys.modules or _DEVICE_FLAG in flags:
        return None
    want = env.get("AFD_JAX_CPU_DEVICES", "").strip()
    if want and not (want.isdigit() and int(want) >= 1):
        raise InputError(f"must be an integer >= 1, got {want!r}", field="AFD_JAX_CPU_DEVICES")
    n = int(want) if want else available_cores()
    return f"{flags} {_DEVICE_FLAG}={n}".strip() if n > 1 else None


def _use_every_core() -> None:
    flags = cpu_device_flags(os.environ)
    if flags is not None:
        os.environ["XLA_FLAGS"] = flags


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    if command in _MULTICORE_COMMANDS and not any(
        a.startswith(("--coord", "--dist", "--num-p", "--process-id")) for a in argv
    ):  # before the command's module imports JAX
        try:
            _use_every_core()
        except InputError as err:
            print(f"afd-jax {command}: error: {err}", file=sys.stderr)
            return 2
    parser = build_parser(command if command in SUBCOMMANDS else "")
    if not argv:
        sys.stdout.write(command_listing(parser))
        return 0
    bad = [a for a in argv if "\x00" in a]
    if bad:  # no file name, number or spec can hold one; os calls raise ValueError on it
        print(f"afd-jax: error: argument {bad[0]!r} contains a NUL byte", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    enable_compilation_cache()
    try:
        with budget(getattr(args, "memory_budget", None)):
            return int(args.func(args) or 0)
    except InputError as err:
        print(f"afd-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:  # last resort: an allocation no estimate foresaw
        limit = format_bytes(current_budget())
        print(
            f"afd-jax {args.command}: error: out of memory (memory budget {limit}); lower the "
            "sizes or --memory-budget (docs/reliability.md)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("afd-jax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `afd-jax ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

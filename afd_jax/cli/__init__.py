"""The ``afd-jax`` command line.

Each subcommand lives in its own module ``afd_jax.cli.<name>`` exposing
``add_parser(subparsers)`` and ``run(args) -> int``. Bad input (:class:`afd_jax.errors.InputError`)
becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from afd_jax.errors import InputError

# Order shown in --help. A module that does not exist yet is skipped.
SUBCOMMANDS = ("theta", "provision", "calibrate", "simulate", "optimize", "sweep", "reproduce")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors also exit 2, in one line + usage
        self.print_usage(sys.stderr)
        self.exit(2, f"afd-jax: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="afd-jax",
        description=(
            "Provisioning toolkit for Attention-FFN disaggregated LLM serving: workload "
            "statistics, closed-form and exact A/F ratios, Monte Carlo in JAX."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"{__name__}.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def _enable_compilation_cache() -> None:
    """Persist XLA compilations across CLI runs (a second `afd-jax optimize` starts in seconds,
    not tens of seconds). Folder: $AFD_JAX_CACHE_DIR, else $XDG_CACHE_HOME/afd-jax/xla, else
    ~/.cache/afd-jax/xla; AFD_JAX_CACHE=0 turns it off."""
    if os.environ.get("AFD_JAX_CACHE", "1") == "0":
        return
    import jax

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = os.environ.get("AFD_JAX_CACHE_DIR") or str(Path(base) / "afd-jax" / "xla")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _enable_compilation_cache()
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"afd-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("afd-jax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `afd-jax ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

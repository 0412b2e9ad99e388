"""Errors for bad user input.

Every problem with a file, a flag or a config value raises :class:`InputError`. The CLI turns it
into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import tomllib
from pathlib import Path

import numpy as np


class InputError(ValueError):
    """Bad user input: names the file, the line and the field where they are known.

    >>> str(InputError("not a number", path="t.csv", line=3, field="ContextTokens"))
    't.csv:3: field ContextTokens: not a number'
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"field {field}: " if field is not None else ""
        super().__init__(f"{where}{what}{message}")


def is_real(value) -> bool:
    """True for a real number (Python or NumPy; not a bool, a string or a sequence)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def shown(value, width: int = 40) -> str:
    """``value`` for an error line: a number as written, anything else (a string, a sequence)
    by ``repr``, cut to about ``width`` characters (a 5,000-digit cell made a 5 kB line)."""
    text = f"{value}" if is_real(value) else repr(value)
    return text if len(text) <= width else f"{text[: width - 5]}...{text[-2:]}"


def positive_int(name: str, value: int) -> int:
    """``int(value)`` when it is a whole number >= 1 (``16``, ``np.int64(16)``, ``16.0``), else
    InputError naming the field ``name`` (a string, ``True``, ``16.5``, NaN and a sequence
    included)."""
    if not (is_real(value) and math.isfinite(value) and value >= 1 and value == int(value)):
        raise InputError(f"must be an integer >= 1, got {shown(value)}", field=name)
    return int(value)


def finite_nonneg(name: str, value: float) -> float:
    """``float(value)`` when it is a finite number >= 0, else InputError naming the field
    ``name``."""
    if not (is_real(value) and math.isfinite(value) and value >= 0):
        raise InputError(f"must be a finite number >= 0, got {shown(value)}", field=name)
    return float(value)


SEED_LIMIT = 2**32  # jax.random.key takes a seed in [0, 2^32) on every platform the same way


def check_seed(name: str, value: int, path: str | None = None) -> int:
    """``value`` when it is an integer in [0, 2^32) (every seed of afd-jax: the key derivation
    ``jax.random.key(seed)`` then ``fold_in``), else InputError naming ``name``."""
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    if not integral or not 0 <= value < SEED_LIMIT:
        raise InputError(f"must be an integer in [0, 2^32), got {value!r}", path=path, field=name)
    return value


MAX_LEVEL = 1.0 - 1e-9
"""The highest confidence level (z = 6.1): closer to 1, (1 + level) / 2 rounds to 1.0 in
float64 and the normal quantile is infinite (a review: a traceback from ``theta``)."""
MIN_LEVEL = 1e-9
"""The lowest (z = 1.3e-9): below about 1e-16, (1 + level) / 2 rounds to 0.5 and z to 0, and
``theta`` blamed the zero-width interval on rows without spread (a review, session 24)."""


def check_level(level, field: str = "level") -> float:
    """A confidence level in [:data:`MIN_LEVEL`, :data:`MAX_LEVEL`], else InputError naming
    ``field``."""
    if not (is_real(level) and MIN_LEVEL <= level <= MAX_LEVEL):
        raise InputError(f"must be in [1e-9, 1 - 1e-9], got {shown(level)}", field=field)
    return float(level)


def _nonempty(path, option: str) -> Path:
    if not str(path).strip():
        raise InputError(f"{option}: empty path")
    return Path(path)


def can_create_in(folder) -> bool:
    """Whether a file can really be created in ``folder``: a probe file, removed at once. The
    permission bits alone are not enough (root passes ``os.access`` on /proc and /sys, where
    nothing can be created)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".afd-jax-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _writable_dir(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK) and can_create_in(folder)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_file(path: str | os.PathLike, option: str, *, stream_ok: bool = False) -> Path:
    """Before any work: ``path`` can be written as a file (not a folder, nor an existing
    device, FIFO or socket, which an atomic replace would clobber; its folder exists or can be
    created, and files can be created in it; ``stream_ok``: a writer that opens the path
    instead of replacing it takes a device or FIFO too). Missing parent folders are allowed:
    the writer creates them. InputError naming ``option`` otherwise; leaves nothing behind (a
    probe file is created and removed)."""
    out = _nonempty(path, option)
    if out.is_dir():
        raise InputError(f"{option}: is a folder, expected a file name", path=str(out))
    if out.exists() and not out.is_file():
        if stream_ok:  # a writer that opens the path (no atomic replace): /dev/stdout, a FIFO
            return out
        raise InputError(
            f"{option}: exists and is not a regular file (a device, FIFO or socket)",
            path=str(out),
        )
    if out.exists() and not os.access(out, os.W_OK):
        raise InputError(f"{option}: file is not writable", path=str(out))
    base = _existing_ancestor(out.parent)
    if not _writable_dir(base):
        why = "is not a folder" if base.exists() and not base.is_dir() else "is not writable"
        raise InputError(f"{option}: cannot write here ({base} {why})", path=str(out))
    return out


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Before any work: ``path`` is a writable folder or can be created as one (with its
    missing parents). InputError naming ``option`` otherwise; leaves nothing behind."""
    out = _nonempty(path, option)
    if out.exists() and not out.is_dir():
        raise InputError(f"{option}: exists and is not a folder", path=str(out))
    base = _existing_ancestor(out)
    if not _writable_dir(base):
        why = "is not a folder" if base.exists() and not base.is_dir() else "is not writable"
        raise InputError(f"{option}: cannot write here ({base} {why})", path=str(out))
    return out


def read_toml(path: str | os.PathLike, what: str) -> dict:
    """The TOML document of the file ``path`` (``what`` names it: "latency file", "sweep
    spec"). InputError naming the file when it cannot be read, is not UTF-8 text or not valid
    TOML (an integer of more than 4300 digits included, which Python refuses to convert)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"is a folder, expected a {what} (TOML)", path=str(path))
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"cannot read {what}: {err.strerror or err}", path=str(path)) from None
    except UnicodeDecodeError:
        raise InputError(f"not a UTF-8 text file (a {what})", path=str(path)) from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"invalid TOML: {err}", path=str(path)) from None
    except ValueError:
        raise InputError("invalid TOML: a number too long to read", path=str(path)) from None

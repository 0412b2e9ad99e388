"""Number parsing shared by the workload readers: trace cells (:mod:`afd_jax.workload.traces`)
and spec values (:mod:`afd_jax.workload.specs`).

Each helper raises :class:`~afd_jax.errors.InputError` naming the field (and, for trace cells,
the file and line) with one of the reasons ``empty value``, ``not a number: 'x'`` (also for
``1_000`` and non-ASCII digits, which Python's ``int``/``float`` would accept),
``non-finite value 'x'`` or ``not an integer: 'x'``.
"""

from __future__ import annotations

import math

from afd_jax.errors import InputError, shown

TOKEN_LIMIT = 2**62
"""Token counts (trace cells, workload parameters) are < 2^62: int64 sums of a few stay exact."""


def plain(text: str) -> bool:
    """True when ``text`` has only ASCII characters and no ``_``: Python's ``int``/``float``
    would also read ``1_000`` as 1000 and Arabic-Indic or full-width digits as numbers."""
    return text.isascii() and "_" not in text


def check_plain(
    text: str, field: str | None, *, path: str | None = None, line: int | None = None
) -> str:
    """``text`` when :func:`plain`, else InputError ``not a number: 'x'``."""
    if not plain(text):
        raise InputError(f"not a number: {shown(text)}", path=path, line=line, field=field)
    return text


def parse_float(
    text: str, field: str | None, *, path: str | None = None, line: int | None = None
) -> float:
    """A finite float from ``text`` (surrounding blanks ignored; ASCII only, no ``_``)."""
    s = check_plain(text.strip(), field, path=path, line=line)
    if s == "":
        raise InputError("empty value", path=path, line=line, field=field)
    try:
        x = float(s)
    except ValueError:
        raise InputError(f"not a number: {shown(s)}", path=path, line=line, field=field) from None
    if not math.isfinite(x):
        raise InputError(f"non-finite value {shown(s)}", path=path, line=line, field=field)
    return x


def integral(
    x: float, raw, field: str | None, *, path: str | None = None, line: int | None = None
) -> int:
    """``x`` as an int when it is a finite whole number (``3.0`` -> 3); ``raw`` is what the user
    wrote, quoted in the error. A written number that is not 0 but read as 0 (``1e-400``, which
    underflows) is not an integer."""
    if not math.isfinite(x):
        raise InputError(f"non-finite value {shown(raw)}", path=path, line=line, field=field)
    underflow = x == 0 and isinstance(raw, str) and any(c in "123456789" for c in _mantissa(raw))
    if x != math.floor(x) or underflow:
        raise InputError(f"not an integer: {shown(raw)}", path=path, line=line, field=field)
    return int(x)


def _mantissa(text: str) -> str:
    return text.lower().split("e", 1)[0]


def parse_int(
    text: str, field: str | None, *, path: str | None = None, line: int | None = None
) -> int:
    """An integer from ``text``: ``"12"``, ``"12.0"`` and ``"1.2e3"`` are accepted, ``"3.5"`` is
    not."""
    s = check_plain(text.strip(), field, path=path, line=line)
    try:
        return int(s)
    except ValueError:
        pass
    return integral(parse_float(s, field, path=path, line=line), s, field, path=path, line=line)

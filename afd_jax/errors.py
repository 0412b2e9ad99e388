"""Errors for bad user input.

Every problem with a file, a flag or a config value raises :class:`InputError`. The CLI turns it
into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import math


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


def positive_int(name: str, value: int) -> int:
    """``value`` when it is an integer >= 1, else InputError naming the field ``name``."""
    if value is None or value < 1:
        raise InputError(f"must be an integer >= 1, got {value}", field=name)
    return value


def finite_nonneg(name: str, value: float) -> float:
    """``value`` when it is a finite number >= 0, else InputError naming the field ``name``."""
    if value is None or not math.isfinite(value) or value < 0:
        raise InputError(f"must be a finite number >= 0, got {value}", field=name)
    return value

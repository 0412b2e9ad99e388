"""The memory budget: estimate what a computation needs before allocating it, refuse beyond.

Every large host or device allocation whose size follows from user input (an FFT of B slot
laws, the index arrays of a Monte Carlo run, a request pool, a sweep grid) is preceded by
:func:`require`, which compares the estimate with the budget in effect and raises an
:class:`~afd_jax.errors.InputError` that names the need, the limit and the option that changes
it. The budget in effect is :func:`default_budget` (half the physical memory, less when the
process runs under a lower address-space limit) unless a caller sets another with
:func:`budget` (the CLI's ``--memory-budget``, docs/reliability.md). The host's other
resource the runs size themselves by, its cores, is :func:`available_cores`.

>>> with budget(1 << 20):
...     try:
...         require(2 << 20, "a test array", "use a smaller one")
...     except InputError as err:
...         print(err.reason[:40])
a test array needs about 2.0 MiB, over t
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re

from afd_jax.errors import InputError

__all__ = [
    "CURVE_ROW_BYTES",
    "DEFAULT_FRACTION",
    "available_cores",
    "budget",
    "current_budget",
    "default_budget",
    "format_bytes",
    "parse_size",
    "require",
]

DEFAULT_FRACTION = 0.5  # of physical memory (and of an address-space limit, see default_budget)
# What the Python, NumPy and XLA runtime itself maps before any work (measured on CPU: 1.5
# to 1.8 GiB of address space; docs/reliability.md), kept out of the budget under an
# address-space limit.
RUNTIME_RESERVE = 3 << 30
CURVE_ROW_BYTES = 4096
"""Host memory of one r of ``provision``'s curve (the three methods' arrays and its JSON
row), counted before the curve of r = 1..r_max is computed."""
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_CURRENT: contextvars.ContextVar[int | None] = contextvars.ContextVar("memory_budget", default=None)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system reports one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (non-POSIX)
        return 8 << 30


def _address_space_limit() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, ValueError, OSError):  # pragma: no cover (non-POSIX)
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


def default_budget() -> int:
    """Bytes: DEFAULT_FRACTION of physical memory; under an address-space limit (``ulimit -v``)
    at most the limit less RUNTIME_RESERVE (at least 64 MiB)."""
    total = int(DEFAULT_FRACTION * _physical_memory())
    limit = _address_space_limit()
    if limit is not None:
        total = min(total, max(64 << 20, limit - RUNTIME_RESERVE))
    return total


def current_budget() -> int:
    """The budget in effect (bytes): the innermost :func:`budget`, else :func:`default_budget`."""
    value = _CURRENT.get()
    return default_budget() if value is None else value


@contextlib.contextmanager
def budget(nbytes: int | None):
    """Run the body under a memory budget of ``nbytes`` (None: the default)."""
    token = _CURRENT.set(None if nbytes is None else int(nbytes))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def parse_size(text: str, field: str = "memory-budget") -> int:
    """Bytes from ``"512M"``, ``"2G"``, ``"1.5T"``, ``"300k"``, ``"1048576B"`` or a bare number
    of MiB.

    >>> parse_size("2G"), parse_size("512")
    (2147483648, 536870912)
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgtKMGT]?)(i?[bB])?\s*", str(text))
    if m is None:
        raise InputError(
            f"expected a size like 512M, 2G or a number of MiB, got {text!r}", field=field
        )
    bytes_only = m.group(3) and not m.group(2)  # "100B": bytes, not MiB
    value = float(m.group(1)) * (1 if bytes_only else _UNITS[m.group(2).lower()])
    if not 1 << 20 <= value < 1 << 60:
        raise InputError(f"must be between 1M and 1E, got {text!r}", field=field)
    return int(value)


def require(nbytes: float, what: str, hint: str, path: str | None = None) -> None:
    """InputError when ``nbytes`` (an estimate) exceeds the budget in effect. ``what`` names
    the allocation, ``hint`` the inputs that shrink it (e.g. "lower --batch"), ``path`` the
    file they come from."""
    limit = current_budget()
    if nbytes > limit:
        raise InputError(
            f"{what} needs about {format_bytes(nbytes)}, over the memory budget of "
            f"{format_bytes(limit)} (--memory-budget; or {hint})",
            path=path,
            field="memory-budget",
        )

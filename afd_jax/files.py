"""Atomic file writes, shared by every layer that saves results or state.

A write goes to a temporary file beside the target, is flushed to disk (``fsync``) and then
renamed over it (``os.replace``): a killed process leaves the file whole (old or new), never
half-written. A failed write removes its temporary file; a process killed outright (SIGKILL)
while writing may leave it behind, named ``<file>.tmp<pid>``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "tmp_path"]


def tmp_path(path: Path) -> Path:
    """The temporary file of an atomic write of ``path``: beside it, named by this process."""
    return path.with_name(path.name + f".tmp{os.getpid()}")


def atomic_write(path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves no stray temp file
        raise

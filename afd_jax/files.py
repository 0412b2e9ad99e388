"""Atomic file writes, shared by every layer that saves results or state, and the digest of
afd-jax's own source, which the saved state records (a resume refuses state that other code
computed: :func:`source_digest`).

A write goes to a temporary file beside the target, is flushed to disk (``fsync``) and then
renamed over it (``os.replace``): a killed process leaves the file whole (old or new), never
half-written. A failed write removes its temporary file; a process killed outright (SIGKILL)
while writing may leave it behind, named ``<file>.tmp<pid>``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import cache
from pathlib import Path

__all__ = ["atomic_write", "source_digest", "tmp_path"]


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


@cache
def source_digest() -> str:
    """32 hex digits of a BLAKE2b digest of every Python source file of the installed
    afd-jax (the ``afd_jax`` package and ``afd_jax.kernels``, by path relative to each and
    content): a checkpoint, a sweep's manifest and the reproduction's parts record it, so a
    resume after the code changed (an edit, an upgrade) recomputes or refuses instead of
    mixing the numbers of two programs. Reads the files once per process (a few ms); imports
    neither JAX nor the kernels."""
    roots = {}
    for name in ("afd_jax", "afd_jax.kernels"):
        spec = importlib.util.find_spec(name)
        roots[name] = Path(spec.origin).resolve().parent
    h = hashlib.blake2b(digest_size=16)
    for name, root in roots.items():
        files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        for path in files:
            if name == "afd_jax" and path.is_relative_to(roots["afd_jax.kernels"]):
                continue  # a wheel installs the kernels inside afd_jax: hashed once, below
            rel = f"{name}/{path.relative_to(root).as_posix()}".encode()
            data = path.read_bytes()
            h.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()

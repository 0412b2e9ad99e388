"""One store for result parts: atomic part files, a manifest, resume, merge and read.

Long studies (``afd-jax sweep``, ``afd-jax reproduce``) write each result part as soon as it is
done, so a killed run loses at most the part in progress and a rerun continues from the
finished ones. A :class:`PartStore` is a folder::

    <folder>/manifest.json   what the parts belong to (a digest of the spec or configuration,
                             plus anything the caller pins: columns, chunk size, ...) and
                             whether the run completed
    <folder>/<name>          one text file per finished part
    <folder>/<name>.sha256   its checksum (SHA-256 and byte count), written before the part

API (every write is atomic: temp file in the same folder, fsync, ``os.replace``; a killed
process leaves a part whole or absent, never half-written). A part counts as finished only
when its checksum file matches its bytes (:func:`part_state`): one without a checksum file (from
an afd-jax before checksums), truncated, overwritten or undecodable is *damaged*; a resume
recomputes it
(:meth:`PartStore.discard_damaged`) and a merge refuses it (:class:`PartDamaged`, naming the
file). A folder with parts but no manifest, or a manifest that is not a JSON object, is refused
(:class:`PartsOrphaned`, a :class:`PartsMismatch`): its parts cannot be matched to a run.

* ``store = PartStore(folder)``; ``opened = store.open(manifest, resume=...)`` creates the folder
  and writes ``manifest`` (a JSON-able dict with a ``"digest"`` key), or, with ``resume=True``,
  continues the parts already there (``opened.manifest`` is the manifest on disk: the caller
  reads its pinned settings back). It raises :class:`PartsExist` when parts exist but
  ``resume`` is False, :class:`PartsMismatch` when they belong to another digest (or differ in
  another ``match`` key); a completed run's folder is cleared and started over when ``resume``
  is False.
* ``store.has(*names)``, ``store.missing(names)``, ``store.write(name, text)``,
  ``store.read(name)``, ``store.path(name)`` for one part; ``store.discard_damaged(names)``
  removes the damaged ones before a resume. ``write_part(path, text)`` and ``part_state(path)``
  are the same checksummed write and check for a part file outside a store (the
  reproduction's parts).
* ``store.merge(names, out, header)`` concatenates parts (in the given order) into ``out``
  atomically; ``store.finish(manifest, names)`` marks the manifest complete and removes the
  merged parts (the manifest stays, so a resumed finished run has nothing to do).
* ``wait_until(cond, timeout_s, what)`` polls a condition (multi-process runs: one process
  waits for the parts the others write into the same folder).
* ``Heartbeat(folder, process)`` (a context manager) touches ``<folder>/alive-<process>`` every
  second while a process works; ``store.wait_for_parts(names, owner, ...)`` waits for parts
  written by other processes and raises :class:`PeersLost`, naming the processes and parts,
  when an owner's heartbeat is older than ``peer_timeout_s`` (a killed process): the finished
  parts stay, and a rerun with ``resume=True`` computes only the lost ones.

>>> import tempfile
>>> store = PartStore(tempfile.mkdtemp())
>>> store.open({"digest": "abc"}, resume=True).resumed
False
>>> store.write("a.csv", "1\\n")
>>> store.has("a.csv"), store.missing(["a.csv", "b.csv"])
(True, ['b.csv'])
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from afd_jax.errors import InputError
from afd_jax.files import atomic_write
from afd_jax.files import tmp_path as _tmp_path

__all__ = [
    "CHECKSUM_SUFFIX",
    "MANIFEST",
    "Heartbeat",
    "PeersLost",
    "Opened",
    "PartDamaged",
    "PartStore",
    "PartsExist",
    "PartsLocked",
    "PartsMismatch",
    "PartsOrphaned",
    "atomic_write",
    "part_state",
    "wait_until",
    "write_part",
]

MANIFEST = "manifest.json"
CHECKSUM_SUFFIX = ".sha256"


def checksum_path(path) -> Path:
    """The checksum file of part ``path``: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _checksum(data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()} {len(data)}\n"


def _matches(path: Path, data: bytes) -> bool:
    """Whether the checksum file of ``path`` is there and matches ``data``."""
    try:
        return checksum_path(path).read_bytes() == _checksum(data).encode()
    except OSError:
        return False


def write_part(path, text: str) -> None:
    """Write the checksum file of part ``path``, then the part (each atomically): a part file
    that exists has its checksum already, so a reader (a resume, a peer process, the merge)
    never sees a finished part without one; a kill between the two leaves only the checksum,
    and the part counts as missing. A part whose checksum file is missing or does not match
    is damaged (:func:`part_state`)."""
    atomic_write(checksum_path(path), _checksum(text.encode("utf-8")))
    atomic_write(path, text)


def _records(text: str) -> int:
    """The CSV records of ``text`` (a quoted field may hold a line break)."""
    return sum(1 for _ in csv.reader(io.StringIO(text, newline="")))


def part_state(path) -> str:
    """``"missing"`` (no part file), ``"ok"`` (its checksum file matches its bytes) or
    ``"damaged"`` (no or another checksum: truncated, edited, or written before checksums)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        data = path.read_bytes()
    except OSError:
        return "damaged"
    return "ok" if _matches(path, data) else "damaged"


def wait_until(cond, timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    """Poll ``cond()`` until it is true; RuntimeError naming ``what`` after ``timeout_s``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(poll_s)


class PeersLost(RuntimeError):
    """Processes that owned unfinished parts stopped (no heartbeat): the run cannot complete
    now; a rerun with resume continues from the finished parts."""


def heartbeat_path(folder, process: int) -> Path:
    return Path(folder) / f"alive-{int(process)}"


class Heartbeat:
    """Touch ``alive-<process>`` in ``folder`` every ``period_s`` seconds (a daemon thread)
    from ``__enter__`` to ``__exit__``."""

    def __init__(self, folder, process: int, period_s: float = 1.0):
        self.path, self.period = heartbeat_path(folder, process), float(period_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            self.path.touch()
            if self._stop.wait(self.period):
                return

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class PartsExist(InputError):
    """Parts of an unfinished run exist and the caller did not ask to resume them."""


class PartsMismatch(InputError):
    """The parts in the folder belong to another spec or configuration."""


class PartDamaged(InputError):
    """A part's bytes do not match the checksum written with it."""


class PartsOrphaned(PartsMismatch):
    """Parts without a manifest, or a damaged manifest: they cannot be matched to a run."""


class PartsLocked(InputError):
    """Another process holds the folder's lock (a concurrent run on the same output)."""


class Opened(NamedTuple):
    """What :meth:`PartStore.open` found: the manifest in effect and whether parts resumed."""

    manifest: dict
    resumed: bool


@dataclass(frozen=True)
class PartStore:
    """A folder of result parts and their manifest (module docstring)."""

    folder: Path

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def path(self, name: str) -> Path:
        return self.folder / name

    def has(self, *names: str) -> bool:
        """Whether every named part and its checksum file exist (written completely; the bytes
        are checked by :meth:`discard_damaged` and :meth:`merge`)."""
        return all(self.path(n).is_file() and checksum_path(self.path(n)).is_file() for n in names)

    def missing(self, names) -> list:
        """The names (in order) whose part is not finished yet."""
        return [n for n in names if not self.has(n)]

    def write(self, name: str, text: str) -> None:
        """Write one part and its checksum atomically (:func:`write_part`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_part(self.path(name), text)

    def read(self, name: str) -> str:
        with open(self.path(name), newline="", encoding="utf-8") as fh:
            return fh.read()

    def discard_damaged(self, names, lines: dict | None = None) -> list:
        """Remove every named part that exists but fails its checksum, or holds another number
        of CSV records than ``lines[name]`` when given (written for other chunk bounds), and its
        checksum file; returns their names: a resume then recomputes them."""

        def damaged(n: str) -> bool:
            state = part_state(self.path(n))
            if state == "damaged":
                return True
            return state == "ok" and lines is not None and _records(self.read(n)) != lines[n]

        bad = [n for n in names if damaged(n)]
        for n in bad:
            self.path(n).unlink(missing_ok=True)
            checksum_path(self.path(n)).unlink(missing_ok=True)
        return bad

    def read_manifest(self) -> dict | None:
        """The manifest on disk, None when there is none; :class:`PartsMismatch` when it is not
        a JSON object (damaged)."""
        if not self.manifest_path.is_file():
            return None
        try:
            found = json.loads(self.manifest_path.read_bytes())
        except (ValueError, OSError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            found = None
        if not isinstance(found, dict):
            raise PartsOrphaned(
                f"{self.manifest_path} is damaged (not a JSON object): the parts in "
                f"{self.folder} cannot be matched to a run; delete that folder to start over",
                path=str(self.manifest_path),
            )
        return found

    def _has_results(self) -> bool:
        """Whether the folder holds parts: anything but locks, heartbeats, temp and hidden files
        (a probe, ``.DS_Store``) and checksum files without their part (a writer killed
        between the two)."""

        def counts(c: Path) -> bool:
            if c.name.startswith(("lock.", "alive-", ".")) or ".tmp" in c.name:
                return False
            part = c.with_name(c.name.removesuffix(CHECKSUM_SUFFIX))
            return not c.name.endswith(CHECKSUM_SUFFIX) or part.is_file()

        return self.folder.is_dir() and any(counts(c) for c in self.folder.iterdir())

    def write_manifest(self, manifest: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.manifest_path, json.dumps(manifest, indent=1))

    def _clear(self) -> None:
        """Remove everything but the lock files (a holder keeps its lock)."""
        for child in self.folder.iterdir():
            if child.name.startswith("lock."):
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def open(self, manifest: dict, *, resume: bool, match=("digest",)) -> Opened:
        """Start a run (write ``manifest`` with ``complete = False``) or resume the one on disk.

        Raises :class:`PartsMismatch` (the unfinished parts on disk belong to another run: a
        ``match`` key differs, or there are parts but no valid manifest; with or without
        ``resume``) or :class:`PartsExist` (parts of this same run, ``resume`` False)."""
        found = self.read_manifest()
        if found is not None and found.get("complete") and not resume:
            self._clear()  # a finished run's record: a plain rerun starts over
            found = None
        if found is None and self._has_results():
            raise PartsOrphaned(
                f"{self.folder} holds parts but no manifest: they cannot be matched to a run; "
                "delete that folder to start over",
                path=str(self.folder),
            )
        if found is None:
            manifest = {**manifest, "complete": False}
            self.write_manifest(manifest)
            return Opened(manifest, False)
        if any(found.get(k) != manifest.get(k) for k in match):
            raise PartsMismatch(f"the partial results in {self.folder} come from elsewhere")
        if not resume:
            raise PartsExist(f"partial results exist in {self.folder}")
        return Opened(found, True)

    @contextlib.contextmanager
    def lock(self, tag: str = "0"):
        """Hold ``<folder>/lock.<tag>`` exclusively for the body (an advisory ``flock``, freed
        by the kernel when the process dies, so never stale). A second holder fails at once
        with :class:`PartsLocked` instead of waiting. Multi-process runs lock one tag each."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / f"lock.{tag}", "a+")  # noqa: SIM115 (held for the body)
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PartsLocked(
                    f"another run is using {self.folder} (its lock is held); wait for it to "
                    "finish or stop it"
                ) from None
            yield self
        finally:
            fh.close()

    def merge(self, names, out, header: str = "") -> None:
        """Write ``header`` and the named parts, in order, into ``out`` atomically; raises
        :class:`PartDamaged` naming the first part that fails its checksum (``out`` is then
        left as it was)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(out)
        try:
            with open(tmp, "wb") as fh:
                fh.write(header.encode("utf-8"))
                for name in names:
                    data = self.path(name).read_bytes()
                    if not _matches(self.path(name), data):
                        raise PartDamaged(
                            "damaged part (its checksum does not match); run again with "
                            "--resume to recompute it",
                            path=str(self.path(name)),
                        )
                    fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def wait_for_parts(self, names, owner, peer_timeout_s: float, timeout_s: float, poll_s=0.5):
        """Wait until every named part is finished and matches its checksum (a damaged part of
        a resumed run is still there until its owner has discarded and rewritten it: waiting
        for it to exist let the merge read it first); ``owner(i)`` is the process writing part
        i. Raises :class:`PeersLost` when a process with missing parts has not beaten its
        heartbeat for ``peer_timeout_s`` (or never did, that long after the wait began),
        RuntimeError after ``timeout_s``."""
        t0, intact = time.monotonic(), set()  # a part found intact stays so: read it once

        def ready(i) -> bool:
            if i not in intact and part_state(self.path(names[i])) == "ok":
                intact.add(i)
            return i in intact

        while missing := [i for i in range(len(names)) if not ready(i)]:
            now, wall = time.monotonic(), time.time()
            lost = {}
            for i in missing:
                hb = heartbeat_path(self.folder, owner(i))
                age = wall - hb.stat().st_mtime if hb.is_file() else now - t0
                if age > peer_timeout_s:
                    lost.setdefault(owner(i), []).append(names[i])
            if lost:
                who = "; ".join(
                    f"process {p}: {len(v)} part(s) ({v[0]}...)" for p, v in lost.items()
                )
                raise PeersLost(
                    f"no heartbeat for {peer_timeout_s:g} s from {who}; "
                    f"{len(names) - len(missing)} of {len(names)} parts are kept in "
                    f"{self.folder}: run again with --resume to finish"
                )
            if now - t0 > timeout_s:
                raise RuntimeError("timed out waiting for the other processes' parts")
            time.sleep(poll_s)

    def finish(self, manifest: dict, names) -> dict:
        """Mark the run complete (manifest kept) and remove the named parts and any temp file
        a killed writer left behind; returns the completed manifest."""
        manifest = {**manifest, "complete": True}
        self.write_manifest(manifest)
        for name in names:
            self.path(name).unlink(missing_ok=True)
            checksum_path(self.path(name)).unlink(missing_ok=True)
        for stray in [*self.folder.glob("*.tmp*"), *self.folder.glob("alive-*")]:
            stray.unlink(missing_ok=True)
        return manifest

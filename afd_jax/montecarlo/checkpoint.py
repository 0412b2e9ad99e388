"""Resumable Monte Carlo runs: a checkpoint file for the chunk loop (docs/simulation.md,
"Checkpoints").

A driver's work is a list of chunks (:func:`~afd_jax.montecarlo.spine.run_chunks`), each
adding its rows' sums to a host accumulator. With a :class:`Checkpoint`, the loop saves the
accumulator's arrays after a finished chunk (at most every :data:`SAVE_SECONDS`, and always
after the last) to one ``.npz`` file, written atomically, beside the fingerprint of the run:
what decides its numbers (sizes, seed, kernel, latency, workload, the chunk plan, the devices,
the JAX version). A rerun of the same run loads it and skips the chunks it holds; the chunks
left run in the same order and add to the accumulator in the same order, so the result is
the uninterrupted run's, bit for bit (``tests/test_checkpoint.py``). A file of another run is
refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile

import jax
import numpy as np

from afd_jax.errors import InputError, check_output_file
from afd_jax.files import atomic_write, source_digest

__all__ = [
    "SAVE_SECONDS",
    "Checkpoint",
    "digest",
    "fingerprint",
    "flatten",
    "run_checkpoint",
    "unflatten",
]

SAVE_SECONDS = 10.0  # a killed run loses at most this much finished work (plus its chunk)
_FORMAT = 1
_META = "__checkpoint__"
_CHECKSUM = "__checksum__"


def digest(tree) -> str:
    """SHA-256 (16 hex digits) of a pytree's leaves: dtype, shape and bytes of each, in order."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(leaf)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def flatten(state, prefix: str = "") -> dict[str, np.ndarray]:
    """A nest of dicts, lists, arrays and None as flat ``{name: array}`` (``a.b``, ``a.0``;
    a list's length as ``a#``, None as an empty int8 array ``a!``)."""
    if isinstance(state, dict):
        out = {}
        for k, v in state.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    name = prefix[:-1]
    if isinstance(state, list):
        out = {f"{name}#": np.asarray(len(state))}
        for i, v in enumerate(state):
            out.update(flatten(v, f"{name}.{i}."))
        return out
    if state is None:
        return {f"{name}!": np.zeros(0, np.int8)}
    return {name: np.asarray(state)}


def unflatten(arrays: dict[str, np.ndarray]):
    """The nest of :func:`flatten` back (dicts of dicts; lists by their ``#`` lengths)."""
    root: dict = {}
    lengths = {}
    for key, value in arrays.items():
        *path, last = key.split(".")
        node = root
        for part in path:
            node = node.setdefault(part, {})
        if last.endswith("#"):
            lengths[tuple(path) + (last[:-1],)] = int(value)
            node.setdefault(last[:-1], {})
        elif last.endswith("!"):
            node[last[:-1]] = None
        else:
            node[last] = value

    def build(node, path):
        if not isinstance(node, dict):
            return node
        if path in lengths:
            return [build(node[str(i)], path + (str(i),)) for i in range(lengths[path])]
        return {k: build(v, path + (k,)) for k, v in node.items()}

    return build(root, ())


def _checksum(header: str, arrays: dict) -> str:
    """The file's checksum: its header (fingerprint and chunks done) and every array."""
    return digest([header, *((k, arrays[k]) for k in sorted(arrays))])


def _plain(value):
    """``json.dumps``'s fallback: NumPy scalars as Python numbers (a setting may be one)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _plan_digest(chunks) -> str:
    return digest([(c.rows, c.n_real, c.segments, c.data) for c in chunks])


def fingerprint(settings: dict, **trees) -> dict:
    """What decides a run's numbers: ``settings`` (JSON-able; NamedTuples as dicts) and the
    :func:`digest` of each pytree in ``trees`` (latency, sampler, step model, histogram
    bins), with the versions of JAX and afd-jax, the digest of afd-jax's source
    (:func:`~afd_jax.files.source_digest`: code edited or upgraded since), the backend and the
    float64 switch."""
    from afd_jax import __version__

    out = {k: v._asdict() if hasattr(v, "_asdict") else v for k, v in settings.items()}
    out["digests"] = {k: digest(v) for k, v in trees.items()}
    out.update(
        jax=jax.__version__,
        afd_jax=__version__,
        code=source_digest(),
        backend=jax.default_backend(),
        x64=bool(jax.config.jax_enable_x64),
        format=_FORMAT,
    )
    return out


class Checkpoint:
    """The checkpoint file ``path`` of one run, keyed by its :func:`fingerprint`. The driver
    :meth:`attach` es its accumulator (``get_state()`` / ``set_state(nest)``, a nest of arrays,
    :func:`flatten`); :meth:`start` (called by ``run_chunks`` with the chunk list) returns how
    many chunks the file already holds and restores the accumulator; :meth:`finished` saves
    after chunk ``i``. The path is checked here, before the run starts."""

    def __init__(self, path, fingerprint: dict):
        self.path = check_output_file(path, "--checkpoint")
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=_plain))
        self.get_state = self.set_state = None
        self.chunks, self.resumed = 0, 0
        self._saved, self._pending = 0.0, None

    def attach(self, get_state, set_state) -> Checkpoint:
        self.get_state, self.set_state = get_state, set_state
        return self

    def start(self, chunks) -> int:
        self.chunks = len(chunks)
        self.fingerprint["chunks"] = [self.chunks, _plan_digest(chunks)]
        if not self.path.exists():
            self._saved = time.monotonic()
            return 0
        meta, arrays = self._read()
        self._check(meta.get("fingerprint", {}))
        done = meta.get("done")
        if not isinstance(done, int) or not 0 <= done <= self.chunks:
            raise InputError(f"damaged checkpoint (done = {done!r})", path=str(self.path))
        self.set_state(unflatten(arrays))
        self.resumed = done
        self._saved = time.monotonic()
        return done

    def finished(self, i: int) -> None:
        """Chunk ``i`` (0-based) and every one before it are in the accumulator: saved when
        it is the last or the last save is :data:`SAVE_SECONDS` old, else kept as a copy
        for :meth:`interrupted` (the accumulator then takes part of the next chunk)."""
        arrays = flatten(self.get_state())
        if i + 1 == self.chunks or time.monotonic() - self._saved >= SAVE_SECONDS:
            self._write(i + 1, arrays)
            self._pending = None
        else:
            self._pending = (i + 1, {k: np.array(v, copy=True) for k, v in arrays.items()})

    def interrupted(self) -> None:
        """Ctrl-C: save the chunks finished since the last save (not the one in progress)."""
        if self._pending is not None:
            self._write(*self._pending)
            self._pending = None

    def info(self) -> dict:
        """What the result reports: the file, its chunks and how many a rerun found done."""
        return {"path": str(self.path), "chunks": self.chunks, "resumed_chunks": self.resumed}

    def _write(self, done: int, arrays: dict) -> None:
        header = json.dumps({"fingerprint": self.fingerprint, "done": done}, sort_keys=True)
        meta = {_META: np.frombuffer(header.encode(), np.uint8)}
        meta[_CHECKSUM] = np.frombuffer(_checksum(header, arrays).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **meta, **arrays)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, buf.getvalue())
        self._saved = time.monotonic()

    def _read(self):
        """(header, arrays) of the file, whose checksum covers both; InputError otherwise."""
        try:
            with np.load(self.path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = arrays.pop(_META).tobytes().decode()
            stored = arrays.pop(_CHECKSUM).tobytes().decode()
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
            raise InputError(
                "not an afd-jax checkpoint, or a damaged one (unreadable); delete it or choose "
                "another --checkpoint",
                path=str(self.path),
            ) from None
        if stored != _checksum(header, arrays):
            raise InputError(
                "damaged or edited checkpoint (it does not match its checksum); delete it",
                path=str(self.path),
            )
        return json.loads(header), arrays

    def _check(self, theirs: dict) -> None:
        where = _first_difference(self.fingerprint, theirs)
        if where is None:
            return
        key, mine, other = where
        if key.startswith("digests."):  # every input that differs, by name
            digests = self.fingerprint["digests"], theirs.get("digests", {})
            names = [k for k in sorted(digests[0]) if digests[0][k] != digests[1].get(k)]
            what = f"its {', '.join(names)} differ{'s' if len(names) == 1 else ''}"
        elif key == "chunks":
            what = "its chunk plan differs"
        elif key == "code":
            what = "it was written by other afd-jax code (edited or upgraded since)"
        else:
            what = f"its {key} is {_short(other)}, this run's {_short(mine)}"
        hint = ""
        if key == "devices":
            hint = f" (AFD_JAX_CPU_DEVICES={_short(other)} runs on its device count)"
        raise InputError(
            f"a checkpoint of another run: {what}{hint}; delete it or choose another --checkpoint",
            path=str(self.path),
        )


_LAST = ("code", "digests", "chunks")  # after the settings: a settings key names the cause


def _first_difference(mine, theirs, key: str = ""):
    """(dotted key, mine, theirs) of the first place two JSON values differ, or None; the
    settings first, then the digests and the chunk plan that follow from them."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for k in sorted(set(mine) | set(theirs), key=lambda k: (k in _LAST, k)):
            found = _first_difference(mine.get(k), theirs.get(k), f"{key}{k}.")
            if found is not None:
                return found
        return None
    return None if mine == theirs else (key[:-1] or "content", mine, theirs)


def run_checkpoint(path, mesh, settings: dict, **trees) -> Checkpoint | None:
    """The :class:`Checkpoint` of a driver's run (None without a ``path``): its
    :func:`fingerprint` is ``settings``, the digests of ``trees`` and the devices sharing the
    rows (``mesh``, a :class:`~afd_jax.montecarlo.spine.RowMesh`). One process only."""
    if path is None:
        return None
    if mesh.processes > 1:
        raise InputError(
            "a checkpoint is written by a single process; run without it, or in one process",
            field="checkpoint",
        )
    settings = dict(settings, devices=mesh.n, split=bool(mesh.split))
    return Checkpoint(path, fingerprint(settings, **trees))


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:75] + "...}"

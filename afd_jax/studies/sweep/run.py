"""Running a sweep: chunk scheduling over processes and devices, streaming parts, resume, merge.

**Streaming and resume.** Scenarios are cut into chunks of ``chunk_size``; every finished chunk is
written to ``<output>.parts/part-NNNNNN.csv`` through :class:`afd_jax.studies.store.PartStore`
(atomic); its ``manifest.json`` (written first) pins the spec digest, the content digests of its
input files (``SweepPlan.inputs``: traces, latency base), the chunk size and the columns.
``resume=True`` recomputes only the missing parts; the final table is the concatenation of the
parts in chunk order, so it is byte-identical to an uninterrupted run.

**Multi-host.** With ``process_count > 1`` (``jax.distributed.initialize()`` then
``jax.process_index()/process_count()``), process p computes chunks ``c % process_count == p`` on
its local devices and writes parts to the shared output folder; process 0 waits for every part
and merges (docs/sweep.md). Every process beats a heartbeat file in the parts folder; when a
process with unfinished chunks stops beating for ``peer_timeout_s`` (killed, host lost),
process 0 raises :class:`afd_jax.studies.store.PeersLost` naming it, and a rerun with
``resume=True`` computes only the missing chunks (the table is the same).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
from tqdm import tqdm

from afd_jax.errors import InputError
from afd_jax.files import source_digest
from afd_jax.studies.store import (
    Heartbeat,
    PartsExist,
    PartsMismatch,
    PartsOrphaned,
    PartStore,
    wait_until,
)
from afd_jax.studies.sweep.evaluate import Evaluator
from afd_jax.studies.sweep.plan import SweepPlan
from afd_jax.studies.sweep.spec import SweepSpec, output_format, scenario_work_bytes
from afd_jax.studies.sweep.table import format_rows

__all__ = ["SweepResult", "default_chunk_size", "parts_dir", "part_name", "run_sweep"]


def default_chunk_size(spec: SweepSpec, n_scenarios: int, n_devices: int = 1) -> int:
    """Scenarios per chunk from the memory budget: about r_max * 8 bytes * (rows of working
    arrays per method; the Gaussian tail integral's quadrature dominates), at least the device
    count, at most 8192 (so progress and checkpoints stay frequent)."""
    per_scenario = scenario_work_bytes(spec.methods, spec.r_max)
    n = int(spec.memory_budget_mb * 2**20 // per_scenario)
    n = max(n_devices, min(n, 8192, max(n_scenarios, 1)))
    return n


@dataclass
class SweepResult:
    """What a sweep did. ``rows_computed``: (scenario, r) rows evaluated by this call (0 when
    everything was already done); ``method_seconds``: wall time spent in each method."""

    output: str
    n_scenarios: int
    n_rows: int
    n_chunks: int
    chunks_computed: int
    rows_computed: int
    chunk_size: int
    wall_seconds: float
    method_seconds: dict
    devices: int
    processes: int = 1

    def summary(self) -> dict:
        evals = {
            m: (self.rows_computed / s if s > 0 else None) for m, s in self.method_seconds.items()
        }
        return {
            "n_scenarios": self.n_scenarios,
            "n_rows": self.n_rows,
            "output": self.output,
            "wall_seconds": self.wall_seconds,
            "evaluations_per_second": evals,
            "chunks": self.n_chunks,
            "chunks_computed": self.chunks_computed,
            "rows_computed": self.rows_computed,
            "chunk_size": self.chunk_size,
            "devices": self.devices,
            "processes": self.processes,
        }


def parts_dir(output: str | Path) -> Path:
    """The folder of an output's parts and manifest: ``<output>.parts``."""
    out = Path(output)
    return out.with_name(out.name + ".parts")


def part_name(chunk: int) -> str:
    """File name of chunk ``chunk``'s part."""
    return f"part-{chunk:06d}.csv"


def _open_store(plan: SweepPlan, out: Path, resume: bool, chunk_size, progress: bool):
    """Open (or resume) the parts store of ``out``; returns (store, manifest, resumed). A resumed
    run keeps the chunk size of its manifest."""
    spec, n = plan.spec, plan.n_scenarios
    store = PartStore(parts_dir(out))
    n_dev = len(jax.local_devices())
    size = chunk_size or spec.chunk_size or default_chunk_size(spec, n, n_dev)
    size = min(size, max(n, n_dev))  # a chunk past the last scenario would only be padding
    manifest = {
        "digest": spec.digest(),
        "inputs": plan.inputs,
        "code": source_digest(),
        "spec": spec.canonical(),
        "chunk_size": size,
        "n_scenarios": n,
        "n_chunks": -(-n // size),
        "columns": plan.columns(),
        "format": output_format(spec, str(out)),
    }
    try:
        opened = store.open(manifest, resume=resume, match=("digest", "inputs", "code", "columns"))
    except PartsExist:
        raise InputError(
            f"partial results of this spec exist in {store.folder}; pass --resume to continue "
            "them, or delete that folder to start over",
            path=str(out),
        ) from None
    except PartsOrphaned as err:
        raise InputError(f"{err.reason} (or choose another --out)", path=str(out)) from None
    except PartsMismatch:
        raise InputError(
            f"the partial results in {store.folder} {_mismatch(store, manifest)}; delete that "
            "folder to start over, or choose another --out",
            path=spec.path,
        ) from None
    man = opened.manifest
    size = man.get("chunk_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(
            f"{store.manifest_path} is damaged (chunk_size {size!r}); delete {store.folder} to "
            "start over, or choose another --out",
            path=str(out),
        )
    requested = chunk_size is not None and chunk_size != man["chunk_size"]
    if opened.resumed and requested and progress:
        print(
            f"afd-jax sweep: resuming with the original chunk size {man['chunk_size']}",
            file=sys.stderr,
        )
    return store, man, opened.resumed


def _mismatch(store: PartStore, manifest: dict) -> str:
    """Why the run on disk is not this one: an input file whose content changed since it
    started (same spec), or a different spec."""
    found = store.read_manifest() or {}
    old = found.get("inputs")
    if found.get("digest") != manifest["digest"] or found.get("columns") != manifest["columns"]:
        return "come from a different spec"
    if not isinstance(old, dict):
        return "come from an afd-jax that did not record its input files"
    new = manifest["inputs"]
    name = next((k for k in {**new, **old} if old.get(k) != new.get(k)), None)
    if name is None:  # same spec and inputs: the code
        return "were computed by other afd-jax code (edited or upgraded since)"
    return f"were computed from an earlier version of the input file {name} (it changed since)"


def _progress_bar(sizes: dict, done: set, progress: bool):
    if not progress:
        return None
    return tqdm(
        total=sum(sizes.values()),
        initial=sum(n for c, n in sizes.items() if c in done),
        unit="scen",
        desc="sweep",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _compute_chunks(plan, store, chunk_size: int, todo: list, bar) -> dict:
    """Evaluate and write the chunks ``todo`` (in order); returns the method timings."""
    n = plan.n_scenarios
    ev = Evaluator(plan, chunk_size)
    try:
        for c in todo:
            lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
            store.write(part_name(c), format_rows(plan, lo, hi, ev.evaluate(lo, hi)))
            if bar is not None:
                bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()
    return ev.seconds


def _merge(store: PartStore, out: Path, columns: list, names: list, fmt: str) -> None:
    """The final table: header + parts in chunk order (CSV), converted when Parquet."""
    header = ",".join(columns) + "\n"
    if fmt == "csv":
        store.merge(names, out, header)
        return
    import pyarrow.csv as pacsv  # optional dependency, only for Parquet output
    import pyarrow.parquet as pq

    csv_path = out.with_name(out.name + f".csvtmp{os.getpid()}")
    store.merge(names, csv_path, header)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    pq.write_table(pacsv.read_csv(csv_path), tmp)
    csv_path.unlink()
    os.replace(tmp, out)


def run_sweep(
    plan: SweepPlan,
    *,
    output: str | None = None,
    resume: bool = False,
    chunk_size: int | None = None,
    progress: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    merge_timeout_s: float = 86400.0,
    peer_timeout_s: float = 120.0,
) -> SweepResult:
    """Evaluate every scenario of ``plan`` and write the table (see the module docstring).

    Holds the lock of the parts folder (one per process index) for the whole run: a concurrent
    run on the same output fails at once. A run that fails before its first part leaves no
    parts folder behind. Raises InputError when partial results exist and ``resume`` is False,
    when they belong to a different spec or input file content, or when another run holds the
    lock.
    """
    t_start = time.perf_counter()
    out = Path(output or plan.spec.output)
    output_format(plan.spec, str(out))  # a suffix the table cannot have: refused before work
    if process_index != 0:  # other hosts join the run process 0 set up (its manifest)
        _wait_for_run(PartStore(parts_dir(out)), resume, merge_timeout_s)
        resume = True
    folder = parts_dir(out)
    fresh = not folder.exists()
    try:
        with PartStore(folder).lock(str(process_index)):
            where = (process_index, process_count, merge_timeout_s, peer_timeout_s)
            return _run_locked(plan, out, resume, chunk_size, progress, where, t_start)
    except BaseException:
        if fresh and process_index == 0 and not any(folder.glob("part-*")):
            shutil.rmtree(folder, ignore_errors=True)  # a failed start leaves no state
        raise


def _wait_for_run(store: PartStore, resume: bool, timeout_s: float) -> None:
    """A process other than 0 waits for the run process 0 opens: with ``resume``, any
    manifest (a finished run then has nothing to do); without, an unfinished one, since
    process 0 starts a finished run over (clears its folder, writes a new manifest) and the
    finished run's manifest may still be there when this process looks."""

    def opened() -> bool:
        try:
            found = store.read_manifest()
        except PartsOrphaned:  # unreadable: deleted while read (process 0 clearing), or damaged
            if not store.manifest_path.is_file():
                return False
            found = store.read_manifest()  # still there: read it again (raises if damaged)
        return found is not None and (resume or not found.get("complete"))

    wait_until(opened, timeout_s, "the manifest" if resume else "process 0's new manifest")


def _run_locked(plan, out: Path, resume, chunk_size, progress, where, t_start) -> SweepResult:
    """The body of :func:`run_sweep`, under the lock of the parts folder."""
    process_index, process_count, merge_timeout_s, peer_timeout_s = where
    spec, n = plan.spec, plan.n_scenarios
    store, man, resumed = _open_store(plan, out, resume, chunk_size, progress)
    chunk_size, n_chunks = int(man["chunk_size"]), -(-n // int(man["chunk_size"]))
    n_dev = len(jax.local_devices())
    if resumed and man.get("complete") and out.is_file():
        seconds = dict.fromkeys(spec.methods, 0.0)
        return SweepResult(
            str(out), n, n * spec.r_max, man["n_chunks"], 0, 0, chunk_size,
            time.perf_counter() - t_start, seconds, n_dev,
        )  # fmt: skip
    names = [part_name(c) for c in range(n_chunks)]
    mine = [c for c in range(n_chunks) if c % process_count == process_index]
    sizes = {c: min(n, (c + 1) * chunk_size) - c * chunk_size for c in mine}
    lines = {names[c]: sizes[c] * spec.r_max for c in mine}
    bad = store.discard_damaged([names[c] for c in mine], lines)
    if bad:  # said even without a progress bar: the user should know the folder was damaged
        print(
            f"afd-jax sweep: {len(bad)} part(s) not matching a checksum or their chunk's row "
            f"count (damaged, or written by an afd-jax before checksums), recomputed: "
            f"{store.path(bad[0])}" + (" ..." if len(bad) > 1 else ""),
            file=sys.stderr,
        )
    todo = [c for c in mine if not store.has(names[c])]
    bar = _progress_bar(sizes, set(mine) - set(todo), progress)
    with Heartbeat(store.folder, process_index):
        seconds = _compute_chunks(plan, store, chunk_size, todo, bar)
    if process_index == 0:
        if process_count > 1:  # a single process wrote every part itself: nothing to wait for
            owner = lambda c: c % process_count  # noqa: E731
            store.wait_for_parts(names, owner, peer_timeout_s, merge_timeout_s)
        _merge(store, out, plan.columns(), names, output_format(spec, str(out)))
        store.finish(man, names)  # keeps the manifest: --resume then has nothing to do
    rows = sum(sizes[c] for c in todo) * spec.r_max
    return SweepResult(
        str(out), n, n * spec.r_max, n_chunks, len(todo), rows, chunk_size,
        time.perf_counter() - t_start, seconds, n_dev, process_count,
    )  # fmt: skip

"""The reproduction's table writer and its resume-by-parts store, kept apart in this one module
so that it can be swapped for the shared store of the studies.

Every part (a group of CSV files) lands in ``out/parts/<config hash>/`` as soon as it is done
(each file written atomically, with a checksum file, by the shared store's
:func:`afd_jax.studies.store.write_part`); a rerun with the same configuration finds it and
skips the part, unless a file of it fails its checksum (truncated, edited, or written before
checksums): then the part is recomputed. :func:`assemble` copies or concatenates finished
parts into the final tables in ``out``.
Floats are written with 6 significant digits (magnitudes below 1e-7 as 0), so the same seed
regenerates the tables byte for byte.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

import numpy as np

from afd_jax.files import source_digest
from afd_jax.studies.reproduce.configs import config_hash
from afd_jax.studies.store import atomic_write, part_state, write_part

__all__ = [
    "as_float",
    "assemble",
    "format_value",
    "part_done",
    "parts_folder",
    "read_csv",
    "write_csv",
    "write_part_csv",
]


def format_value(v) -> str:
    """One CSV cell: '' for None, true/false, integers as such, floats at 6 significant digits
    (magnitudes below 1e-7 as '0')."""
    if v is None:
        return ""
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if abs(v) < 1e-7:
            # Below the float32 resolution of the kernels and the round-off of 1 - a/b:
            # such a value is zero, and its digits would differ across JAX versions.
            return "0"
        s = f"{v:.6g}"
        return "0" if s == "-0" else s
    return str(v)


def _csv_text(rows: list[dict]) -> str:
    f = io.StringIO()
    if rows:
        wr = csv.writer(f, lineterminator="\n")
        keys = list(rows[0])
        wr.writerow(keys)
        for row in rows:
            wr.writerow([format_value(row.get(k)) for k in keys])
    return f.getvalue()


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write rows (dicts with the same keys) atomically, floats at 6 significant digits
    (magnitudes below 1e-7 as 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, _csv_text(rows))


def write_part_csv(path: Path, rows: list[dict]) -> None:
    """Write one file of a part like :func:`write_csv`, with its checksum file (resume checks
    it: :func:`part_done`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_part(path, _csv_text(rows))


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV file as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def as_float(x) -> float:
    """A CSV cell as a float; nan when empty or not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def parts_folder(out: Path, cfg: dict) -> Path:
    """``out/parts/<hash>/`` (created), the hash of the configuration and of afd-jax's source
    (:func:`~afd_jax.files.source_digest`): a different seed, mode or code never mixes
    parts."""
    parts = out / "parts" / config_hash({**cfg, "code": source_digest()})
    parts.mkdir(parents=True, exist_ok=True)
    return parts


def part_done(parts: Path, names: list[str]) -> bool:
    """Whether every file of a part exists and matches its checksum (the part is then skipped
    on resume). A damaged file (truncated, edited, no checksum) is said on stderr and the part
    is recomputed."""
    states = {name: part_state(parts / name) for name in names}
    bad = [name for name, state in states.items() if state == "damaged"]
    if bad:
        print(
            f"[reproduce] {parts / bad[0]}: does not match a checksum (damaged, or written by an "
            "afd-jax before checksums); recomputing its part",
            file=sys.stderr,
            flush=True,
        )
    return all(state == "ok" for state in states.values())


def assemble(out: Path, parts: Path, tables: dict[str, list[str]]) -> None:
    """Write each final table ``out/<name>`` as the concatenation of its part files."""
    for name, sources in tables.items():
        rows = []
        for source in sources:
            rows += read_csv(parts / source)
        write_csv(out / name, rows)

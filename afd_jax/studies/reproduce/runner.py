"""The entry point of the reproduction: plan (configuration, traces, workloads; bad input is
refused before any work), run or resume the parts, assemble the tables, write the report, the
figures and ``meta.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

from afd_jax.errors import InputError
from afd_jax.montecarlo.simulate import device_name
from afd_jax.studies.reproduce.configs import (
    NO_TRACES,
    TRACES,
    available_workloads,
    check_traces_dir,
    config,
    config_hash,
    trace_digests,
)
from afd_jax.studies.reproduce.parts import assemble, parts_folder
from afd_jax.studies.reproduce.plots import FIGURES, write_plots
from afd_jax.studies.reproduce.report import write_report
from afd_jax.studies.reproduce.runs import grid_tag, log, part_drain, part_grid, part_v1

__all__ = ["RunPlan", "plan_reproduction", "run_reproduction"]


class RunPlan(NamedTuple):
    """What a run computes: its configuration, the traces folder (None: none given), the
    workloads used and skipped, and why they were skipped (None: none skipped)."""

    cfg: dict
    traces_dir: Path | None
    used: list[str]
    skipped: list[str]
    skip_reason: str | None


def plan_reproduction(quick: bool = False, seed: int = 0, traces_dir=None) -> RunPlan:
    """The plan of a run. A given ``traces_dir`` that holds none of the expected traces, or
    a trace the run uses that does not load, raises :class:`afd_jax.errors.InputError`; none
    given in full mode logs one line saying that the trace scenarios are left out. The
    configuration holds a digest of each trace used (:func:`trace_digests`)."""
    cfg = config(quick, seed)
    traces_dir = check_traces_dir(traces_dir)
    used, skipped = available_workloads(cfg, None if quick else traces_dir)
    digests = trace_digests(used, traces_dir) if traces_dir is not None else {}
    if digests:
        cfg["traces"] = digests
    reason = None
    if skipped and quick:
        reason = "quick mode never reads traces"
    elif skipped and traces_dir is None:
        reason = NO_TRACES
    elif skipped:
        reason = "trace files not found"
    wanted = [name for name in cfg["workloads"] if name in TRACES]
    if wanted and traces_dir is None:
        log(f"{NO_TRACES}; running without the trace scenarios ({', '.join(wanted)})")
    return RunPlan(cfg, traces_dir, used, skipped, reason)


def _run_parts(plan: RunPlan, parts: Path) -> dict:
    """Run (or resume) every part; returns the seconds each took."""
    cfg, timings = plan.cfg, {}

    def timed(label, fn, *args):
        t = time.perf_counter()
        fn(*args)
        timings[label] = round(time.perf_counter() - t, 2)

    timed("v1", part_v1, cfg, parts)
    timed("drain", part_drain, cfg, parts)
    for name in plan.used:
        for b in cfg["batches"]:
            timed(grid_tag(name, b), part_grid, cfg, parts, name, b, plan.traces_dir)
    return timings


def check_out_folder(out: Path) -> None:
    """Before any work: ``out`` holds nothing in the way of the run. Every file the run
    writes must be a file where it exists (``parts`` a folder), and such files are replaced
    only in a reproduction's own folder (one with ``meta.json`` or ``parts/``): a report.md of
    the user's is not overwritten."""
    names = [*_final_tables(None), "report.md", "meta.json", *FIGURES]
    parts = out / "parts"
    if parts.exists() and not parts.is_dir():
        raise InputError(
            "--out: holds a file named parts (the run's folder of parts)", path=str(parts)
        )
    for name in names:
        if (out / name).is_dir():
            raise InputError(
                f"--out: holds a folder named {name}, a file the run writes", path=str(out / name)
            )
    if (out / "meta.json").is_file() or parts.is_dir():
        return
    found = [name for name in names if (out / name).exists()]
    if found:
        raise InputError(
            f"--out: holds {', '.join(found)}, not written by a reproduction (no meta.json or "
            "parts/ beside them), which the run would replace; give a new or empty folder",
            path=str(out),
        )


def _final_tables(plan: RunPlan | None) -> dict[str, list[str]]:
    """Each final table and the part files it is assembled from (``plan`` None: the names
    only)."""
    tags = [] if plan is None else [grid_tag(n, b) for n in plan.used for b in plan.cfg["batches"]]
    tables = {name: [name] for name in ("v1_curves.csv", "v1_summary.csv", "v1_drain.csv")}
    tables["workloads.csv"] = [f"{tag}.csv" for tag in tags]
    tables["workload_curves.csv"] = [f"{tag}_curves.csv" for tag in tags]
    return tables


def run_reproduction(
    out,
    quick: bool = False,
    seed: int = 0,
    traces_dir=None,
    plots: bool = True,
) -> dict:
    """Run (or resume) the reproduction into ``out``; returns the meta dict
    (docs/reproduction.md).

    ``traces_dir``: folder with the traces of :data:`afd_jax.studies.reproduce.configs.TRACES`
    (None: run without the trace scenarios, said in one line on stderr and in the report).
    Quick mode never uses traces. Computes in float64 scopes; the global JAX configuration is
    left alone.
    """
    out = Path(out)
    check_out_folder(out)
    plan = plan_reproduction(quick, seed, traces_dir)
    parts = parts_folder(out, plan.cfg)
    t0 = time.perf_counter()
    timings = _run_parts(plan, parts)
    assemble(out, parts, _final_tables(plan))
    write_report(out, plan.cfg, plan.used, plan.skipped, plan.skip_reason)
    if plots:
        write_plots(out)
    meta = dict(
        mode=plan.cfg["mode"],
        seed=seed,
        config=plan.cfg,
        config_hash=config_hash(plan.cfg),
        workloads=plan.used,
        skipped_workloads=plan.skipped,
        wall_seconds=round(time.perf_counter() - t0, 2),
        part_seconds=timings,
        device=device_name(),
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta

"""`afd-jax sweep` over two real processes joined by jax.distributed (localhost coordinator, CPU
devices): the merged table equals the single-process table byte for byte; a process killed
mid-run is reported by process 0 (exit 3, naming it) and a rerun with --resume finishes from
the parts already written, giving the same table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_multidevice import free_port
from test_sweep import ROOT, cli_env, run_cli, spec_text, traces  # noqa: F401  (fixture)

MC = '[mc]\nkernel = "barrier"\nsteps = 256\nreplications = 2\nseed = 3\n'
METHODS = '["mean_field", "gaussian", "mc"]'


def _spec(traces, tmp_path):  # noqa: F811
    spec = tmp_path / "s.toml"
    text = spec_text(traces, tmp_path / "unused.csv", MC, METHODS)
    spec.write_text(text.replace("chunk_size = 5", "chunk_size = 2"))
    return spec


def _start(spec, out, addr, i, extra=()):
    return subprocess.Popen(
        [sys.executable, "-m", "afd_jax", "sweep", str(spec), "--out", str(out), "--quiet"]
        + ["--json", "--coordinator", addr, "--num-processes", "2", "--process-id", str(i)]
        + list(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=ROOT,
    )


def _single(traces, tmp_path):  # noqa: F811
    spec = _spec(traces, tmp_path)
    out = tmp_path / "one.csv"
    proc = run_cli([str(spec), "--out", str(out), "--quiet", "--json"])
    assert proc.returncode == 0, proc.stderr
    return spec, out.read_bytes()


@pytest.mark.slow
def test_two_processes_then_a_killed_one(traces, tmp_path):  # noqa: F811
    spec, ref = _single(traces, tmp_path)
    _two_processes_write_the_single_process_table(spec, ref, tmp_path)
    _killed_process_is_reported_and_resume_loses_nothing(spec, ref, tmp_path)


def _two_processes_write_the_single_process_table(spec, ref, tmp_path):
    """Twice on one output: the second, a plain rerun of a finished run, starts it over (process
    1 waits for process 0's new manifest instead of joining the finished run's, which made
    it return at once and process 0 wait in vain for its parts, about 1 run in 3)."""
    out = tmp_path / "two.csv"
    for _ in range(2):
        addr = f"127.0.0.1:{free_port()}"
        procs = [_start(spec, out, addr, i) for i in range(2)]
        res = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, res, strict=True):
            assert p.returncode == 0, err
        text = res[0][0]
        summary = json.loads(text[text.index("{") :])  # after gloo's line
        assert summary["processes"] == 2
        assert 0 < summary["rows_computed"] < summary["n_rows"]  # process 0 did only its share
        assert out.read_bytes() == ref


def _killed_process_is_reported_and_resume_loses_nothing(spec, ref, tmp_path):
    out = tmp_path / "killed.csv"
    parts = tmp_path / "killed.csv.parts"
    addr = f"127.0.0.1:{free_port()}"
    procs = [_start(spec, out, addr, i, ("--peer-timeout", "3")) for i in range(2)]
    try:
        t0 = time.monotonic()
        while not (parts / "part-000001.csv").is_file():  # process 1's first chunk
            assert procs[1].poll() is None, procs[1].stderr.read()
            assert time.monotonic() - t0 < 300, "process 1 wrote nothing"
            time.sleep(0.01)
        os.kill(procs[1].pid, signal.SIGKILL)
        _, err = procs[0].communicate(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode == 3, err
    assert "process 1" in err and "--resume" in err
    kept = sorted(x.name for x in parts.glob("part-*.csv"))
    assert "part-000000.csv" in kept and "part-000001.csv" in kept
    assert not out.exists()
    proc = run_cli([str(spec), "--out", str(out), "--quiet", "--json", "--resume"])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["chunks_computed"] == summary["chunks"] - len(kept)  # only the lost ones
    assert out.read_bytes() == ref


def test_other_processes_wait_for_the_run_process_0_opens(tmp_path):
    """Process 1 of a plain rerun does not join a finished run's manifest (process 0 is about
    to start that run over): it waits for an unfinished one; with --resume any manifest will
    do (a finished run has nothing left to do)."""
    from afd_jax.studies.store import PartStore
    from afd_jax.studies.sweep.run import _wait_for_run

    store = PartStore(tmp_path / "t.csv.parts")
    with pytest.raises(RuntimeError, match="the manifest"):
        _wait_for_run(store, True, 0.3)  # no manifest yet
    store.write_manifest({"digest": "x", "complete": True})
    _wait_for_run(store, True, 0.3)
    with pytest.raises(RuntimeError, match="process 0's new manifest"):
        _wait_for_run(store, False, 0.3)
    store.write_manifest({"digest": "x", "complete": False})
    _wait_for_run(store, False, 0.3)


def test_waiting_process_rides_out_a_manifest_deleted_while_read(tmp_path, monkeypatch):
    """Process 0 clearing a finished run can delete the manifest between process 1's check
    that it exists and its read: that read fails as "damaged", and process 1 keeps waiting for
    the new manifest instead of stopping; a manifest that stays damaged is still an error."""
    from afd_jax.studies.store import PartsOrphaned, PartStore
    from afd_jax.studies.sweep.run import _wait_for_run

    store = PartStore(tmp_path / "t.csv.parts")
    store.write_manifest({"digest": "x", "complete": True})
    read = PartStore.read_manifest
    calls = []

    def racing(self):
        calls.append(1)
        if len(calls) == 1:  # deleted under the reader; process 0 writes the new one after
            self.manifest_path.unlink()
            raise PartsOrphaned("damaged", path=str(self.manifest_path))
        if len(calls) == 2:
            self.write_manifest({"digest": "x", "complete": False})
        return read(self)

    monkeypatch.setattr(PartStore, "read_manifest", racing)
    _wait_for_run(store, False, 5.0)
    monkeypatch.setattr(PartStore, "read_manifest", read)
    store.manifest_path.write_text("[1, 2]")
    with pytest.raises(PartsOrphaned):
        _wait_for_run(store, False, 5.0)

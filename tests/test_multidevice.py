"""simulate (fast, barrier and dynamics kernels) and pool_simulate split their rows over 4
(forced host) CPU devices, and over 2 processes joined by jax.distributed on a localhost
coordinator: the numbers equal one device's bit for bit and the JSON says how many
devices/processes took part."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = str(ROOT / "tests" / "multidevice_runner.py")


def _env(n_dev: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    if n_dev > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
    return env


_FACTS = ("devices", "processes", "calls", "collectives", "lowered")  # not numbers to compare


def _strip(out: dict) -> dict:
    return {k: {f: v for f, v in js.items() if f not in _FACTS} for k, js in out.items()}


@pytest.fixture(scope="module")
def one_device() -> dict:
    proc = subprocess.run(
        [sys.executable, RUNNER], env=_env(1), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_four_devices_identical_to_one(one_device):
    proc = subprocess.run(
        [sys.executable, RUNNER], env=_env(4), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    four = json.loads(proc.stdout)
    # one replication of 15 workers cannot be split over 4 devices: it runs on one
    assert {js["devices"] for n, js in four.items() if n != "traj1_odd"} == {4}
    assert four["traj1_odd"]["devices"] == 1
    assert {js["devices"] for js in one_device.values()} == {1}
    assert sorted(four) == [
        "barrier", "dynamics", "dynamics_in_place", "fast", "fast1", "fast1_rerun", "fast_x64",
        "pool", "traj1", "traj1_odd",
    ]  # fmt: skip
    assert _strip(four) == _strip(one_device)
    # the rows of a device need nothing from the others until the segment's end: the only
    # collectives are the per-call reductions of the histogram and of ``covered`` (indexing
    # the sharded t_end by row once compiled an all-gather and an all-reduce into the
    # per-row loop); one device has none
    assert four["fast"]["collectives"] == {"all-gather": 0, "all-reduce": 2}, four["fast"]
    assert one_device["fast"]["collectives"] == {"all-gather": 0, "all-reduce": 0}
    # the dynamics kernel's routing loop (a while_loop) runs per device: its condition is no
    # longer reduced across the devices at every iteration; the histogram's sum is left
    assert four["dynamics"]["collectives"] == {"all-gather": 0, "all-reduce": 1}, four
    assert one_device["dynamics"]["collectives"]["all-reduce"] <= 1  # the psum, or none
    # the same for the pool's window loop (until enough completions), which has no histogram
    # to sum: no collective at all (it was an all-reduce per step: 9x slower on 2 CPU devices)
    assert four["pool"]["collectives"] == {"all-gather": 0, "all-reduce": 0}, four["pool"]
    # float64 on: float64 totals per replication summed on each device (a group of rows per
    # device), the same numbers as the host's sums of every block without it
    assert _strip(four)["fast_x64"] == _strip(four)["fast"]
    # every chunk program of a run of several segments compiled once (the start hands the
    # segments their states sharded as the segments return them)
    _compiled_once(
        four, {**_SEGMENTS, "fast1": "jit(segment_split)", "traj1": "jit(segment_split)"}
    )
    _compiled_once(
        one_device, {**_SEGMENTS, "fast1": "jit(segment_chunk)", "traj1": "jit(segment_chunk)"}
    )
    # one segment started in its own program (start_split), short, rerun split as often as
    # one device reruns it; the numbers are those of three segments
    split, one = four["fast1_rerun"]["calls"], one_device["fast1_rerun"]["calls"]
    assert set(split) == {"start_split", "segment_split"} and set(one) == {"segment_chunk"}
    assert split["start_split"] == 1 and one["segment_chunk"] >= 2
    assert split["segment_split"] == one["segment_chunk"] - 1
    assert _strip(four)["fast1_rerun"] == _strip(four)["fast1"]
    # the step kernel split by workers: the fast kernel's numbers (the same requests)
    assert {**_strip(four)["traj1"], "kernel": "fast"} == _strip(four)["fast1"]


def _compiled_once(out: dict, segment_programs: dict) -> None:
    """Every chunk program of these runs (several segments each; run name -> its segment
    program) was lowered once."""
    low = {name: out[name]["lowered"] for name in segment_programs}
    for name, program in segment_programs.items():
        assert program in low[name], low
    assert all(set(c.values()) == {1} for c in low.values()), low


_SEGMENTS = {
    "fast": "jit(segment_chunk)",
    "fast_x64": "jit(segment_chunk)",
    "dynamics": "jit(dynamics_chunk)",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_identical_to_one(one_device):
    addr = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, RUNNER, addr, "2", str(i)],
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    for out, _ in outs:
        got = json.loads(out.strip().splitlines()[-1])  # gloo prints a line first
        assert {(js["devices"], js["processes"]) for js in got.values()} == {(2, 2)}
        assert _strip(got) == {k: v for k, v in _strip(one_device).items() if k in got}
        assert sorted(got) == ["dynamics", "fast", "fast_x64", "pool"]
        _compiled_once(got, _SEGMENTS)

"""Checkpoints of Monte Carlo runs (afd_jax.montecarlo.checkpoint): a run stopped after a chunk
and run again with the same file ends with the uninterrupted run's numbers, bit for bit, having
computed only the chunks left; a file of another run, or no checkpoint at all, is refused with
one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from afd_jax.cli import main
from afd_jax.errors import InputError
from afd_jax.kernels.dynamics import Dynamics
from afd_jax.model.latency import Latency
from afd_jax.montecarlo import checkpoint as C
from afd_jax.montecarlo.pool import pool_simulate
from afd_jax.montecarlo.simulate import simulate
from afd_jax.workload.containers import TraceWorkload

LAT = Latency(
    alpha_attn=0.05, beta_attn=10.0, alpha_ffn=0.5, beta_ffn=20.0, alpha_comm=0.01, beta_comm=2.0
)
# the facts of a run that are not its numbers
RUN_FACTS = {"wall_seconds", "checkpoint"}


@pytest.fixture(scope="module")
def trace():
    rng = np.random.default_rng(5)
    return TraceWorkload("synthetic", rng.integers(1, 300, 300), rng.integers(1, 40, 300))


class Stop(Exception):
    """Stands for a kill right after the first chunk was saved."""


@pytest.fixture
def stop_after_first_chunk(monkeypatch):
    """Every chunk is saved (no 10 s wait) and the first save ends the run."""
    monkeypatch.setattr(C, "SAVE_SECONDS", 0.0)
    finished = C.Checkpoint.finished

    def once(self, i):
        finished(self, i)
        raise Stop

    def arm():
        monkeypatch.setattr(C.Checkpoint, "finished", once)

    def disarm():
        monkeypatch.setattr(C.Checkpoint, "finished", finished)

    return arm, disarm


def _numbers(res) -> dict:
    return {
        f.name: getattr(res, f.name) for f in dataclasses.fields(res) if f.name not in RUN_FACTS
    }


def _assert_same_numbers(a, b):
    x, y = _numbers(a), _numbers(b)
    assert x.keys() == y.keys()
    for k in x:
        if isinstance(x[k], np.ndarray):
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        else:
            assert x[k] == y[k], k


RUNS = {
    "fast": lambda w, **kw: simulate(
        w, LAT, 4, 4, kernel="fast", steps=300, replications=6, replications_per_call=2, **kw
    ),
    "barrier": lambda w, **kw: simulate(
        w, LAT, 4, 4, kernel="barrier", steps=2048, replications=3, replications_per_call=1, **kw
    ),
    "dynamics": lambda w, **kw: simulate(
        w,
        LAT,
        4,
        3,
        steps=128,
        replications=4,
        replications_per_call=2,
        dynamics=Dynamics(routing="balanced", kv_capacity=900),
        **kw,
    ),  # fmt: skip
    "completions": lambda w, **kw: pool_simulate(
        w, LAT, 4, [1, 2, 3], n_requests=60, replications=2, diagnostics=True, **kw
    ),
}


@pytest.mark.parametrize("kind", list(RUNS))
def test_a_stopped_run_resumes_to_the_same_numbers(trace, tmp_path, stop_after_first_chunk, kind):
    arm, disarm = stop_after_first_chunk
    run, path = RUNS[kind], tmp_path / "run.ckpt"
    whole = run(trace)
    arm()
    with pytest.raises(Stop):
        run(trace, checkpoint=path)
    disarm()
    resumed = run(trace, checkpoint=path)
    _assert_same_numbers(whole, resumed)
    assert resumed.checkpoint["resumed_chunks"] == 1 < resumed.checkpoint["chunks"]
    assert np.isnan(resumed.slot_steps_per_second)  # its wall time is not the run's
    again = run(trace, checkpoint=path)  # finished: nothing left to compute
    _assert_same_numbers(whole, again)
    assert again.checkpoint["resumed_chunks"] == again.checkpoint["chunks"]


def test_ctrl_c_saves_the_finished_chunks_not_the_one_in_progress(trace, tmp_path, monkeypatch):
    """Ctrl-C after chunk 1's sums were added but before it finished: the file holds chunk 0
    (kept since its end, no periodic save yet), and the resume runs chunk 1 again, so its
    sums count once."""
    from afd_jax.montecarlo import simulate as S

    path, whole = tmp_path / "run.ckpt", RUNS["fast"](trace)
    monkeypatch.setattr(C, "SAVE_SECONDS", 1e9)
    add, calls = S.StepAccumulator.add, []

    def add_then_interrupt(self, *args):
        add(self, *args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(S.StepAccumulator, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        RUNS["fast"](trace, checkpoint=path)
    monkeypatch.setattr(S.StepAccumulator, "add", add)
    resumed = RUNS["fast"](trace, checkpoint=path)
    assert resumed.checkpoint["resumed_chunks"] == 1
    _assert_same_numbers(whole, resumed)


def test_a_checkpoint_of_another_run_is_refused(trace, tmp_path):
    path = tmp_path / "run.ckpt"
    RUNS["fast"](trace, checkpoint=path, seed=1)
    with pytest.raises(InputError, match=r"its run\.seed is 1, this run's 0") as err:
        RUNS["fast"](trace, checkpoint=path, seed=0)
    assert err.value.path == str(path)
    other = TraceWorkload("synthetic", np.full(300, 7), np.full(300, 3))
    with pytest.raises(InputError, match="its step_time_bins, workload differ"):
        RUNS["fast"](other, checkpoint=path, seed=1)
    # the bins follow max_slot_load: a resume would add counts of two bin sets (a review)
    with pytest.raises(InputError, match="its step_time_bins differs"):
        RUNS["fast"](trace, checkpoint=path, seed=1, max_slot_load=5000)
    # NumPy scalars in the settings are numbers like any other (they raised TypeError)
    again = RUNS["fast"](trace, checkpoint=path, seed=np.int64(1))
    assert again.checkpoint["resumed_chunks"] == again.checkpoint["chunks"]


def test_a_checkpoint_of_other_code_is_refused(trace, tmp_path, monkeypatch):
    """Code edited (or upgraded) between two runs of one release: a resume would add the sums
    of two programs (a review's extension of a routing policy resumed its old numbers)."""
    path = tmp_path / "run.ckpt"
    RUNS["fast"](trace, checkpoint=path, seed=1)
    monkeypatch.setattr(C, "source_digest", lambda: "0" * 32)
    with pytest.raises(InputError, match="written by other afd-jax code"):
        RUNS["fast"](trace, checkpoint=path, seed=1)
    with pytest.raises(InputError, match=r"its run\.seed is 1, this run's 0"):
        RUNS["fast"](trace, checkpoint=path, seed=0)  # a setting is named before the code


def test_source_digest_follows_every_source_file(tmp_path, monkeypatch):
    """The digest covers the afd_jax package and the kernels (installed apart), by content."""
    import importlib.util

    from afd_jax import files

    roots = {}
    for name, rel in (("afd_jax", "montecarlo/x.py"), ("afd_jax.kernels", "y.py")):
        root = tmp_path / name
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text("a = 1\n")
        (root / "__init__.py").write_text("")
        roots[name] = root
    spec = importlib.util.spec_from_file_location

    def find(name):
        return spec(name, roots[name] / "__init__.py")

    monkeypatch.setattr(files.importlib.util, "find_spec", find)
    digests = []
    for edit in (None, "montecarlo/x.py", "y.py"):
        if edit is not None:
            root = roots["afd_jax" if "/" in edit else "afd_jax.kernels"]
            (root / edit).write_text("a = 2\n")
        files.source_digest.cache_clear()
        digests.append(files.source_digest())
    (roots["afd_jax"] / "notes.txt").write_text("not source")
    files.source_digest.cache_clear()
    digests.append(files.source_digest())
    files.source_digest.cache_clear()
    assert len(set(digests[:3])) == 3 and digests[3] == digests[2]


def test_not_a_checkpoint_is_refused(trace, tmp_path):
    path = tmp_path / "run.ckpt"
    path.write_text("0,1,2\n")
    with pytest.raises(InputError, match="not an afd-jax checkpoint"):
        RUNS["fast"](trace, checkpoint=path)
    RUNS["fast"](trace, checkpoint=tmp_path / "good.ckpt")
    with np.load(tmp_path / "good.ckpt") as z:
        arrays = {k: z[k] for k in z.files}
    edited = dict(arrays, tau=arrays["tau"] * 2)  # edited sums: a resume would report them
    np.savez(tmp_path / "edited.npz", **edited)
    with pytest.raises(InputError, match="damaged or edited checkpoint"):
        RUNS["fast"](trace, checkpoint=tmp_path / "edited.npz")
    header = json.loads(arrays["__checkpoint__"].tobytes())
    header["done"] = 1  # the last chunk would be added again
    text = json.dumps(header, sort_keys=True).encode()
    edited = dict(arrays, __checkpoint__=np.frombuffer(text, np.uint8))
    np.savez(tmp_path / "done.npz", **edited)
    with pytest.raises(InputError, match="damaged or edited checkpoint"):
        RUNS["fast"](trace, checkpoint=tmp_path / "done.npz")
    with pytest.raises(InputError, match="cannot write here"):
        RUNS["fast"](trace, checkpoint=path / "run.ckpt")  # under a file


@pytest.mark.parametrize(
    "state",
    [
        {"a": np.arange(3.0), "b": None, "c": [], "d": [np.ones((2, 2)), np.zeros(1, np.int32)]},
        {"v": {"tau": np.ones(2), "x": np.int64(3)}, "hist": np.zeros((2, 3), np.int32)},
    ],
)
def test_flatten_round_trip(state):
    back = C.unflatten(C.flatten(state))
    assert back.keys() == state.keys()

    def same(a, b):
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        elif isinstance(a, list):
            assert len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        elif a is None:
            assert b is None
        else:
            assert np.asarray(a).dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        return True

    same(state, back)


CLI = ["simulate", "--workload", "paper-v1", "--latency", "paper-v1", "-B", "8", "--r-max", "3",
       "--steps", "300", "--replications", "4", "--quiet", "--json"]  # fmt: skip


def test_cli_resumes_and_says_so(capsys, tmp_path):
    path = str(tmp_path / "sim.ckpt")
    assert main([*CLI, "--checkpoint", path]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*CLI, "--checkpoint", path]) == 0
    out = capsys.readouterr()
    second = json.loads(out.out)
    assert f"resumed from {path}: 1 of 1 chunks were done" in out.err
    assert second["results"] == first["results"] and second["slot_steps_per_second"] is None
    assert main([*CLI, "--checkpoint", path, "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert "a checkpoint of another run: its run.seed is 0, this run's 4" in err
    assert main([*CLI, "--checkpoint", str(tmp_path)]) == 2
    assert "--checkpoint: is a folder, expected a file name" in capsys.readouterr().err
    deep = tmp_path / "new" / "folder" / "sim.ckpt"  # missing folders are created
    assert main([*CLI, "--checkpoint", str(deep)]) == 0 and deep.is_file()

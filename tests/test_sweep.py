"""afd_jax.studies.sweep: spec validation, scenario expansion, every method against an independent
per-scenario computation, streaming + kill-and-resume (byte-identical table)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import OPTIMISED_ENV

from afd_jax.errors import InputError
from afd_jax.model import exact, theory
from afd_jax.model.latency import Latency
from afd_jax.studies import sweep as S
from afd_jax.studies.store import MANIFEST, PartsExist, PartsMismatch, PartStore
from afd_jax.workload.slotload import slot_load_pmf
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

ROOT = Path(__file__).resolve().parents[1]


def write_trace(path: Path, rows) -> str:
    """A tiny Azure-format trace (ContextTokens = P, GeneratedTokens = D)."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2023-11-16 18:15:46.{i:06d},{p},{d}" for i, (p, d) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def traces(tmp_path):
    a = write_trace(tmp_path / "a.csv", [(5, 3), (20, 1), (9, 7), (0, 4), (13, 2), (30, 5)])
    b = write_trace(tmp_path / "b.csv", [(40, 10), (2, 1), (17, 6), (25, 25)])
    return a, b


LATENCY_SET = """[latency.set]
alpha_attn = 0.02
beta_attn = 30.0
alpha_ffn = 0.15
beta_ffn = 60.0
alpha_comm = 0.05
beta_comm = 20.0
"""


def spec_text(traces, out, extra: str = "", methods='["mean_field", "gaussian", "exact"]'):
    a, b = traces
    return f"""
r_max = 12
methods = {methods}
output = "{out}"
chunk_size = 5
batch = [4, 16]
{extra}
[workloads]
specs = ["{a}", "{b}"]
{LATENCY_SET}[latency.grid]
alpha_attn = {{ logspace = [-2, -1, 3] }}
beta_ffn = [40.0, 200.0]
"""


BASE = "batch = [1]\n[workloads]\nspecs=['x']"


def parse(text: str, path="spec.toml"):
    return S.parse_sweep_spec(tomllib.loads(text), path)


# ---------------------------------------------------------------------------------------------
# validation


def test_parquet_format_without_output_names_a_parquet_table():
    """format = "parquet" without output took the default name s.csv, so any --out was
    compared with it (a review of session 22: a complaint about the suffix of 'cur.csv')."""
    from afd_jax.studies.sweep.spec import output_format

    spec = parse(f"format = 'parquet'\n{BASE}", "dir/cur.toml")
    assert spec.output == "cur.parquet" and output_format(spec, "x.parquet") == "parquet"
    with pytest.raises(InputError, match="'x.csv'") as err:
        output_format(spec, "x.csv")
    assert err.value.field == "--out"


@pytest.mark.parametrize(
    "text, key",
    [
        ("bogus = 1\nbatch = [1]\n[workloads]\nspecs=['x']", "bogus"),
        ("batch = []\n[workloads]\nspecs=['x']", "batch"),
        ("batch = [0]\n[workloads]\nspecs=['x']", "batch"),
        ("batch = [1.5]\n[workloads]\nspecs=['x']", "batch"),
        ("methods = ['nope']\nbatch = [1]\n[workloads]\nspecs=['x']", "methods"),
        ("methods = []\nbatch = [1]\n[workloads]\nspecs=['x']", "methods"),
        ("r_max = 0\nbatch = [1]\n[workloads]\nspecs=['x']", "r_max"),
        ("batch = [1]\n[workloads]\nspecs=[]", "workloads"),
        ("batch = [1]\n[workloads]\nspecs=['x']\nextra=1", "workloads.extra"),
        (f"{BASE}\n[latency.grid]\nalpha_atn=[1]", "latency.grid.alpha_atn"),
        (f"{BASE}\n[latency.grid]\nbeta_ffn=[]", "latency.grid.beta_ffn"),
        (
            "batch = [1]\n[workloads]\nspecs=['x']\n[latency.grid]\nbeta_ffn={linspace=[1,2,0]}",
            "latency.grid.beta_ffn.linspace",
        ),
        (
            "batch = [1]\n[workloads]\nspecs=['x']\n[latency.random]\nn=3\n"
            "beta_ffn={uniform=[5,1]}",
            "latency.random.beta_ffn.uniform",
        ),
        (
            "batch = [1]\n[workloads]\nspecs=['x']\n[latency.random]\nn=0\n"
            "beta_ffn={uniform=[1,5]}",
            "latency.random.n",
        ),
        ("batch = [1]\n[workloads]\nspecs=['x']\n[latency]\noverlap='sideways'", "latency.overlap"),
        ("format = 'xlsx'\nbatch = [1]\n[workloads]\nspecs=['x']", "format"),
        ("batch = [1]\n[workloads]\nspecs=['x']\n[mc]\nsteps=0", "mc.steps"),
        (
            "batch = [1]\n[workloads]\n[[workloads.family]]\nfamily='geometric'\n"
            "params={prompt=[]}",
            "workloads.family[0].params.prompt",
        ),
    ],
)
def test_bad_spec_names_the_key(text, key):
    with pytest.raises(InputError) as err:
        parse(text, "bad.toml")
    assert err.value.field == key
    assert err.value.path == "bad.toml"


def test_invalid_value_rejected_before_any_work(traces, tmp_path):
    out = tmp_path / "o.csv"
    text = spec_text(traces, out).replace("beta_ffn = [40.0, 200.0]", "beta_ffn = [40.0, -1.0]")
    plan_err = None
    try:
        S.make_plan(parse(text))
    except InputError as err:
        plan_err = err
    assert plan_err is not None and plan_err.field == "latency.grid.beta_ffn"
    assert not out.exists() and not S.parts_dir(out).exists()


def test_grid_forms():
    np.testing.assert_allclose(S.grid_values({"linspace": [1, 3, 3]}, "k"), [1, 2, 3])
    np.testing.assert_allclose(S.grid_values({"logspace": [0, 2, 3]}, "k"), [1, 10, 100])
    np.testing.assert_allclose(S.grid_values({"geomspace": [2, 8, 3]}, "k"), [2, 4, 8])
    np.testing.assert_allclose(S.grid_values({"range": [0, 1, 0.25]}, "k"), np.arange(5) / 4)
    assert S.grid_values({"values": [3, 4]}, "k", integer=True).tolist() == [3, 4]


def test_scenarios_product_order_and_random_samples(traces, tmp_path):
    extra = ""
    text = spec_text(traces, tmp_path / "o.csv", extra) + (
        "[latency.random]\nn = 4\nseed = 3\nbeta_comm = {uniform = [10, 50]}\n"
        "cost_attn = {loguniform = [0.5, 2.0]}\n"
    )
    plan = S.make_plan(parse(text))
    assert plan.n_scenarios == 2 * 2 * (3 * 2) * 4
    # workload outermost, then batch, then latency (grid in key order, then the sample)
    assert plan.wl_index.tolist() == [0] * 48 + [1] * 48
    assert plan.batch[:48].tolist() == [4] * 24 + [16] * 24
    j = Latency._fields.index
    np.testing.assert_allclose(plan.coeffs[:24:8, j("alpha_attn")], [0.01, 10**-1.5, 0.1])
    np.testing.assert_allclose(plan.coeffs[:8:4, j("beta_ffn")], [40.0, 200.0])
    bc, ca = plan.coeffs[:, j("beta_comm")], plan.coeffs[:, j("cost_attn")]
    assert np.all((bc >= 10) & (bc <= 50)) and np.all((ca >= 0.5) & (ca <= 2.0))
    assert np.unique(bc).size == 4  # the same 4 samples under every grid point
    np.testing.assert_array_equal(bc[:4], bc[4:8])
    again = S.make_plan(parse(text))  # seeded: reproducible
    np.testing.assert_array_equal(again.coeffs, plan.coeffs)
    assert "beta_comm" in plan.swept and "alpha_attn" in plan.swept and "batch" in plan.swept


# ---------------------------------------------------------------------------------------------
# numbers against independent per-scenario computations


@pytest.mark.parametrize("latency_extra", ["", "comm_scaling = 'per_worker'\noverlap = 'serial'"])
def test_methods_match_per_scenario_references(traces, tmp_path, latency_extra):
    out = tmp_path / "o.csv"
    text = spec_text(traces, out).replace(
        "[latency.set]", f"[latency]\n{latency_extra}\n[latency.set]"
    )
    plan = S.make_plan(parse(text))
    res = S.run_sweep(plan, progress=False)
    assert res.n_rows == plan.n_scenarios * 12 and res.chunks_computed == res.n_chunks
    t = S.read_table(out)
    assert len(t["r"]) == res.n_rows
    rng = np.random.default_rng(0)
    for i in rng.choice(plan.n_scenarios, 6, replace=False):
        rows = slice(12 * i, 12 * (i + 1))
        assert np.all(t["scenario"][rows] == i)
        lat = Latency(*plan.coeffs[i])
        b = int(plan.batch[i])
        w = resolve_workload(plan.spec.workloads[plan.wl_index[i]][1])
        ref_exact = exact.exact_throughput(slot_load_pmf(w), lat, b, 12, plan.opts)
        np.testing.assert_allclose(t["tput_exact"][rows], ref_exact, rtol=1e-11)
        e = plan.workloads[plan.wl_index[i]]
        r = np.arange(1.0, 13.0)
        mf = theory.mean_field_throughput(lat, e.theta, r, b, plan.opts)
        ga = theory.gaussian_throughput(lat, e.theta, e.slot_var, r, b, plan.opts)
        np.testing.assert_allclose(t["tput_mean_field"][rows], np.asarray(mf), rtol=1e-12)
        np.testing.assert_allclose(t["tput_gaussian"][rows], np.asarray(ga), rtol=1e-12)
        assert t["r_best_exact"][12 * i] == np.argmax(ref_exact) + 1
        regimes = [theory.mean_field_regime(lat, e.theta, float(rr), b, plan.opts) for rr in r]
        assert t["regime"][rows].tolist() == regimes


# ---------------------------------------------------------------------------------------------
# streaming, kill and resume


def cli_env(env_extra=None) -> dict:
    """The environment of a sweep subprocess: compiled as users compile (OPTIMISED_ENV), as
    these tests check the promise of the same bytes whatever the chunking, the devices and
    the processes."""
    env = {**os.environ, **OPTIMISED_ENV}
    env.update(env_extra or {})
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def run_cli(args, env_extra=None):
    return subprocess.run(
        [sys.executable, "-m", "afd_jax", "sweep", *args],
        capture_output=True,
        text=True,
        env=cli_env(env_extra),
        cwd=ROOT,
        timeout=300,
    )


def kill_after_parts(args, parts: Path, n_parts: int = 2, timeout_s: float = 300.0) -> list[str]:
    """Start ``afd-jax sweep ARGS`` and SIGKILL it (from the test side) as soon as ``n_parts``
    part files exist; returns the sorted names of the parts it left. The spec must have many more
    chunks than ``n_parts``, so the run is still far from done when the parts are seen."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "afd_jax", "sweep", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=ROOT,
    )
    t0 = time.monotonic()
    try:
        while len(list(parts.glob("part-*.csv"))) < n_parts:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() - t0 < timeout_s, "no parts written in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return sorted(p.name for p in parts.glob("part-*.csv"))


# 240 scenarios in chunks of one: the run is still far from done when its first parts appear
MANY_CHUNKS = (
    ("chunk_size = 5", "chunk_size = 1"),
    ("logspace = [-2, -1, 3]", "logspace = [-2, -1, 30]"),
)


def many_chunks_spec(traces, out) -> str:
    text = spec_text(traces, out)
    for old, new in MANY_CHUNKS:
        text = text.replace(old, new)
    return text


def test_kill_and_resume_gives_identical_table(traces, tmp_path):
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    spec = tmp_path / "s.toml"
    spec.write_text(many_chunks_spec(traces, full))
    plan = S.make_plan(S.load_spec(spec))
    S.run_sweep(plan, progress=False)  # uninterrupted reference (in process)
    n_chunks = plan.n_scenarios
    assert n_chunks == 240

    parts = S.parts_dir(part)
    names = kill_after_parts([str(spec), "--out", str(part), "--quiet"], parts)
    k = len(names)
    assert 2 <= k < n_chunks
    assert names == [S.part_name(c) for c in range(k)]  # chunks are written in order
    assert not part.exists()
    with pytest.raises(InputError, match="--resume"):  # never silently overwritten
        S.run_sweep(plan, output=str(part), progress=False)

    res = S.run_sweep(plan, output=str(part), resume=True, progress=False)
    assert res.chunks_computed == n_chunks - k  # nothing finished is recomputed
    assert part.read_bytes() == full.read_bytes()
    assert not list(parts.glob("part-*"))  # merged, parts (and stray temp files) removed
    assert (parts / "manifest.json").is_file()  # manifest kept
    again = S.run_sweep(plan, output=str(part), resume=True, progress=False)
    assert again.rows_computed == 0  # a finished sweep resumes to nothing
    assert part.read_bytes() == full.read_bytes()
    fresh = S.run_sweep(plan, output=str(part), progress=False)  # plain rerun starts over
    assert fresh.chunks_computed == n_chunks and part.read_bytes() == full.read_bytes()


def test_resume_refuses_a_different_spec(traces, tmp_path):
    out = tmp_path / "o.csv"
    spec = tmp_path / "s.toml"
    spec.write_text(many_chunks_spec(traces, out))
    assert kill_after_parts([str(spec), "--quiet"], S.parts_dir(out), n_parts=1)
    text = many_chunks_spec(traces, out).replace("r_max = 12", "r_max = 11")
    other = S.make_plan(parse(text))
    with pytest.raises(InputError, match="different spec"):
        S.run_sweep(other, resume=True, progress=False)


def test_load_offset_reaches_every_method(traces, tmp_path):
    """With workloads.load_offset = 1 the analytic methods see theta + 1 and the exact method
    the shifted pi: each column equals its reference computed with the offset."""
    out = tmp_path / "o.csv"
    text = spec_text(traces, out).replace("[workloads]", "[workloads]\nload_offset = 1")
    plan = S.make_plan(parse(text))
    S.run_sweep(plan, progress=False)
    t = S.read_table(out)
    r = np.arange(1.0, 13.0)
    sensitive = 0
    for i in range(plan.n_scenarios):
        rows = slice(12 * i, 12 * (i + 1))
        lat = Latency(*plan.coeffs[i])
        b = int(plan.batch[i])
        opts = plan.opts._replace(load_offset=1)
        w = resolve_workload(plan.spec.workloads[plan.wl_index[i]][1])
        theta = workload_stats(w).theta
        mf = np.asarray(theory.mean_field_throughput(lat, theta + 1.0, r, b, opts))
        np.testing.assert_allclose(t["tput_mean_field"][rows], mf, rtol=1e-12)
        mf0 = np.asarray(theory.mean_field_throughput(lat, theta, r, b, opts))
        sensitive += not np.allclose(mf, mf0, rtol=1e-12)
        if i < 2:
            pmf = slot_load_pmf(w, load_offset=1)
            ref_exact = exact.exact_throughput(pmf, lat, b, 12, opts)
            np.testing.assert_allclose(t["tput_exact"][rows], ref_exact, rtol=1e-11)
    assert sensitive > 0, "some scenario must be Attention-bound for the check to bite"


def test_part_store_open_resume_merge_finish(tmp_path):
    """The store under the sweep: a fresh run writes its manifest, unfinished parts are never
    silently reused or overwritten, merge concatenates in the given order, finish keeps the
    manifest and a plain reopen of a finished run starts over."""
    store = PartStore(tmp_path / "parts")
    assert store.open({"digest": "a", "n": 1}, resume=False) == (
        {"digest": "a", "n": 1, "complete": False},
        False,
    )
    store.write("p1", "x,1\n")
    with pytest.raises(PartsExist):
        store.open({"digest": "a", "n": 2}, resume=False)
    with pytest.raises(PartsMismatch):
        store.open({"digest": "b"}, resume=True)
    opened = store.open({"digest": "a", "n": 2}, resume=True)
    assert opened.resumed and opened.manifest["n"] == 1  # the manifest on disk is in effect
    assert store.missing(["p0", "p1"]) == ["p0"] and store.read("p1") == "x,1\n"
    store.write("p0", "x,0\n")
    store.merge(["p0", "p1"], tmp_path / "out.csv", "x,i\n")
    assert (tmp_path / "out.csv").read_text() == "x,i\nx,0\nx,1\n"
    (store.folder / "p2.tmp99").write_text("a killed writer's leftover")
    assert store.finish(opened.manifest, ["p0", "p1"])["complete"]
    assert sorted(p.name for p in store.folder.iterdir()) == [MANIFEST]
    assert not store.open({"digest": "c"}, resume=False).resumed  # finished: starts over


def test_part_store_checksums_and_damaged_manifests(tmp_path):
    """A part counts only when its checksum matches: truncated, random bytes or no checksum is
    damaged (discarded before a resume, refused by merge); parts without a manifest, or with a
    manifest that is not JSON, are refused (PartsMismatch), with or without resume."""
    store = PartStore(tmp_path / "parts")
    store.open({"digest": "a"}, resume=False)
    for i in range(4):
        store.write(f"p{i}", f"x,{i}\n" * 50)
    assert store.has("p0", "p1", "p2", "p3")
    store.path("p1").write_bytes(store.path("p1").read_bytes()[:100])  # truncated
    store.path("p2").write_bytes(os.urandom(300))  # random bytes
    (store.folder / "p3.sha256").unlink()  # killed between the part and its checksum
    assert store.missing(["p0", "p3"]) == ["p3"]
    with pytest.raises(InputError, match="p1: damaged part"):
        store.merge(["p0", "p1"], tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob("out.csv*"))
    assert store.discard_damaged(["p0", "p1", "p2", "p3"]) == ["p1", "p2", "p3"]
    assert store.missing(["p0", "p1", "p2", "p3"]) == ["p1", "p2", "p3"]
    store.merge(["p0"], tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text() == "x,0\n" * 50

    store.manifest_path.write_text("{not json")
    for resume in (True, False):
        with pytest.raises(PartsMismatch, match="damaged"):
            store.open({"digest": "a"}, resume=resume)
    store.manifest_path.unlink()
    for resume in (True, False):
        with pytest.raises(PartsMismatch, match="no manifest"):
            store.open({"digest": "a"}, resume=resume)


MF_ONLY = '["mean_field"]'


def interrupted_sweep(plan, out, monkeypatch, n_parts=2):
    """Run ``plan`` into ``out`` and fail it after ``n_parts`` chunks (a kill leaves the same
    state: whole parts and the manifest)."""
    from afd_jax.studies.sweep import evaluate

    real, calls = evaluate.Evaluator.evaluate, []

    def stop(self, lo, hi):
        calls.append(lo)
        if len(calls) > n_parts:
            raise KeyboardInterrupt
        return real(self, lo, hi)

    with monkeypatch.context() as m:
        m.setattr(evaluate.Evaluator, "evaluate", stop)
        with pytest.raises(KeyboardInterrupt):
            S.run_sweep(plan, output=str(out), progress=False)
    return S.parts_dir(out)


@pytest.mark.parametrize("damage", ["truncate", "random", "no-checksum"])
def test_resume_recomputes_damaged_parts(traces, tmp_path, monkeypatch, capsys, damage):
    spec = tmp_path / "s.toml"
    ref, out = tmp_path / "ref.csv", tmp_path / "o.csv"
    spec.write_text(spec_text(traces, ref, methods=MF_ONLY))
    plan = S.make_plan(S.load_spec(spec))
    S.run_sweep(plan, progress=False)
    parts = interrupted_sweep(plan, out, monkeypatch)
    victim = parts / S.part_name(1)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "random":
        victim.write_bytes(os.urandom(2000))
    else:
        (parts / (victim.name + ".sha256")).unlink()
    res = S.run_sweep(plan, output=str(out), resume=True, progress=False)
    assert res.chunks_computed == res.n_chunks - 1  # only part 0 was kept
    assert out.read_bytes() == ref.read_bytes()
    assert str(victim) in capsys.readouterr().err


def test_resume_recomputes_parts_of_other_chunk_bounds(traces, tmp_path, monkeypatch, capsys):
    """A manifest whose chunk size was edited after parts were written (5 against parts of 1
    scenario) merged the short parts and reported every row (a review of session 22): a part
    whose line count is not its chunk's is recomputed like a damaged one."""
    import json

    spec = tmp_path / "s.toml"
    ref, out = tmp_path / "ref.csv", tmp_path / "o.csv"
    spec.write_text(
        spec_text(traces, ref, methods=MF_ONLY).replace("chunk_size = 5", "chunk_size = 1")
    )
    plan = S.make_plan(S.load_spec(spec))
    S.run_sweep(plan, progress=False)
    parts = interrupted_sweep(plan, out, monkeypatch, n_parts=3)
    manifest = json.loads((parts / MANIFEST).read_text())
    (parts / MANIFEST).write_text(json.dumps({**manifest, "chunk_size": 5}))
    res = S.run_sweep(plan, output=str(out), resume=True, progress=False)
    assert res.chunks_computed == res.n_chunks  # parts 0..2 held one scenario, not five
    assert out.read_bytes() == ref.read_bytes()
    assert "row count" in capsys.readouterr().err


def test_resume_refuses_parts_without_a_valid_manifest(traces, tmp_path, monkeypatch, capsys):
    """A deleted or damaged manifest with parts present is never resumed as success (it used to
    report every row while the table held only the parts found); exit 2 in one line."""
    from afd_jax.cli import main

    spec = tmp_path / "s.toml"
    out = tmp_path / "o.csv"
    spec.write_text(spec_text(traces, out, methods=MF_ONLY))
    parts = interrupted_sweep(S.make_plan(S.load_spec(spec)), out, monkeypatch)
    (parts / MANIFEST).write_text('{"digest": ')
    for extra in (["--resume"], []):
        assert main(["sweep", str(spec), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "manifest.json is damaged" in err[0], err
    (parts / MANIFEST).unlink()
    for extra in (["--resume"], [], ["--resume", "--chunk-size", "2"]):
        assert main(["sweep", str(spec), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no manifest" in err[0] and "--out" in err[0], err
    assert not out.exists()


def test_changed_spec_messages_do_not_loop(traces, tmp_path, monkeypatch, capsys):
    """Partial results of another spec: with and without --resume the same advice (delete the
    folder or choose another --out); it used to send the user from one flag to the other."""
    from afd_jax.cli import main

    spec = tmp_path / "s.toml"
    out = tmp_path / "o.csv"
    spec.write_text(spec_text(traces, out, methods=MF_ONLY))
    interrupted_sweep(S.make_plan(S.load_spec(spec)), out, monkeypatch)
    assert main(["sweep", str(spec), "--quiet"]) == 2  # same spec: resume it
    assert "pass --resume" in capsys.readouterr().err
    spec.write_text(spec_text(traces, out, methods=MF_ONLY).replace("r_max = 12", "r_max = 11"))
    for extra in (["--resume"], []):
        assert main(["sweep", str(spec), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "different spec" in err[0], err
        assert "another --out" in err[0] and "--resume" not in err[0], err


def _refused_naming(spec: Path, name: str, capsys) -> None:
    """``afd-jax sweep SPEC`` exits 2 with one line naming the changed input file ``name``,
    with and without --resume."""
    from afd_jax.cli import main

    for extra in (["--resume"], []):
        assert main(["sweep", str(spec), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"input file {name}" in err[0], err
        assert "changed" in err[0] and "another --out" in err[0], err


def test_resume_refuses_a_changed_trace(traces, tmp_path, monkeypatch, capsys):
    """A trace cut between a stopped run and --resume is refused (it used to resume with exit
    0 into a table of two thetas); the unchanged trace (rewritten, same rows) resumes to the
    table of an uninterrupted run."""
    from afd_jax.cli import main

    spec, ref, out = tmp_path / "s.toml", tmp_path / "ref.csv", tmp_path / "o.csv"
    spec.write_text(spec_text(traces, ref, methods=MF_ONLY))
    S.run_sweep(S.make_plan(S.load_spec(spec)), progress=False)
    spec.write_text(spec_text(traces, out, methods=MF_ONLY))
    parts = interrupted_sweep(S.make_plan(S.load_spec(spec)), out, monkeypatch, n_parts=1)
    rows = Path(traces[0]).read_text()
    Path(traces[0]).write_text("\n".join(rows.splitlines()[:4]) + "\n")
    _refused_naming(spec, traces[0], capsys)
    Path(traces[0]).write_text(rows)
    assert main(["sweep", str(spec), "--quiet", "--resume"]) == 0
    assert out.read_bytes() == ref.read_bytes()
    assert not (parts / S.part_name(0)).exists()  # merged: part 0 was kept, not recomputed


def test_resume_refuses_a_changed_latency_base_file(traces, tmp_path, monkeypatch, capsys):
    """``[latency] base = "mylat.toml"`` edited (beta_ffn) between a stopped run and --resume
    is refused naming the file; an unchanged one resumes to the uninterrupted table."""
    from afd_jax.cli import main

    lat = tmp_path / "mylat.toml"
    lat.write_text(LATENCY_SET.replace("[latency.set]", "[latency]"))
    spec, ref, out = tmp_path / "s.toml", tmp_path / "ref.csv", tmp_path / "o.csv"

    def text(output):
        t = spec_text(traces, output, methods=MF_ONLY).replace("beta_ffn = [40.0, 200.0]\n", "")
        return t.replace(LATENCY_SET, '[latency]\nbase = "mylat.toml"\n')

    spec.write_text(text(ref))
    S.run_sweep(S.make_plan(S.load_spec(spec)), progress=False)
    spec.write_text(text(out))
    interrupted_sweep(S.make_plan(S.load_spec(spec)), out, monkeypatch, n_parts=1)
    before = lat.read_text()
    lat.write_text(before.replace("beta_ffn = 60.0", "beta_ffn = 90.0"))
    _refused_naming(spec, str(lat), capsys)
    lat.write_text(before)
    assert main(["sweep", str(spec), "--quiet", "--resume"]) == 0
    assert out.read_bytes() == ref.read_bytes()


def test_resume_refuses_parts_without_input_digests(traces, tmp_path, monkeypatch, capsys):
    """A manifest that recorded no input digests (an older afd-jax) cannot vouch for its
    inputs: refused in one line, not resumed."""
    from afd_jax.cli import main

    spec, out = tmp_path / "s.toml", tmp_path / "o.csv"
    spec.write_text(spec_text(traces, out, methods=MF_ONLY))
    parts = interrupted_sweep(S.make_plan(S.load_spec(spec)), out, monkeypatch)
    man = json.loads((parts / MANIFEST).read_text())
    assert set(man["inputs"]) == set(traces)
    del man["inputs"]
    (parts / MANIFEST).write_text(json.dumps(man))
    assert main(["sweep", str(spec), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not record its input files" in err[0], err


def test_resume_refuses_parts_of_other_code(traces, tmp_path, monkeypatch, capsys):
    """Parts computed by other afd-jax code (a manifest whose source digest differs, or an
    older one without it) are refused in one line: a resume would merge two programs' rows."""
    from afd_jax.cli import main

    spec, out = tmp_path / "s.toml", tmp_path / "o.csv"
    spec.write_text(spec_text(traces, out, methods=MF_ONLY))
    parts = interrupted_sweep(S.make_plan(S.load_spec(spec)), out, monkeypatch)
    man = json.loads((parts / MANIFEST).read_text())
    for code in ("0" * 32, None):
        edited = dict(man, code=code) if code else {k: v for k, v in man.items() if k != "code"}
        (parts / MANIFEST).write_text(json.dumps(edited))
        assert main(["sweep", str(spec), "--quiet", "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "computed by other afd-jax code" in err[0], err
    (parts / MANIFEST).write_text(json.dumps(man))
    assert main(["sweep", str(spec), "--quiet", "--resume"]) == 0


def test_part_rows_are_csv_records(tmp_path):
    """A workload label with a line break (it is the spec string, a file name may hold one)
    is quoted in every row: the resume's row count reads CSV records, not lines, so such
    parts are kept."""
    from afd_jax.studies.store import PartStore

    store = PartStore(tmp_path)
    store.write("part_000000.csv", '0,"tr\nace.csv",4\n1,"tr\nace.csv",4\n')
    store.write("part_000001.csv", '0,"a",4\n')
    lines = {"part_000000.csv": 2, "part_000001.csv": 2}
    assert store.discard_damaged(list(lines), lines) == ["part_000001.csv"]
    assert store.has("part_000000.csv") and not store.has("part_000001.csv")

"""Tests of the finite-pool cold-start simulator (vs a plain Python event loop) and of the
reproduction: quick mode regenerates the committed CSVs byte for byte."""

from __future__ import annotations

import filecmp
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax.cli import build_parser, main
from afd_jax.cli.reproduce import traces_dir
from afd_jax.errors import InputError
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.theory import REGIMES, mean_field_optimum
from afd_jax.montecarlo.pool import pool_simulate
from afd_jax.studies.reproduce import (
    config,
    plan_reproduction,
    regime_latency,
    run_reproduction,
    write_report,
)
from afd_jax.studies.reproduce.configs import TRACES
from afd_jax.studies.reproduce.runs import part_drain

ROOT = Path(__file__).resolve().parents[1]


def reference_pool(prompt, decode, r, batch, lat, opts, target, ffn_tokens="nominal"):
    """Plain Python event loop of the paper's v1 simulator: slot j*B+b, requests in pool order,
    refills in slot order. Returns (tokens, steps, completed, elapsed) in float64."""
    n = len(prompt)
    slots = [None] * (r * batch)  # [prompt, decode, age] or None (idle)
    nxt = 0
    for s in range(r * batch):
        if nxt < n:
            slots[s] = [int(prompt[nxt]), int(decode[nxt]), 0]
            nxt += 1
    tokens = steps = completed = 0
    elapsed = 0.0
    while completed < target and any(x is not None for x in slots):
        loads = [
            sum(x[0] + x[2] for x in slots[j * batch : (j + 1) * batch] if x) for j in range(r)
        ]
        busy = [sum(1 for x in slots[j * batch : (j + 1) * batch] if x) for j in range(r)]
        t_attn = lat.alpha_attn * max(loads) + lat.beta_attn
        if ffn_tokens == "nominal":
            xf = r * batch
            xc = r * batch if opts.comm_scaling == "aggregate" else batch
        else:
            xf = sum(busy)
            xc = xf if opts.comm_scaling == "aggregate" else max(busy)
        tf = lat.alpha_ffn * xf + lat.beta_ffn
        tc = lat.alpha_comm * xc + lat.beta_comm
        tau = t_attn + tf + tc if opts.overlap == "serial" else max(t_attn, tf, tc)
        elapsed += tau
        tokens += sum(busy)
        steps += 1
        for s, x in enumerate(slots):
            if x is None:
                continue
            x[2] += 1
            if x[2] == x[1]:
                completed += 1
                if nxt < n:
                    slots[s] = [int(prompt[nxt]), int(decode[nxt]), 0]
                    nxt += 1
                else:
                    slots[s] = None
    return tokens, steps, completed, elapsed


LAT = Latency(0.013, 37.0, 0.61, 95.0, 0.2, 30.0)


@pytest.mark.parametrize(
    "r,batch,n,fraction,opts,ffn",
    [
        (1, 3, 17, 0.8, ModelOptions(comm_scaling="per_worker"), "nominal"),
        (3, 2, 9, 0.8, ModelOptions(), "nominal"),  # r*B < n, drain
        (3, 4, 7, 1.0, ModelOptions(), "active"),  # more slots than requests
        (2, 3, 25, 0.6, ModelOptions(overlap="serial"), "nominal"),
        (4, 2, 30, 0.9, ModelOptions(comm_scaling="per_worker"), "active"),
    ],
)
def test_pool_matches_reference(r, batch, n, fraction, opts, ffn):
    rng = np.random.default_rng(r * 100 + n)
    reps = 3
    prompt = rng.integers(0, 60, size=(reps, n)).astype(np.int32)
    decode = rng.integers(1, 9, size=(reps, n)).astype(np.int32)
    res = pool_simulate(
        None,
        LAT,
        batch,
        [r],
        completion_fraction=fraction,
        opts=opts,
        ffn_tokens=ffn,
        pools=(jnp.asarray(prompt), jnp.asarray(decode)),
        n_requests=None,
    )
    target = math.ceil(fraction * n)
    cost = r + 1.0
    tps = []
    for i in range(reps):
        tok, steps, done, el = reference_pool(
            prompt[i], decode[i], r, batch, LAT, opts, target, ffn
        )
        tps.append(1e6 * tok / (cost * el))
        assert res.per_pool_throughput.shape == (1, reps)
        assert done >= target
    tok_ref = [
        reference_pool(prompt[i], decode[i], r, batch, LAT, opts, target, ffn) for i in range(reps)
    ]
    np.testing.assert_array_equal(res.tokens[0], np.mean([t[0] for t in tok_ref]))
    np.testing.assert_array_equal(res.steps[0], np.mean([t[1] for t in tok_ref]))
    # float32 Kahan-summed tau vs float64: relative 1e-6
    np.testing.assert_allclose(res.elapsed_us[0], np.mean([t[3] for t in tok_ref]), rtol=1e-6)
    np.testing.assert_allclose(res.per_pool_throughput[0], tps, rtol=1e-6)


def test_pool_prefix_and_padding_consistency():
    """A pool of n given as the prefix of a longer array, and r inside a padded bucket,
    equal the exact-size run (masking is invisible)."""
    rng = np.random.default_rng(7)
    prompt = rng.integers(0, 40, size=(2, 40)).astype(np.int32)
    decode = rng.integers(1, 12, size=(2, 40)).astype(np.int32)
    opts = ModelOptions()
    full = pool_simulate(None, LAT, 3, [3, 5], pools=(prompt, decode), n_requests=25, opts=opts)
    cut = pool_simulate(
        None, LAT, 3, [3, 5], pools=(prompt[:, :25], decode[:, :25]), n_requests=None, opts=opts
    )
    np.testing.assert_array_equal(full.tokens, cut.tokens)
    np.testing.assert_array_equal(full.elapsed_us, cut.elapsed_us)
    for i, r in enumerate((3, 5)):
        ref = reference_pool(prompt[0, :25], decode[0, :25], r, 3, LAT, opts, 20)
        assert full.per_pool_throughput[i, 0] == pytest.approx(
            1e6 * ref[0] / ((r + 1) * ref[3]), rel=1e-6
        )


def test_pool_drain_lowers_throughput_only_with_nominal_ffn():
    """Large r B / N: with nominal FFN tokens the drain costs throughput (busy fraction < 1);
    one slot and a long pool: throughput equals tokens/time of a single always-busy slot."""
    d = np.full((1, 64), 5, np.int32)
    p = np.zeros((1, 64), np.int32)
    lat = Latency(0.0, 100.0, 0.0, 10.0, 0.0, 10.0)  # tau = 100 every step
    res = pool_simulate(None, lat, 1, [1], pools=(p, d), n_requests=None, completion_fraction=1.0)
    assert res.throughput[0] == pytest.approx(1e6 / (2 * 100.0))
    assert res.active_fraction[0] == 1.0


def test_pool_bad_input():
    with pytest.raises(InputError):
        pool_simulate(
            None, LAT, 2, [0], pools=(np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32))
        )
    with pytest.raises(InputError):
        pool_simulate(
            None,
            LAT,
            2,
            [1],
            completion_fraction=0.0,
            pools=(np.zeros((1, 4), np.int32), np.ones((1, 4), np.int32)),
        )
    with pytest.raises(InputError):
        pool_simulate(
            None,
            LAT,
            2,
            [1],
            pools=(np.zeros((1, 4), np.int32), np.zeros((1, 4), np.int32)),
            n_requests=None,
        )


@pytest.mark.parametrize("batch", [32, 256])
@pytest.mark.parametrize("theta", [599.0, 13125.4])
def test_regime_latency_lands_in_regime(theta, batch):
    for regime in REGIMES:
        lat, opts = regime_latency(theta, batch, regime)
        mo = mean_field_optimum(lat, theta, batch, opts, 64)
        assert mo.regime == regime
    lat, opts = regime_latency(theta, batch, "attention")
    assert mean_field_optimum(lat, theta, batch, opts, 64).r_continuous == pytest.approx(9.3)


def test_quick_mode_regenerates_committed_csvs(tmp_path):
    committed = ROOT / "experiments" / "results" / "quick"
    run_reproduction(tmp_path, quick=True, seed=0, plots=False)
    names = sorted(p.name for p in committed.glob("*.csv"))
    assert names == sorted(
        ["v1_curves.csv", "v1_summary.csv", "v1_drain.csv", "workloads.csv", "workload_curves.csv"]
    )
    for name in names:
        assert filecmp.cmp(tmp_path / name, committed / name, shallow=False), name
    # rerun resumes: no part is recomputed and the tables stay identical
    run_reproduction(tmp_path, quick=True, seed=0, plots=False)
    for name in names:
        assert filecmp.cmp(tmp_path / name, committed / name, shallow=False), name


COMMITTED_QUICK = ROOT / "experiments" / "results" / "quick"


def test_float64_in_a_scope_leaves_the_global_flag(tmp_path):
    """With float64 off globally, a part still computes in float64 (the committed drain table
    regenerates byte for byte) and the global flag stays off."""
    with jax.enable_x64(False):
        part_drain(config(quick=True, seed=0), tmp_path)
        assert not jax.config.jax_enable_x64
        assert jnp.asarray(1.0).dtype == jnp.float32
    name = "v1_drain.csv"
    assert filecmp.cmp(tmp_path / name, COMMITTED_QUICK / name, shallow=False)


def test_no_traces_folder_is_said_before_the_run_and_in_the_report(tmp_path, capsys):
    plan = plan_reproduction(quick=False, seed=0, traces_dir=None)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "no traces folder given" in err and "AFD_TRACES_DIR" in err
    assert all(name in err for name in TRACES)
    assert plan.skipped == list(TRACES) and plan.traces_dir is None
    for csv_file in COMMITTED_QUICK.glob("*.csv"):
        shutil.copy(csv_file, tmp_path)
    write_report(tmp_path, plan.cfg, plan.used, plan.skipped, plan.skip_reason)
    report = (tmp_path / "report.md").read_text()
    assert (
        "Skipped: azure-conv, azure-code, mooncake (no traces folder given: --traces-dir or "
        "AFD_TRACES_DIR)." in report
    )
    # quick mode never reads traces: nothing to say
    plan_reproduction(quick=True, seed=0, traces_dir=None)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("how", ["flag", "environment", "missing folder"])
def test_traces_folder_without_traces_is_refused_before_any_work(
    tmp_path, monkeypatch, capsys, how
):
    folder = tmp_path / "traces"
    if how != "missing folder":
        folder.mkdir()
        (folder / "other.csv").write_text("x\n")
    out = tmp_path / "out"
    argv = ["reproduce", "--out", str(out), "--no-plots"]
    monkeypatch.delenv("AFD_TRACES_DIR", raising=False)
    if how == "environment":
        monkeypatch.setenv("AFD_TRACES_DIR", str(folder))
    else:
        argv += ["--traces-dir", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert str(folder) in err
    assert all(name in err for name in TRACES.values())
    assert not out.exists()
    with pytest.raises(InputError):
        plan_reproduction(quick=False, seed=0, traces_dir=folder)


def test_traces_folder_from_flag_or_environment(tmp_path, monkeypatch):
    parser = build_parser()
    monkeypatch.delenv("AFD_TRACES_DIR", raising=False)
    assert traces_dir(parser.parse_args(["reproduce", "--out", "x"])) is None
    monkeypatch.setenv("AFD_TRACES_DIR", str(tmp_path))
    assert traces_dir(parser.parse_args(["reproduce", "--out", "x"])) == str(tmp_path)
    args = parser.parse_args(["reproduce", "--out", "x", "--traces-dir", "elsewhere"])
    assert traces_dir(args) == "elsewhere"
    (tmp_path / TRACES["mooncake"]).write_text('{"input_length": 10, "output_length": 3}\n')
    plan = plan_reproduction(quick=False, seed=0, traces_dir=tmp_path)
    assert plan.skipped == ["azure-conv", "azure-code"]
    assert plan.skip_reason == "trace files not found"


def test_damaged_part_is_recomputed_not_resumed(tmp_path, monkeypatch, capsys):
    """A part file truncated after a kill (or written without its checksum) no longer counts as
    done: part_v1 recomputes it instead of assembling a 2-line v1_curves.csv."""
    from afd_jax.studies.reproduce import runs
    from afd_jax.studies.reproduce.parts import part_done, read_csv, write_part_csv

    rows = read_csv(COMMITTED_QUICK / "v1_curves.csv")
    names = ["v1_curves.csv", "v1_summary.csv"]
    write_part_csv(tmp_path / names[0], rows)
    write_part_csv(tmp_path / names[1], read_csv(COMMITTED_QUICK / "v1_summary.csv"))
    assert (tmp_path / names[0]).read_bytes() == (COMMITTED_QUICK / names[0]).read_bytes()
    assert part_done(tmp_path, names)

    class Recomputed(Exception):
        pass

    def recompute(*_):
        raise Recomputed

    monkeypatch.setattr(runs, "resolve_workload", recompute)
    runs.part_v1(config(True, 0), tmp_path)  # intact: skipped, nothing recomputed
    curves = tmp_path / names[0]
    curves.write_bytes(curves.read_bytes()[:150])
    with pytest.raises(Recomputed):
        runs.part_v1(config(True, 0), tmp_path)
    assert f"{curves}: does not match a checksum" in capsys.readouterr().err
    write_part_csv(curves, rows)
    (tmp_path / "v1_summary.csv.sha256").unlink()  # a part from before checksums, or a kill
    assert not part_done(tmp_path, names)


def test_parts_of_other_code_are_not_resumed(tmp_path, monkeypatch):
    """The parts folder is named by the configuration and afd-jax's source: parts computed by
    other code (edited or upgraded since) are recomputed, not merged with the new ones."""
    from afd_jax.studies.reproduce import parts as P

    cfg = plan_reproduction(quick=True, seed=0, traces_dir=None).cfg
    first = P.parts_folder(tmp_path, cfg)
    assert P.parts_folder(tmp_path, cfg) == first
    monkeypatch.setattr(P, "source_digest", lambda: "0" * 32)
    assert P.parts_folder(tmp_path, cfg) != first


def test_trace_files_are_checked_and_named_by_their_digest(tmp_path):
    """The parts folder was named by the configuration alone: a rerun on other trace files
    resumed the first files' numbers, and a bad trace was found after minutes of parametric
    parts (a review of session 22). The plan reads each trace first and its digest joins the
    configuration."""
    from afd_jax.studies.reproduce.configs import config_hash

    trace = tmp_path / TRACES["azure-conv"]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1,100,20\n2,300,7\n")
    first = plan_reproduction(quick=False, seed=0, traces_dir=tmp_path)
    assert first.used[-1:] == ["azure-conv"] and set(first.cfg["traces"]) == {"azure-conv"}
    assert plan_reproduction(quick=False, seed=0, traces_dir=tmp_path).cfg == first.cfg
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1,100,20\n2,300,8\n")
    second = plan_reproduction(quick=False, seed=0, traces_dir=tmp_path)
    assert config_hash(second.cfg) != config_hash(first.cfg)
    assert "traces" not in plan_reproduction(quick=True, seed=0, traces_dir=tmp_path).cfg
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1,100,20\n2,300,-6\n")
    with pytest.raises(InputError) as err:
        plan_reproduction(quick=False, seed=0, traces_dir=tmp_path)
    assert (err.value.path, err.value.line) == (str(trace), 3)


@pytest.mark.parametrize(
    "entry", ["report.md (user's)", "workloads.csv (user's)", "parts (file)", "report.md/"]
)
def test_out_folder_entries_in_the_way_are_refused_before_any_work(tmp_path, capsys, entry):
    """A user's report.md or workloads.csv in --out was replaced without a word, a file
    named parts failed with NotADirectoryError and a folder named report.md with
    IsADirectoryError after the whole run. In a reproduction's own folder (meta.json or
    parts/ beside them) the files are the run's to replace."""
    out = tmp_path / "out"
    out.mkdir()
    name = entry.split(" ")[0].rstrip("/")
    if entry.endswith("/"):
        (out / name).mkdir()
    else:
        (out / name).write_text("mine\n")
    assert main(["reproduce", "--out", str(out), "--quick", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out: holds" in err and name in err
    assert sorted(p.name for p in out.iterdir()) == [name]
    if entry.endswith("(user's)"):
        from afd_jax.studies.reproduce.runner import check_out_folder

        (out / "meta.json").write_text("{}\n")
        check_out_folder(out)  # a reproduction's folder: no error

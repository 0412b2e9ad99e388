"""Table calibration (afd_jax.studies.calibration, ``afd-jax calibrate --fit table``):
recovers a known table from noisy repeated measurements within the noise of a median; an
affine profile becomes a table that gives the affine numbers (mean field, Gaussian, exact);
the default affine output is unchanged; bad CSV names file, line and field; a non-monotone
profile is cleaned and said so."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax.cli import main
from afd_jax.model import exact, theory
from afd_jax.model.latency import Latency, ModelOptions
from afd_jax.model.latency_io import read_latency_file, resolve_latency
from afd_jax.model.stages import eval_stage
from afd_jax.studies.calibration import calibrate_tables
from afd_jax.studies.hardware import DECIMALS
from afd_jax.workload.slotload import slot_load_pmf
from afd_jax.workload.specs import resolve_workload
from afd_jax.workload.statistics import workload_stats

ROOT = Path(__file__).resolve().parents[1]
MOE = ROOT / "tests" / "data" / "moe_table.toml"


def write_profile(path: Path, rows, batch_column: bool = True) -> Path:
    head = "stage,tokens,time_us,batch" if batch_column else "stage,tokens,time_us"
    path.write_text("\n".join([head, *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


def sample_rows(tables, repeats: int, sigma: float, seed: int) -> list:
    """``repeats`` measurements at every knot of ``tables`` (read_latency_file's stages),
    times (1 + sigma N(0, 1)) with a fixed seed."""
    rng = np.random.default_rng(seed)

    def noisy(y):
        return [float(v) for v in y * (1 + sigma * rng.standard_normal(repeats))]

    rows = []
    for b, row in zip(tables["attn"].batches, tables["attn"].rows, strict=True):
        knots = zip(row.x, row.y, strict=True)
        rows += [("attn", x, t, int(b)) for x, y in knots for t in noisy(y)]
    for stage in ("ffn", "comm"):
        st = tables[stage]
        rows += [(stage, x, t, "") for x, y in zip(st.x, st.y, strict=True) for t in noisy(y)]
    return rows


def test_recovers_a_known_table_within_the_noise(tmp_path):
    true = read_latency_file(MOE)["tables"]
    repeats, sigma = 9, 0.01
    p = write_profile(tmp_path / "p.csv", sample_rows(true, repeats, sigma, seed=7))
    fit = calibrate_tables(p)
    # the sample median's standard error is sqrt(pi / 2) sigma / sqrt(n); 5 of them, plus the
    # rounding. The running max keeps a stored time within the largest error of the medians
    # up to it (the true curve is non-decreasing), so the same bound holds after the cleanup.
    tol = 5 * np.sqrt(np.pi / 2) * sigma / np.sqrt(repeats)
    pairs = [(t, row) for t, row in zip(fit.tables["attn"], true["attn"].rows, strict=True)]
    pairs += [(fit.tables[s][0], true[s]) for s in ("ffn", "comm")]
    assert [t.batch for t in fit.tables["attn"]] == [8, 16, 32]
    for got, want in pairs:
        np.testing.assert_array_equal(got.x, want.x)
        err = np.abs(got.stored - want.y) / want.y
        assert err.max() < tol + 10.0**-DECIMALS / want.y.min(), err.max()
        assert err.max() > 0  # the noise is there
    for stage, e in fit.errors.items():  # error against every row: about sigma, never 0
        assert e.n == fit.rows[stage] and 0.2 * sigma < e.mape < 3 * sigma
    out = tmp_path / "t.toml"
    assert main(["calibrate", str(p), "--fit", "table", "--out", str(out)]) == 0
    assert out.read_text() == fit.text.replace(
        'built_with = "afd-jax calibrate --fit table"',
        'built_with = "afd-jax calibrate p.csv --fit table --comm-scaling aggregate '
        '--overlap pipelined"',
    )


AFFINE = Latency(2.0**-6, 100.0, 0.5, 443.0, 0.25, 100.0, 1.0, 2.0)


def affine_rows() -> list:
    """Two identical measurements per point of the affine model (times exact in 3 decimals);
    the knot counts and batches of tests/test_table_latency.py's affine tables (the Gaussian
    kernel compiles once for both)."""
    a = AFFINE
    kv, tok = (0, 512, 4096, 65536, 262144), (1, 16, 128, 1024, 4096)
    rows = [("attn", x, a.alpha_attn * x + a.beta_attn, b) for b in (1, 64, 256) for x in kv]
    rows += [("ffn", x, a.alpha_ffn * x + a.beta_ffn, "") for x in tok]
    rows += [("comm", x, a.alpha_comm * x + a.beta_comm, "") for x in tok]
    return rows * 2


def test_affine_profile_as_a_table_gives_the_affine_numbers(tmp_path, capsys):
    p = write_profile(tmp_path / "p.csv", affine_rows())
    out = tmp_path / "t.toml"
    args = ["calibrate", str(p), "--fit", "table", "--out", str(out), "--cost-ffn", "2"]
    assert main(args) == 0
    report = capsys.readouterr().out
    assert report.splitlines()[0].split() == ["stage", "points", "MAPE", "%", "worst", "%"] + [
        "worst",
        "point",
    ]
    assert "0.0000" in report and "note:" not in report
    tab, opts = resolve_latency(str(out))
    assert opts == ModelOptions("aggregate", "pipelined") and tab.cost_ffn == 2.0
    xs = np.linspace(0.0, 3e5, 301)
    for b in (1.0, 30.0, 256.0):
        want = AFFINE.alpha_attn * xs + AFFINE.beta_attn
        np.testing.assert_allclose(eval_stage(tab.attn, xs, b), want, rtol=1e-12)
    w = resolve_workload("uniform:prompt=50..150,decode=100..300")
    pmf, r = slot_load_pmf(w, max_bins=512), np.arange(1.0, 13.0)
    theta, var = float(workload_stats(w).theta), float(workload_stats(w).slot_var)
    r24 = jnp.arange(1.0, 25.0)
    np.testing.assert_allclose(
        theory.gaussian_step_time_jit(tab, theta, var, r24, 16, opts, "tail"),
        theory.gaussian_step_time_jit(AFFINE, theta, var, r24, 16, opts, "tail"),
        rtol=1e-9,
    )
    for batch in (16, 40):
        np.testing.assert_allclose(
            theory.mean_field_throughput(tab, theta, r, batch, opts),
            theory.mean_field_throughput(AFFINE, theta, r, batch, opts),
            rtol=1e-9,
        )
        np.testing.assert_allclose(
            exact.exact_throughput(pmf, tab, batch, 12, opts),
            exact.exact_throughput(pmf, AFFINE, batch, 12, opts),
            rtol=1e-9,
        )


def test_default_affine_output_is_unchanged_by_a_batch_column(tmp_path, capsys):
    """A batch column is ignored by the affine fit: same report and file as without it."""
    rows = affine_rows()
    with_b = write_profile(tmp_path / "a.csv", rows)
    without = write_profile(tmp_path / "a.csv.plain", [r[:3] for r in rows], batch_column=False)
    texts = []
    for p in (with_b, without):
        assert main(["calibrate", str(p)]) == 0
        texts.append(capsys.readouterr().out.replace(Path(p).name, "X"))
    assert texts[0] == texts[1] and "alpha_attn = 0.015625" in texts[0]


def test_non_monotone_profile_is_cleaned_and_said(tmp_path, capsys):
    rows = [("attn", 100, 10.0, 8), ("attn", 200, 9.0, 8), ("attn", 300, 12.0, 8)]
    rows += [("ffn", 1, 5.0, ""), ("ffn", 2, 6.0, ""), ("comm", 1, 1.0, ""), ("comm", 2, 1.0, "")]
    p = write_profile(tmp_path / "p.csv", rows)
    assert main(["calibrate", str(p), "--fit", "table", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["notes"]) == 1 and "attn (B = 8): 1 of 3 medians" in data["notes"][0]
    assert data["fit"]["attn"]["worst"] == pytest.approx(1 / 9) and data["fit"]["ffn"]["n"] == 2


def test_rounding_alone_is_no_raise(tmp_path, capsys):
    """9.9995 us stored as 10.0 (the 0.001 us rounding) made the note say a first median
    fell below an earlier one (an audit, session 25)."""
    rows = [("attn", 100, 5.0, 8), ("attn", 200, 6.0, 8), ("ffn", 1, 2.0, ""), ("ffn", 2, 3.0, "")]
    rows += [("comm", 1, 9.9995, ""), ("comm", 2, 20.0, "")]
    p = write_profile(tmp_path / "p.csv", rows)
    assert main(["calibrate", str(p), "--fit", "table", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == []


GOOD = [("attn", 1, 2.0, 4), ("attn", 2, 3.0, 4), ("ffn", 1, 2.0, ""), ("ffn", 3, 4.0, "")]
GOOD += [("comm", 1, 1.0, ""), ("comm", 2, 2.0, "")]


@pytest.mark.parametrize(
    ("rows", "batch_column", "where"),
    [
        (GOOD, False, ":1: field batch: missing column"),
        ([*GOOD, ("attn", 4, 5.0, "")], True, ":8: field batch: missing batch"),
        ([*GOOD, ("attn", 4, 5.0, "2.5")], True, ":8: field batch: must be an integer"),
        ([*GOOD, ("attn", 4, 5.0, "0")], True, ":8: field batch: must be an integer"),
        # written into the TOML, then refused by every command that read it
        ([*GOOD, ("attn", 4, 5.0, "1e300")], True, ":8: field batch: must be <= 1e+15"),
        ([*GOOD, ("attn", 4, "x", 4)], True, ":8: field time_us: not a number"),
        ([*GOOD, ("attn", 4, 5.0, 8)], True, ":8: field tokens: stage attn, batch 8: needs"),
        (GOOD[:4], True, ": field stage: no rows for stage comm"),
        ([*GOOD[:4], ("comm", 2, 1, ""), ("comm", 1, 0.0, "")], True, ":7: field time_us: stage"),
        ([*GOOD[:4], ("comm", 1, 1e-9, ""), ("comm", 2, 1, "")], True, ":6: field time_us: stage"),
        ([*GOOD[2:], ("attn", 1, 9e307, 4), ("attn", 2, 1e308, 4)], True, ":6: field time_us:"),
    ],
)
def test_bad_csv_exits_2_naming_file_line_field(tmp_path, capsys, rows, batch_column, where):
    if not batch_column:
        rows = [r[:3] for r in rows]
    p = write_profile(tmp_path / "bad.csv", rows, batch_column)
    assert main(["calibrate", str(p), "--fit", "table"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].split(str(p))[1].startswith(where), err


def test_docstring_example_and_example_profile(monkeypatch):
    monkeypatch.chdir(ROOT)  # the example reads examples/profile_table.csv
    tests = doctest.DocTestFinder(recurse=False).find(calibrate_tables, "calibrate_tables")
    runner = doctest.DocTestRunner()
    for test in tests:
        runner.run(test)
    assert sum(len(t.examples) for t in tests) > 0
    assert runner.summarize(verbose=False).failed == 0

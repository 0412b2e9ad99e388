"""``afd-jax theta``: JSON and table output, every bad input -> exit 2 with one line naming
file/line/field and no traceback."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import trace_path

from afd_jax.cli import main
from afd_jax.cli import theta as cli_theta
from afd_jax.workload.statistics import theta_confidence_interval, trace_stats

REQUIRED_KEYS = {
    "n_requests",
    "n_zero_decode",
    "mean_prompt",
    "mean_decode",
    "naive_mean_sum",
    "theta",
    "theta_ci_low",
    "theta_ci_high",
    "slot_std",
    "slot_var",
    "corr_prompt_decode",
    "ci_level",
    "ci_method",
    "source",
    "format",
}


def run_cli(capsys, *argv):
    code = main(["theta", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small_csv(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nt,100,3\nt,0,1\nt,37,0\nt,5,12\n")
    return path


def test_json_output(capsys, small_csv):
    code, out, err = run_cli(capsys, small_csv, "--json")
    assert code == 0
    obj = json.loads(out)  # exactly one JSON object on stdout
    assert REQUIRED_KEYS <= obj.keys()
    s = trace_stats([100, 0, 37, 5], [3, 1, 0, 12])
    assert obj["n_requests"] == 4 and obj["n_zero_decode"] == 1
    assert obj["theta"] == pytest.approx(s.theta, rel=1e-15)
    assert obj["slot_std"] == pytest.approx(s.slot_std, rel=1e-15)
    lo, hi = theta_confidence_interval([100, 0, 37, 5], [3, 1, 0, 12])
    assert (obj["theta_ci_low"], obj["theta_ci_high"]) == pytest.approx((lo, hi), rel=1e-15)
    assert obj["format"] == "azure" and obj["ci_method"] == "delta"


def test_json_options(capsys, tmp_path):
    path = tmp_path / "g.jsonl.gz"
    rows = [{"a": 10 * i, "b": i % 5} for i in range(1, 60)]
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    code, out, _ = run_cli(
        capsys,
        path,
        "--prompt-field",
        "a",
        "--decode-field",
        "b",
        "--decode-mapping",
        "output-minus-one",
        "--ci-method",
        "bootstrap",
        "--n-boot",
        "200",
        "--seed",
        "4",
        "--level",
        "0.9",
        "--json",
    )
    assert code == 0
    obj = json.loads(out)
    prompt = np.array([r["a"] for r in rows])
    decode = np.maximum(np.array([r["b"] for r in rows]) - 1, 0)
    assert obj["format"] == "jsonl" and obj["decode_mapping"] == "output-minus-one"
    assert obj["n_zero_decode"] == int(np.sum(decode == 0))
    assert obj["theta"] == pytest.approx(trace_stats(prompt, decode).theta, rel=1e-15)
    want = theta_confidence_interval(prompt, decode, 0.9, "bootstrap", n_boot=200, seed=4)
    assert (obj["theta_ci_low"], obj["theta_ci_high"]) == pytest.approx(want, rel=1e-15)
    assert obj["ci_level"] == 0.9 and obj["ci_method"] == "bootstrap"


def test_table_output_on_shared_trace(capsys):
    code, out, err = run_cli(capsys, trace_path("azure_conv"))
    assert code == 0 and err == ""
    lines = dict(line.split("  ", 1) for line in out.splitlines())
    assert lines["theta"].strip() == "1,226.5"
    assert lines["slot std sqrt(v)"].strip() == "712.9"
    assert lines["requests"].strip() == "19,366"
    assert "(95%, delta)" in lines["theta CI"]


def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


H = "ContextTokens,GeneratedTokens\n"

BAD_INPUTS = {
    # case: (file name, content, extra args, expected substrings in the error line)
    "non-numeric": ("a.csv", H + "1,2\nx,3\n", [], [":3:", "ContextTokens", "not a number"]),
    "negative": ("a.csv", H + "1,2\n4,-3\n", [], [":3:", "GeneratedTokens", "negative"]),
    "nan": ("a.csv", H + "nan,2\n", [], [":2:", "ContextTokens", "non-finite"]),
    "inf-json": (
        "m.jsonl",
        '{"input_length": 1, "output_length": Infinity}\n',
        [],
        [":1:", "output_length", "non-finite"],
    ),
    "non-integer": (
        "a.csv",
        H + "1,2\n1,2\n1,3.5\n",
        [],
        [":4:", "GeneratedTokens", "not an integer"],
    ),
    "missing-column": (
        "a.csv",
        "ContextTokens,Out\n1,2\n",
        ["--format", "azure"],
        [":1:", "GeneratedTokens", "missing column"],
    ),
    "missing-field": (
        "a.csv",
        "x,y\n1,2\n",
        ["--prompt-field", "x", "--decode-field", "z"],
        [":1:", "field z", "missing column"],
    ),
    "unknown-format": ("a.csv", "foo,bar\n1,2\n", [], [":1:", "unknown trace format"]),
    "bad-format-flag": (
        "a.csv",
        H + "1,2\n",
        ["--format", "xls"],
        ["field format", "unknown trace format"],
    ),
    "empty": ("a.csv", H, [], [":1:", "GeneratedTokens", "empty trace"]),
    "empty-file": ("a.csv", "", [], [":1:", "empty trace"]),
    "all-zero": (
        "a.csv",
        H + "1,0\n2,0\n",
        [],
        [":3:", "GeneratedTokens", "every decode length is 0"],
    ),
    "all-one-minus-one": (
        "a.csv",
        H + "1,1\n",
        ["--decode-mapping", "output-minus-one"],
        [":2:", "every decode"],
    ),
    "bad-json": (
        "m.jsonl",
        '{"input_length": 1, "output_length": 2}\n{"input_length": 1,\n',
        [],
        [":2:", "invalid JSON"],
    ),
    "bad-level": ("a.csv", H + "1,2\n", ["--level", "1.5"], ["--level"]),
    # issue 13 class 4: malformed rows are errors, not data read shifted
    "extra-field": (
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\nt,4,6\n1,5,200,20\n",
        [],
        [":3:", "field #4", "row has 4 fields, header has 3"],
    ),
    "duplicate-column": (
        "a.csv",
        "ContextTokens,GeneratedTokens,ContextTokens\n1,5,200\n",
        [],
        [":1:", "field ContextTokens", "appears twice"],
    ),
    "duplicate-json-key": (
        "m.jsonl",
        '{"input_length": 1, "output_length": 2, "input_length": 7}\n',
        [],
        [":1:", "field input_length", "given twice"],
    ),
    # a trailing delimiter in the header named a 4th column that took the stray value
    "extra-field-under-trailing-comma": (
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens,\n1,374,44,\n17000,00002,380,40\n",
        [],
        [":3:", "field #4", "row has 4 fields, header has 3"],
    ),
    "json-number-too-long": (
        "m.jsonl",
        '{"input_length": 1, "output_length": 2}\n{"input_length": ' + "9" * 5000 + "}\n",
        [],
        [":2:", "a number too long"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input(capsys, tmp_path, case):
    name, text, extra, expected = BAD_INPUTS[case]
    path = _bad(tmp_path, name, text)
    code, out, err = run_cli(capsys, path, *extra, "--json")
    assert code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    if case != "bad-level":
        assert str(path) in err
    for s in expected:
        assert s in err, (s, err)


def test_malformed_row_subprocess_one_line(tmp_path):
    """Issue 13 class 4 end to end: `afd-jax theta FILE` exits 2 with one line on stderr."""
    path = _bad(tmp_path, "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n1,5,200,20\n")
    res = subprocess.run(
        [sys.executable, "-m", "afd_jax", "theta", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"afd-jax theta: error: {path}:2: field #4: row has 4 fields")


def test_json_line_ends_only_at_newline(capsys, tmp_path):
    """U+2028 and U+0085 are valid raw inside a JSON string; str.splitlines cut the object at
    them (invalid JSON, and every later line number one off)."""
    text = (
        '{"input_length": 5, "output_length": 6, "id": "a\u2028b\u0085c"}\n'
        '{"input_length": 7, "output_length": -8}\n'
    )
    path = tmp_path / "m.jsonl"
    path.write_text(text, encoding="utf-8")
    code, _, err = run_cli(capsys, path)
    assert code == 2 and f"{path}:2: field output_length: negative" in err


def test_tsv_after_blank_lines(capsys, tmp_path):
    """The delimiter is read from the header line, not from a blank line before it."""
    path = _bad(tmp_path, "t.tsv", "\n\nContextTokens\tGeneratedTokens\n10\t4\n30\t8\n")
    code, out, _ = run_cli(capsys, path, "--json")
    assert code == 0 and json.loads(out)["n_requests"] == 2


@pytest.mark.parametrize(
    "flag",
    [
        ["--decode-mapping", "output-minus-one"],
        ["--format", "azure"],
        ["--prompt-field", "a", "--decode-field", "b"],
    ],
)
def test_trace_options_refused_for_a_preset(capsys, flag):
    """These options only shape how a trace file is read: for a preset they were ignored
    while the output named them (theta 599 under "D = output minus one")."""
    code, out, err = run_cli(capsys, "paper-v1", *flag)
    assert code == 2 and out == "" and f"field {flag[0]}: applies to trace files only" in err


def test_one_row_trace_says_zero_width(capsys, tmp_path):
    """Issue 13 class 7: a one-row trace's [theta, theta] interval comes with a note (table row
    'warning', JSON theta_ci_note); a trace with spread has none (JSON null)."""
    path = _bad(tmp_path, "one.csv", H + "100,20\n")
    code, out, _ = run_cli(capsys, path, "--json")
    obj = json.loads(out)
    assert code == 0 and obj["theta_ci_low"] == obj["theta_ci_high"] == 109.5
    assert "zero-width interval" in obj["theta_ci_note"]
    assert "only 1 request row" in obj["theta_ci_note"]
    code, out, _ = run_cli(capsys, path)
    lines = dict(line.split(None, 1) for line in out.splitlines() if line.startswith("warning"))
    assert code == 0 and "zero-width interval" in lines["warning"]
    path = _bad(tmp_path, "two.csv", H + "100,20\n7,3\n")
    code, out, _ = run_cli(capsys, path, "--json")
    assert json.loads(out)["theta_ci_note"] is None
    code, out, _ = run_cli(capsys, path)
    assert "warning" not in out


def test_missing_file(capsys, tmp_path):
    code, out, err = run_cli(capsys, tmp_path / "nope.csv")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "nope.csv" in err and "no such file" in err


def test_bad_input_subprocess_no_traceback(tmp_path):
    path = _bad(tmp_path, "t.csv", H + "1,2\n-1,2\n")
    res = subprocess.run(
        [sys.executable, "-m", "afd_jax", "theta", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        f"afd-jax theta: error: {path}:3: field ContextTokens: "
        "negative value '-1' (token counts are >= 0)"
    )


def test_unknown_preset_or_spec(capsys):
    # Not a file and not a known preset/spec (whether or not afd_jax.workload.specs exists yet).
    code, out, err = run_cli(capsys, "no_such_preset_xyz", "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no_such_preset_xyz" in err


def test_parametric_workload_reports_exact(capsys, monkeypatch):
    """A non-file TRACE goes through afd_jax.workload.specs.resolve_workload; a parametric
    workload's
    statistics are exact, so its CI is [theta, theta]. Here P = 100 and D = 5 are fixed:
    theta = 100 + (5-1)/2 = 102, v = (5^2-1)/12 = 2."""
    pytest.importorskip("afd_jax.workload.families")
    from afd_jax.workload.containers import CopulaComponent, Marginal, ParametricWorkload

    fixed = ParametricWorkload(
        name="fixed",
        components=(
            CopulaComponent(
                Marginal(np.array([100]), np.array([1.0])), Marginal(np.array([5]), np.array([1.0]))
            ),
        ),
        weights=np.array([1.0]),
        label="test workload",
    )

    def fake(spec, fmt=None, decode_mapping="output"):
        return fixed

    monkeypatch.setattr(cli_theta, "resolve_workload", fake)
    code, out, _ = run_cli(capsys, "fixed", "--json")
    assert code == 0
    obj = json.loads(out)
    assert obj["ci_method"] == "exact" and obj["format"] == "parametric"
    assert obj["theta"] == pytest.approx(102.0, rel=1e-12)
    assert obj["theta_ci_low"] == obj["theta_ci_high"] == obj["theta"]
    assert obj["slot_var"] == pytest.approx(2.0, rel=1e-9)

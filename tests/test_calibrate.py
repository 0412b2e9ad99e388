"""Calibration by least squares (afd_jax.model.calibrate, `afd-jax calibrate`): recovers known
coefficients, matches numpy.polyfit, reports bad CSV with line and field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from afd_jax.cli import main
from afd_jax.errors import InputError
from afd_jax.model.calibrate import calibrate, fit_stage
from afd_jax.model.latency import Latency
from afd_jax.model.latency_io import resolve_latency

TRUE = {"attn": (0.004, 900.0), "ffn": (1.5, 8000.0), "comm": (1.0, 950.0)}


def profile(tmp_path, noise=0.0, seed=0, extra=""):
    rng = np.random.default_rng(seed)
    lines = ["stage,tokens,time_us,note"]
    for stage, (a, b) in TRUE.items():
        tokens = np.linspace(1000, 400_000, 9) if stage == "attn" else np.linspace(64, 4096, 7)
        for x in tokens:
            y = a * x + b + noise * rng.standard_normal()
            lines.append(f"{stage},{x:.0f},{float(y)!r},run1")
    p = tmp_path / "profile.csv"
    p.write_text("\n".join(lines) + "\n" + extra)
    return p


def test_recovers_exact_coefficients(tmp_path):
    lat, opts, fits = calibrate(profile(tmp_path), cost_ffn=4.0)
    ref = Latency(0.004, 900.0, 1.5, 8000.0, 1.0, 950.0, 1.0, 4.0)
    np.testing.assert_allclose(lat, ref, rtol=1e-9)
    assert all(f.r_squared == pytest.approx(1.0, abs=1e-12) for f in fits.values())


def test_noisy_fit_equals_polyfit(tmp_path):
    p = profile(tmp_path, noise=25.0, seed=3)
    lat, _, fits = calibrate(p)
    rows = np.genfromtxt(p, delimiter=",", skip_header=1, dtype=None, encoding="utf-8")
    for stage, (a_fit, b_fit) in {
        "attn": (lat.alpha_attn, lat.beta_attn),
        "ffn": (lat.alpha_ffn, lat.beta_ffn),
        "comm": (lat.alpha_comm, lat.beta_comm),
    }.items():
        sel = [r for r in rows if r[0] == stage]
        x = np.array([r[1] for r in sel], float)
        y = np.array([r[2] for r in sel], float)
        a, b = np.polyfit(x, y, 1)
        assert (a_fit, b_fit) == pytest.approx((a, b), rel=1e-9)
        resid = y - (a * x + b)
        assert fits[stage].rmse == pytest.approx(np.sqrt(np.mean(resid**2)), rel=1e-9)
        assert fits[stage].r_squared == pytest.approx(
            1 - np.sum(resid**2) / np.sum((y - y.mean()) ** 2), rel=1e-12
        )


def test_negative_intercept_is_constrained():
    x = np.array([10.0, 20.0, 30.0])
    f = fit_stage("ffn", x, 2.0 * x - 5.0)
    assert f.constrained == "beta=0" and f.beta == 0.0
    assert f.alpha == pytest.approx(np.dot(x, 2 * x - 5) / np.dot(x, x))
    with pytest.raises(InputError, match="distinct"):
        fit_stage("ffn", np.array([5.0, 5.0]), np.array([1.0, 2.0]))


@pytest.mark.parametrize(
    ("extra", "line", "field"),
    [
        ("attn,12x,5.0,a\n", 25, "tokens"),
        ("ffn,100,-3,a\n", 25, "time_us"),
        ("disk,100,3,a\n", 25, "stage"),
        ("ffn,100\n", 25, None),
        # a stray delimiter: the values after it were read one column off, without an error
        ("attn,65,536,a,1290.4\n", 25, "#5"),
        ("attn,65_536,5.0,a\n", 25, "tokens"),  # Python's float reads 65536; traces refuse it
        # the line of the file, not the row count: a quoted note spans two lines
        ('attn,5,6,"two\nlines"\nattn,x,1,a\n', 27, "tokens"),
    ],
)
def test_bad_rows_name_line_and_field(tmp_path, extra, line, field):
    p = profile(tmp_path, extra=extra)
    with pytest.raises(InputError) as err:
        calibrate(p)
    assert (err.value.line, err.value.field, err.value.path) == (line, field, str(p))


def test_bad_header_and_missing_stage(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("stage,tokens,time\nattn,1,2\n")
    with pytest.raises(InputError) as err:
        calibrate(p)
    assert (err.value.line, err.value.field) == (1, "time_us")
    p.write_text("stage,tokens,time_us\nattn,1,2\nattn,2,3\nffn,1,2\nffn,3,4\n")
    with pytest.raises(InputError, match="comm"):
        calibrate(p)


def test_one_token_count_names_the_stage_first_line(tmp_path):
    """A stage measured at one token count was refused without a line or a column (field
    attn; an audit, session 25): now the line of its first row, as ``--fit table`` says it."""
    p = tmp_path / "p.csv"
    p.write_text("stage,tokens,time_us\nffn,1,2\nffn,3,4\nattn,5,2\ncomm,1,1\nattn,5,3\ncomm,2,2\n")
    with pytest.raises(InputError, match="distinct token counts") as err:
        calibrate(p)
    assert (err.value.path, err.value.line, err.value.field) == (str(p), 4, "tokens")


def test_cli_writes_toml_readable_by_resolve_latency(tmp_path, capsys):
    out = tmp_path / "lat.toml"
    rc = main(
        [
            "calibrate",
            str(profile(tmp_path)),
            "--out",
            str(out),
            "--json",
            "--comm-scaling",
            "per_worker",
        ]
    )
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"]["ffn"]["r_squared"] == pytest.approx(1.0)
    lat, opts = resolve_latency(str(out))
    assert lat.alpha_ffn == pytest.approx(1.5, rel=1e-9)
    assert opts.comm_scaling == "per_worker"


def test_cli_bad_csv_exits_2(tmp_path, capsys):
    p = profile(tmp_path, extra="attn,abc,1,a\n")
    assert main(["calibrate", str(p)]) == 2
    err = capsys.readouterr().err
    assert ":25:" in err and "tokens" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("fit", ["affine", "table"])
def test_cli_empty_out_refused(tmp_path, capsys, fit):
    """``--out ''`` wrote nothing and exited 0; now refused like ``reproduce --out ''``."""
    assert main(["calibrate", str(profile(tmp_path)), "--out", "", "--fit", fit]) == 2
    cap = capsys.readouterr()
    assert cap.err.strip().endswith("--out: empty path") and len(cap.err.strip().splitlines()) == 1
    assert cap.out == ""


def test_a_byte_order_mark_is_read_as_traces_are(tmp_path):
    """A profile saved with a UTF-8 BOM (spreadsheet exports) was refused: "missing column
    ... got \ufeffstage" (traces accepted it)."""
    plain = profile(tmp_path)
    marked = tmp_path / "bom.csv"
    marked.write_text("\ufeff" + plain.read_text(), encoding="utf-8")
    assert calibrate(marked)[0] == calibrate(plain)[0]


def test_header_and_bytes_refused_where_they_are(tmp_path, capsys):
    """A column named twice (the first was read silently), a non-UTF-8 byte (reported at line
    1 wherever it was) and a profile as its own --out (overwritten with the TOML)."""
    p = tmp_path / "p.csv"
    p.write_text("stage,tokens,time_us,Tokens\nattn,1,2,3\n")
    with pytest.raises(InputError) as err:
        calibrate(p)
    assert (err.value.line, err.value.field) == (1, "tokens") and "twice" in err.value.reason
    good = profile(tmp_path)
    p.write_bytes(good.read_bytes() + b"attn,5,\xff6,a\n")
    with pytest.raises(InputError, match="not UTF-8") as err:
        calibrate(p)
    assert err.value.line == 25
    before = good.read_text()
    assert main(["calibrate", str(good), "--out", str(tmp_path / "." / good.name)]) == 2
    assert "is the profile being read" in capsys.readouterr().err
    assert good.read_text() == before


def test_a_profile_from_a_pipe(tmp_path):
    """`afd-jax calibrate <(cat profile.csv)` reads a pipe, as before this session's checks."""
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = profile(tmp_path).read_bytes()

    def feed():
        with open(fifo, "wb") as fh:
            fh.write(text)

    writer = threading.Thread(target=feed)
    writer.start()
    lat = calibrate(fifo)[0]
    writer.join()
    assert lat.alpha_ffn == pytest.approx(1.5, rel=1e-9)

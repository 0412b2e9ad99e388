"""``afd-jax sweep`` end to end: JSON summary, one-line errors with exit 2, plots."""

from __future__ import annotations

import json

from test_sweep import spec_text, traces  # noqa: F401  (fixture)

from afd_jax.cli import main
from afd_jax.studies import sweep as S


def test_json_summary_and_plots(traces, tmp_path, capsys):  # noqa: F811
    spec = tmp_path / "s.toml"
    out = tmp_path / "o.csv"
    spec.write_text(spec_text(traces, out))
    plots = tmp_path / "plots"
    args = ["sweep", str(spec), "--quiet", "--json", "--plot-dir", str(plots)]
    rc = main(args + ["--plot-x", "alpha_attn", "--plot-y", "beta_ffn"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_scenarios"] == 24 and summary["n_rows"] == 24 * 12
    assert summary["output"] == str(out)
    assert set(summary["evaluations_per_second"]) == {"mean_field", "gaussian", "exact"}
    assert all(v > 0 for v in summary["evaluations_per_second"].values())
    t = S.read_table(out)
    assert len(t["r"]) == 24 * 12
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["error_map_gaussian.png", "error_map_mean_field.png", "regime_map.png"]
    assert all((plots / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_bad_spec_exit_2_names_key_before_work(traces, tmp_path, capsys):  # noqa: F811
    spec = tmp_path / "s.toml"
    out = tmp_path / "o.csv"
    spec.write_text(spec_text(traces, out).replace("chunk_size = 5", "chunk_sise = 5"))
    assert main(["sweep", str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chunk_sise" in err[0] and str(spec) in err[0]
    spec.write_text(spec_text(traces, out).replace("batch = [4, 16]", "batch = []"))
    assert main(["sweep", str(spec), "--quiet"]) == 2
    assert "field batch: empty grid" in capsys.readouterr().err
    pq = tmp_path / "o.parquet"
    spec.write_text(spec_text(traces, pq).replace('output = "', 'format = "parquet"\noutput = "'))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert main(["sweep", str(spec), "--quiet"]) == 2
        assert "pyarrow" in capsys.readouterr().err
    spec.write_text(spec_text(traces, out))
    assert main(["sweep", str(spec), "--quiet", "--plot-dir", str(tmp_path), "--plot-x", "r"]) == 2
    assert "--plot-x" in capsys.readouterr().err
    assert not out.exists() and not S.parts_dir(out).exists()

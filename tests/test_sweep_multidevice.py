"""Sharding a sweep over 4 (forced host) CPU devices gives the same table, byte for byte, as one
device (each scenario is computed independently; padding and sharding must not leak)."""

from __future__ import annotations

import json

from test_sweep import run_cli, spec_text, traces  # noqa: F401  (fixture)


def test_four_devices_identical_to_one(traces, tmp_path):  # noqa: F811
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(traces, tmp_path / "unused.csv"))
    outs = {}
    for n_dev in (1, 4):
        out = tmp_path / f"dev{n_dev}.csv"
        env = {"JAX_PLATFORMS": "cpu"}
        if n_dev > 1:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
        proc = run_cli([str(spec), "--out", str(out), "--quiet", "--json"], env)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["devices"] == n_dev
        assert summary["n_rows"] == 2 * 2 * 6 * 12
        outs[n_dev] = out.read_bytes()
    assert outs[4] == outs[1]

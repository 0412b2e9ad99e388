"""The GPU benchmark's reading aids, run on the small sizes on CPU: bench_kernels.py's A/B
options (the same numbers, other programs) and bench_gpu_summary.py, which reads the targets
off bench_kernels.py's own tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample_trace.csv"


def _bench(out: Path, *args: str) -> None:
    env = dict(os.environ, AFD_JAX_CPU_DEVICES="1")
    cmd = [sys.executable, str(ROOT / "experiments" / "bench_kernels.py"), "--size", "small"]
    cmd += ["--trace", str(SAMPLE), "--repeat", "1", "--out", str(out), "--append", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=300)


def _rates(path: Path) -> dict:
    """{(kernel, table index): rate} of a bench_kernels.py file."""
    rates, table = {}, 0
    for line in path.read_text().splitlines():
        if m := re.match(r"^\| (\w+) kernel \|", line):
            rates[(m.group(1), table)] = float(line.strip("|").split("|")[5])
        elif line.startswith("Command:"):
            table += 1
    return rates


def test_gpu_summary_reads_the_kernel_tables_and_their_variants(tmp_path):
    _bench(tmp_path / "kernels.md", "--kernels", "trajectory,barrier")
    _bench(
        tmp_path / "levers.md", "--kernels", "trajectory", "--segment-steps", "256", "--plain-carry"
    )
    _bench(tmp_path / "levers.md", "--kernels", "barrier", "--barrier-halves")
    rates = _rates(tmp_path / "kernels.md")
    levers = _rates(tmp_path / "levers.md")
    assert set(rates) == {("trajectory", 0), ("barrier", 0)}
    assert set(levers) == {("trajectory", 0), ("barrier", 1)}

    out = tmp_path / "summary.md"
    script = ROOT / "experiments" / "bench_gpu_summary.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    rows = [line for line in text.splitlines() if re.match(r"^\| (fast|trajectory|barrier) ", line)]
    assert len(rows) == 4
    want = [
        ("trajectory", "kernels.md", "default", rates[("trajectory", 0)]),
        ("barrier", "kernels.md", "default", rates[("barrier", 0)]),
        ("trajectory", "levers.md", "--segment-steps 256 --plain-carry", levers[("trajectory", 0)]),
        ("barrier", "levers.md", "--barrier-halves", levers[("barrier", 1)]),
    ]
    for row, (kernel, name, variant, rate) in zip(rows, want, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:3] == [kernel, name, variant]
        assert float(cells[4]) == float(f"{rate:.3e}")
        assert cells[6] == "no"  # a CPU is far below the GPU targets
    best = max(rates[("trajectory", 0)], levers[("trajectory", 0)])
    assert f"- trajectory: fastest {best:.3e}" in text
    assert "- fast: no row" in text


def test_gpu_summary_refuses_a_folder_without_kernel_rows(tmp_path):
    (tmp_path / "kernels.md").write_text("# Kernel benchmarks\n\nnothing measured\n")
    script = ROOT / "experiments" / "bench_gpu_summary.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: no kernel rows") and "Traceback" not in done.stderr


def test_bench_kernels_refuses_a_step_unroll_that_does_not_divide_a_block(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "bench_kernels.py"), "--size", "small"]
    cmd += ["--trace", str(SAMPLE), "--kernels", "trajectory", "--step-unroll", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--step-unroll must divide 128" in done.stderr

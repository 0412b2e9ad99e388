"""Hardening (docs/reliability.md): every class of issue 13 has a test here. Each runs the CLI
in-process and checks the contract: exit 2 with one line on stderr naming the input, checked
before any work or state, or a correct result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sweep import run_cli

from afd_jax import memory
from afd_jax.cli import main
from afd_jax.errors import InputError
from afd_jax.model.calibrate import fit_stage
from afd_jax.model.latency import Latency
from afd_jax.model.latency_io import check_step_time, read_latency_file
from afd_jax.model.theory import _barrier_excess, _fixed_order_sum
from afd_jax.studies.store import PartStore
from afd_jax.studies.sweep.run import parts_dir

ROOT = Path(__file__).resolve().parents[1]
WL = "geometric:prompt=1000,decode=100"
ZERO = [f"--{k}-{s}" for s in ("attn", "ffn", "comm") for k in ("alpha", "beta")]


def cli(argv, capsys):
    """(exit status, stdout, stderr lines) of one in-process run."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    cap = capsys.readouterr()
    return rc, cap.out, [ln for ln in cap.err.splitlines() if ln.strip()]


def refused(argv, capsys, *words) -> str:
    """Exit 2 with exactly one stderr line, no traceback, containing every one of ``words``."""
    rc, _, err = cli(argv, capsys)
    assert rc == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    for w in words:
        assert w in err[0], (w, err[0])
    return err[0]


def spec_file(tmp_path, body: str, name="s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


SMALL_SPEC = """
r_max = 3
methods = ["mean_field", "gaussian"]
batch = [4, 8]
[workloads]
[[workloads.family]]
family = "geometric"
params = { prompt = [100, 200], decode = [20] }
[latency]
base = "paper-v1"
"""


# ---------------------------------------------------------------- class 1: sizes


@pytest.mark.parametrize(
    "argv",
    [
        ["provision", "--workload", WL, "--batch", 1_000_000],
        ["optimize", "--workload", WL, "--batch", 1_000_000],
        ["optimize", "--workload", WL, "--optimize-batch", "--batch-max", 1_000_000],
        ["simulate", "--workload", WL, "-B", 8, "--r-max", 2, "--kernel", "barrier"]
        + ["--steps", 10**12, "--quiet"],
        ["simulate", "--workload", WL, "-B", 8, "--r-max", 2, "--window", "completions"]
        + ["--requests", 10**9, "--quiet"],
        ["simulate", "--workload", WL, "-B", 8, "--r-max", 2, "--replications", 10**12],
        ["provision", "--workload", WL, "--batch", 10**20],  # past a C ssize_t
    ],
    ids=[
        "provision",
        "optimize",
        "optimize-batch",
        "barrier-steps",
        "pool",
        "replications",
        "provision-1e20",
    ],
)
def test_sizes_refused_before_allocating(argv, capsys):
    line = refused(argv + ["--memory-budget", "1G"], capsys, "--memory-budget", "1.0 GiB")
    need = float(line.split("needs about ")[1].split()[0])
    assert need > 1.0  # the estimate is stated, and over the limit


def test_sweep_grid_of_1e12_scenarios_refused(tmp_path, capsys):
    spec = spec_file(
        tmp_path,
        SMALL_SPEC.replace("[100, 200]", "{ linspace = [100, 200, 1000000] }").replace(
            "decode = [20]", "decode = { linspace = [20, 40, 1000000] }"
        ),
    )
    refused(["sweep", spec, "--quiet"], capsys, str(spec), "--memory-budget")
    assert not list(tmp_path.glob("*.parts"))


def test_sweep_r_max_bounded_before_work(tmp_path, capsys):
    """r_max = 1e8 used to hang (1e8 rows per scenario, formatted in Python): refused up front
    by the cap, and a smaller r_max whose one scenario exceeds memory_budget_mb by the budget."""
    huge = spec_file(tmp_path, "r_max = 100000000\n" + SMALL_SPEC.replace("r_max = 3\n", ""))
    refused(["sweep", huge, "--quiet"], capsys, str(huge), "field r_max", "<= 1048576")
    body = "r_max = 200000\nmemory_budget_mb = 64\n" + SMALL_SPEC.replace("r_max = 3\n", "")
    big = spec_file(tmp_path, body, "b.toml")
    refused(["sweep", big, "--quiet"], capsys, str(big), "field r_max", "memory_budget_mb = 64")
    assert not list(tmp_path.glob("*.parts"))


def test_memory_budget_option_and_default(monkeypatch, capsys):
    assert memory.parse_size("2G") == 2 << 30 and memory.parse_size("512") == 512 << 20
    with pytest.raises(InputError):
        memory.parse_size("lots")
    bad = ["provision", "--workload", WL, "-B", 4, "--memory-budget", "x"]
    refused(bad, capsys, "--memory-budget")
    # default: half the physical memory, at most the address-space limit less the runtime
    monkeypatch.setattr(memory, "_physical_memory", lambda: 64 << 30)
    monkeypatch.setattr(memory, "_address_space_limit", lambda: None)
    assert memory.default_budget() == 32 << 30
    monkeypatch.setattr(memory, "_address_space_limit", lambda: 8 << 30)
    assert memory.default_budget() == (8 << 30) - memory.RUNTIME_RESERVE


@pytest.mark.slow
def test_commands_under_a_lowered_address_space_limit(tmp_path):
    """provision, optimize, simulate and sweep in a process limited to 4 GiB of address space:
    small runs succeed, oversized ones exit 2 in one line; nothing crashes."""
    spec = spec_file(tmp_path, SMALL_SPEC)
    big = spec_file(tmp_path, SMALL_SPEC.replace("[4, 8]", "{ range = [1, 100000000, 1] }"), "b")
    runs = [
        (0, f"provision --workload {WL} -B 4 --r-max 4"),
        (2, f"provision --workload {WL} -B 1000000"),
        (2, f"optimize --workload {WL} --optimize-batch --batch-max 1000000"),
        (0, f"simulate --workload {WL} -B 4 --r-max 4 --steps 256 --quiet"),
        (2, f"simulate --workload {WL} -B 8 --r-max 2 --kernel barrier --steps 10**12 --quiet"),
        (0, f"sweep {spec} --out {tmp_path / 'o.csv'} --quiet"),
        (2, f"sweep {big} --out {tmp_path / 'b.csv'} --quiet"),
    ]
    script = textwrap.dedent(f"""
        import contextlib, io, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({4 << 30}, {4 << 30}))
        from afd_jax.cli import main
        for want, line in {[(w, a.replace("10**12", str(10**12))) for w, a in runs]!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(line.split())
            lines = err.getvalue().strip().splitlines()
            print(rc, want, len(lines) if rc else 1, line)
    """)
    env = {**os.environ, "AFD_JAX_CACHE": "0", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [ln.split(maxsplit=3) for ln in p.stdout.splitlines()]
    assert len(rows) == len(runs)
    for rc, want, n_lines, line in rows:
        assert (rc, n_lines) == (want, "1"), line


# ---------------------------------------------------------------- class 2: degenerate latency


def test_step_time_zero_is_refused_exactly_when_closed_form_says():
    rng = np.random.default_rng(3)
    for _ in range(200):
        c = rng.uniform(0.0, 2.0, 6) * (rng.uniform(size=6) < 0.3)
        lat = Latency(*map(float, c))
        # closed form of the least step time (T = 0, r = B = 1): both overlaps are 0 together
        least = max(c[1], c[2] + c[3], c[4] + c[5])
        if least > 0:
            check_step_time(lat)
        else:
            with pytest.raises(InputError, match="step time can be 0"):
                check_step_time(lat)


def test_all_zero_profile_and_coefficients_refused(tmp_path, capsys):
    prof = tmp_path / "zero.csv"
    rows = [f"{s},{t},0" for s in ("attn", "ffn", "comm") for t in (100, 200, 300)]
    prof.write_text("stage,tokens,time_us\n" + "\n".join(rows) + "\n")
    refused(["calibrate", prof], capsys, str(prof), "step time can be 0")
    zeros = [x for flag in ZERO for x in (flag, 0)]
    refused(["provision", "--workload", WL, "-B", 8, *zeros], capsys, "step time can be 0")
    refused(["optimize", "--workload", WL, "-B", 8, *zeros], capsys, "step time can be 0")
    only_attn = [x for flag in ZERO for x in (flag, 0.01 if flag == "--alpha-attn" else 0)]
    refused(["simulate", "--workload", WL, "-B", 8, *only_attn], capsys, "beta_attn")


def test_sweep_scenario_with_zero_step_time_refused(tmp_path, capsys):
    body = SMALL_SPEC.replace('base = "paper-v1"', "").replace(
        "[latency]", "[latency.set]\n" + "\n".join(f"{f[2:].replace('-', '_')} = 0.0" for f in ZERO)
    )
    body += "[latency.grid]\nbeta_ffn = [10.0, 0.0]\n"
    spec = spec_file(tmp_path, body)
    refused(["sweep", spec, "--out", tmp_path / "o.csv", "--quiet"], capsys, "step time")
    assert not (tmp_path / "o.csv.parts").exists()


PAPER_REST = (
    "alpha_attn = 0.01\nalpha_ffn = 0.5\nbeta_ffn = 443.04\nalpha_comm = 0.5\nbeta_comm = 100.0\n"
)


def _with_ffn_table(tmp_path, tokens: str, times: str) -> Path:
    """The synthetic table file of the tests with its FFN stage replaced."""
    text = (ROOT / "tests" / "data" / "moe_table.toml").read_text()
    head, _, tail = text.partition("[latency.ffn]")
    comm = tail[tail.index("[latency.comm]") :]
    path = tmp_path / "ffn.toml"
    path.write_text(f"{head}[latency.ffn]\ntokens = {tokens}\ntime_us = {times}\n\n{comm}")
    return path


def test_table_knots_past_float32_refused(tmp_path, capsys):
    """Knots of 1e308 made every throughput NaN (provision: All-NaN ValueError, exit 1; a sweep
    wrote tput = nan, exit 0). Refused when read, naming file and field."""
    huge = _with_ffn_table(tmp_path, "[1.0, 1e308]", "[300.0, 1e308]")
    argv = ["provision", "--workload", "paper-v1", "--batch", 16, "--latency", huge]
    refused(argv + ["--r-max", 8], capsys, str(huge), "latency.ffn.tokens[1]", "<= 1e+15")
    spec = spec_file(tmp_path, SMALL_SPEC.replace('"paper-v1"', f'"{huge}"'))
    out = tmp_path / "o.csv"
    refused(["sweep", spec, "--out", out, "--quiet"], capsys, "latency.ffn.tokens[1]")
    assert not out.exists() and not parts_dir(out).exists()
    # knots equal in float32 (a zero interval width there) and slopes past the limit
    same = _with_ffn_table(tmp_path, "[1.0, 1.00000001]", "[300.0, 400.0]")
    with pytest.raises(InputError, match="strictly increasing in float32"):
        read_latency_file(same)
    steep = _with_ffn_table(tmp_path, "[1.0, 1.001]", "[300.0, 1e14]")
    with pytest.raises(InputError, match="slope 1e[+]17 us per token") as err:
        read_latency_file(steep)
    assert err.value.field == "latency.ffn.time_us"


def test_coefficients_and_profiles_past_float32_refused(tmp_path, capsys):
    """A profile row of 1e300 us fitted beta_attn = 5e307 (R^2 nan, numpy warnings, exit 0);
    such coefficients then gave throughputs 0. Each is refused before any work."""
    rows = [f"{s},{t},{100 + t}" for s in ("attn", "ffn", "comm") for t in (100, 200)]
    prof = tmp_path / "p.csv"
    prof.write_text("stage,tokens,time_us\n" + "\n".join(rows) + "\nattn,100,1e300\n")
    refused(["calibrate", prof], capsys, f"{prof}:8:", "time_us", "<= 1e+15")
    refused(
        ["provision", "--workload", WL, "-B", 8, "--latency", "paper-v1", "--beta-ffn", 1e308],
        capsys,
        "beta_ffn",
    )
    lat = tmp_path / "l.toml"
    lat.write_text(f"[latency]\nbeta_attn = 5e307\n{PAPER_REST}")
    refused(["provision", "--workload", WL, "-B", 8, "--latency", lat], capsys, "beta_attn")
    body = SMALL_SPEC + "[latency.grid]\nbeta_ffn = [10.0, 1e308]\n"
    refused(["sweep", spec_file(tmp_path, body), "--out", tmp_path / "o.csv"], capsys, "grid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning either
        with pytest.raises(InputError, match="not finite"):
            fit_stage("attn", np.array([100.0, 200.0]), np.array([1e300, 1e308]))


# ---------------------------------------------------------------- class 3: output locations


def test_output_locations_checked_before_work(tmp_path, capsys):
    spec = spec_file(tmp_path, SMALL_SPEC)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    refused(["sweep", spec, "--out", tmp_path, "--quiet"], capsys, "--out", "folder")
    refused(["sweep", spec, "--out", a_file / "t.csv", "--quiet"], capsys, "--out")
    out = tmp_path / "t.csv"
    refused(["sweep", spec, "--out", out, "--plot-dir", a_file, "--quiet"], capsys, "--plot-dir")
    assert not out.exists() and not parts_dir(out).exists()  # nothing computed, no state
    refused(["reproduce", "--quick", "--out", a_file], capsys, "--out")
    refused(["calibrate", ROOT / "examples" / "profile.csv", "--out", tmp_path], capsys, "--out")
    refused(["provision", "--workload", WL, "-B", 4, "--plot", tmp_path / "f.gif"], capsys, "gif")
    refused(["simulate", "--workload", WL, "-B", 4, "--plot", a_file / "f.png"], capsys, "--plot")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "s.toml"]  # no strays


def test_special_files_and_pseudo_filesystems_refused(tmp_path, capsys):
    """An existing FIFO (like /dev/full: not a regular file) is never replaced by the table;
    /proc takes no new files even for root (os.access says yes there); --out "" is refused."""
    spec = spec_file(tmp_path, SMALL_SPEC)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    refused(["sweep", spec, "--out", fifo, "--quiet"], capsys, "--out", "not a regular file")
    assert fifo.is_fifo() and not parts_dir(fifo).exists()
    refused(["sweep", spec, "--out", "/proc/version", "--quiet"], capsys, "--out", "/proc")
    refused(["sweep", spec, "--out", "/proc/afd/t.csv", "--quiet"], capsys, "--out", "/proc")
    refused(["reproduce", "--quick", "--no-plots", "--out", "/proc/afd"], capsys, "/proc")
    refused(["sweep", spec, "--out", "", "--quiet"], capsys, "--out: empty path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.csv", "s.toml"]


def test_missing_parent_folders_created_for_spec_output_and_out(tmp_path, capsys):
    """Documented choice (docs/sweep.md): missing parents of the table are created, the same
    for the spec's `output` and for --out."""
    out = tmp_path / "a" / "b" / "t.csv"
    body = SMALL_SPEC.replace(', "gaussian"', "")  # mean-field only: fast
    spec = spec_file(tmp_path, f'output = "{out}"\n' + body)
    assert cli(["sweep", spec, "--quiet"], capsys)[0] == 0 and out.is_file()
    out2 = tmp_path / "c" / "d" / "t.csv"
    assert cli(["sweep", spec, "--out", out2, "--quiet"], capsys)[0] == 0
    assert out2.read_bytes() == out.read_bytes()


def test_table_format_follows_the_output_suffix(tmp_path, capsys):
    """--out x.parquet used to get CSV text (the format came from the spec only): the suffix
    decides, a conflict with the spec's `format` and an unknown suffix are refused."""
    body = SMALL_SPEC.replace(', "gaussian"', "")
    spec = spec_file(tmp_path, body)
    refused(["sweep", spec, "--out", tmp_path / "t.xlsx", "--quiet"], capsys, "--out", ".xlsx")
    csv_fmt = spec_file(tmp_path, 'format = "csv"\n' + body, "c.toml")
    line = refused(["sweep", csv_fmt, "--out", tmp_path / "t.parquet", "--quiet"], capsys)
    assert "conflicts" in line and "--out" in line and str(csv_fmt) in line
    both = spec_file(tmp_path, f'format = "csv"\noutput = "{tmp_path / "t.parquet"}"\n' + body)
    refused(["sweep", both, "--quiet"], capsys, str(both), "field output", "conflicts")
    odd = spec_file(tmp_path, f'output = "{tmp_path / "t.xlsx"}"\n' + body, "o.toml")
    refused(["sweep", odd, "--quiet"], capsys, str(odd), "field output", ".xlsx")
    assert not list(tmp_path.glob("t.*"))
    pq_spec = spec_file(tmp_path, f'output = "{tmp_path / "t.parquet"}"\n' + body, "p.toml")
    out = tmp_path / "t.csv"  # the spec's output is Parquet, --out .csv: CSV it is
    assert cli(["sweep", pq_spec, "--out", out, "--quiet"], capsys)[0] == 0
    assert out.read_text().startswith("scenario,")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    spec = spec_file(tmp_path, SMALL_SPEC)
    refused(["sweep", spec, "--out", ro / "t.csv", "--quiet"], capsys, "not writable")


# ---------------------------------------------------------------- class 5: sweep state


def test_concurrent_sweep_fails_fast_on_the_lock(tmp_path, capsys):
    spec = spec_file(tmp_path, SMALL_SPEC)
    out = tmp_path / "t.csv"
    with PartStore(parts_dir(out)).lock("0"):  # another run holds the output
        refused(["sweep", spec, "--out", out, "--resume", "--quiet"], capsys, "another run")
    rc, _, err = cli(["sweep", spec, "--out", out, "--resume", "--quiet"], capsys)
    assert rc == 0 and out.is_file(), err


def test_failed_start_leaves_no_state(tmp_path, capsys):
    """The Monte Carlo int32 overflow of a large batch is found before the manifest, names the
    spec file, and the corrected run starts cleanly."""
    body = SMALL_SPEC.replace('"gaussian"]', '"gaussian", "mc"]')
    bad = spec_file(tmp_path, body.replace("[4, 8]", "[4, 10000000]"))
    out = tmp_path / "t.csv"
    big = ["--memory-budget", "1T"]  # past the memory estimate: the int32 check speaks
    refused(["sweep", bad, "--out", out, "--quiet", *big], capsys, str(bad), "int32")
    assert not parts_dir(out).exists()
    good = spec_file(tmp_path, body.replace("[workloads]", "[mc]\nsteps = 128\n[workloads]"))
    rc, _, err = cli(["sweep", good, "--out", out, "--quiet"], capsys)
    assert rc == 0, err


def test_error_during_first_chunk_removes_fresh_state(tmp_path, capsys, monkeypatch):
    from afd_jax.studies.sweep import evaluate

    def boom(self, lo, hi):
        raise InputError("injected failure")

    monkeypatch.setattr(evaluate.Evaluator, "evaluate", boom)
    out = tmp_path / "t.csv"
    refused(["sweep", spec_file(tmp_path, SMALL_SPEC), "--out", out, "--quiet"], capsys, "inj")
    assert not parts_dir(out).exists()


# ---------------------------------------------------------------- class 6: typed values


def test_typed_values(tmp_path, capsys):
    sim = ["simulate", "--workload", WL, "-B", 4, "--r-max", 2, "--steps", 128, "--quiet"]
    refused(sim + ["--seed", 10**20], capsys, "seed", "2^32")
    refused(sim + ["--seed", 2**32], capsys, "seed")
    trace = tmp_path / "t.csv"
    trace.write_text("ContextTokens,GeneratedTokens\n100,50\n200,30\n")
    refused(["theta", trace, "--ci-method", "bootstrap", "--seed", -1], capsys, "seed")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    refused(["sweep", binary], capsys, str(binary), "UTF-8")
    refused(["simulate", "--workload", WL, "-B", "x"], capsys, "invalid int")  # argparse: 1 line


def test_sweep_flags_and_spec_folder(tmp_path, capsys):
    spec = spec_file(tmp_path, SMALL_SPEC)
    out = tmp_path / "o.csv"
    for t in ("-1", "0", "nan"):
        refused(["sweep", spec, "--out", out, "--peer-timeout", t, "--quiet"], capsys, "--peer")
    refused(["sweep", tmp_path, "--quiet"], capsys, str(tmp_path), "is a folder")
    assert not out.exists() and not parts_dir(out).exists()


def test_distributed_without_coordinator(tmp_path, capsys, monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    spec = spec_file(tmp_path, SMALL_SPEC)
    out = tmp_path / "t.csv"
    refused(["sweep", spec, "--out", out, "--distributed", "--quiet"], capsys, "--distributed")
    assert not parts_dir(out).exists()


def test_plot_axis_missing_from_some_workloads(tmp_path, capsys):
    body = SMALL_SPEC.replace("[workloads]", '[workloads]\nspecs = ["paper-v1"]')
    spec = spec_file(tmp_path, body)
    out = tmp_path / "t.csv"
    argv = ["sweep", spec, "--out", out, "--plot-dir", tmp_path / "maps", "--quiet"]
    refused(argv + ["--plot-x", "wl_prompt", "--plot-y", "batch"], capsys, "paper-v1")
    assert not out.exists()


# ---------------------------------------------------------------- class 7: promises


def test_tail_quadrature_bits_do_not_depend_on_the_batch_shape():
    """The root cause of the chunk-size dependence: the quadrature sum of one scenario must
    not change with how many scenarios share the array."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(-5, 5, 300))
    r = jnp.asarray(rng.integers(1, 64, 300).astype(np.float64))
    tail = jax.jit(_barrier_excess)
    together = np.asarray(tail(a, r))
    alone = np.array([float(tail(a[i : i + 1], r[i : i + 1])[0]) for i in range(5)])
    assert np.array_equal(together[:5], alone)
    x = rng.uniform(size=(7, 384))
    np.testing.assert_allclose(
        np.asarray(_fixed_order_sum(jnp.asarray(x))), [math.fsum(row) for row in x], rtol=1e-15
    )


@pytest.mark.slow  # about 12 s: 150 scenarios one by one and in one chunk
def test_sweep_bytes_identical_across_chunk_sizes(tmp_path):
    """The promise holds for the programs users run: compiled with XLA's optimisations (a
    subprocess, ``test_sweep.run_cli``, with OPTIMISED_ENV). With most of them off, as the
    rest of the suite compiles, XLA:CPU's elementwise code for one scenario and for 150 may
    round an ulp apart."""
    body = """
    r_max = 48
    methods = ["mean_field", "gaussian"]
    batch = [64, 128, 256]
    [workloads]
    [[workloads.family]]
    family = "geometric"
    params = { prompt = [100, 1000], decode = { geomspace = [50, 800, 5] } }
    [latency]
    base = "paper-v1"
    [latency.grid]
    alpha_attn = { logspace = [-2.5, -0.5, 5] }
    """
    spec = spec_file(tmp_path, body)
    outs = []
    for size in (1, 150):
        out = tmp_path / f"c{size}.csv"
        res = run_cli([str(spec), "--out", str(out), "--chunk-size", str(size), "--quiet"])
        assert res.returncode == 0, res.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_plot_without_suffix_reports_the_file_written(tmp_path, capsys):
    name = tmp_path / "fig"
    rc, _, err = cli(["provision", "--workload", WL, "-B", 4, "--r-max", 3, "--plot", name], capsys)
    assert rc == 0 and (tmp_path / "fig.png").is_file()
    assert f"wrote {name}.png" in err


def test_slot_bins_error_bound_holds_and_is_shown(capsys):
    """The lattice bound is visible and holds against the unbinned law (width 1)."""
    wl = "geometric:prompt=300,decode=60"
    base = ["provision", "--workload", wl, "-B", 16, "--r-max", 12, "--json"]
    rc, out, _ = cli(base + ["--slot-bins", 100000], capsys)
    ref = json.loads(out)
    assert rc == 0 and ref["exact_lattice"]["width"] == 1
    assert ref["exact_lattice"]["max_rel_error"] == 0.0
    exact = np.array([row["exact"] for row in ref["curve"]])
    for bins in (16, 64, 256):
        rc, out, err = cli(base + ["--slot-bins", bins], capsys)
        res = json.loads(out)
        got = np.array([row["exact"] for row in res["curve"]])
        bound = res["exact_lattice"]["max_rel_error"]
        assert rc == 0 and res["exact_lattice"]["width"] > 1
        assert np.max(np.abs(exact - got) / got) <= bound
        assert (bound > 0.01) == any("raise --slot-bins" in ln for ln in err)
    rc, out, err = cli(base[:-1] + ["--slot-bins", 2], capsys)
    assert "exact throughput unbounded" in out and "warning" in err[0]

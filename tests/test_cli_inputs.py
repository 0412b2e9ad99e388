"""Inputs an adversarial pass found unchecked (docs/reliability.md, "Adversarial pass of
session 14"): each gave a traceback, an out-of-memory kill or a misleading table before its
fix. The CLI runs in-process; the contract is exit 2 with one stderr line naming the input, or
a correct result."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_reliability import ROOT, WL, cli, refused

from afd_jax.montecarlo import simulate as S
from afd_jax.montecarlo.samplers import make_sampler
from afd_jax.workload.specs import resolve_workload

HW = ["--attn-gpus", 1, "--ffn-gpus", 2, "--attn-system", "h100_sxm", "--ffn-system", "h100_sxm"]
PLAN = ["plan", "--workload", WL, "--latency", "paper-v1", *HW]


def test_fast_kernel_segment_checked_against_the_budget(capsys):
    """20,000 x 1,000 slots of a parametric workload: the fast kernel's generic draw needs
    about 33 GiB for its shortest segment; it ran out of memory (a JAX traceback) before."""
    line = refused(
        ["simulate", "--workload", WL, "-B", 20_000, "--r-max", 1_000, "--steps", 10]
        + ["--quiet", "--memory-budget", "4G"],
        capsys,
        "fast kernel",
        "--memory-budget",
    )
    assert float(line.split("needs about ")[1].split()[0]) > 4


def test_request_bytes_follow_the_sampler():
    """The generic path (a copula sampler, or the alias tables of independent marginals) is
    counted at twice a request alias table's bytes."""
    alias = S._request_bytes(S.KS.alias_sampler([1], [2]))
    for spec, kind in ((WL, "ProductSampler"), ("azure-conv-fit", "CopulaSampler")):
        sampler = make_sampler(resolve_workload(spec), 0, draw="alias")
        assert type(sampler).__name__ == kind
        assert S._request_bytes(sampler) == 2 * alias


def test_step_kernel_request_bytes_bound_xla_memory_analysis():
    """The step kernel's requests drawn ahead (K per slot and segment) are counted at no
    less than XLA's own memory analysis of a compiled segment, per request, for an alias
    table, the product sampler and a copula sampler."""
    import jax
    import jax.random as jr
    import numpy as np

    from afd_jax.kernels import trajectory as T

    shape, k = (64, 64), 32
    for spec in (None, WL, "azure-conv-fit"):
        if spec is None:
            sampler = S.KS.alias_sampler(np.arange(1, 200), np.arange(1, 200), size=256)
        else:
            sampler = make_sampler(resolve_workload(spec), 0, draw="alias")
        state = T.load_state(T.init_slots(jr.key(1), sampler, shape, "stationary"))
        seg = jax.jit(lambda key, st, s: T.trajectory_segment(key, st, s, length=128, n_requests=k))
        mem = seg.lower(jr.key(2), state, sampler).compile().memory_analysis()
        if mem is None:
            pytest.skip("this backend gives no memory analysis")
        per_request = (mem.temp_size_in_bytes + mem.output_size_in_bytes) / (k * 64 * 64)
        assert per_request <= S._request_bytes(sampler, "trajectory"), (spec, per_request)


@pytest.mark.parametrize(
    ("extra", "field"),
    [(["--batches=-5"], "batches"), (["--batches", 64, "--slot-bins", 1], "slot_bins")],
)
def test_plan_sizes_refused_before_work(extra, field, capsys):
    refused(PLAN + extra, capsys, f"field {field}")


def test_slot_bins_below_two_refused_in_the_library():
    from afd_jax.errors import InputError
    from afd_jax.workload.slotload import slot_load_pmf

    with pytest.raises(InputError, match="slot_bins"):
        slot_load_pmf(resolve_workload(WL), max_bins=1)


def test_plot_folder_created_as_the_check_allows(tmp_path, capsys):
    """--plot in a folder that does not exist yet: the up-front check allows it (the folder
    can be created), so the figure is written there, not refused after the work."""
    fig = tmp_path / "new" / "sub" / "p.png"
    rc, out, err = cli(["provision", "--workload", WL, "-B", 4, "--plot", fig], capsys)
    assert rc == 0, err
    assert fig.stat().st_size > 0 and "r*" in out


def test_one_short_replication_says_why_it_has_no_interval(capsys):
    """One replication of 10 steps has no batch means: the table shows "-" instead of
    [nan, inf], a warning line says why, and no idle fraction prints as -0.000."""
    argv = ["simulate", "--workload", WL, "-B", 4, "--r-max", 2, "--steps", 10]
    rc, out, err = cli(argv + ["--replications", 1, "--quiet"], capsys)
    assert rc == 0, err
    assert "nan" not in out and "inf" not in out and "-0.000" not in out, out
    assert [ln for ln in err if "no confidence interval" in ln], err
    rows = [ln for ln in out.splitlines() if ln.strip().startswith(("1 ", "2 "))]
    assert len(rows) == 2 and all("[        -,         -]" in ln for ln in rows), rows
    assert not math.isnan(float(rows[0].split()[1]))  # the throughput itself is there


SIM = ["simulate", "--workload", WL, "-B", 64, "--r-max", 2, "--steps", 10, "--quiet"]
OPT = ["optimize", "--workload", WL, "--latency", "paper-v1", "-B", 64]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (SIM + ["--slot-slack", -1], ["field slot-slack", ">= 0"]),  # said "0..B-1 = -1"
        (SIM + ["--experts", "0,0,0"], ["field experts", "E=0"]),  # was silently off
        (SIM + ["--expert-skew", 1], ["field expert-skew", "--experts"]),  # was ignored
        (SIM + ["--experts", "8,2,1", "--expert-skew", -1], ["field expert-skew", "[0, 100]"]),
        (SIM + ["--num-processes", 2], ["--coordinator"]),  # was ignored
        (OPT + ["--kv-capacity", 1e6, "--kv-epsilon", 1], ["field kv_epsilon"]),
        (OPT + ["--kv-capacity", "auto", "--kv-reserved", 1], ["field kv_reserved"]),
        # ignored before (a review of session 22)
        (SIM + ["--kernel", "barrier", "--exact-shapes"], ["field --exact-shapes", "fast"]),
        (SIM + ["--routing", "balanced", "--exact-shapes"], ["field --exact-shapes"]),
        (
            ["simulate", "--workload", WL, "-B", 4, "--r-max", 2, "--window", "completions"]
            + ["--requests", 64, "--memory-budget-mb", 64],
            ["field --memory-budget-mb", "completions"],
        ),
        (
            ["sweep", ROOT / "examples" / "missing.toml", "--plot-x", "batch"],
            ["field --plot-x", "--plot-dir"],
        ),
    ],
    ids=[
        "slack", "experts-0", "skew-alone", "skew-negative", "processes", "eps", "reserved",
        "exact-shapes-barrier", "exact-shapes-dynamics", "chunks-completions", "plot-x-alone",
    ],
)  # fmt: skip
def test_options_refused_not_ignored(argv, words, capsys):
    refused(argv, capsys, *words)


def test_zero_kv_bytes_per_token_refused(tmp_path, capsys):
    """kv_bytes_per_token = 0 in [hardware] silently dropped plan's KV-capacity constraint."""
    from afd_jax.model.latency_io import format_latency_toml, resolve_latency

    lat, opts = resolve_latency("paper-v1")
    path = tmp_path / "lat.toml"
    path.write_text(format_latency_toml(lat, opts) + "\n[hardware]\nkv_bytes_per_token = 0\n")
    plan = ["plan", "--workload", WL, "--latency", path, *HW]
    refused(plan, capsys, str(path), "field kv_bytes_per_token", "> 0")


def test_zero_step_time_names_the_flags_not_only_the_file(capsys):
    """The coefficients that make the step time 0 came from flags: the error says so (it named
    the preset file alone), and names no file when every coefficient is a flag."""
    zero = ["--beta-attn", 0, "--beta-ffn", 0, "--beta-comm", 0, "--alpha-ffn", 0]
    argv = ["provision", "--workload", WL, "-B", 4, *zero, "--alpha-comm", 0]
    line = refused(argv + ["--latency", "paper-v1"], capsys, "paper-v1.toml with the flags")
    assert "--beta-attn" in line
    line = refused(argv + ["--alpha-attn", 0], capsys, "field beta_attn")
    assert ".toml" not in line


def test_unknown_system_is_allowed_but_said(capsys):
    """An unknown --attn-system is allowed on purpose (a custom system priced by [costs] or the
    flags), but a typo no longer passes silently with its prices printed as "-"."""
    base = ["provision", "--workload", WL, "--latency", "paper-v1", "-B", 4, "--r-max", 4]
    base += ["--attn-gpus", 1, "--ffn-gpus", 2, "--ffn-system", "h100_sxm"]
    rc, _, err = cli(base + ["--attn-system", "h100_sxm"], capsys)
    assert rc == 0 and not [ln for ln in err if "warning" in ln], err
    rc, _, err = cli(base + ["--attn-system", "nosuch"], capsys)
    assert rc == 0 and [ln for ln in err if "--attn-system (attn_system) 'nosuch'" in ln], err


def test_calibrate_writes_to_a_stream(capfd):
    """calibrate opens its --out (no atomic replace), so /dev/stdout stays allowed there while
    the atomic writers (sweep, hardware) refuse devices."""
    from afd_jax.cli import main
    from afd_jax.errors import InputError, check_output_file

    with pytest.raises(InputError, match="not a regular file"):
        check_output_file("/dev/null", "--out")
    assert main(["calibrate", str(ROOT / "examples" / "profile.csv"), "--out", "/dev/stdout"]) == 0
    assert "beta_attn" in capfd.readouterr().out


def test_merge_waits_for_a_damaged_peer_part(tmp_path):
    """Process 0 of a resumed multi-process sweep waited only for the parts to exist, so it
    merged (and refused) a peer's damaged part before the peer rewrote it: it now waits for the
    checksum to match, and a silent owner is reported as lost."""
    from afd_jax.studies.store import PartStore, PeersLost

    store = PartStore(tmp_path / "parts")
    store.open({"digest": "a"}, resume=False)
    store.write("p0", "x,0\n")
    store.write("p1", "x,1\n" * 40)
    store.path("p1").write_bytes(b"x,1\n")  # damaged: truncated, its checksum kept
    with pytest.raises(PeersLost, match="p1"):
        store.wait_for_parts(["p0", "p1"], lambda i: i, peer_timeout_s=0.2, timeout_s=5)


def test_stray_files_do_not_make_a_parts_folder(tmp_path):
    """A hidden file (an output check's probe, .DS_Store) or a checksum without its part left
    in an empty parts folder read as "parts but no manifest" and blocked a fresh run."""
    from afd_jax.studies.store import PartStore

    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / ".DS_Store").write_text("x")
    (folder / "p9.sha256").write_text("0 0\n")
    PartStore(folder).open({"digest": "a"}, resume=False)  # no PartsOrphaned


# ---------------------------------------------------------------- adversarial pass, session 16

THETA = ["theta", "examples/sample_trace.csv"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (THETA + ["--level", 0.9999999999999999], ["field --level", "1 - 1e-9"]),  # traceback
        (SIM + ["--level", 0.9999999999999999], ["field level"]),  # ran with a wrong warning
        (SIM + ["--experts", "100000000,1,1"], ["field experts", "65536"]),  # out of memory
        (SIM + ["--experts", "65536,1,1", "--expert-skew", 1, "--memory-budget", "16M"],
         ["field experts", "MiB"]),
        (SIM + ["--experts", "65536,1,65536", "--memory-budget", "16M"],
         ["field experts", "MiB"]),  # uniform routing rank by rank: 2 G words per token
        (SIM + ["--straggler", "0,1e12"], ["field straggler", "1000"]),  # wrong percentiles
        (SIM + ["--jitter-cv", "1e10"], ["field jitter-cv", "10"]),  # NaN throughput
        (SIM + ["--experts", "8,2,4", "--expert-skew", "1e300"], ["field expert-skew"]),
        (SIM + ["--coordinator", "bogus", "--num-processes", 1, "--process-id", 0],
         ["field --coordinator", "HOST:PORT"]),  # IndexError inside JAX
        (SIM + ["--coordinator", "localhost:x", "--num-processes", 1, "--process-id", 0],
         ["field --coordinator", "HOST:PORT"]),  # "Failed to start RPC server"
        (SIM + ["--coordinator", "nowhere.invalid:1234", "--num-processes", 1, "--process-id", 0],
         ["field --coordinator", "cannot resolve"]),  # JAX waited for minutes
        (["theta", "geometric:prompt=1e-20,decode=5", "--json"], []),  # math domain error
        (SIM + [x for s in ("attn", "ffn", "comm") for x in (f"--alpha-{s}", 0,
                                                                f"--beta-{s}", 1e-50)],
         ["field beta_attn", "picosecond"]),  # infinite throughput, NaN shares
    ],
    ids=["theta-level", "simulate-level", "experts", "experts-budget", "experts-budget-ranks",
         "straggler", "jitter",
         "skew", "coordinator-host", "coordinator-port", "coordinator-unknown", "geometric-0",
         "underflow"],
)  # fmt: skip
def test_session_16_inputs(argv, words, capsys):
    if not words:  # a correct result: the prompt is a point mass at 0
        rc, out, err = cli(argv, capsys)
        assert rc == 0, err
        return
    refused(argv, capsys, *words)


def test_memory_budget_in_bytes():
    """ "100B" meant 100 MiB (the B read as a unit-less suffix); now bytes."""
    from afd_jax.errors import InputError
    from afd_jax.memory import parse_size

    assert parse_size("1048576B") == 1 << 20 and parse_size("2MiB") == parse_size("2M") == 2 << 20
    assert parse_size("3") == 3 << 20  # a bare number stays MiB
    with pytest.raises(InputError, match="between 1M"):
        parse_size("1B")


def test_idle_shares_are_not_negative(capsys):
    """Where the FFN is busy every step the float32 sums left idle_ffn at -3.4e-8 (paper-v1,
    B = 64, r = 6..8); clipped at 0, as the pool's were."""
    import json

    argv = ["simulate", "--workload", "paper-v1", "--latency", "paper-v1", "-B", 64, "--r-max", 8]
    rc, out, err = cli(argv + ["--steps", 2000, "--replications", 2, "--json", "--quiet"], capsys)
    assert rc == 0, err
    rows = json.loads(out)["results"]
    assert all(row[k] >= 0 for row in rows for k in ("idle_attn", "idle_ffn", "idle_bundle"))
    assert rows[-1]["idle_ffn"] == 0.0  # FFN-bound at r = 8


def test_unbounded_interval_says_why(capsys):
    """Two replications with a CV-10 noise: the mean step time's interval reaches 0, so the
    throughput's upper bound is unbounded; the warning said "one replication needs at least
    two batch means" (wrong here)."""
    argv = SIM[:-1] + ["--steps", 256, "--replications", 2, "--jitter-cv", 10, "--quiet"]
    rc, out, err = cli(argv, capsys)
    assert rc == 0, err
    (line,) = [ln for ln in err if "no confidence interval" in ln]
    assert "reach 0" in line and "one replication" not in line


def test_logspace_past_float64_is_one_line(tmp_path, capsys):
    """`logspace = [-2.5, 400, 3]` printed NumPy's overflow warning before its error."""
    import warnings

    from test_reliability import spec_file

    spec = spec_file(
        tmp_path,
        """
        batch = [4]
        [workloads]
        specs = ["paper-v1"]
        [latency]
        base = "paper-v1"
        [latency.grid]
        alpha_attn = { logspace = [-2.5, 400, 3] }
        """,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(["sweep", spec, "--out", tmp_path / "t.csv"], capsys, "logspace", "308")


@pytest.mark.parametrize(
    ("batches", "mc", "extra", "words"),
    [
        # the experts' routing scores at the largest B exceed the budget: found only at that
        # scenario, after parts were written, with advice (--memory-budget) that did not
        # reach the Monte Carlo (a review)
        ("1, 64", "experts = [4096, 1, 1]\nexpert_skew = 1.0", ["--memory-budget", "4M"],
         ["field mc.experts", "B = 64", "--memory-budget"]),
        # found at the first scenario of B = 8 as "field microbatches", without the spec
        # (a review of session 22)
        ("6, 8", "microbatches = 3", [], ["s.toml: field mc.microbatches", "B = 8"]),
        # int32 wrap: 3e9 tokens ran as a binding capacity (2 to 4 % less throughput, empty
        # slots); 1e20 a traceback (an adversarial pass of session 24)
        ("8", "kv_capacity = 3000000000", [], ["field mc.kv_capacity", "2^31"]),
        ("8", "kv_capacity = 99999999999999999999", [], ["field mc.kv_capacity", "2^31"]),
        ("8", 'routing = "lookahead"\nlookahead = 3000000000', [], ["field mc.lookahead"]),
    ],
    ids=["experts-memory", "microbatches", "kv-int32", "kv-int64", "lookahead"],
)  # fmt: skip
def test_sweep_mc_dynamics_checked_before_any_part(tmp_path, capsys, batches, mc, extra, words):
    """The mc method's dynamics are checked at every B of the spec before any work, each
    named as its [mc] key."""
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'methods = ["mc"]\nbatch = [{batches}]\nr_max = 2\n[workloads]\nspecs = ["paper-v1"]\n'
        f'[latency]\nbase = "paper-v1"\n[mc]\nsteps = 64\nreplications = 2\n{mc}\n'
    )
    out = tmp_path / "t.csv"
    refused(["sweep", spec, "--out", out, "--quiet", *extra], capsys, *words)
    assert not out.exists() and not (tmp_path / "t.csv.parts").exists()


def test_toml_numbers_python_will_not_read(tmp_path, capsys):
    """An integer of more than 4300 digits in any TOML input (tomllib raises a plain
    ValueError for it) and one beyond the float range in a latency value were tracebacks (a
    review of session 22); every TOML reader goes through one function now."""
    long = "9" * 5000
    spec = tmp_path / "s.toml"
    spec.write_text(f"methods = ['mean-field']\nbatch = [{long}]\n")
    refused(["sweep", spec, "--out", tmp_path / "t.csv"], capsys, str(spec), "too long")
    lat = tmp_path / "lat.toml"
    lat.write_text(f"[meta]\nnote = {long}\n[latency]\n")
    refused([*PLAN[:3], "--latency", lat, *HW], capsys, str(lat), "too long")
    lat.write_text("[latency]\ncost_ffn = 1" + "0" * 400 + "\n")
    refused(["provision", "--workload", WL, "-B", 64, "--latency", lat], capsys, "cost_ffn")


def test_trace_options_refused_for_a_parametric_workload(capsys):
    """--format and --decode-mapping were ignored for a preset or a spec (theta and every
    --workload command), while the JSON said they were applied."""
    argv = ["provision", "--workload", WL, "-B", 64, "--latency", "paper-v1"]
    refused([*argv, "--decode-mapping", "output-minus-one"], capsys, "--decode-mapping")
    refused([*argv, "--format", "azure"], capsys, "field --format", "trace files only")


def test_plan_points_checked_against_the_budget(capsys):
    """`plan --r-max 1000000` grew to 22.7 GB and was killed for memory, and 1e8 ran for
    minutes, whatever --memory-budget said (a review of session 22): the (r, B) points are
    counted against the budget before any work."""
    line = refused(
        [*PLAN, "--batches", "8,16", "--r-max", 10**8, "--memory-budget", "2G"],
        capsys,
        "200000000 (r, B) points",
        "--r-max",
    )
    assert "over the memory budget of 2.0 GiB" in line


@pytest.mark.parametrize(
    ("base", "scales", "words"),
    [
        ("paper-v1", "[latency.set]\nattn_scale = 1e300\n", ["latency.set.attn_scale", "1e+302"]),
        (
            "paper-v1",
            "[latency.set]\nattn_scale = 1e-300\nffn_scale = 1e-300\n"
            "[latency.grid]\ncomm_scale = [1, 1e-300]\n",
            ["latency.grid.comm_scale", "scenario 1", "stage scales applied"],
        ),
        (ROOT / "tests" / "data" / "moe_table.toml", "[latency.set]\nffn_scale = 1e-300\n",
         ["latency.set.ffn_scale", "scales a measured time"]),
    ],
)  # fmt: skip
def test_sweep_stage_scales_checked_as_applied(tmp_path, capsys, base, scales, words):
    """A stage scale was only checked to be > 0: attn_scale = 1e300 gave an IndexError
    (optimize), NaN (mc) or 2.7e-296 tokens/s, and three scales of 1e-300 an infinite mc
    throughput (a review of session 22). The scaled values meet the coefficients' limits."""
    spec = tmp_path / "s.toml"
    spec.write_text(
        'methods = ["mean_field"]\nr_max = 3\nbatch = [8]\n[workloads]\nspecs = ["paper-v1"]\n'
        f'[latency]\nbase = "{base}"\n{scales}'
    )
    refused(["sweep", spec, "--out", tmp_path / "t.csv"], capsys, *words)
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("flag", [["--kv-epsilon", 0.5], ["--memory-attn-gib", 80]])
def test_plan_kv_options_without_a_kv_size_are_refused(capsys, flag):
    """paper-v1 gives no kv_bytes_per_token: the KV options changed nothing while the table
    said "constraints none besides KV capacity" (a review of session 22)."""
    refused([*PLAN, "--batches", 8, "--r-max", 4, *flag], capsys, f"field {flag[0]}", "nothing")
    rc, out, _ = cli([*PLAN, "--batches", 8, "--r-max", 4, "--no-elasticities"], capsys)
    assert rc == 0 and "constraints   none; r in 1..4" in out


def test_plan_kv_options_need_every_figure_of_the_capacity(tmp_path, capsys):
    """kv_bytes_per_token alone sizes nothing without the Attention GPUs: --kv-epsilon was
    ignored there too (a review of session 22)."""
    from afd_jax.model.latency_io import format_latency_toml, resolve_latency

    lat, opts = resolve_latency("paper-v1")
    path = tmp_path / "lat.toml"
    path.write_text(format_latency_toml(lat, opts) + "\n[hardware]\nkv_bytes_per_token = 1000\n")
    argv = ["plan", "--workload", WL, "--latency", path, "--batches", 8, "--r-max", 4]
    refused([*argv, "--kv-epsilon", 0.5], capsys, "field --kv-epsilon", "Attention GPUs")


# ---------------------------------------------------------------- adversarial pass, session 24


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        # a capacity of 2^31 tokens wrapped in int32 and bound (7.6 % empty slots, rc 0)
        (SIM + ["--kv-capacity", 2**31], ["field kv-capacity", "2^31"]),
        (SIM + ["--kv-capacity", 2**63], ["field kv-capacity", "2^31"]),  # traceback
        # 1e7 took 5 GB, 2^31 hung (int32 overflow past it: a traceback)
        (SIM + ["--routing", "lookahead", "--lookahead", 10**7], ["field lookahead", "4096"]),
        (SIM + ["--routing", "lookahead", "--lookahead", 2**31], ["field lookahead", "4096"]),
        (SIM + ["--routing", "power-of-d", "--routing-d", 2**31], ["field routing-d", "4096"]),
        # printed inf USD per million tokens (and 9.4e294 J per token for --power-attn 1e300)
        (PLAN + ["--batches", 8, "--r-max", 4, "--price-attn", 1.7e308],
         ["field price_attn", "1e+15"]),
        (PLAN + ["--batches", 8, "--r-max", 4, "--power-attn", 1e300], ["field power_attn"]),
        # z rounded to 0: a zero-width interval blamed on rows "with no spread"
        (THETA + ["--level", 1e-20], ["field --level", "[1e-9, 1 - 1e-9]"]),
    ],
    ids=["kv-int32", "kv-int64", "lookahead-memory", "lookahead-int32", "routing-d", "price",
         "power", "theta-tiny-level"],
)  # fmt: skip
def test_session_24_inputs(argv, words, capsys):
    refused(argv, capsys, *words)


def test_largest_kv_capacity_and_router_sizes_run(capsys):
    """The limits themselves are accepted: 2^31 - 1 tokens binds nothing (every slot full)."""
    argv = SIM + ["--steps", 64, "--json", "--kv-capacity", 2**31 - 1]
    rc, out, err = cli(argv + ["--routing", "lookahead", "--lookahead", 4096], capsys)
    assert rc == 0, err
    assert all(row["empty_slot_fraction"] == 0 for row in json.loads(out)["results"])


def test_deeply_nested_jsonl_line_is_invalid_json(tmp_path, capsys):
    """Python's JSON parser recursed past its limit on a line nested 1,000 deep: a
    RecursionError traceback instead of the file and line (an adversarial pass of session
    24)."""
    path = tmp_path / "t.jsonl"
    good = '{"input_length": 10, "output_length": 5}\n'
    path.write_text(good * 3 + '{"input_length": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    refused(["theta", path], capsys, f"{path}:4", "nested too deeply")


def test_theta_delta_interval_stays_at_or_above_zero(tmp_path, capsys):
    """Two requests of very different prompts: the normal interval theta -+ z se reached
    -4,647 tokens (an adversarial pass of session 24); theta is a mean of token counts, so the
    lower end is cut at 0 and the upper end is the formula's."""
    from statistics import NormalDist

    path = tmp_path / "two.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,10\n1,10000,10\n")
    rc, out, err = cli(["theta", path, "--json"], capsys)
    assert rc == 0, err
    obj = json.loads(out)
    p, d = np.array([100, 10_000]), np.array([10, 10])
    reward = np.array([sum(p[i] + k for k in range(d[i])) for i in range(2)], float)  # loads
    theta = reward.sum() / d.sum()
    resid = reward - theta * d
    se = math.sqrt((resid**2).sum() / 2) / d.mean()
    high = theta + NormalDist().inv_cdf(0.975) * se
    assert theta - NormalDist().inv_cdf(0.975) * se < 0  # the case the cut is for
    assert obj["theta_ci_low"] == 0.0
    assert obj["theta_ci_high"] == pytest.approx(high, rel=1e-12)

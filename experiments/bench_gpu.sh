#!/usr/bin/env bash
# The one prepared GPU benchmark: fills the GPU rows of docs/benchmarks.md in a single run of
# under 10 minutes on one H100/H200 (224 s on an H200, 2026-12-04, before trajectory_256,
# checks_tables, workloads and levers were added: plan on about 8 minutes). Each step has its
# own timeout; a failed step is reported and the next one still runs. Needs a Python with
# jax[cuda] and this package importable.
#
#   bash experiments/bench_gpu.sh [TRACES_DIR] [OUT_DIR]
#   ONLY="devices kernels levers" bash experiments/bench_gpu.sh ...   # just those steps
#
# The measurements that close issue 14 run first (devices kernels fast_256 trajectory_256
# levers, an estimated 4 to 5 minutes, then a summary), the checks and the other benchmarks
# after them, so that a device call cut at its limit keeps the targets. With 15 minutes of
# device time, two calls fit: ONLY="devices kernels fast_256 trajectory_256 levers", then the
# rest.
#
# TRACES_DIR holds azure_llm_2023_conv.csv and azure_llm_2023_code.csv (default
# $AFD_TRACES_DIR, else ../shared/traces); OUT_DIR (default bench_gpu_out) receives
# devices.txt, kernels.md (fast/trajectory/barrier vs NumPy at r_max = 64, B = 256,
# 64 replications), workloads.md (the kernels on paper-v1 against the trace), fast_256.md
# (the fast kernel with 256 replications: the 1e12 target), trajectory_256.md (the
# step-by-step kernel with 256 replications: each step's fixed loop cost spread over 4x the
# slots), levers.md (the step kernels' variants not yet tried on a GPU: the plain carry,
# loop unrolling, segment length, the barrier's paired halves and chunks), profile.md (where each kernel's device time
# goes: experiments/profile_kernels.py), host_*.md (the host's dispatch, fetch and add time
# per fast-kernel call, with the device totals and without: experiments/bench_host.py),
# gaussian.md (the Gaussian kernel alone: the 1e7 evaluations/s target), sweep.json
# (scenario-r evaluations/s of a whole sweep), dynamics.md (the dynamics kernel at r_max =
# 64, B = 256: experiments/bench_dynamics.py) and, with SCALING=1, scaling.md (rate vs
# replications and steps: a CPU criterion, many compilations on a GPU); summary.md, printed
# last (experiments/bench_gpu_summary.py: every kernel row, the fastest per kernel against
# its target). ONLY names steps by the first word of their names (devices checks
# checks_tables kernels workloads fast_256 trajectory_256 levers profile host gaussian sweep
# dynamics scaling), to split the script over several device calls of at most 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
TRACES=$(realpath "${1:-${AFD_TRACES_DIR:-../shared/traces}}")
OUT=$(realpath -m "${2:-bench_gpu_out}")
SCRATCH=$(mktemp -d)  # profiler traces and the sweep spec (not results)
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TRACE="$TRACES/azure_llm_2023_conv.csv"
PY=${PYTHON:-python3}
T0=$(date +%s)

step() {  # step NAME TIMEOUT_S COMMAND... (skipped unless ONLY is empty or names it)
    local name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" ${name%% *} "* ]]; then
        return 0
    fi
    echo "== $name (limit ${limit}s, $(($(date +%s) - T0))s elapsed)" >&2
    timeout "$limit" "$@" || echo "== $name FAILED (exit $?)" >&2
}

step devices 30 "$PY" -c "import jax; print(jax.__version__, jax.devices())" |
    tee "$OUT/devices.txt"
# the measurements that close issue 14 first (a device call cut at its limit keeps what it wrote)
step kernels 110 "$PY" experiments/bench_kernels.py --trace "$TRACE" --size gpu --repeat 3 \
    --out "$OUT/kernels.md"
step fast_256 60 "$PY" experiments/bench_kernels.py --trace "$TRACE" --size gpu \
    --kernels fast --replications 256 --memory-budget-mb 32768 --repeat 3 \
    --out "$OUT/fast_256.md"
step trajectory_256 60 "$PY" experiments/bench_kernels.py --trace "$TRACE" --size gpu \
    --kernels trajectory --replications 256 --memory-budget-mb 32768 --repeat 3 \
    --out "$OUT/trajectory_256.md"
# the step kernels' levers not yet tried on a GPU (the same numbers, other programs; each row
# against `kernels` above): since session 17 a trajectory step is light (no hash), so the loop's
# fixed cost per iteration and per call weigh more: the plain carry (three int32 arrays, the
# code before session 18's packed word), 16 and 32 steps per iteration (8 now), segments of
# 2,048 and 20,000 steps (about 256 now, 2**28 slot-steps per call); the barrier
# drawing pi since session 15 (one block per slot): both halves at once (CPU only now), and
# chunks 4x larger (a 32 GiB budget; 8 GiB by default on an accelerator)
for lever in "--plain-carry" "--step-unroll 16" "--step-unroll 32" "--segment-steps 2048" \
    "--segment-steps 20000 --memory-budget-mb 32768"; do
    # shellcheck disable=SC2086
    step "levers $lever" 50 "$PY" experiments/bench_kernels.py --trace "$TRACE" --size gpu \
        --kernels trajectory --repeat 3 $lever --out "$OUT/levers.md" --append
done
for lever in "--barrier-halves" "--memory-budget-mb 32768"; do
    # shellcheck disable=SC2086
    step "levers barrier $lever" 50 "$PY" experiments/bench_kernels.py --trace "$TRACE" \
        --size gpu --kernels barrier --repeat 3 $lever --out "$OUT/levers.md" --append
done
"$PY" experiments/bench_gpu_summary.py "$OUT" --out "$OUT/summary.md" || true
# then the checks: the same numbers on the GPU backend
# the fast kernel's two-phase scan on the GPU backend (wide vmap) equals the one-phase scan, and
# the random words carried as one complex64 pair keep every bit there too; the pipelined chunk
# loop and the driver's reruns (tests/test_spine.py, the rerun tests)
# (one pytest process: xdist workers would each take most of the GPU's memory)
# and the device totals (float64 sums of the blocks on the GPU) equal to the host's sums
AFD_TRACES_DIR=$TRACES step checks 150 "$PY" -m pytest -q -n 0 -p no:cacheprovider \
    tests/test_fast_tail.py tests/test_spine.py tests/test_kernels.py::test_threefry_pair_keeps_every_bit \
    tests/test_simulate.py -k "not lockstep"
# the barrier's draw of pi (one block per slot, an alias table of loads), the alias tables of
# independent parametric marginals and the copula's guided search of P on the GPU backend:
# laws and bits (sessions 15 and 16, not yet run on a GPU); the step kernel's requests drawn
# ahead against advance() step by step (session 17; tests/test_simulate.py in `checks` runs
# it against the fast kernel, bit for bit), with the packed carry (session 18)
AFD_TRACES_DIR=$TRACES step checks_tables 120 "$PY" -m pytest -q -n 0 -p no:cacheprovider \
    tests/test_samplers.py tests/test_kernels.py tests/test_families.py \
    -k "block_words or halves or workload or load_alias or product or guided or joint_law or copula or advance_step or packed"
# the three kernels on parametric workloads against the trace (the barrier draws pi for the
# trace and paper-v1; paper-v1's requests come from its marginals' alias tables, azure-conv-fit's
# from the copula sampler)
AFD_TRACES_DIR=$TRACES step workloads 120 "$PY" experiments/bench_workloads.py \
    --workloads paper-v1,azure-conv-fit,azure_llm_2023_conv.csv --replications 64 \
    --out "$OUT/workloads.md"
step profile 70 "$PY" experiments/profile_kernels.py --trace "$TRACE" \
    --kernels fast:20000,trajectory:2000,barrier:16384 --replications 64 --out "$SCRATCH/profile"
cp "$SCRATCH/profile/profile.md" "$OUT/profile.md" 2>/dev/null
# the host's work per fast-kernel call, with the device totals and without (every block
# fetched and added on the host, the code before them; same numbers), alternating
for pass in 1 2; do
    step "host $pass" 40 "$PY" experiments/bench_host.py --trace "$TRACE" --calls 5 \
        --out "$OUT/host_$pass.md"
    step "host sums $pass" 40 "$PY" experiments/bench_host.py --trace "$TRACE" --calls 5 \
        --host-sums --out "$OUT/host_sums_$pass.md"
done
step gaussian 45 "$PY" experiments/bench_gaussian.py --chunks 1000,10000,100000 \
    --out "$OUT/gaussian.md"
sed "s#\.\./shared/traces#$TRACES#g" experiments/sweeps/bench_10k.toml >"$SCRATCH/bench_10k.toml"
step sweep 45 "$PY" experiments/bench_sweep.py --spec "$SCRATCH/bench_10k.toml" \
    --out "$OUT/sweep.json"
# the dynamics kernel at the GPU sizes (in place, noise, micro-batches, experts, load-aware
# routing: docs/dynamics.md; the dynamics issue's targets were 1e11 in place and 3e10 routed)
step dynamics 150 "$PY" experiments/bench_dynamics.py --trace "$TRACE" --r-max 64 --batch 256 \
    --steps 512 --replications 8 --out "$OUT/dynamics.md"
if [ "${SCALING:-0}" = 1 ]; then
    step scaling 120 "$PY" experiments/bench_kernels.py --trace "$TRACE" --size gpu \
        --scaling --repeat 2 --out "$OUT/scaling.md"
fi
echo "== done in $(($(date +%s) - T0))s; results in $OUT" >&2
cat "$OUT"/*.md "$OUT/sweep.json" 2>/dev/null
# last, the targets read off the tables above (fast >= 1e12, the step kernels >= 1e11)
"$PY" experiments/bench_gpu_summary.py "$OUT" --out "$OUT/summary.md"

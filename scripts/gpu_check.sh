#!/usr/bin/env bash
# One-command GPU check (make gpu-check): on a machine with an NVIDIA GPU and PyTorch installed,
# no internet needed. First checks that the C++ compiler builds working PyTorch extensions
# (scripts/toolchain_check.py; if not, it stops there and names the compiler and the fix), then
# builds fastrnn in place for the local GPU and runs, each step under `timeout`:
#   - the CUDA tests with FASTRNN_RECURRENCE=step, then again with prefer-persistent (every
#     forward and backward the persistent kernels can take runs on them; the rest fall back and
#     say why);
#   - compute-sanitizer memcheck and racecheck on a tiny LSTM/GRU case (step loop), and
#     memcheck, racecheck and synccheck on a persistent case (scripts/gpu_check/persistent_case.py:
#     forward and backward, T = 5, H = 301, an uneven partition; and T = 1, the fused single step);
#   - the benchmark suite with the step loop and with prefer-persistent;
#   - the peak-memory attribution and, if time is left, the whole test suite;
# and writes every log and result into OUTDIR, with one summary (summary.md, summary.tsv):
#
#   scripts/gpu_check.sh OUTDIR
#
# The whole check stays under ~10 minutes on an H100/H200 (GPU_CHECK_BUDGET_S). A failing step
# does not stop the others. OUTDIR/summary.tsv holds each step's exit code (124 = timed out);
# the script exits non-zero if any required step failed.
# Environment: PYTHON (default python3), MAX_JOBS (default 8), GPU_CHECK_BUDGET_S (default 570),
# COMPUTE_SANITIZER (path), TORCH_CUDA_ARCH_LIST (default: the local GPU's capability), CXX / CC
# (the compilers of the toolchain check and the build; e.g. CXX=/usr/bin/g++ CC=/usr/bin/gcc).
set -u -o pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-570}
cd "$ROOT" || exit 2

SUMMARY="$OUT/summary.tsv"
printf 'step\trc\tseconds\tlog\n' >"$SUMMARY"
FAILED=()
START=$SECONDS

note() { echo "[gpu-check $((SECONDS - START))s] $*" >&2; }

# run_step NAME CAP REQUIRED CMD...: run CMD under timeout min(CAP, time left), output to
# OUTDIR/NAME.log, one line in summary.tsv. A required step that cannot start for lack of time
# counts as failed; an optional one is recorded as skipped.
run_step() {
    local name=$1 cap=$2 required=$3
    shift 3
    local log="$OUT/$name.log" left=$((BUDGET - (SECONDS - START))) t0=$SECONDS rc
    local t=$((cap < left ? cap : left))
    if ((t < 20)); then
        echo "not run: only ${left}s of the ${BUDGET}s budget left" >"$log"
        rc=skipped
    else
        note "$name (timeout ${t}s): $*"
        {
            echo "\$ $*"
            echo "# timeout ${t}s, started $(date -u +%FT%TZ)"
        } >"$log"
        timeout --kill-after=10 "$t" "$@" >>"$log" 2>&1
        rc=$?
        echo "# exit code $rc after $((SECONDS - t0))s" >>"$log"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$name.log" >>"$SUMMARY"
    if [[ $rc != 0 && ($required == yes || $rc != skipped) ]]; then
        FAILED+=("$name")
    fi
    note "$name -> $rc"
}

# --- what machine, which versions --------------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -a)"
    echo "git commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "git status:"
    git -C "$ROOT" status --short 2>/dev/null
    echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
    echo "CXX: ${CXX:-unset (c++)}, CC: ${CC:-unset}"
    echo "${CXX:-c++} --version: $(${CXX:-c++} --version 2>&1 | head -n 1)"
    echo "nvcc: $(command -v nvcc || echo not on PATH)"
    nvcc --version 2>&1 | tail -n 2
    lscpu 2>/dev/null | grep -E 'Model name|^CPU\(s\)'
    echo "python packages:"
    "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|nvidia|numpy|pytest|matplotlib|ninja|setuptools)'
} >"$OUT/versions.txt" 2>&1

# summary.md (and the exit code) from summary.tsv; $1: a note on steps that were not run.
finish() {
    {
        echo "# fastrnn GPU check"
        echo
        grep -E '^(date|git commit|TORCH_CUDA_ARCH_LIST):' "$OUT/versions.txt"
        echo
        echo '| step | exit code | seconds |'
        echo '|---|---|---|'
        tail -n +2 "$SUMMARY" | while IFS=$'\t' read -r s rc secs _; do echo "| $s | $rc | $secs |"; done
        echo
        if [[ -n ${1:-} ]]; then echo "$1"; fi
        if ((${#FAILED[@]})); then echo "FAILED: ${FAILED[*]}"; else echo "all steps passed"; fi
        echo "total: $((SECONDS - START))s"
    } >"$OUT/summary.md"
    cat "$OUT/summary.md" >&2
    ((${#FAILED[@]} == 0))
    exit
}

# --- the C++ toolchain, before anything is built or run ----------------------------------------
# With some compilers (seen: a wrapper CXX=/opt/gcc/bin/g++) every C++ exception in an extension
# crashes the process, i.e. every error fastrnn reports; a build and a test run would only show
# that as 150 segfaulting tests. A tiny probe extension says so in seconds, naming the compiler.
run_step toolchain 180 yes "$PY" scripts/toolchain_check.py
if [[ " ${FAILED[*]-} " == *" toolchain "* ]]; then
    sed -n '/^toolchain check/,/^then rerun/p' "$OUT/toolchain.log" >&2
    finish "not run: everything after the toolchain check (it failed: see toolchain.log)"
fi

run_step nvidia-smi 30 yes sh -c "nvidia-smi && nvidia-smi -q"
run_step torch-env 60 yes "$PY" - <<'PYEOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"gpu {i}: {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
PYEOF

# --- build for the local GPU -------------------------------------------------------------------
ARCH=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)}
echo "TORCH_CUDA_ARCH_LIST=${ARCH:-unknown}" >>"$OUT/versions.txt"
if [[ -z $ARCH ]]; then
    echo "could not read the GPU's compute capability from torch" >"$OUT/build.log"
    printf 'build\tno-arch\t0\tbuild.log\n' >>"$SUMMARY"
    FAILED+=(build)
else
    run_step build 270 yes env TORCH_CUDA_ARCH_LIST="$ARCH" FASTRNN_CUDA=1 MAX_JOBS="${MAX_JOBS:-8}" \
        "$PY" setup.py build_ext --inplace
fi
# The build must have produced CUDA kernels that run on this GPU (not a stale CPU-only .so).
run_step verify-build 60 yes "$PY" -c "
import torch, fastrnn
assert fastrnn.built_with_cuda(), 'fastrnn was built without CUDA kernels'
x = torch.randn(5, 3, 4, device='cuda')
w = [torch.randn(16, 4, device='cuda'), torch.randn(16, 4, device='cuda')]
y, h, c = fastrnn.functional.lstm_layer(x, None, None, *w, lengths=[5, 2, 1])
torch.cuda.synchronize()
print('fastrnn', fastrnn.__version__, 'from', fastrnn.__file__, 'ok:', tuple(y.shape))
"

# --- tests, sanitizers, benchmarks -------------------------------------------------------------
# The CUDA suite on each path: the step loop (what auto runs), then every eligible forward and
# backward on the persistent kernels (prefer-persistent; fastrnn._C.last_path says which calls
# fell back, why).
run_step tests-cuda-step 120 yes env FASTRNN_RECURRENCE=step "$PY" -m pytest tests tests/tooling -m cuda -q -rs \
    -p no:cacheprovider --junitxml="$OUT/tests-cuda-step.xml"
run_step tests-cuda-prefer 120 yes env FASTRNN_RECURRENCE=prefer-persistent "$PY" -m pytest tests tests/tooling -m cuda -q -rs \
    -p no:cacheprovider --junitxml="$OUT/tests-cuda-prefer.xml"

SANITIZER=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || true)}
for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [[ -z $SANITIZER && -n $d && -x $d/bin/compute-sanitizer ]]; then
        SANITIZER=$d/bin/compute-sanitizer
    fi
done
echo "compute-sanitizer: ${SANITIZER:-not found}" >>"$OUT/versions.txt"
SANITIZED=(sanitizer-memcheck sanitizer-racecheck persistent-memcheck persistent-racecheck persistent-synccheck)
if [[ -n $SANITIZER ]]; then
    "$SANITIZER" --version >>"$OUT/versions.txt" 2>&1
    run_step sanitizer-memcheck 60 yes "$SANITIZER" --tool memcheck --error-exitcode 1 --print-limit 100 \
        "$PY" -m scripts.gpu_check.sanitizer_case --device cuda
    run_step sanitizer-racecheck 60 yes "$SANITIZER" --tool racecheck --racecheck-report all \
        --error-exitcode 1 --print-limit 100 "$PY" -m scripts.gpu_check.sanitizer_case --device cuda
    # The persistent kernels, forward and backward: T = 5 steps (the double-buffered state and
    # grad buffers wrap twice), H = 301; and the fused single step (T = 1).
    for tool in memcheck racecheck synccheck; do
        run_step "persistent-$tool" 60 yes "$SANITIZER" --tool "$tool" --error-exitcode 1 --print-limit 100 \
            "$PY" -m scripts.gpu_check.persistent_case
    done
else
    for s in "${SANITIZED[@]}"; do
        echo "compute-sanitizer not found (set COMPUTE_SANITIZER or CUDA_HOME)" >"$OUT/$s.log"
        printf '%s\tnot-found\t0\t%s.log\n' "$s" "$s" >>"$SUMMARY"
        FAILED+=("$s")
    done
fi

# The benchmark suite on each path, same process layout, so the two results files compare.
run_step benchmarks-step 150 yes env FASTRNN_RECURRENCE=step "$PY" -m benchmarks --device cuda \
    --out "$OUT/bench-step"
run_step benchmarks-prefer 150 yes env FASTRNN_RECURRENCE=prefer-persistent "$PY" -m benchmarks --device cuda \
    --out "$OUT/bench-prefer"

# Where the peak memory of forward+backward goes, fastrnn and cuDNN (scripts/gpu_check/memory_peak.py).
run_step memory-peak 90 no sh -c "for c in lstm gru; do for d in fp32 bf16; do for i in fastrnn torch.nn; do \
    '$PY' -m scripts.gpu_check.memory_peak --cell \$c --dtype \$d --impl \$i; done; done; done"

# Everything else (CPU cases included) with what is left of the budget.
run_step tests-all 400 no "$PY" -m pytest tests tests/tooling -q -rs -p no:cacheprovider --junitxml="$OUT/tests-all.xml"

# --- summary -----------------------------------------------------------------------------------
finish

#!/usr/bin/env bash
# Sets up everything the README's commands need, idempotently: a virtual environment with torch
# and the test tools, and the fastrnn extension built into it (CUDA build when a toolkit is found,
# even without a GPU; CPU-only otherwise). Re-running skips what is already done.
#
# The first run takes minutes (installing torch: several GB with its CUDA libraries; compiling the
# extension: a few minutes for the CPU part, longer with CUDA): every stage says what it is doing,
# shows one line per package or compiled file, a "still ..." line after each BOOTSTRAP_HEARTBEAT_S
# seconds without one, and its time when done. The whole output of each stage goes to
# build/bootstrap/<stage>.log (its end is printed if the stage fails).
#
#   PYTHON=python3.x       interpreter for the venv (default: python3)
#   FASTRNN_VENV=DIR       where the venv lives (default: .venv in the repo)
#   TORCH_CUDA_ARCH_LIST   GPUs to build for (default: the local GPU, or setup.py's list)
#   MAX_JOBS               parallel compile jobs (default: 2; nvcc needs GBs per job)
#   BOOTSTRAP_HEARTBEAT_S  seconds of silence before a "still ..." line (default: 20)
#
# Sourcing this file (`. scripts/bootstrap.sh`) only defines its functions (for the tests).

say() { echo "[bootstrap] $*" >&2; }

# One line of pip's output worth showing: a package it collects, a download of 1 MB or more, the
# install itself, errors.
show_pip_line() {
    local re='^ *(Collecting |Downloading .*\([0-9.]+ [MG]B\)|Installing collected|Successfully installed|ERROR)'
    if [[ $1 =~ $re ]]; then
        echo "${1#"${1%%[! ]*}"}" # without the indentation
    fi
}

# One line of the extension build worth showing: setup.py's CPU/CUDA decision, each source file
# as ninja reports it ("[2/5] csrc/cuda/lstm.cu", ninja's own count), the link, the end, errors.
show_build_line() {
    local compile='^(\[[0-9]+/[0-9]+\]) .* -c ([^ ]+)' link=' -shared( .*)? -o ([^ ]+\.so)( |$)'
    local other='^(fastrnn: |Successfully installed|ERROR)|[Ee]rror:'
    if [[ $1 =~ $compile ]]; then
        echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]#"$PWD/"}"
    elif [[ $1 =~ $link ]]; then
        echo "linking ${BASH_REMATCH[2]##*/}"
    elif [[ $1 =~ $other ]]; then
        echo "$1"
    fi
}

# follow LOG SHOW LABEL T0: copy stdin into LOG line by line, print what the function SHOW makes
# of each line, and "still LABEL (N s since T0)" after each BOOTSTRAP_HEARTBEAT_S seconds in which
# nothing was printed.
follow() {
    local log=$1 show=$2 label=$3 t0=$4 every=${BOOTSTRAP_HEARTBEAT_S:-20}
    local line part="" shown last=$SECONDS
    while :; do
        if IFS= read -r -t 1 line; then
            line=$part$line part=""
        elif (($? > 128)); then # timed out: keep what came of a line so far, maybe a heartbeat
            part+=$line
            if ((SECONDS - last >= every)); then
                say "  still $label ($((SECONDS - t0)) s)"
                last=$SECONDS
            fi
            continue
        else # end of input, perhaps after a last line without its newline
            line=$part$line
            [[ -n $line ]] || break
            part=""
        fi
        printf '%s\n' "$line" >>"$log"
        shown=$("$show" "$line")
        if [[ -n $shown ]]; then
            say "  $shown"
            last=$SECONDS
        fi
    done
    return 0
}

# stage NAME LABEL SHOW CMD...: run CMD as one timed stage of the set-up (output as in follow(),
# in build/bootstrap/NAME.log); on failure print the end of the log and return CMD's exit code.
stage() {
    local name=$1 label=$2 show=$3
    shift 3
    local log="build/bootstrap/$name.log" t0=$SECONDS rc
    mkdir -p build/bootstrap
    : >"$log"
    say "$label ..."
    # the command's own exit code, whatever the caller's errexit and pipefail settings
    { "$@" </dev/null 2>&1 | follow "$log" "$show" "$label" "$t0"; rc=${PIPESTATUS[0]}; } || true
    if ((rc != 0)); then
        say "$label FAILED (exit code $rc) after $((SECONDS - t0)) s; the end of $log:"
        tail -n 40 "$log" >&2
        return "$rc"
    fi
    say "$label: done in $((SECONDS - t0)) s"
}

show_nothing() { return 0; }

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
    return 0 # sourced: the functions only
fi

set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
VENV=${FASTRNN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    stage venv "creating the virtual environment $VENV" show_nothing "${PYTHON:-python3}" -m venv "$VENV"
fi
export PATH="$PWD/$VENV/bin:$PATH" # ninja lives there
stamp="$VENV/.fastrnn-deps"
if ! cmp -s requirements-dev.txt "$stamp" 2>/dev/null; then
    say "torch with its CUDA libraries is several GB: downloading and unpacking it takes minutes"
    stage pip "installing requirements-dev.txt" show_pip_line \
        python -m pip install --progress-bar off -r requirements-dev.txt
    cp requirements-dev.txt "$stamp"
fi
# Rebuild only when the sources or the build knobs changed.
key=$( (cat setup.py pyproject.toml; find csrc -type f | sort | xargs cat; \
        echo "${FASTRNN_CUDA:-} ${TORCH_CUDA_ARCH_LIST:-} $(python -c 'import torch;print(torch.__version__)')") | sha1sum | cut -c1-40)
built="$VENV/.fastrnn-build"
if [ "$(cat "$built" 2>/dev/null)" != "$key" ] || ! ls fastrnn/_C*.so >/dev/null 2>&1; then
    say "compiling the extension (MAX_JOBS=${MAX_JOBS:-2}) takes minutes; a CUDA build several per .cu file"
    stage build "building fastrnn" show_build_line \
        env MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -v --no-build-isolation --no-deps -e .
    echo "$key" >"$built"
fi
python -c "import fastrnn, torch; print('[bootstrap] fastrnn', fastrnn.__version__, 'on torch', torch.__version__, '| cuda kernels:', fastrnn.built_with_cuda(), file=__import__('sys').stderr)"
say "ready in $((SECONDS - START)) s"

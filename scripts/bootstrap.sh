#!/usr/bin/env bash
# Sets up everything the README's commands need, idempotently: a virtual environment with torch
# and the test tools, and the fastrnn extension built into it (CUDA build when a toolkit is found,
# even without a GPU; CPU-only otherwise). Re-running skips what is already done.
#
#   PYTHON=python3.x       interpreter for the venv (default: python3)
#   FASTRNN_VENV=DIR       where the venv lives (default: .venv in the repo)
#   TORCH_CUDA_ARCH_LIST   GPUs to build for (default: the local GPU, or setup.py's list)
#   MAX_JOBS               parallel compile jobs (default: 2; nvcc needs GBs per job)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FASTRNN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
export PATH="$PWD/$VENV/bin:$PATH"   # ninja lives there
stamp="$VENV/.fastrnn-deps"
if ! cmp -s requirements-dev.txt "$stamp" 2>/dev/null; then
  echo "[bootstrap] installing requirements-dev.txt (torch is large: this can take minutes)" >&2
  python -m pip install -q -r requirements-dev.txt
  cp requirements-dev.txt "$stamp"
fi
# Rebuild only when the sources or the build knobs changed.
key=$( (cat setup.py pyproject.toml; find csrc -type f | sort | xargs cat; \
        echo "${FASTRNN_CUDA:-} ${TORCH_CUDA_ARCH_LIST:-} $(python -c 'import torch;print(torch.__version__)')") | sha1sum | cut -c1-40)
built="$VENV/.fastrnn-build"
if [ "$(cat "$built" 2>/dev/null)" != "$key" ] || ! ls fastrnn/_C*.so >/dev/null 2>&1; then
  echo "[bootstrap] building fastrnn (MAX_JOBS=${MAX_JOBS:-2})" >&2
  MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --no-build-isolation --no-deps -e .
  echo "$key" > "$built"
fi
python -c "import fastrnn, torch; print('[bootstrap] fastrnn', fastrnn.__version__, 'on torch', torch.__version__, '| cuda kernels:', fastrnn.built_with_cuda(), file=__import__('sys').stderr)"

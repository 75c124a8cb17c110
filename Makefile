# The README's commands. Each sets up what it needs first (scripts/bootstrap.sh).
PY := .venv/bin/python
OUT ?= gpu_check_out

.PHONY: demo test bench bench-quick bench-pytest gpu-check perf-table setup clean

setup:
	bash scripts/bootstrap.sh

demo: setup          ## the main job: char-LM training, fastrnn vs torch.nn, then a sample
	$(PY) examples/char_lm.py --main

test: setup          ## the library's tests, then the tooling's (CUDA cases run only where a GPU is visible)
	$(PY) -m pytest tests tests/tooling -q -ra

bench: setup         ## the full benchmark suite on this machine's default device
	$(PY) -m benchmarks --out bench_out

bench-quick: setup   ## a reduced run (about a minute on a 2-core CPU)
	$(PY) -m benchmarks --quick --device cpu --out bench_out

bench-pytest: setup  ## the layer benchmarks as pytest-benchmark cases
	$(PY) -m pytest benchmarks --benchmark-only

# On a GPU machine with torch installed (system python, no venv, no internet): check the C++
# toolchain (scripts/toolchain_check.py, stops there if it fails), build for the local GPU, CUDA
# tests, compute-sanitizer, benchmarks; everything lands in $(OUT). CXX / CC pick the compilers.
gpu-check:
	PYTHON=$${PYTHON:-python3} bash scripts/gpu_check.sh $(OUT)

perf-table:
	$(PY) scripts/render_perf_table.py --write README.md

clean:
	rm -rf build fastrnn/_C*.so .venv/.fastrnn-build

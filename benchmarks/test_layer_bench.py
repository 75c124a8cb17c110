"""pytest-benchmark cases for the layer benchmarks (fastrnn and torch.nn in the same group):

  pytest benchmarks --benchmark-only                       full shapes
  FASTRNN_BENCH_QUICK=1 pytest benchmarks --benchmark-only short sequences (as --quick)
  FASTRNN_BENCH_DEVICE=cpu ...                             default: cuda when available
  FASTRNN_BENCH_DTYPE=bf16 ...                             default: fp32

Not part of the normal test run (testpaths = tests). `python -m benchmarks` is the full suite
with ratios, memory, char-LM training and generation; these cases feed pytest-benchmark's own
tooling (--benchmark-compare, --benchmark-histogram, saved runs).
"""
import os

import pytest

pytest.importorskip("pytest_benchmark")

import torch  # noqa: E402

from . import cases  # noqa: E402
from . import configs as C  # noqa: E402
from .timing import sync  # noqa: E402


@pytest.fixture(scope="module")
def bench_device():
    name = os.environ.get("FASTRNN_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    return torch.device(name)


@pytest.mark.parametrize("impl", [cases.FAST, cases.TORCH])
@pytest.mark.parametrize("mode", ["fwd", "fwdtrain", "fwdbwd"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("config", list(C.LAYER_CONFIGS))
def test_layer(benchmark, bench_device, config, cell, mode, impl):
    quick = os.environ.get("FASTRNN_BENCH_QUICK", "") not in ("", "0")
    dname = os.environ.get("FASTRNN_BENCH_DTYPE", "fp32")
    cfg = C.quick(C.LAYER_CONFIGS[config]) if quick else C.LAYER_CONFIGS[config]
    fns, pair, _ = cases.layer_fns(cfg, cell, mode, dname, bench_device)
    fn = fns[impl]

    def run():
        fn()
        sync(bench_device)  # pytest-benchmark reads a wall clock: wait for the GPU

    benchmark.group = f"{config} {cell} {mode} {dname} {bench_device.type}"
    benchmark.extra_info.update(shape=cfg.shape(), dtype=dname, device=str(bench_device),
                                impl=pair.fast_impl if impl == cases.FAST else pair.ref_impl)
    slow = bench_device.type == "cpu" and not quick
    benchmark.pedantic(run, warmup_rounds=1 if slow else 3, rounds=5 if slow else 20, iterations=1)

"""Shared fixtures. CUDA cases are parametrized next to CPU ones and skip at run time when no
GPU is visible (CUDA is never queried at import time).

- `device`: every test taking it runs as [cpu-...] and [cuda-...], the CUDA one marked `cuda` (so
  `pytest -m cuda` selects it) and skipped only when no GPU is visible.
- `cuda_device`: for CUDA-only tests; such tests get the `cuda` marker automatically.
- `allow_rnn`: dynamo traces nn.LSTM / nn.GRU instances, fastrnn's layers among them, instead of
  breaking the graph at them (torch._dynamo.config.allow_rnn): for `fullgraph=True` compiles.
- `exact_fp32`: no TF32 in cuBLAS or cuDNN during the test (tests/_precision.py says why): for
  every test that compares float32 GPU results with torch.nn's.
"""
from pathlib import Path

import json
import os

import pytest
import torch

import fastrnn  # noqa: F401  registers torch.ops.fastrnn
from _cuda_twins import COLLECTED_FILES, CUDA_TWIN_PROBLEMS, REPORT_ENV, cuda_twin_problems
from _precision import exact_fp32 as _exact_fp32


def _device_param(name):
    return pytest.param(name, marks=pytest.mark.cuda, id=name) if name == "cuda" else pytest.param(name, id=name)


DEVICES = [_device_param("cpu"), _device_param("cuda")]


TOOLING = Path(__file__).resolve().parent / "tooling"


def pytest_ignore_collect(collection_path, config):
    """`pytest tests` is the library alone: tests/tooling/ (toolchain builds, bootstrap, benchmark and
    example runs) is collected only when an argument names it or something in it (`make test` and
    pyproject's testpaths do)."""
    if Path(collection_path) == TOOLING:
        named = any(TOOLING == p or TOOLING in p.parents for p in
                    (Path(str(a).split("::")[0]).resolve() for a in config.args))
        return None if named else True
    return None


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    return torch.device(request.param)


@pytest.fixture
def cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    return torch.device("cuda")


@pytest.fixture
def allow_rnn():
    import torch._dynamo
    with torch._dynamo.config.patch(allow_rnn=True):
        yield


@pytest.fixture
def exact_fp32():
    with _exact_fp32():
        yield


@pytest.hookimpl(tryfirst=True)  # before -m / -k deselect: the check sees every collected test
def pytest_collection_modifyitems(config, items):
    rows = []
    for item in items:
        if "cuda_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cuda)
        callspec = getattr(item, "callspec", None)
        dev = callspec.params.get("device") if callspec is not None else None
        rows.append((item.nodeid, item.get_closest_marker("cuda") is not None, dev))
    config.stash[CUDA_TWIN_PROBLEMS] = problems = cuda_twin_problems(rows)
    config.stash[COLLECTED_FILES] = files = sorted({str(Path(item.path).resolve()) for item in items})
    if os.environ.get(REPORT_ENV):
        Path(os.environ[REPORT_ENV]).write_text(json.dumps({"problems": problems, "files": files}))

"""Shared fixtures. CUDA cases are parametrized next to CPU ones and skip at run time when no
GPU is visible (CUDA is never queried at import time)."""
import pytest
import torch

import fastrnn  # noqa: F401  registers torch.ops.fastrnn


def _device_param(name):
    return pytest.param(name, marks=pytest.mark.cuda, id=name) if name == "cuda" else pytest.param(name, id=name)


DEVICES = [_device_param("cpu"), _device_param("cuda")]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    return torch.device(request.param)

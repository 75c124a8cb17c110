"""The CUDA recurrence dispatch (csrc/cuda/recurrence.cpp) and the path log: FASTRNN_RECURRENCE
is read in one place, each value selects or refuses a path as documented, and every op reports
which implementation ran (fastrnn._C.last_path)."""
import pytest
import torch

import fastrnn
from fastrnn import functional as F

needs_cuda_build = pytest.mark.skipif(not fastrnn.built_with_cuda(), reason="CPU-only build: no CUDA dispatch")


def _choice(cell="lstm", T=10, B=8, I=16, H=32, P=None, dtype=torch.float32, masked=False, backward=False):
    return torch.ops.fastrnn._cuda_recurrence(cell, T, B, I, H, H if P is None else P, dtype, masked, backward)


@needs_cuda_build
@pytest.mark.parametrize("value", [None, "", "auto", "step"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_auto_and_step_run_the_step_loop(monkeypatch, value, cell):
    # No persistent kernel has passed the CUDA suite on a GPU yet, so auto must not pick one.
    if value is None:
        monkeypatch.delenv("FASTRNN_RECURRENCE", raising=False)
    else:
        monkeypatch.setenv("FASTRNN_RECURRENCE", value)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for backward in (False, True):
            assert _choice(cell, dtype=dtype, backward=backward, masked=backward) == "step"


@needs_cuda_build
def test_persistent_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    with pytest.raises(NotImplementedError, match=r"FASTRNN_RECURRENCE=persistent.*GRU T=7 B=3 H=5.*no persistent"):
        _choice("gru", T=7, B=3, H=5)


@needs_cuda_build
@pytest.mark.parametrize("bad", ["Step", "persistant", "1"])
def test_unknown_value_is_a_value_error(monkeypatch, bad):
    monkeypatch.setenv("FASTRNN_RECURRENCE", bad)
    with pytest.raises(ValueError, match=f"FASTRNN_RECURRENCE must be one of auto, step, persistent; got '{bad}'"):
        _choice()


def test_cpu_ignores_the_cuda_override(monkeypatch):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    x = torch.randn(3, 2, 4)
    y, _, _ = F.lstm_layer(x, torch.zeros(2, 5), torch.zeros(2, 5), torch.randn(20, 4), torch.randn(20, 5))
    assert y.shape == (3, 2, 5)
    assert fastrnn._C.last_path("lstm_forward")["path"] == "cpu.step_loop"


def test_last_path_names_known_ops_only():
    with pytest.raises(ValueError, match="unknown op 'lstm_sideways'"):
        fastrnn._C.last_path("lstm_sideways")
    F.gru_layer(torch.randn(2, 1, 3), torch.zeros(1, 4), torch.randn(12, 3), torch.randn(12, 4))
    assert fastrnn._C.last_path("fastrnn::gru_forward") == fastrnn._C.last_path("gru_forward")
    assert fastrnn._C.last_path("gru_forward")["grad_chunks"] == 0


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_paths_can_be_forced(monkeypatch, device_cuda, cell):
    mod = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(4, 6).to(device_cuda)
    x = torch.randn(5, 3, 4, device=device_cuda, requires_grad=True)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    mod(x)[0].sum().backward()
    assert fastrnn._C.last_path(f"{cell}_forward")["path"] == "cuda.step_loop"
    assert fastrnn._C.last_path(f"{cell}_backward")["path"] == "cuda.step_loop"
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    with pytest.raises(NotImplementedError, match="FASTRNN_RECURRENCE=persistent"):
        mod(x)


@pytest.fixture
def device_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    return torch.device("cuda")

"""The CUDA recurrence dispatch (csrc/cuda/recurrence.cpp) and the path log: FASTRNN_RECURRENCE
is read in one place per device (the CPU's: csrc/cpu/persistent_cpu.cpp), each value selects or
refuses a path as documented, and every op reports which implementation ran
(fastrnn._C.last_path)."""
import pytest
import torch

import fastrnn
from fastrnn import functional as F

needs_cuda_build = pytest.mark.skipif(not fastrnn.built_with_cuda(), reason="CPU-only build: no CUDA dispatch")


def _choice(cell="lstm", T=10, B=8, I=16, H=32, P=None, dtype=torch.float32, masked=False, backward=False, **device):
    # device: sms, smem_limit of a hypothetical GPU (default: an H100/H200's 132 SMs, 227 KiB)
    return torch.ops.fastrnn._cuda_recurrence(cell, T, B, I, H, H if P is None else P, dtype, masked, backward,
                                              **device)


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
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_persistent_runs_forwards_that_fit(monkeypatch, cell, dtype):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    assert _choice(cell, dtype=dtype, masked=True) == "persistent"
    assert _choice(cell, T=100, B=64, I=512, H=512, dtype=dtype) == "persistent"  # fastrnns: 32 KiB a block
    # no persistent backward yet: the backward of a persistent forward is the step loop's
    assert _choice(cell, dtype=dtype, backward=True) == "step"


@needs_cuda_build
@pytest.mark.parametrize("call,why", [
    (dict(cell="lstm", H=8, P=4), "no projection"),
    (dict(cell="gru", T=7, B=3, H=5, dtype=torch.float64), r"GRU T=7 B=3 H=5.*float64 stays on the step loop"),
    (dict(cell="lstm", B=64, H=2048), "more shared memory"),  # a 512 KiB W_hh slice per block
    (dict(cell="gru", H=64, sms=0), "no multiprocessors"),
])
def test_persistent_is_refused_with_the_reason(monkeypatch, call, why):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    with pytest.raises(NotImplementedError, match=f"FASTRNN_RECURRENCE=persistent.*{why}"):
        _choice(**call)


@needs_cuda_build
@pytest.mark.parametrize("bad", ["Step", "persistant", "1"])
def test_unknown_value_is_a_value_error(monkeypatch, bad):
    monkeypatch.setenv("FASTRNN_RECURRENCE", bad)
    with pytest.raises(ValueError, match=f"FASTRNN_RECURRENCE must be one of auto, step, persistent; got '{bad}'"):
        _choice()


@pytest.mark.parametrize("value,path", [("step", "cpu.step_loop"), ("persistent", "cpu.persistent")])
def test_cpu_honours_the_override(monkeypatch, value, path):
    # the CPU's own dispatch (csrc/cpu/persistent_cpu.cpp; its rules: tests/test_cpu_persistent.py)
    monkeypatch.setenv("FASTRNN_RECURRENCE", value)
    x = torch.randn(3, 2, 4)
    y, _, _ = F.lstm_layer(x, torch.zeros(2, 5), torch.zeros(2, 5), torch.randn(20, 4), torch.randn(20, 5))
    assert y.shape == (3, 2, 5)
    assert fastrnn._C.last_path("lstm_forward")["path"] == path


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
    mod(x)[0].sum().backward()
    assert fastrnn._C.last_path(f"{cell}_forward")["path"] == "cuda.persistent"
    assert fastrnn._C.last_path(f"{cell}_backward")["path"] == "cuda.step_loop"
    mod_proj = fastrnn.LSTM(4, 6, proj_size=3).to(device_cuda)
    with pytest.raises(NotImplementedError, match="no projection"):
        mod_proj(x)


@pytest.fixture
def device_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    return torch.device("cuda")

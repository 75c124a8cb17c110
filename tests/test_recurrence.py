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
    # the tensor-core kernel first (tests/test_persistent_mma.py has where each kernel runs)
    assert _choice(cell, dtype=dtype, masked=True) == "persistent_mma"
    assert _choice(cell, T=100, B=64, I=512, H=512, dtype=dtype) == "persistent_mma"  # fastrnns: <= 128 CTAs
    # and the tensor-core backward (tests/test_persistent_mma_bwd.py has where it runs)
    assert _choice(cell, dtype=dtype, backward=True, masked=True) == "persistent_mma"
    assert _choice(cell, T=100, B=64, I=512, H=512, dtype=dtype, backward=True) == "persistent_mma"


@needs_cuda_build
@pytest.mark.parametrize("call,why", [
    (dict(cell="lstm", H=8, P=4), "no projection"),
    (dict(cell="gru", T=7, B=3, H=5, dtype=torch.float64), r"GRU T=7 B=3 H=5.*float64 stays on the step loop"),
    (dict(cell="lstm", B=64, H=2048), "more shared memory"),  # 256 KiB of W_hh fragments a CTA
    (dict(cell="gru", H=64, sms=0), "no multiprocessors"),
])
def test_persistent_is_refused_with_the_reason(monkeypatch, call, why):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    with pytest.raises(NotImplementedError, match=f"FASTRNN_RECURRENCE=persistent.*{why}"):
        _choice(**call)


@needs_cuda_build
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_prefer_persistent_takes_every_forward_that_fits(monkeypatch, cell, dtype):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "prefer-persistent")
    assert _choice(cell, dtype=dtype, masked=True) == "persistent_mma"
    assert _choice(cell, T=100, B=64, I=512, H=512, dtype=dtype) == "persistent_mma"
    assert _choice(cell, T=3, B=3, I=5, H=301, dtype=dtype, sms=76) == "persistent_mma"  # the last CTA: 1 unit
    # on 8 SMs only the scalar kernel would fit (38 units a block), which only `persistent` runs
    assert _choice(cell, T=3, B=3, I=5, H=301, dtype=dtype, sms=8).startswith("step (fallback: the tensor-core")
    assert _choice(cell, dtype=dtype, backward=True) == "persistent_mma"
    assert _choice(cell, T=3, B=3, I=5, H=301, dtype=dtype, sms=19, backward=True) == "persistent_mma"
    assert _choice(cell, T=3, B=3, I=5, H=301, dtype=dtype, sms=8, backward=True).startswith(
        "step (fallback: the persistent backward's CTAs")


@needs_cuda_build
@pytest.mark.parametrize("call,why", [
    (dict(cell="lstm", H=8, P=4), "it has no projection"),
    (dict(cell="gru", T=7, B=3, H=5, dtype=torch.float64), "float64 stays on the step loop"),
    (dict(cell="lstm", B=64, H=2048), "more shared memory"),
    (dict(cell="gru", H=64, sms=0), "no multiprocessors"),
    # the same call fits a whole H100 but not a 16-SM share of it (a green context or MPS client)
    (dict(cell="lstm", B=64, H=1024, dtype=torch.bfloat16, sms=16), "cannot all be resident on the SMs this process can use"),
])
def test_prefer_persistent_falls_back_with_the_reason(monkeypatch, call, why):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "prefer-persistent")
    got = _choice(**call)
    assert got.startswith("step (fallback: ") and why in got, got


@needs_cuda_build
def test_the_partition_follows_the_usable_sms(monkeypatch):
    # H = 1024 LSTM bf16: the tensor-core kernel's 256 CTAs do not fit 132 SMs at one a SM; the
    # scalar kernel's 8 units a block (64 KiB of W_hh slice) do; 16 SMs would need 64 units a
    # block (512 KiB), beyond the 227 KiB a block may have, and the reason is the tensor-core one
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    assert _choice("lstm", B=64, H=1024, dtype=torch.bfloat16) == "persistent"
    assert _choice("lstm", B=64, H=1024, dtype=torch.bfloat16, sms=256) == "persistent_mma"
    with pytest.raises(NotImplementedError, match="cannot all be resident on the SMs this process can use"):
        _choice("lstm", B=64, H=1024, dtype=torch.bfloat16, sms=16)


@needs_cuda_build
@pytest.mark.parametrize("bad", ["Step", "persistant", "1", "prefer"])
def test_unknown_value_is_a_value_error(monkeypatch, bad):
    monkeypatch.setenv("FASTRNN_RECURRENCE", bad)
    with pytest.raises(ValueError, match="FASTRNN_RECURRENCE must be one of auto, step, persistent, "
                                         f"prefer-persistent; got '{bad}'"):
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
def test_cuda_paths_can_be_forced(monkeypatch, cuda_device, cell):
    mod = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(4, 6).to(cuda_device)
    x = torch.randn(5, 3, 4, device=cuda_device, requires_grad=True)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    mod(x)[0].sum().backward()
    assert fastrnn._C.last_path(f"{cell}_forward")["path"] == "cuda.step_loop"
    assert fastrnn._C.last_path(f"{cell}_backward")["path"] == "cuda.step_loop"
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    mod(x)[0].sum().backward()
    assert fastrnn._C.last_path(f"{cell}_forward")["path"] == "cuda.persistent_mma"
    assert fastrnn._C.last_path(f"{cell}_backward")["path"] == "cuda.persistent_mma"
    mod_proj = fastrnn.LSTM(4, 6, proj_size=3).to(cuda_device)
    with pytest.raises(NotImplementedError, match="no projection"):
        mod_proj(x)


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_prefer_persistent_records_the_fallback(monkeypatch, cuda_device, cell):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "prefer-persistent")
    mod = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(4, 6).to(cuda_device)
    x = torch.randn(5, 3, 4, device=cuda_device, requires_grad=True)
    mod(x)[0].sum().backward()
    assert fastrnn._C.last_path(f"{cell}_forward") == {"path": "cuda.persistent_mma", "grad_chunks": 0}
    assert fastrnn._C.last_path(f"{cell}_backward") == {"path": "cuda.persistent_mma", "grad_chunks": 1}
    mod.double()(x.double())[0].sum().backward()
    for op, chunks in (("forward", 0), ("backward", 1)):
        assert fastrnn._C.last_path(f"{cell}_{op}") == {"path": "cuda.step_loop", "grad_chunks": chunks,
                                                        "fallback": "float64 stays on the step loop"}
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    mod.float()(x)
    assert "fallback" not in fastrnn._C.last_path(f"{cell}_forward")


"""What float32 means for fastrnn on the GPU (README: "Precision on the GPU (TF32)").

fastrnn's GEMMs run on cuBLAS through ATen, so they follow torch's matmul precision
(torch.backends.cuda.matmul.allow_tf32 / torch.set_float32_matmul_precision; default: full float32)
and not torch.backends.cudnn.allow_tf32 (default: TF32), which only torch.nn's cuDNN RNNs read. The
CUDA tests pin that; the CPU test pins the helper every float32 comparison with torch.nn relies on.
"""
import pytest
import torch

from _precision import exact_fp32, tf32
from fastrnn import functional as F
from fastrnn.reference import gru_reference, lstm_reference

T, B, I, H = 24, 8, 256, 256  # K = 256-term dot products: TF32 rounding shows up as ~1e-3
LENGTHS = [T, T - 3, 5, T, 1, 9, T - 1, 2]  # CPU lengths: the sorted, active-prefix GEMMs too


def _inputs(kind, device):
    g = torch.Generator().manual_seed(0)
    G = 4 if kind == "lstm" else 3
    shapes = dict(x=(T, B, I), h0=(B, H), c0=(B, H), w_ih=(G * H, I), w_hh=(G * H, H), b_ih=(G * H,), b_hh=(G * H,))
    if kind == "gru":
        del shapes["c0"]
    scale = dict(w_ih=H ** -0.5, w_hh=H ** -0.5, b_ih=H ** -0.5, b_hh=H ** -0.5)
    return {k: (torch.rand(s, generator=g, dtype=torch.float64) * 2 - 1).mul_(scale.get(k, 1.0)).to(device)
            for k, s in shapes.items()}


def _outputs_and_grads(kind, fn, t):
    """Forward outputs and the gradients of a fixed random projection of them, as one list."""
    leaves = {k: v.detach().requires_grad_() for k, v in t.items()}
    a = leaves
    if kind == "lstm":
        outs = fn(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], lengths=torch.tensor(LENGTHS))
    else:
        outs = fn(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], lengths=torch.tensor(LENGTHS))
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum() for o in outs)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [o.detach() for o in outs] + list(grads)


def _worst_error(kind, device):
    """Largest error of fastrnn's float32 forward + backward against the float64 oracle, each tensor
    relative to its own largest entry (weight gradients sum over T*B rows)."""
    t64 = _inputs(kind, device)
    want = _outputs_and_grads(kind, lstm_reference if kind == "lstm" else gru_reference, t64)
    got = _outputs_and_grads(kind, F.lstm_layer if kind == "lstm" else F.gru_layer,
                             {k: v.float() for k, v in t64.items()})
    return max(((a.double() - b).abs().max() / b.abs().max().clamp_min(1.0)).item() for a, b in zip(got, want))


# Full float32 (u = 2^-24) over K = 256-term sums stays below 1e-5 of each tensor's largest entry.
FP32_BOUND = 1e-5
# TF32 rounds each GEMM input to 10 mantissa bits (u = 2^-11): a product carries <= 2u, and a
# result goes through at most four GEMMs in a row (input projection, recurrent, and the backward's
# recurrent and weight GEMMs), so <= 4 * 2u = 3.9e-3 of its largest entry (measured ~1e-3). bf16
# GEMMs (u = 2^-8, what "medium" allows) would give 2u = 7.8e-3 from one GEMM alone.
TF32_BOUND = 8 * 2.0 ** -11


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_fp32_is_exact_under_torch_defaults(kind, cuda_device):
    """matmul TF32 off and cuDNN TF32 on (torch's defaults): fastrnn stays full float32. Were its
    GEMMs on TF32, the error would be ~1e-3."""
    with tf32(matmul=False, cudnn=True):
        err = _worst_error(kind, cuda_device)
    assert err < FP32_BOUND, err


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_fp32_follows_matmul_precision_high(kind, cuda_device):
    """torch.set_float32_matmul_precision("high") lets cuBLAS use TF32, and fastrnn's GEMMs then do:
    the error leaves full float32's range (FP32_BOUND, test above) and stays within TF32's."""
    with tf32(matmul=False, cudnn=False):
        torch.set_float32_matmul_precision("high")
        err = _worst_error(kind, cuda_device)
    assert FP32_BOUND < err < TF32_BOUND, err


def _flags():
    state = {"matmul": torch.get_float32_matmul_precision(), "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}
    cd = torch.backends.cudnn
    if hasattr(getattr(cd, "rnn", None), "fp32_precision"):  # newer torch: what cuDNN's RNNs read
        state["cudnn.rnn"] = cd.rnn.fp32_precision
        state["cuda.matmul"] = torch.backends.cuda.matmul.fp32_precision
    return state


def test_exact_fp32_pins_both_flags_and_restores_them():
    """Runs on the CPU too (the flags are process state): inside, no TF32 anywhere; after, exactly
    the settings from before, also from a non-default start and after an exception."""
    before = _flags()
    with exact_fp32():
        inside = _flags()
    assert _flags() == before
    assert inside["matmul"] == "highest" and not inside["matmul.allow_tf32"] and not inside["cudnn.allow_tf32"]
    assert inside.get("cudnn.rnn", "ieee") != "tf32" and inside.get("cuda.matmul", "ieee") != "tf32"

    with tf32(matmul=True, cudnn=True):  # everything TF32, as a user might set it
        start = _flags()
        assert start["matmul"] == "high" and start["matmul.allow_tf32"] and start["cudnn.allow_tf32"]
        with pytest.raises(ZeroDivisionError):
            with exact_fp32():
                assert not _flags()["matmul.allow_tf32"] and not _flags()["cudnn.allow_tf32"]
                1 / 0
        assert _flags() == start
    assert _flags() == before

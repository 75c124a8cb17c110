"""The persistent forward (csrc/include/fastrnn/persistent.h). Without a GPU its phase functions
run in a host emulation, block by block and phase by phase, and must give what the step loop
gives: the partition over blocks (uneven last block included), the indexing, lengths, reverse
and the double-buffered state. On a GPU, FASTRNN_RECURRENCE=persistent runs the real kernel."""
import pytest
import torch

import fastrnn
from fastrnn import functional as F
from _generators import layer_tensors, make_lengths

ops = torch.ops.fastrnn
f64 = torch.float64


def _step_loop(kind, t, lengths, reverse, save=True):
    if kind == "lstm":
        y, h, c, ws = ops.lstm_forward(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None,
                                       lengths, reverse, save)
        return y, h, c, ws
    y, h, ws = ops.gru_forward(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], lengths, reverse, save)
    return y, h, None, ws


def _emulated(kind, t, lengths, reverse, save, sms, threads, blockwise):
    return ops._persistent_forward_emulated(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                                            lengths, reverse, save, sms, threads, blockwise)


CASES = [
    # kind, T, B, I, H, sms, threads, lengths, reverse, save
    ("lstm", 5, 3, 4, 7, 3, 8, None, False, True),     # U = 3: blocks of 3, 3, 1 units
    ("lstm", 6, 4, 5, 9, 2, 5, "mixed", True, True),
    ("lstm", 1, 1, 2, 3, 8, 32, None, True, True),     # more SMs than units: one unit per block
    ("lstm", 7, 3, 4, 6, 4, 7, "mixed", False, False),  # inference: the projection in its own buffer
    ("gru", 5, 3, 4, 7, 3, 8, "mixed", False, True),
    ("gru", 7, 2, 3, 10, 4, 3, None, True, True),
    ("gru", 4, 5, 6, 5, 1, 16, "mixed", True, True),   # one block owns every unit
    ("gru", 3, 4, 2, 9, 2, 6, None, False, False),
]


@pytest.mark.parametrize("blockwise", [False, True], ids=["phasewise", "blockwise"])
@pytest.mark.parametrize("kind,T,B,I,H,sms,threads,lengths,reverse,save", CASES)
def test_emulated_persistent_forward_matches_the_step_loop(kind, T, B, I, H, sms, threads, lengths, reverse, save,
                                                           blockwise):
    t = layer_tensors(kind, T, B, I, H, f64)
    lens = make_lengths(lengths, T, B)
    want = _step_loop(kind, t, lens, reverse, save)
    got = _emulated(kind, t, lens, reverse, save, sms, threads, blockwise)
    assert fastrnn._C.last_path(f"{kind}_forward")["path"] == "cpu.persistent_emulation"
    for name, g, w in zip(["y", "h_n", "c_n", "saved"], got, want):
        if w is None:
            assert g.numel() == 0
            continue
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_emulated_saved_activations_feed_the_step_loop_backward():
    # the persistent forward saves the step loop's layout, so the step-loop backward serves it
    kind, T, B, I, H = "lstm", 6, 3, 4, 5
    t = layer_tensors(kind, T, B, I, H, f64, seed=3)
    lens = make_lengths("mixed", T, B)
    y, h, c, ws = _emulated(kind, t, lens, False, True, 2, 4, True)
    g = torch.Generator().manual_seed(1)
    dy, dh, dc = (torch.randn(s, generator=g, dtype=f64) for s in (y.shape, h.shape, c.shape))
    args = (t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], None)
    got = ops.lstm_backward(dy, dh, dc, *args, y, ws, lens, False, True)
    y2, _, _, ws2 = _step_loop(kind, t, lens, False)
    want = ops.lstm_backward(dy, dh, dc, *args, y2, ws2, lens, False, True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_emulation_rejects_a_bad_partition():
    t = layer_tensors("gru", 2, 1, 2, 3, f64)
    with pytest.raises(ValueError, match="no multiprocessors"):
        _emulated("gru", t, None, False, True, 0, 4, False)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lengths,reverse,on_gpu,T", [(None, False, False, 12), ("mixed", True, False, 11),
                                                       ("mixed", False, True, 11), ("mixed", True, True, 12)])
@pytest.mark.parametrize("save", [True, False])
def test_persistent_kernel_matches_the_step_loop(monkeypatch, cuda_device, kind, dtype, lengths, reverse, on_gpu, T,
                                                 save):
    # H = 300 over the device's SMs: several units per block on a small GPU, one on a large one;
    # odd T leaves h_n in the second state buffer
    B, I, H = 6, 16, 300
    t = layer_tensors(kind, T, B, I, H, dtype, device=cuda_device, seed=5)
    lens = make_lengths(lengths, T, B)
    if lens is not None and on_gpu:  # the masked schedule: rows in batch order
        lens = lens.to(cuda_device)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    want = _step_loop(kind, t, lens, reverse, save)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    got = _step_loop(kind, t, lens, reverse, save)
    # the tensor-core kernel where it fits (tests/test_persistent_mma.py), else this file's kernel
    assert fastrnn._C.last_path(f"{kind}_forward")["path"] in ("cuda.persistent", "cuda.persistent_mma")
    # the step loop rounds its recurrent products to the storage type, the kernel keeps them in fp32
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_scalar_kernel_takes_what_the_tensor_core_kernel_cannot(monkeypatch, cuda_device, kind):
    # fp32, H = 1024: the tensor-core kernel's 256 CTAs (16 gate rows each, ~190 KiB of shared
    # memory) cannot all be resident on one H100/H200 (132 SMs); the scalar kernel's 8 units a
    # block can, so `persistent` runs it here (on a GPU with >= 256 SMs the tensor-core kernel)
    T, B, I, H = 3, 16, 8, 1024
    t = layer_tensors(kind, T, B, I, H, torch.float32, device=cuda_device, seed=6)
    lens = _lengths("mixed", T, B)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    want = _step_loop(kind, t, lens, False)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    got = _step_loop(kind, t, lens, False)
    assert fastrnn._C.last_path(f"{kind}_forward")["path"] in ("cuda.persistent", "cuda.persistent_mma")
    # K = 1024 fp32 products summed in another order (or 3xTF32, ~2^-21 each): rounding errors
    # of ~2^-24 * sum|w h| (~4: |w| ~ 0.4/sqrt(H) on average, |h| < 1) add up like a random walk
    # over K terms: sqrt(1024) * 6e-8 * 4 ~ 8e-6 per pre-activation, through contracting steps:
    # 1e-4 leaves a tenfold margin
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)

"""The persistent forward (csrc/include/fastrnn/persistent.h). Without a GPU its phase functions
run in a host emulation, block by block and phase by phase, and must give what the step loop
gives: the partition over blocks (uneven last block included), the indexing, lengths, reverse
and the double-buffered state. On a GPU, FASTRNN_RECURRENCE=persistent runs the real kernel."""
import pytest
import torch

import fastrnn
from fastrnn import functional as F

ops = torch.ops.fastrnn
f64 = torch.float64


def _layer(kind, T, B, I, H, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    G = 4 if kind == "lstm" else 3

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=f64) * 0.5).to(device=device, dtype=dtype)

    t = {"x": r(T, B, I), "h0": r(B, H), "w_ih": r(G * H, I), "w_hh": r(G * H, H), "b_ih": r(G * H), "b_hh": r(G * H)}
    t["c0"] = r(B, H) if kind == "lstm" else None
    return t


def _lengths(spec, T, B):
    if spec is None:
        return None
    lens = [(T - 1 - 3 * b) % T + 1 for b in range(B)]
    lens[1 % B] = 1
    return torch.tensor(lens, dtype=torch.int64)


def _step_loop(kind, t, lengths, reverse):
    if kind == "lstm":
        y, h, c, ws = ops.lstm_forward(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None,
                                       lengths, reverse, True)
        return y, h, c, ws
    y, h, ws = ops.gru_forward(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], lengths, reverse, True)
    return y, h, None, ws


CASES = [
    # kind, T, B, I, H, sms, threads, lengths, reverse
    ("lstm", 5, 3, 4, 7, 3, 8, None, False),      # U = 3: blocks of 3, 3, 1 units
    ("lstm", 6, 4, 5, 9, 2, 5, "mixed", True),
    ("lstm", 1, 1, 2, 3, 8, 32, None, True),      # more SMs than units: one unit per block
    ("gru", 5, 3, 4, 7, 3, 8, "mixed", False),
    ("gru", 7, 2, 3, 10, 4, 3, None, True),
    ("gru", 4, 5, 6, 5, 1, 16, "mixed", True),    # one block owns every unit
]


@pytest.mark.parametrize("kind,T,B,I,H,sms,threads,lengths,reverse", CASES)
def test_emulated_persistent_forward_matches_the_step_loop(kind, T, B, I, H, sms, threads, lengths, reverse):
    t = _layer(kind, T, B, I, H, f64)
    lens = _lengths(lengths, T, B)
    want = _step_loop(kind, t, lens, reverse)
    got = ops._persistent_forward_emulated(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                                           lens, reverse, sms, threads)
    assert fastrnn._C.last_path(f"{kind}_forward")["path"] == "cpu.persistent_emulation"
    for name, g, w in zip(["y", "h_n", "c_n", "saved"], got, want):
        if w is None:
            assert g.numel() == 0
            continue
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_emulated_saved_activations_feed_the_step_loop_backward():
    # the persistent forward saves the step loop's layout, so the step-loop backward serves it
    kind, T, B, I, H = "lstm", 6, 3, 4, 5
    t = _layer(kind, T, B, I, H, f64, seed=3)
    lens = _lengths("mixed", T, B)
    y, h, c, ws = ops._persistent_forward_emulated(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"],
                                                   t["b_hh"], lens, False, 2, 4)
    g = torch.Generator().manual_seed(1)
    dy, dh, dc = (torch.randn(s, generator=g, dtype=f64) for s in (y.shape, h.shape, c.shape))
    args = (t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], None)
    got = ops.lstm_backward(dy, dh, dc, *args, y, ws, lens, False, True)
    y2, _, _, ws2 = _step_loop(kind, t, lens, False)
    want = ops.lstm_backward(dy, dh, dc, *args, y2, ws2, lens, False, True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_emulation_rejects_a_bad_partition():
    t = _layer("gru", 2, 1, 2, 3, f64)
    with pytest.raises(ValueError, match="no multiprocessors"):
        ops._persistent_forward_emulated(t["x"], t["h0"], None, t["w_ih"], t["w_hh"], None, None, None, False, 0, 4)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lengths,reverse,on_gpu", [(None, False, False), ("mixed", True, False),
                                                     ("mixed", False, True), ("mixed", True, True)])
def test_persistent_kernel_matches_the_step_loop(monkeypatch, cuda_device, kind, dtype, lengths, reverse, on_gpu):
    # H = 300 over the device's SMs: several units per block on a small GPU, one on a large one
    T, B, I, H = 12, 6, 16, 300
    t = _layer(kind, T, B, I, H, dtype, device=cuda_device, seed=5)
    lens = _lengths(lengths, T, B)
    if lens is not None and on_gpu:  # the masked schedule: rows in batch order
        lens = lens.to(cuda_device)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    want = _step_loop(kind, t, lens, reverse)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    got = _step_loop(kind, t, lens, reverse)
    assert fastrnn._C.last_path(f"{kind}_forward")["path"] == "cuda.persistent"
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol)

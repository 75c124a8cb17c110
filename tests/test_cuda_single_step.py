"""The fused single step on CUDA (csrc/include/fastrnn/single_step.h): a cell call (T = 1, at most
4 rows) as one kernel. Without a GPU: a host emulation that runs the kernel's own lane partial
sums, the butterfly of its xor shuffles and the step loop's forward point, CTA by CTA, against
the step loop, and the dispatch. On a GPU, FASTRNN_RECURRENCE=persistent runs the kernel against
the step loop."""
import pytest
import torch

import fastrnn
from _generators import layer_tensors

ops = torch.ops.fastrnn
f64 = torch.float64


def _forward(kind, t, lengths=None, reverse=False, save=True, emulated=False):
    args = (t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], lengths, reverse, save)
    if emulated:
        return ops._single_step_emulated(*args)
    if kind == "lstm":
        return ops.lstm_forward(*args[:7], None, *args[7:])
    y, h, ws = ops.gru_forward(t["x"], t["h0"], *args[3:])
    return y, h, None, ws


def _compare(got, want, tol):
    for name, g, w in zip(["y", "h_n", "c_n", "saved"], got, want):
        if w is None:
            assert g.numel() == 0
            continue
        torch.testing.assert_close(g.to(f64), w.to(f64), rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("B,I,H,bias,lengths,save", [
    (1, 5, 301, True, False, True),    # H = 301: the last CTA owns 1 unit; K = 301 over 32 lanes
    (3, 40, 37, False, True, True),    # no biases; lengths (all 1): host-sorted rows
    (4, 1, 1, True, False, False),     # one unit, one input, the most rows
    (2, 64, 64, True, True, False),
])
def test_emulated_single_step_matches_the_step_loop_in_fp64(kind, B, I, H, bias, lengths, save):
    # fp64: what remains is the summation order over the lanes, ~K * 2^-53 relative
    t = layer_tensors(kind, 1, B, I, H, f64, seed=B + H)
    if not bias:
        t["b_ih"] = t["b_hh"] = None
    lens = torch.ones(B, dtype=torch.int64) if lengths else None
    got = _forward(kind, t, lens, save=save, emulated=True)
    assert fastrnn._C.last_path(f"{kind}_forward")["path"] == "cpu.single_step_emulation"
    _compare(got, _forward(kind, t, lens, save=save), 1e-12)


# Against the fp64 step loop on the same rounded inputs: the products accumulate in the opmath
# type (fp32 for the 16-bit types) and are rounded to the dtype once (xproj, hproj), as the step
# loop's GEMM outputs are; then the cell math in fp32 and the stored outputs rounded. So a
# pre-activation carries <= u (|xproj| + |hproj|) <~ 5u (|x W_ih^T + b| <~ 4, |W_hh h| <~ 1), the
# gates' derivatives are <= 1 and c adds u |c| (|c| <~ 3): 16u covers h, c, y and saved (u: bf16
# 2^-8, fp16 2^-11). fp32: the summation error of K <= 301 products of sum |w v| <~ 2.5 is at
# most K * 2^-24 * 2.5 ~ 4.5e-5 (the worst case; the lane sums halve K in practice): 1e-4.
TOL = {torch.bfloat16: 16 * 2.0 ** -8, torch.float16: 16 * 2.0 ** -11, torch.float32: 1e-4}


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_emulated_reduced_precision_within_the_derived_tolerance(kind, dtype):
    t = layer_tensors(kind, 1, 3, 16, 301, dtype, seed=3)
    got = _forward(kind, t, emulated=True)
    ref = _forward(kind, {k: (v.to(f64) if v is not None else None) for k, v in t.items()})
    _compare(got, ref, TOL[dtype])


def test_what_is_not_a_single_step_is_refused():
    t = layer_tensors("lstm", 2, 3, 4, 5, f64)
    with pytest.raises(ValueError, match="not a single step: T=2 B=3"):
        _forward("lstm", t, emulated=True)
    t = layer_tensors("gru", 1, 5, 4, 5, f64)
    with pytest.raises(ValueError, match="not a single step: T=1 B=5"):
        _forward("gru", t, emulated=True)


# ---------------------------------------------------------------------------------------------
# The dispatch (no GPU needed)

needs_cuda_build = pytest.mark.skipif(not fastrnn.built_with_cuda(), reason="CPU-only build: no CUDA dispatch")


def _choice(cell, T=1, B=1, H=512, P=None, dtype=torch.float32, backward=False):
    return ops._cuda_recurrence(cell, T, B, 64, H, H if P is None else P, dtype, False, backward)


@needs_cuda_build
@pytest.mark.parametrize("mode", ["persistent", "prefer-persistent"])
def test_cell_calls_take_the_fused_single_step(monkeypatch, mode):
    monkeypatch.setenv("FASTRNN_RECURRENCE", mode)
    for cell in ("lstm", "gru"):
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            assert _choice(cell, B=4, dtype=dtype) == "single_step"
        assert _choice(cell, B=5) == "persistent_mma"   # more rows: the persistent forward
        assert _choice(cell, T=2) == "persistent_mma"
        assert _choice(cell, backward=True) == "persistent_mma"
    if mode == "prefer-persistent":  # a projection: neither kernel (forced, it raises)
        assert _choice("lstm", P=8).startswith("step (fallback: it has no projection")


@needs_cuda_build
@pytest.mark.parametrize("value", ["auto", "step"])
def test_auto_keeps_cell_calls_on_the_step_loop(monkeypatch, value):
    monkeypatch.setenv("FASTRNN_RECURRENCE", value)
    assert _choice("lstm") == "step"


# ---------------------------------------------------------------------------------------------
# On a GPU: the kernel itself


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("B,H", [(1, 301), (4, 37)])
def test_single_step_kernel_matches_the_step_loop(monkeypatch, cuda_device, kind, dtype, B, H):
    t = layer_tensors(kind, 1, B, 16, H, dtype, device=cuda_device, seed=7)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    got = _forward(kind, t)
    assert fastrnn._C.last_path(f"{kind}_forward")["path"] == "cuda.single_step"
    ref = _forward(kind, {k: (v.cpu().to(f64) if v is not None else None) for k, v in t.items()})
    tol = 1e-12 if dtype == f64 else TOL[dtype]  # as in the emulation tests above
    _compare([g.cpu() if g is not None else None for g in got], ref, tol)

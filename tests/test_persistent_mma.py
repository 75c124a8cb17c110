"""The tensor-core persistent forward (csrc/include/fastrnn/persistent_mma.h). Without a GPU:
the mma.sync fragment maps against the PTX ISA's tables, and a host emulation that runs the
kernel's own fragment loads and stores, the reduction and the cell update with an emulated warp
MMA, CTA by CTA under the step-counter protocol in adversarial orders, against the step loop.
On a GPU, FASTRNN_RECURRENCE=persistent runs the real kernel against the step loop."""
import pytest
import torch

import fastrnn
from _generators import layer_tensors

ops = torch.ops.fastrnn
f64 = torch.float64


# ---------------------------------------------------------------------------------------------
# Fragment maps, restated from the PTX ISA's tables ("Matrix fragments for mma.m16n8k16 with
# floating point type", "... mma.m16n8k8" .tf32) in the tables' own case form.

def _ptx(which, lane, i):
    group, t = lane >> 2, lane % 4
    if which == "a_m16n8k16":  # a0..a7
        row = group if i in (0, 1, 4, 5) else group + 8
        col = t * 2 + (i & 1) if i < 4 else t * 2 + (i & 1) + 8
    elif which == "b_m16n8k16":  # b0..b3
        row = t * 2 + (i & 1) if i < 2 else t * 2 + (i & 1) + 8
        col = group
    elif which == "a_m16n8k8":  # a0..a3 (.tf32)
        row = group if i in (0, 2) else group + 8
        col = t if i < 2 else t + 4
    elif which == "b_m16n8k8":  # b0, b1 (.tf32)
        row = t if i == 0 else t + 4
        col = group
    else:  # c_m16n8: c0..c3 of both shapes
        row = group if i < 2 else group + 8
        col = t * 2 + (i & 1)
    return row, col


MAPS = {"a_m16n8k16": (8, 16, 16), "b_m16n8k16": (4, 16, 8), "a_m16n8k8": (4, 16, 8), "b_m16n8k8": (2, 8, 8),
        "c_m16n8": (4, 16, 8)}  # elements a lane, tile rows, tile cols


@pytest.mark.parametrize("which", MAPS)
def test_fragment_map_matches_the_ptx_table(which):
    n, rows, cols = MAPS[which]
    got = ops._mma_fragment_map(which)
    assert got.shape == (32, n, 2)
    want = torch.tensor([[_ptx(which, lane, i) for i in range(n)] for lane in range(32)])
    assert torch.equal(got, want)
    # every element of the tile held by exactly one (lane, element)
    flat = got[..., 0] * cols + got[..., 1]
    assert sorted(flat.flatten().tolist()) == list(range(rows * cols))


def test_fragment_map_spot_entries():
    # A few entries worked out by hand from the tables (lane = 4 * groupID + threadID_in_group)
    a16 = ops._mma_fragment_map("a_m16n8k16")
    assert a16[0, 0].tolist() == [0, 0] and a16[0, 2].tolist() == [8, 0] and a16[0, 4].tolist() == [0, 8]
    assert a16[5, 1].tolist() == [1, 3] and a16[31, 7].tolist() == [15, 15]
    assert ops._mma_fragment_map("b_m16n8k16")[6, 3].tolist() == [13, 1]
    assert ops._mma_fragment_map("a_m16n8k8")[7, 3].tolist() == [9, 7]
    assert ops._mma_fragment_map("c_m16n8")[30, 2].tolist() == [15, 4]


def test_unknown_fragment_is_refused():
    with pytest.raises(ValueError, match="unknown fragment"):
        ops._mma_fragment_map("a_m16n8k32")


# ---------------------------------------------------------------------------------------------
# The emulated forward against the step loop


def _lengths(spec, T, B):
    if spec is None:
        return None
    lens = [(T - 1 - 3 * b) % T + 1 for b in range(B)]
    lens[1 % B] = 1
    lens[0] = T
    return torch.tensor(lens, dtype=torch.int64)


def _step_loop(kind, t, lengths, reverse, save=True):
    if kind == "lstm":
        return ops.lstm_forward(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None, lengths,
                                reverse, save)
    y, h, ws = ops.gru_forward(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], lengths, reverse, save)
    return y, h, None, ws


def _emulated(kind, t, lengths, reverse, save=True, split=True, order="random", seed=0, wait_slack=0):
    return ops._persistent_mma_forward_emulated(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                                                lengths, reverse, save, split, order, seed, wait_slack)


def _compare(got, want, tol):
    for name, g, w in zip(["y", "h_n", "c_n", "saved"], got, want):
        if w is None:
            assert g is None or g.numel() == 0
            continue
        torch.testing.assert_close(g.to(f64), w.to(f64), rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


CASES = [
    # kind, T, B, H, lengths, reverse, save: H = 301 leaves the last CTA 1 unit (LSTM, U = 4) or
    # 1 unit (GRU, U = 5); B = 1, 3 (K split 8 ways), 8 (one tile), 64 (8 tiles, no split); odd T
    ("lstm", 5, 3, 301, "mixed", False, True),
    ("gru", 5, 3, 301, "mixed", True, True),
    ("lstm", 3, 64, 301, None, True, True),
    ("gru", 3, 64, 301, "mixed", False, False),
    ("lstm", 7, 1, 37, None, False, True),
    ("gru", 7, 1, 37, None, True, True),
    ("lstm", 4, 8, 50, "mixed", True, False),
    ("gru", 6, 8, 50, "mixed", False, True),
    ("lstm", 1, 9, 20, None, False, True),   # T = 1, a batch tile of one row
]


@pytest.mark.parametrize("kind,T,B,H,lengths,reverse,save", CASES)
def test_emulated_mma_forward_matches_the_step_loop_in_fp64(kind, T, B, H, lengths, reverse, save):
    # fp64 multiplies exactly: what remains is summation order, ~K * 2^-53 relative
    t = layer_tensors(kind, T, B, 5, H, f64)
    lens = _lengths(lengths, T, B)
    got = _emulated(kind, t, lens, reverse, save)
    assert fastrnn._C.last_path(f"{kind}_forward")["path"] == "cpu.persistent_mma_emulation"
    _compare(got, _step_loop(kind, t, lens, reverse, save), 1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_every_cta_order_gives_the_same_bits(kind):
    # Each CTA's arithmetic does not depend on when it runs, only on what it reads; the protocol
    # makes that h_{s-1} in every order.
    t = layer_tensors(kind, 5, 3, 4, 41, torch.float32, seed=2)
    lens = _lengths("mixed", 5, 3)
    base = _emulated(kind, t, lens, False, order="lockstep")
    for order, seed in [("random", 1), ("random", 7), ("ahead", 3), ("ahead", 11)]:
        for g, w in zip(_emulated(kind, t, lens, False, order=order, seed=seed), base):
            assert torch.equal(g, w), (order, seed)


def test_a_weakened_wait_is_caught():
    # waiting for one publication fewer lets the CTA racing ahead read a state element the last
    # CTA has not written yet
    t = layer_tensors("lstm", 4, 3, 4, 41, f64, seed=4)
    with pytest.raises(RuntimeError, match=r"CTA \d+ read h\[.*\] of step -?\d+ at iteration 1 \(it needs step 0\)"):
        _emulated("lstm", t, None, False, order="ahead", seed=5, wait_slack=1)


def test_a_wait_for_too_much_deadlocks():
    t = layer_tensors("gru", 3, 2, 4, 17, f64, seed=4)
    with pytest.raises(RuntimeError, match="deadlock"):
        _emulated("gru", t, None, False, wait_slack=-1)


# Tolerances of the reduced-precision paths against the fp64 step loop on the same (rounded)
# inputs, from the mechanism: the products are exact or TF32-split and accumulate in fp32, but
# every stored value (the projection, h, c, y, saved) is rounded to the dtype each step, relative
# u (bf16 2^-8, fp16 2^-11). Per step that injects at most u * (|xproj| + |c| + |h|) <~ 8u at these
# scales (|x W_ih^T + b| <~ 4, |c| <~ 3, |h| < 1) into the pre-activations and states; the maps
# contract (|W_hh| ~ 0.5/sqrt(H), gate derivatives <= 1), so the accumulated error stays below
# 2 * 8u = 16u. fp32: 3xTF32 products carry ~2^-21 relative (the dropped lo * lo term) on
# sum |w h| <~ 7, plus fp32 rounding: 1e-5 leaves headroom; plain TF32 rounds both operands
# to 2^-11, so a product carries 2^-10 relative: 16 * 2^-11 covers it at these scales.
U = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


@pytest.mark.parametrize("dtype,split", [(torch.bfloat16, True), (torch.float16, True), (torch.float32, True),
                                         (torch.float32, False)])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_emulated_reduced_precision_within_the_derived_tolerance(kind, dtype, split):
    T, B, H = 5, 3, 61
    t = layer_tensors(kind, T, B, 6, H, dtype, seed=9)
    lens = _lengths("mixed", T, B)
    got = _emulated(kind, t, lens, True, split=split)
    ref = _step_loop(kind, {k: (v.to(f64) if v is not None else None) for k, v in t.items()}, lens, True)
    if dtype == torch.float32:
        tol = 1e-5 if split else 16 * 2.0 ** -11
    else:
        tol = 16 * U[dtype]
    _compare(got, ref, tol)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_3xtf32_is_much_closer_than_plain_tf32(kind):
    # the split really runs: dropping it costs ~2^-11 relative per product against ~2^-21
    t = layer_tensors(kind, 5, 8, 6, 64, torch.float32, seed=12)
    ref = _step_loop(kind, {k: (v.to(f64) if v is not None else None) for k, v in t.items()}, None, False)
    err = {}
    for split in (True, False):
        got = _emulated(kind, t, None, False, split=split)
        err[split] = (got[0].to(f64) - ref[0]).abs().max().item()
    assert err[True] * 30 < err[False], err


# ---------------------------------------------------------------------------------------------
# The dispatch between the two persistent kernels (no GPU needed)

needs_cuda_build = pytest.mark.skipif(not fastrnn.built_with_cuda(), reason="CPU-only build: no CUDA dispatch")


def _choice(cell, T=10, B=64, H=512, dtype=torch.float32, **device):
    return ops._cuda_recurrence(cell, T, B, 16, H, H, dtype, False, False, **device)


@needs_cuda_build
@pytest.mark.parametrize("mode", ["persistent", "prefer-persistent"])
def test_tensor_core_kernel_first_then_the_scalar_one(monkeypatch, mode):
    monkeypatch.setenv("FASTRNN_RECURRENCE", mode)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert _choice("lstm", dtype=dtype) == "persistent_mma"  # fastrnns: 128 CTAs
        assert _choice("gru", dtype=dtype) == "persistent_mma"   # 103 CTAs
    # H = 1024, B = 16: 256 CTAs need two a SM; with one, only the scalar kernel (8 units a
    # block) fits, which `persistent` runs and prefer-persistent leaves to the step loop
    got = _choice("lstm", B=16, H=1024)
    assert got == "persistent" if mode == "persistent" else got.startswith("step (fallback: the tensor-core"), got
    assert _choice("lstm", B=16, H=1024, blocks_per_sm=2) == "persistent_mma"
    # large (B = 128, H = 1024): the staged h alone (128 x 1032 x 2 bytes) exceeds a CTA's 227 KiB
    got = _choice("lstm", B=128, H=1024, dtype=torch.bfloat16, blocks_per_sm=2)
    want_persistent = mode == "persistent"
    assert got == "persistent" if want_persistent else "W_hh fragments and staged h need more shared memory" in got, got


@needs_cuda_build
def test_tensor_core_shared_memory_limit(monkeypatch):
    # fp32 keeps hi and lo fragments: 2 * 4 bytes * 16 rows * H; H = 2048 needs 256 KiB
    monkeypatch.setenv("FASTRNN_RECURRENCE", "prefer-persistent")
    got = _choice("lstm", B=8, H=2048, sms=1024)
    assert got.startswith("step (fallback: the tensor-core kernel's W_hh fragments"), got
    # bf16: 64 KiB of fragments and 8 x 2056 x 2 bytes of staged h
    assert _choice("lstm", B=8, H=2048, dtype=torch.bfloat16, sms=1024) == "persistent_mma"
    # forced, the scalar kernel takes what the tensor-core kernel cannot (2 units a block here)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    assert _choice("lstm", B=8, H=2048, sms=1024) == "persistent"


# ---------------------------------------------------------------------------------------------
# On a GPU: the kernel itself

@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,T,lengths,reverse,on_gpu", [(1, 7, None, False, False), (3, 5, "mixed", True, False),
                                                         (8, 5, "mixed", False, True), (64, 3, "mixed", True, True)])
def test_persistent_mma_kernel_matches_the_emulation_and_step_loop(monkeypatch, cuda_device, kind, dtype, B, T,
                                                                   lengths, reverse, on_gpu):
    H = 301
    t = layer_tensors(kind, T, B, 16, H, dtype, device=cuda_device, seed=5)
    lens = _lengths(lengths, T, B)
    if lens is not None and on_gpu:
        lens = lens.to(cuda_device)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    got = _step_loop(kind, t, lens, reverse)
    assert fastrnn._C.last_path(f"{kind}_forward")["path"] == "cuda.persistent_mma"
    ref = _step_loop(kind, {k: (v.cpu().to(f64) if v is not None else None) for k, v in t.items()},
                     None if lens is None else lens.cpu(), reverse)
    tol = 1e-5 if dtype == torch.float32 else 16 * U[dtype]  # as in the emulation test above
    _compare([g.cpu() if g is not None else None for g in got], ref, tol)

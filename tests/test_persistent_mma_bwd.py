"""The tensor-core persistent backward (csrc/include/fastrnn/persistent_mma_bwd.h). Without a GPU:
its partition, and a host emulation that runs the kernel's own phase functions (W_hh^T fragments,
B-fragment loads through the mma.sync maps, the reduction, the step loop's backward point) with
an emulated warp MMA, CTA by CTA under the per-batch-group counter protocol in adversarial
orders, against the step loop's backward. On a GPU, FASTRNN_RECURRENCE=persistent runs the real
kernel against the step loop."""
import re

import pytest
import torch

import fastrnn
from _generators import layer_tensors, make_lengths

ops = torch.ops.fastrnn
f64 = torch.float64
BIG = 1 << 30  # resident CTAs: as many batch groups as batch tiles


def _forward(kind, t, lengths, reverse):
    if kind == "lstm":
        y, h, c, ws = ops.lstm_forward(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None,
                                       lengths, reverse, True)
        return y, ws
    y, h, ws = ops.gru_forward(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], lengths, reverse, True)
    return y, ws


def _grads(kind, t, seed):
    g = torch.Generator().manual_seed(seed)
    T, B, H = t["x"].shape[0], t["x"].shape[1], t["h0"].shape[1]

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=f64) * 0.5).to(t["x"].dtype)

    return {"dy": r(T, B, H), "dh_n": r(B, H), "dc_n": r(B, H) if kind == "lstm" else None}


def _step_loop_backward(kind, t, d, y, ws, lengths, reverse):
    if kind == "lstm":
        out = ops.lstm_backward(d["dy"], d["dh_n"], d["dc_n"], t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], None,
                                y, ws, lengths, reverse, True)
        return list(out[:7])
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh, *_ = ops.gru_backward(d["dy"], d["dh_n"], t["x"], t["h0"], t["w_ih"], t["w_hh"],
                                                           y, ws, lengths, reverse, True)
    return [dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh]


def _emulated(kind, t, d, y, ws, lengths, reverse, split=True, ctas=BIG, order="random", seed=0, wait_slack=0):
    return ops._persistent_mma_backward_emulated(d["dy"], d["dh_n"], d["dc_n"], t["x"], t["h0"], t["c0"], t["w_ih"],
                                                 t["w_hh"], y, ws, lengths, reverse, True, split, ctas, order, seed,
                                                 wait_slack)


NAMES = ["dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"]


def _compare(got, want, tol):
    for name, g, w in zip(NAMES, got, want):
        if w is None:
            assert g.numel() == 0, name
            continue
        torch.testing.assert_close(g.to(f64), w.to(f64), rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------
# The partition


def test_partition_splits_the_batch_as_far_as_the_resident_ctas_allow():
    part = ops._persistent_mma_backward_partition
    # fastrnns (B = 64, H = 512) on 132 SMs: 32 unit groups x 4 batch groups of 2 tiles, each CTA
    # a quarter of dgates; K = 2048 split 4 ways per tile
    assert part("lstm", 512, 64, torch.bfloat16, 132) == [32, 4, 2, 4]
    assert part("gru", 512, 64, torch.float32, 132) == [32, 4, 2, 4]
    # H = 301: 19 unit groups, the last with 13 units; B = 3: one batch tile, K split 8 ways
    assert part("lstm", 301, 3, torch.float32, 1000) == [19, 1, 1, 8]
    # B = 64 with room for every tile on its own, and with room for 3 groups only (3 tiles each)
    assert part("lstm", 301, 64, torch.float32, BIG) == [19, 8, 1, 8]
    assert part("lstm", 301, 64, torch.float32, 19 * 3) == [19, 3, 3, 2]
    with pytest.raises(ValueError, match="cannot all be resident"):
        part("lstm", 301, 64, torch.float32, 18)


# ---------------------------------------------------------------------------------------------
# The emulated backward against the step loop's

CASES = [
    # kind, T, B, H, lengths, reverse, ctas: H = 301 leaves the last unit group 13 units; B = 1, 3
    # (K split 8 ways), 8 (one tile), 64 (8 tiles: one a CTA, or 3 a CTA in 3 batch groups, the
    # last with 2); odd T; lengths (host-sorted rows, finished tiles skipped); reverse
    ("lstm", 5, 3, 301, "mixed", False, BIG),
    ("gru", 5, 3, 301, "mixed", True, BIG),
    ("lstm", 3, 64, 301, None, True, 19 * 3),
    ("gru", 3, 64, 301, "mixed", False, 19 * 3),
    ("lstm", 7, 1, 37, None, False, BIG),
    ("gru", 7, 1, 37, None, True, BIG),
    ("lstm", 4, 8, 50, "mixed", True, BIG),
    ("gru", 6, 8, 50, "mixed", False, BIG),
    ("lstm", 5, 64, 20, "mixed", False, 2 * 4),  # 2 unit groups x 4 batch groups of 2 tiles
    ("lstm", 1, 9, 20, None, False, BIG),   # T = 1: only the final products
    ("gru", 1, 9, 20, None, True, BIG),
]


@pytest.mark.parametrize("kind,T,B,H,lengths,reverse,ctas", CASES)
def test_emulated_mma_backward_matches_the_step_loop_in_fp64(kind, T, B, H, lengths, reverse, ctas):
    # fp64 multiplies exactly: what remains is summation order, ~K * 2^-53 relative
    t = layer_tensors(kind, T, B, 5, H, f64)
    lens = make_lengths(lengths, T, B)
    y, ws = _forward(kind, t, lens, reverse)
    d = _grads(kind, t, seed=1)
    got = _emulated(kind, t, d, y, ws, lens, reverse, ctas=ctas)
    assert fastrnn._C.last_path(f"{kind}_backward")["path"] == "cpu.persistent_mma_emulation"
    _compare(got, _step_loop_backward(kind, t, d, y, ws, lens, reverse), 1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_persistent_forward_saves_what_the_persistent_backward_reads(kind):
    # Both write the step loop's ws and y, so the whole persistent pair (emulated) differentiates
    # like the step loop's pair: fp64, 1e-12 as above
    T, B, H = 5, 3, 41
    t = layer_tensors(kind, T, B, 5, H, f64, seed=8)
    lens = make_lengths("mixed", T, B)
    y, _, _, ws = ops._persistent_mma_forward_emulated(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"],
                                                       t["b_hh"], lens, True, True, True, "random", 0, 0)
    d = _grads(kind, t, seed=9)
    got = _emulated(kind, t, d, y, ws, lens, True)
    y_ref, ws_ref = _forward(kind, t, lens, True)
    _compare(got, _step_loop_backward(kind, t, d, y_ref, ws_ref, lens, True), 1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_every_cta_order_gives_the_same_bits(kind):
    # Each CTA's arithmetic depends only on what it reads; the protocol makes that iteration
    # s + 1's grads in every order.
    T, B, H = 5, 20, 41
    t = layer_tensors(kind, T, B, 4, H, torch.float32, seed=2)
    lens = make_lengths("mixed", T, B)
    y, ws = _forward(kind, t, lens, False)
    d = _grads(kind, t, seed=3)
    base = _emulated(kind, t, d, y, ws, lens, False, order="lockstep")
    for order, seed in [("random", 1), ("random", 7), ("ahead", 3), ("ahead", 11)]:
        for g, w in zip(_emulated(kind, t, d, y, ws, lens, False, order=order, seed=seed), base):
            assert torch.equal(g, w), (order, seed)


def test_a_weakened_wait_is_caught():
    # waiting for one publication fewer lets the CTA racing ahead read grads its batch group's
    # last CTA has not written yet
    T, B, H = 4, 3, 41
    t = layer_tensors("lstm", T, B, 4, H, f64, seed=4)
    y, ws = _forward("lstm", t, None, False)
    d = _grads("lstm", t, seed=5)
    with pytest.raises(RuntimeError, match=r"CTA \d+ read dgates\[.*\] of iteration \d+ at iteration 2 "
                                           r"\(it needs iteration 3\)"):
        _emulated("lstm", t, d, y, ws, None, False, order="ahead", seed=5, wait_slack=1)


def test_a_wait_for_too_much_deadlocks():
    t = layer_tensors("gru", 3, 2, 4, 17, f64, seed=4)
    y, ws = _forward("gru", t, None, False)
    d = _grads("gru", t, seed=6)
    with pytest.raises(RuntimeError, match="emulated persistent backward: deadlock"):
        _emulated("gru", t, d, y, ws, None, False, wait_slack=-1)


# Tolerances of the reduced-precision paths against the fp64 step loop (forward and backward) on
# the same rounded inputs, from the mechanism, as for the forward (tests/test_persistent_mma.py):
# the products are exact or TF32-split and accumulate in fp32, but every stored value is rounded
# to the dtype (relative u: bf16 2^-8, fp16 2^-11): the forward's saved activations (within 16u,
# the forward's bound), and per backward step dh, dc and the gate grads. A step injects at most
# u * (|dh| + |dc| + |dgates|) <~ 8u at these scales (|dy|, |dh_n|, |dc_n| ~ 0.5, gate
# derivatives <= 1) and the backward maps contract (f < 1, |W_hh| ~ 0.5 / sqrt(H)), so the
# carried grads stay below 16u. The folds sum T * B = 15 positions in fp32 and round once; their
# summands are |dg * x| <~ 0.5 * 0.5 against outputs of ~1.5 (the summands do not cancel at these
# scales), so their relative error is that of the gate grads: 16u again. fp32: 3xTF32 products
# carry ~2^-21 relative (the dropped lo * lo term) on sum |w dg| <~ 2 over K = 244, plus fp32
# rounding: 1e-5 leaves headroom; plain TF32 rounds both operands to 2^-11, so a product carries
# 2^-10 relative: 16 * 2^-11 covers it at these scales.
U = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def _to64(d):
    return {k: (v.to(f64) if v is not None else None) for k, v in d.items()}


@pytest.mark.parametrize("dtype,split", [(torch.bfloat16, True), (torch.float16, True), (torch.float32, True),
                                         (torch.float32, False)])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_emulated_reduced_precision_within_the_derived_tolerance(kind, dtype, split):
    T, B, H = 5, 3, 61
    t = layer_tensors(kind, T, B, 6, H, dtype, seed=9)
    lens = make_lengths("mixed", T, B)
    y, ws = _forward(kind, t, lens, True)
    d = _grads(kind, t, seed=10)
    got = _emulated(kind, t, d, y, ws, lens, True, split=split)
    t64, d64 = _to64(t), _to64(d)
    y64, ws64 = _forward(kind, t64, lens, True)
    ref = _step_loop_backward(kind, t64, d64, y64, ws64, lens, True)
    if dtype == torch.float32:
        tol = 1e-5 if split else 16 * 2.0 ** -11
    else:
        tol = 16 * U[dtype]
    _compare(got, ref, tol)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_3xtf32_is_much_closer_than_plain_tf32(kind):
    # the split really runs: dropping it costs ~2^-11 relative per product against ~2^-21
    T, B, H = 5, 8, 64
    t = layer_tensors(kind, T, B, 6, H, torch.float32, seed=12)
    y, ws = _forward(kind, t, None, False)
    d = _grads(kind, t, seed=13)
    y64, ws64 = _forward(kind, _to64(t), None, False)
    ref = _step_loop_backward(kind, _to64(t), _to64(d), y64, ws64, None, False)
    err = {}
    for split in (True, False):
        got = _emulated(kind, t, d, y, ws, None, False, split=split)
        err[split] = (got[1].to(f64) - ref[1]).abs().max().item()  # dh0: through every product
    assert err[True] * 30 < err[False], err


# ---------------------------------------------------------------------------------------------
# The dispatch (no GPU needed)

needs_cuda_build = pytest.mark.skipif(not fastrnn.built_with_cuda(), reason="CPU-only build: no CUDA dispatch")


def _choice(cell, T=10, B=64, H=512, dtype=torch.float32, P=None, **device):
    return ops._cuda_recurrence(cell, T, B, 16, H, H if P is None else P, dtype, True, True, **device)


@needs_cuda_build
@pytest.mark.parametrize("mode", ["persistent", "prefer-persistent"])
def test_backwards_take_the_persistent_backward_where_it_fits(monkeypatch, mode):
    monkeypatch.setenv("FASTRNN_RECURRENCE", mode)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for cell in ("lstm", "gru"):
            assert _choice(cell, dtype=dtype) == "persistent_mma"  # fastrnns: 128 CTAs
    # H = 2048 LSTM fp32: the W_hh^T slice is 16 x 8192 x 4 bytes = 512 KiB
    why = "W_hh^T slice (16 units x G*H) needs more shared memory"
    if mode == "persistent":
        with pytest.raises(NotImplementedError, match=r"FASTRNN_RECURRENCE=persistent.*" + re.escape(why)):
            _choice("lstm", H=2048)
    else:
        assert _choice("lstm", H=2048) == f"step (fallback: the persistent backward's {why} than a CTA may have)"
        assert _choice("lstm", P=8).startswith("step (fallback: it has no projection")
        assert _choice("gru", dtype=torch.float64) == "step (fallback: float64 stays on the step loop)"
        # 32 unit groups need 32 resident CTAs
        assert _choice("lstm", sms=31).startswith("step (fallback: the persistent backward's CTAs")


@needs_cuda_build
def test_the_shared_memory_limit_of_the_backward(monkeypatch):
    # 16 units x G*H of W_hh^T fragments (fp32 stored once, split at the MMA) + 4 KiB of partial
    # tiles in 227 KiB: fp32 G*H <= 3568 (LSTM H <= 892, GRU H <= 1189); bf16 G*H <= 7136
    monkeypatch.setenv("FASTRNN_RECURRENCE", "prefer-persistent")
    assert _choice("lstm", B=8, H=892, sms=1024) == "persistent_mma"
    assert "more shared memory" in _choice("lstm", B=8, H=893, sms=1024)
    assert _choice("gru", B=8, H=1189, sms=1024) == "persistent_mma"
    assert "more shared memory" in _choice("gru", B=8, H=1190, sms=1024)
    assert _choice("lstm", B=8, H=1784, dtype=torch.bfloat16, sms=1024) == "persistent_mma"
    assert "more shared memory" in _choice("lstm", B=8, H=1785, dtype=torch.bfloat16, sms=1024)


@needs_cuda_build
@pytest.mark.parametrize("value", ["auto", "step"])
def test_auto_keeps_backwards_on_the_step_loop(monkeypatch, value):
    monkeypatch.setenv("FASTRNN_RECURRENCE", value)
    assert _choice("lstm") == "step"


# ---------------------------------------------------------------------------------------------
# On a GPU: the kernel itself


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,T,lengths,reverse,on_gpu", [(1, 7, None, False, False), (3, 5, "mixed", True, False),
                                                         (8, 5, "mixed", False, True), (64, 3, "mixed", True, True)])
def test_persistent_mma_backward_kernel_matches_the_step_loop(monkeypatch, cuda_device, kind, dtype, B, T, lengths,
                                                              reverse, on_gpu):
    H = 301
    t = layer_tensors(kind, T, B, 16, H, dtype, device=cuda_device, seed=5)
    lens = make_lengths(lengths, T, B)
    if lens is not None and on_gpu:
        lens = lens.to(cuda_device)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    y, ws = _forward(kind, t, lens, reverse)
    d = _grads(kind, {k: (v.cpu() if v is not None else None) for k, v in t.items()}, seed=6)
    d = {k: (v.to(cuda_device) if v is not None else None) for k, v in d.items()}
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    got = _step_loop_backward(kind, t, d, y, ws, lens, reverse)
    assert fastrnn._C.last_path(f"{kind}_backward")["path"] == "cuda.persistent_mma"
    cpu64 = {k: (v.cpu().to(f64) if v is not None else None) for k, v in t.items()}
    lens_cpu = None if lens is None else lens.cpu()
    y64, ws64 = _forward(kind, cpu64, lens_cpu, reverse)
    ref = _step_loop_backward(kind, cpu64, _to64({k: (v.cpu() if v is not None else None) for k, v in d.items()}),
                              y64, ws64, lens_cpu, reverse)
    # as in the emulation test above (fp32 split: torch's TF32 flag is off by default)
    tol = 1e-5 if dtype == torch.float32 else 16 * U[dtype]
    _compare([g.cpu() for g in got], ref, tol)

"""The persistent CPU recurrence (csrc/cpu/persistent_cpu.cpp), forced with
FASTRNN_RECURRENCE=persistent: the same outputs, states and saved activations as the step loop and
as reference.py, for sizes that exercise the micro-kernel's edges (H not a multiple of the vector
width, row tiles of 1, 3 and 64 rows, threads owning unequal numbers of units), lengths, reverse,
inference, every float type, 1 to 3 threads, each micro-kernel the CPU can run
(FASTRNN_CPU_KERNEL); and the CPU dispatch (`_cpu_recurrence`)."""
import contextlib

import pytest
import torch

import fastrnn
from _generators import layer_tensors
from fastrnn import reference as R

ops = torch.ops.fastrnn
f64 = torch.float64


@contextlib.contextmanager
def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _lengths(spec, T, B):
    if spec is None:
        return None
    # every parity (the final state sits in either state buffer), one entry of length 1
    lens = [(T - 1 - 3 * b) % T + 1 for b in range(B)]
    lens[1 % B] = 1
    return torch.tensor(lens, dtype=torch.int64)


def _forward(kind, t, lengths, reverse, save):
    if kind == "lstm":
        return ops.lstm_forward(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None, lengths,
                                reverse, save)
    y, h, ws = ops.gru_forward(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], lengths, reverse, save)
    return y, h, None, ws


def _run(monkeypatch, mode, kind, t, lengths, reverse, save):
    monkeypatch.setenv("FASTRNN_RECURRENCE", mode)
    out = _forward(kind, t, lengths, reverse, save)
    return out, fastrnn._C.last_path(f"{kind}_forward")["path"]


CASES = [
    # kind, T, B, I, H, threads, lengths, reverse, save
    ("lstm", 5, 3, 4, 7, 2, None, False, True),       # H < the unit chunk: one thread runs it
    ("lstm", 6, 1, 5, 37, 2, "mixed", True, True),    # units 16 + 21: uneven threads, a scalar tail
    ("lstm", 7, 64, 3, 50, 2, "mixed", False, True),  # 64 rows: full and shorter row tiles
    ("lstm", 4, 3, 6, 130, 3, None, True, False),     # three threads, inference (no saved)
    ("lstm", 3, 8, 2, 33, 1, "mixed", False, True),
    ("gru", 5, 3, 4, 7, 2, "mixed", False, True),
    ("gru", 7, 1, 3, 37, 2, None, True, True),
    ("gru", 6, 64, 5, 50, 2, None, False, False),
    ("gru", 4, 3, 2, 130, 3, "mixed", True, True),
    ("gru", 2, 5, 3, 16, 1, None, False, True),
]
IDS = [f"{c[0]}-T{c[1]}-B{c[2]}-H{c[4]}-t{c[5]}-{c[6] or 'full'}-{'rev' if c[7] else 'fwd'}-{'save' if c[8] else 'nosave'}"
       for c in CASES]


# The micro-kernels, best first; FASTRNN_CPU_KERNEL picks any the CPU can run, so each is tested here.
KERNELS = ["avx512", "avx2", "baseline"]


def _runnable(kernel):
    best = ops._cpu_persistent_kernel()  # FASTRNN_CPU_KERNEL unset: the CPU's best
    if KERNELS.index(kernel) < KERNELS.index(best):
        pytest.skip(f"this CPU (or build) runs at most the {best} kernel")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind,T,B,I,H,threads,lengths,reverse,save", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [f64, torch.float32])
def test_persistent_matches_the_step_loop(monkeypatch, kind, T, B, I, H, threads, lengths, reverse, save, dtype,
                                          kernel):
    monkeypatch.delenv("FASTRNN_CPU_KERNEL", raising=False)
    _runnable(kernel)
    monkeypatch.setenv("FASTRNN_CPU_KERNEL", kernel)
    assert ops._cpu_persistent_kernel() == kernel
    t = layer_tensors(kind, T, B, I, H, dtype)
    lens = _lengths(lengths, T, B)
    with _threads(threads):
        want, want_path = _run(monkeypatch, "step", kind, t, lens, reverse, save)
        got, got_path = _run(monkeypatch, "persistent", kind, t, lens, reverse, save)
    assert want_path in ("cpu.step_loop", "cpu.single_step") and got_path == "cpu.persistent"
    # Only the order of each step's K-term dot products differs (micro-kernel tiles vs MKL, FMA
    # contraction): per step a few ulp of K <= 130 terms of order one, ~K * eps relative at worst
    # (1.5e-14 in float64, 8e-6 in float32); the scaled W_hh and the saturating gates keep it from
    # growing over these <= 7 steps.
    tol = 1e-12 if dtype == f64 else 2e-5
    for name, g, w in zip(["y", "h_n", "c_n", "saved"], got, want):
        if w is None:
            assert g is None
            continue
        torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind,T,B,I,H,threads,lengths,reverse,save", CASES[1:3] + CASES[6:9], ids=IDS[1:3] + IDS[6:9])
def test_persistent_matches_the_reference(monkeypatch, kind, T, B, I, H, threads, lengths, reverse, save):
    t = layer_tensors(kind, T, B, I, H, f64, seed=1)
    lens = _lengths(lengths, T, B)
    with _threads(threads):
        (y, h, c, _), path = _run(monkeypatch, "persistent", kind, t, lens, reverse, save)
    assert path == "cpu.persistent"
    args = (t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])
    if kind == "lstm":
        y_ref, h_ref, c_ref = R.lstm_reference(t["x"], t["h0"], t["c0"], *args, lengths=lens, reverse=reverse)
    else:
        y_ref, h_ref = R.gru_reference(t["x"], t["h0"], *args, lengths=lens, reverse=reverse)
        c_ref = None
    # float64 on both sides, sums in different orders: K * eps (~1.5e-14) per step, see above
    for g, w in zip([y, h, c], [y_ref, h_ref, c_ref]):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_persistent_half_types_match_the_step_loop(monkeypatch, kind, dtype):
    T, B, I, H = 6, 5, 4, 37
    t = layer_tensors(kind, T, B, I, H, dtype, seed=2)
    lens = _lengths("mixed", T, B)
    with _threads(2):
        want, _ = _run(monkeypatch, "step", kind, t, lens, False, True)
        got, path = _run(monkeypatch, "persistent", kind, t, lens, False, True)
    assert path == "cpu.persistent"
    # The step loop rounds each step's recurrent product to the storage type before the cell math,
    # the persistent recurrence keeps it in float32: one rounding of the type (2^-8 bfloat16,
    # 2^-11 float16) per step on values of order one, carried a few steps.
    tol = {torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol)


def test_persistent_saved_activations_feed_the_backward(monkeypatch):
    # the backward differentiates the saved activations, so a persistent forward's grads are the
    # step loop's (the backward itself always runs the step loop)
    kind, T, B, I, H = "lstm", 6, 3, 4, 37
    t = layer_tensors(kind, T, B, I, H, f64, seed=3)
    lens = _lengths("mixed", T, B)
    g = torch.Generator().manual_seed(1)
    grads = None
    results = []
    for mode in ("persistent", "step"):
        (y, h, c, ws), _ = _run(monkeypatch, mode, kind, t, lens, False, True)
        if grads is None:
            grads = [torch.randn(s, generator=g, dtype=f64) for s in (y.shape, h.shape, c.shape)]
        args = (t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], None)
        results.append(ops.lstm_backward(*grads, *args, y, ws, lens, False, True))
        assert fastrnn._C.last_path("lstm_backward")["path"] == "cpu.step_loop"
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)  # float64 forwards agreeing to ~1e-14


def test_persistent_layer_trains_like_torch_nn(monkeypatch):
    # the module path end to end: forward on the persistent recurrence, backward through the ops
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(6, 37, num_layers=2, bidirectional=True).double()
    fr = fastrnn.LSTM(6, 37, num_layers=2, bidirectional=True).double()
    fr.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 6, dtype=f64)
    y, (h, c) = fr(x)
    assert fastrnn._C.last_path("lstm_forward")["path"] == "cpu.persistent"
    y_ref, (h_ref, c_ref) = ref(x)
    for a, b in [(y, y_ref), (h, h_ref), (c, c_ref)]:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    y_ref.sum().backward()
    for p, q in zip(fr.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-11, atol=1e-11)  # sums over T*B of the above


# ---- dispatch (no timing: the rule is a function of the call's shape, dtype and threads)

def _choice(cell="lstm", T=10, B=8, I=16, H=64, P=None, dtype=torch.float32, backward=False, threads=2):
    return ops._cpu_recurrence(cell, T, B, I, H, H if P is None else P, dtype, backward, threads)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_forces_the_step_loop(monkeypatch, cell):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert _choice(cell, dtype=dtype) == "step"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_forces_every_forward_it_can_run(monkeypatch, cell):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for threads in (1, 2, 16):
            assert _choice(cell, dtype=dtype, threads=threads) == "persistent"
    assert _choice(cell, T=1, B=1) == "persistent"  # also where auto keeps the fused single step
    assert _choice(cell, backward=True) == "step"  # no persistent backward yet


def test_persistent_refuses_a_projection_with_the_reason(monkeypatch):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    with pytest.raises(NotImplementedError, match=r"FASTRNN_RECURRENCE=persistent.*LSTM T=10 B=8 H=64.*projection"):
        _choice("lstm", P=16)
    x = torch.randn(3, 2, 4)
    with pytest.raises(NotImplementedError, match="no projection"):
        ops.lstm_forward(x, torch.zeros(2, 3), torch.zeros(2, 5), torch.randn(20, 4), torch.randn(20, 3), None, None,
                         torch.randn(3, 5), None, False, False)


def test_prefer_persistent_runs_it_where_it_can_and_the_step_loop_elsewhere(monkeypatch):
    monkeypatch.setenv("FASTRNN_RECURRENCE", "prefer-persistent")
    assert _choice("lstm", B=1, threads=1) == "persistent"  # where auto does not
    assert _choice("gru", dtype=torch.float64) == "persistent"
    assert _choice("lstm", P=16) == "step"  # a projection: no NotImplementedError, the step loop
    assert _choice("lstm", backward=True) == "step"
    torch.manual_seed(0)
    proj = fastrnn.LSTM(4, 6, proj_size=3)
    x = torch.randn(5, 2, 4)
    proj(x)
    assert fastrnn._C.last_path("lstm_forward")["path"] == "cpu.step_loop"
    fastrnn.GRU(4, 6)(x)
    assert fastrnn._C.last_path("gru_forward")["path"] == "cpu.persistent"

@pytest.mark.parametrize("value", [None, "", "auto"])
def test_auto_follows_the_measured_rule(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("FASTRNN_RECURRENCE", raising=False)
    else:
        monkeypatch.setenv("FASTRNN_RECURRENCE", value)
    # docs/DESIGN.md, "The persistent CPU recurrence": faster than the step loop, on both
    # micro-kernels, only for a batch of one on >= 2 threads, float32, T >= 4, 128 <= H <= 2048
    for cell in ("lstm", "gru"):
        for T, B, I, H in [(100, 1, 256, 256), (4, 1, 8, 128), (40, 1, 4, 2048)]:
            assert _choice(cell, T=T, B=B, I=I, H=H, threads=2) == "persistent"
            assert _choice(cell, T=T, B=B, I=I, H=H, threads=16) == "persistent"
            assert _choice(cell, T=T, B=B, I=I, H=H, threads=1) == "step"  # one thread
            for dtype in (torch.float64, torch.bfloat16, torch.float16):
                assert _choice(cell, T=T, B=B, I=I, H=H, dtype=dtype) == "step"
        for T, B, I, H in [(100, 64, 512, 512), (64, 32, 64, 256), (100, 8, 256, 256), (100, 2, 256, 256),
                           (1, 1, 256, 256), (3, 1, 256, 256), (100, 1, 64, 64), (100, 1, 256, 4096)]:
            for dtype in (torch.float32, torch.float64, torch.bfloat16):
                assert _choice(cell, T=T, B=B, I=I, H=H, dtype=dtype) == "step"
    assert _choice("lstm", T=100, B=1, I=256, H=256, P=128) == "step"  # projection
    assert _choice("lstm", T=100, B=1, I=256, H=256, backward=True) == "step"  # no persistent backward


@pytest.mark.parametrize("bad", ["Step", "persistant", "1"])
def test_unknown_value_is_a_value_error_on_the_cpu(monkeypatch, bad):
    monkeypatch.setenv("FASTRNN_RECURRENCE", bad)
    with pytest.raises(ValueError, match=f"FASTRNN_RECURRENCE must be one of auto, step, persistent, prefer-persistent; got '{bad}'"):
        _choice()
    with pytest.raises(ValueError, match="FASTRNN_RECURRENCE must be one of"):
        ops.gru_forward(torch.randn(2, 1, 3), torch.zeros(1, 4), torch.randn(12, 3), torch.randn(12, 4), None, None,
                        None, False, False)


def test_the_kernel_in_use_is_named(monkeypatch):
    monkeypatch.delenv("FASTRNN_CPU_KERNEL", raising=False)
    best = ops._cpu_persistent_kernel()
    assert best in KERNELS
    monkeypatch.setenv("FASTRNN_CPU_KERNEL", "baseline")  # every CPU runs the baseline
    assert ops._cpu_persistent_kernel() == "baseline"
    monkeypatch.setenv("FASTRNN_CPU_KERNEL", "")  # empty: unset
    assert ops._cpu_persistent_kernel() == best


@pytest.mark.parametrize("bad", ["AVX2", "avx", "sse"])
def test_unknown_kernel_is_a_value_error(monkeypatch, bad):
    monkeypatch.setenv("FASTRNN_CPU_KERNEL", bad)
    with pytest.raises(ValueError, match=f"FASTRNN_CPU_KERNEL must be one of avx512, avx2, baseline; got '{bad}'"):
        ops._cpu_persistent_kernel()


def test_a_kernel_above_the_cpu_is_a_value_error(monkeypatch):
    monkeypatch.delenv("FASTRNN_CPU_KERNEL", raising=False)
    best = ops._cpu_persistent_kernel()
    if best == KERNELS[0]:
        pytest.skip("this CPU runs every kernel")
    monkeypatch.setenv("FASTRNN_CPU_KERNEL", KERNELS[KERNELS.index(best) - 1])
    with pytest.raises(ValueError, match=f"runs at most the {best} kernel"):
        ops._cpu_persistent_kernel()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_auto_runs_the_persistent_recurrence_for_a_batch_of_one(monkeypatch, cell):
    """What auto now picks by default (B = 1 on two threads) runs end to end from the module and
    matches torch.nn: float32, the sums in another order than MKL's, K = 128 terms a step of
    order one: a few ulp (~1e-6) per step, not growing over 6 steps of saturating gates."""
    monkeypatch.delenv("FASTRNN_RECURRENCE", raising=False)
    torch.manual_seed(0)
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(8, 128)
    mod = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(8, 128)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(6, 8)  # unbatched: B = 1
    with _threads(2), torch.no_grad():
        y, _ = mod(x)
        path = fastrnn._C.last_path(f"{cell}_forward")["path"]
        y_ref, _ = ref(x)
    assert path == "cpu.persistent"
    torch.testing.assert_close(y, y_ref, rtol=2e-5, atol=2e-5)

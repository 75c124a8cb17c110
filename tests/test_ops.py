"""Op-level tests: fastrnn's fused LSTM / GRU layers and cells against two independent oracles,
torch.nn (through pack_padded_sequence for lengths, the reverse half of a bidirectional module
for reverse) and fastrnn.reference (plain autograd loops), plus the op plumbing: opcheck,
gradcheck, torch.compile, the backward ops' lack of a derivative, inference (save=False) and low
precision.
"""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import fastrnn  # noqa: F401  (registers the ops)
from fastrnn import functional as F
from fastrnn.reference import gru_cell_reference, gru_reference, lstm_cell_reference, lstm_reference
from _generators import make_lengths

ops = torch.ops.fastrnn
f64 = torch.float64


# --------------------------------------------------------------------------------------------
# helpers


def last_path(op):
    """Which implementation ran the last call of op (csrc/include/fastrnn/path_log.h)."""
    record = fastrnn._C.last_path(op)
    assert record is not None, f"{op} has not run"
    return record


def nn_module(kind, I, H, bias, reverse, dtype, device, proj=0):
    """An nn.LSTM / nn.GRU whose reverse direction (or only direction) holds the parameters under
    test. Reverse uses a bidirectional module and compares its second half."""
    kw = dict(bias=bias, bidirectional=reverse)
    if proj:
        kw["proj_size"] = proj
    mod = (nn.LSTM if kind == "lstm" else nn.GRU)(I, H, **kw)
    with torch.no_grad():  # wider than the default init so the gates leave their linear range
        for p in mod.parameters():
            p.uniform_(-0.7, 0.7)
    return mod.to(device=device, dtype=dtype)


def layer_params(mod, reverse, bias, proj=False):
    sfx = "_l0_reverse" if reverse else "_l0"
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else []) + (["weight_hr"] if proj else [])
    return {n: getattr(mod, n + sfx) for n in names}


def run_nn(kind, mod, x, h0, c0, lengths, reverse):
    """Runs the torch.nn module and returns the outputs of the direction under test."""
    T = x.shape[0]
    d = 1 if reverse else 0

    def full(s):  # the other direction's state is a constant: its grads are not compared
        return torch.stack([torch.zeros_like(s), s]) if reverse else s.unsqueeze(0)

    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    if kind == "lstm":
        out, (hn, cn) = mod(inp, (full(h0), full(c0)))
    else:
        out, hn = mod(inp, full(h0))
        cn = None
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    P = out.shape[-1] // (2 if reverse else 1)
    y = out[..., d * P:(d + 1) * P]
    return (y, hn[d]) if kind == "gru" else (y, hn[d], cn[d])


def run_fast(kind, p, x, h0, c0, lengths, reverse):
    if kind == "lstm":
        return F.lstm_layer(x, h0, c0, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
                            lengths=lengths, reverse=reverse, w_hr=p.get("weight_hr"))
    return F.gru_layer(x, h0, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
                       lengths=lengths, reverse=reverse)


def run_ref(kind, p, x, h0, c0, lengths, reverse):
    if kind == "lstm":
        return lstm_reference(x, h0, c0, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
                              lengths=lengths, reverse=reverse, w_hr=p.get("weight_hr"))
    return gru_reference(x, h0, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
                         lengths=lengths, reverse=reverse)


def outputs_and_grads(outs, cots, wrt):
    """Forward outputs plus gradients of sum(out * cot) w.r.t. every tensor in wrt."""
    loss = sum((o * c).sum() for o, c in zip(outs, cots))
    grads = torch.autograd.grad(loss, wrt)
    return [o.detach() for o in outs], list(grads)


def assert_match(got, want, names, dtype, what):
    assert len(got) == len(want), f"{what}: {len(got)} tensors, expected {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        name = names[i] if i < len(names) else f"#{i}"
        assert a.shape == b.shape, f"{what}: {name} shape {tuple(a.shape)} != {tuple(b.shape)}"
        # relative to the tensor's magnitude: long sequences grow gradients (|dx| ~ 1e4 in the
        # chunked-backward cases) and elements that cancel out keep only that absolute accuracy
        scale = max(1.0, b.abs().max().item())
        if dtype == f64:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * scale, msg=lambda m: f"{what}: {name}: {m}")
        else:  # float32
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{what}: {name}: {m}")


def compare_layer(kind, device, T, B, I, H, bias, lengths_spec, reverse, dtype, proj=0):
    """fastrnn vs torch.nn and vs reference.py: outputs, final states and all gradients."""
    torch.manual_seed(1000 * T + 100 * B + 10 * I + H)
    mod = nn_module(kind, I, H, bias, reverse, dtype, device, proj)
    p = layer_params(mod, reverse, bias, bool(proj))
    P = proj or H
    lengths = make_lengths(lengths_spec, T, B)
    x = torch.randn(T, B, I, dtype=dtype, device=device, requires_grad=True)
    h0 = torch.randn(B, P, dtype=dtype, device=device, requires_grad=True)
    c0 = torch.randn(B, H, dtype=dtype, device=device, requires_grad=True) if kind == "lstm" else None
    wrt = [x, h0] + ([c0] if kind == "lstm" else []) + list(p.values())
    names_in = ["dx", "dh0"] + (["dc0"] if kind == "lstm" else []) + ["d" + n for n in p]
    names_out = ["y", "h_n"] + (["c_n"] if kind == "lstm" else [])
    cots = [torch.randn(T, B, P, dtype=dtype, device=device), torch.randn(B, P, dtype=dtype, device=device)]
    if kind == "lstm":
        cots.append(torch.randn(B, H, dtype=dtype, device=device))

    fast_o, fast_g = outputs_and_grads(run_fast(kind, p, x, h0, c0, lengths, reverse), cots, wrt)
    nn_o, nn_g = outputs_and_grads(run_nn(kind, mod, x, h0, c0, lengths, reverse), cots, wrt)
    ref_o, ref_g = outputs_and_grads(run_ref(kind, p, x, h0, c0, lengths, reverse), cots, wrt)
    assert_match(fast_o, nn_o, names_out, dtype, "vs torch.nn")
    assert_match(fast_g, nn_g, names_in, dtype, "vs torch.nn")
    assert_match(fast_o, ref_o, names_out, dtype, "vs reference")
    assert_match(fast_g, ref_g, names_in, dtype, "vs reference")


# A well-spread grid rather than a full product: T=1, B=1, tiny and odd H (not multiples of 8),
# with and without bias, no lengths / all equal to T / unsorted with an L=1 entry, both directions.
GRID = [
    # T, B, I, H, bias, lengths, reverse
    (1, 1, 1, 1, True, None, False),
    (1, 3, 4, 5, False, "mixed", True),
    (5, 1, 3, 7, True, [3], True),
    (6, 4, 5, 8, True, "mixed", False),
    (6, 4, 5, 8, True, "mixed", True),
    (7, 5, 3, 13, False, "full", False),
    (7, 5, 3, 13, False, "full", True),
    (9, 6, 10, 17, True, "mixed", True),
    (4, 3, 16, 33, True, None, True),
    (12, 2, 2, 3, False, "mixed", False),
    (3, 7, 6, 24, True, "mixed", False),
    (10, 5, 7, 6, True, None, False),
]
F32_GRID = [GRID[3], GRID[4], GRID[7], GRID[9]]


def _gid(c):
    T, B, I, H, bias, lens, rev = c
    lens_id = lens if lens is None or isinstance(lens, str) else "L" + "".join(map(str, lens))
    return f"T{T}B{B}I{I}H{H}-{'bias' if bias else 'nobias'}-{lens_id}-{'rev' if rev else 'fwd'}"


GRID_PARAMS = [pytest.param(*c, f64, id=_gid(c) + "-f64") for c in GRID] + \
              [pytest.param(*c, torch.float32, id=_gid(c) + "-f32") for c in F32_GRID]


@pytest.mark.usefixtures("exact_fp32")  # float32 vs torch.nn: no TF32 in cuDNN (tests/_precision.py)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("T,B,I,H,bias,lengths,reverse,dtype", GRID_PARAMS)
def test_layer_matches_nn_and_reference(device, kind, T, B, I, H, bias, lengths, reverse, dtype):
    compare_layer(kind, device, T, B, I, H, bias, lengths, reverse, dtype)


PROJ_GRID = [
    # T, B, I, H, P, bias, lengths, reverse
    (6, 4, 5, 8, 3, True, "mixed", False),
    (6, 4, 5, 8, 3, True, "mixed", True),
    (1, 2, 3, 5, 4, False, None, False),
    (7, 3, 4, 6, 2, False, "full", True),
    (5, 1, 2, 9, 5, True, None, True),
]


# The CPU backward folds its gate grads into dx and the parameter grads in chunks of steps once the
# [T, B, 4H] buffer passes 8 MiB (step_loop.h: GradChunks). At T=40, B=64, H=128 in float64 that
# is 13 MiB: chunks of 32 and 8 steps, so a chunk boundary falls mid-sequence, the last chunk is
# short, and with lengths the chunk buffer is re-zeroed. Reverse with lengths keeps all steps
# (checked too). The last column: how many chunks the CPU backward must have folded.
CHUNK_CASES = [
    pytest.param(None, False, 2, id="nolen-fwd"),
    pytest.param(None, True, 2, id="nolen-rev"),
    pytest.param("mixed", False, 2, id="mixed-fwd"),
    pytest.param("mixed", True, 1, id="mixed-rev"),
]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("lengths,reverse,cpu_chunks", CHUNK_CASES)
def test_backward_in_chunks_matches_nn_and_reference(device, kind, lengths, reverse, cpu_chunks):
    compare_layer(kind, device, 40, 64, 9, 128, True, lengths, reverse, f64)
    ran = last_path(f"{kind}_backward")
    if device.type == "cpu":
        assert ran == {"path": "cpu.step_loop", "grad_chunks": cpu_chunks}
    else:
        assert ran["path"] == "cuda.step_loop"


# Inference (no saved activations) projects the input a chunk of steps at a time, with the
# backward's chunk budget (8 MiB on the CPU; step_loop.h: StepLoop::input_chunks): at T=40, B=96,
# H=128 in float64 a step of the projection is 96 x G*H x 8 bytes, so chunks of 21 steps (LSTM) or
# 28 (GRU) and a boundary mid-sequence. Reverse with lengths keeps all steps (its iterations read
# different times per entry). Checked against torch.nn, reference.py and the training forward
# (which projects all steps at once) with assert_match's float64 tolerance.
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("lengths,reverse", [(None, False), (None, True), ("mixed", False), ("mixed", True)],
                         ids=["nolen-fwd", "nolen-rev", "mixed-fwd", "mixed-rev"])
def test_inference_in_chunks_matches_nn_and_reference(device, kind, lengths, reverse):
    T, B, I, H = 40, 96, 9, 128
    torch.manual_seed(5)
    mod = nn_module(kind, I, H, True, reverse, f64, device)
    p = layer_params(mod, reverse, True)
    lens = make_lengths(lengths, T, B)
    x = torch.randn(T, B, I, dtype=f64, device=device)
    h0 = torch.randn(B, H, dtype=f64, device=device)
    c0 = torch.randn(B, H, dtype=f64, device=device) if kind == "lstm" else None
    with torch.no_grad():
        got = run_fast(kind, p, x, h0, c0, lens, reverse)
        want_nn = run_nn(kind, mod, x, h0, c0, lens, reverse)
        want_ref = run_ref(kind, p, x, h0, c0, lens, reverse)
    trained = run_fast(kind, p, x.requires_grad_(), h0, c0, lens, reverse)
    names = ["y", "h_n"] + (["c_n"] if kind == "lstm" else [])
    assert_match(list(got), list(want_nn), names, f64, "vs torch.nn")
    assert_match(list(got), list(want_ref), names, f64, "vs reference")
    assert_match(list(got), [t.detach() for t in trained], names, f64, "vs the training forward")


@pytest.mark.parametrize("T,B,I,H,P,bias,lengths,reverse", PROJ_GRID)
def test_lstm_projection_matches_nn_and_reference(device, T, B, I, H, P, bias, lengths, reverse):
    compare_layer("lstm", device, T, B, I, H, bias, lengths, reverse, f64, proj=P)


def test_lengths_forms_agree(device):
    """Lengths as a list, a CPU tensor and a tensor on x's device give the same results (to
    rounding: device lengths may take a different path, e.g. no per-step active counts)."""
    torch.manual_seed(0)
    T, B, I, H = 5, 3, 2, 4
    x = torch.randn(T, B, I, dtype=f64, device=device)
    w_ih, w_hh = torch.randn(4 * H, I, dtype=f64, device=device), torch.randn(4 * H, H, dtype=f64, device=device)
    lens = [2, 5, 1]
    outs = [F.lstm_layer(x, None, None, w_ih, w_hh, lengths=L, reverse=True)
            for L in (lens, torch.tensor(lens), torch.tensor(lens, device=device))]
    for o in outs[1:]:
        assert_match(o, outs[0], ["y", "h_n", "c_n"], f64, "lengths forms")


def test_only_one_bias_matches_reference(device):
    """The ops accept b_ih without b_hh and vice versa (nn cannot express this; reference can)."""
    torch.manual_seed(1)
    T, B, I, H = 4, 3, 3, 5
    lengths = torch.tensor([4, 1, 3])
    for kind, G in (("lstm", 4), ("gru", 3)):
        for which in ("bias_ih", "bias_hh"):
            p = {"weight_ih": torch.randn(G * H, I, dtype=f64, device=device, requires_grad=True),
                 "weight_hh": torch.randn(G * H, H, dtype=f64, device=device, requires_grad=True),
                 which: torch.randn(G * H, dtype=f64, device=device, requires_grad=True)}
            x = torch.randn(T, B, I, dtype=f64, device=device, requires_grad=True)
            h0 = torch.randn(B, H, dtype=f64, device=device, requires_grad=True)
            c0 = torch.randn(B, H, dtype=f64, device=device, requires_grad=True) if kind == "lstm" else None
            wrt = [x, h0] + ([c0] if c0 is not None else []) + list(p.values())
            cots = [torch.randn(T, B, H, dtype=f64, device=device)] + \
                   [torch.randn(B, H, dtype=f64, device=device) for _ in range(2 if kind == "lstm" else 1)]
            for reverse in (False, True):
                fo, fg = outputs_and_grads(run_fast(kind, p, x, h0, c0, lengths, reverse), cots, wrt)
                ro, rg = outputs_and_grads(run_ref(kind, p, x, h0, c0, lengths, reverse), cots, wrt)
                what = f"{kind} with only {which}, reverse={reverse}"
                assert_match(fo, ro, [f"out{i}" for i in range(len(fo))], f64, what)
                assert_match(fg, rg, [f"grad{i}" for i in range(len(fg))], f64, what)


# --------------------------------------------------------------------------------------------
# masking properties, exactly


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_padding_is_exact(device, kind, reverse):
    torch.manual_seed(2)
    T, B, I, H = 7, 5, 3, 6
    lengths = torch.tensor([3, 7, 1, 5, 2])
    G = 4 if kind == "lstm" else 3
    p = {"weight_ih": torch.randn(G * H, I, dtype=f64, device=device, requires_grad=True),
         "weight_hh": torch.randn(G * H, H, dtype=f64, device=device, requires_grad=True),
         "bias_ih": torch.randn(G * H, dtype=f64, device=device, requires_grad=True),
         "bias_hh": torch.randn(G * H, dtype=f64, device=device, requires_grad=True)}
    x = torch.randn(T, B, I, dtype=f64, device=device, requires_grad=True)
    h0 = torch.randn(B, H, dtype=f64, device=device, requires_grad=True)
    c0 = torch.randn(B, H, dtype=f64, device=device, requires_grad=True) if kind == "lstm" else None
    wrt = [x, h0] + ([c0] if c0 is not None else []) + list(p.values())
    outs = run_fast(kind, p, x, h0, c0, lengths, reverse)
    y, h_n = outs[0], outs[1]
    padded = (torch.arange(T).unsqueeze(1) >= lengths.unsqueeze(0)).to(device)  # [T, B]

    # outputs at padded steps are exactly zero
    assert torch.equal(y[padded], torch.zeros_like(y[padded]))
    # the final state is the output of the entry's last processed step (t = L-1, or 0 in reverse)
    for b, L in enumerate(lengths.tolist()):
        last = 0 if reverse else L - 1
        assert torch.equal(h_n[b], y[last, b]), f"entry {b} (L={L})"

    # no gradient reaches padded inputs, and cotangents at padded outputs are ignored
    cots = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs, cots)), wrt, retain_graph=True)
    dx = grads[0]
    assert torch.equal(dx[padded], torch.zeros_like(dx[padded]))
    assert dx[~padded].abs().min() > 0  # the valid part does get gradient
    cots_masked = [cots[0].masked_fill(padded.unsqueeze(2), 0.0)] + cots[1:]
    grads_masked = torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs, cots_masked)), wrt)
    for i, (a, b) in enumerate(zip(grads, grads_masked)):
        assert torch.equal(a, b), f"gradient {i} depends on the cotangent at padded outputs"


# --------------------------------------------------------------------------------------------
# cells


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "nostate"])
def test_cells_match_nn(device, kind, bias, with_state):
    torch.manual_seed(3)
    B, I, H = 4, 5, 7
    cell = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(I, H, bias=bias).to(device=device, dtype=f64)
    x = torch.randn(B, I, dtype=f64, device=device, requires_grad=True)
    hx = torch.randn(B, H, dtype=f64, device=device, requires_grad=True) if with_state else None
    cx = torch.randn(B, H, dtype=f64, device=device, requires_grad=True) if with_state else None
    params = [cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if bias else [])
    b_ih, b_hh = (cell.bias_ih, cell.bias_hh) if bias else (None, None)
    wrt = [x] + ([hx] + ([cx] if kind == "lstm" else []) if with_state else []) + params
    if kind == "lstm":
        fast = F.lstm_cell(x, hx, cx, cell.weight_ih, cell.weight_hh, b_ih, b_hh)
        want = cell(x, (hx, cx) if with_state else None)
    else:
        fast = (F.gru_cell(x, hx, cell.weight_ih, cell.weight_hh, b_ih, b_hh),)
        want = (cell(x, hx),)
    cots = [torch.randn_like(o) for o in want]
    fo, fg = outputs_and_grads(fast, cots, wrt)
    wo, wg = outputs_and_grads(want, cots, wrt)
    assert_match(fo, wo, ["h", "c"], f64, "cell outputs")
    assert_match(fg, wg, [f"grad{i}" for i in range(len(wg))], f64, "cell grads")
    # the oracle's own cells agree with torch.nn too (zeros where nn defaults the state)
    h_ref = hx if with_state else torch.zeros(B, H, dtype=f64, device=device)
    c_ref = cx if with_state else torch.zeros(B, H, dtype=f64, device=device)
    if kind == "lstm":
        ref = lstm_cell_reference(x, h_ref, c_ref, cell.weight_ih, cell.weight_hh, b_ih, b_hh)
    else:
        ref = (gru_cell_reference(x, h_ref, cell.weight_ih, cell.weight_hh, b_ih, b_hh),)
    ro, rg = outputs_and_grads(ref, cots, wrt)
    assert_match(ro, wo, ["h", "c"], f64, "reference cell outputs")
    assert_match(rg, wg, [f"grad{i}" for i in range(len(wg))], f64, "reference cell grads")


# float32 single steps take the CPU's one-pass path (both products fused with the pointwise) up
# to 4 rows and the GEMM path beyond: cover both sides of that line, hidden sizes with and
# without a SIMD tail, I != H, each bias alone, with and without saving for backward.
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 3, 4, 5])
@pytest.mark.parametrize("I,H", [(1, 1), (9, 13), (40, 64)])
@pytest.mark.parametrize("bias", ["both", "ih", "hh", "none"])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
@pytest.mark.usefixtures("exact_fp32")  # float32 vs torch.nn: no TF32 in cuDNN (tests/_precision.py)
def test_single_step_fp32_matches_nn(device, kind, B, I, H, bias, grad, monkeypatch):
    # the step-loop side's choice between the fused single step and the GEMM path is what this
    # tests (the CPU path asserted below), whichever recurrence FASTRNN_RECURRENCE prefers outside
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    torch.manual_seed(7 * B + I + H)
    cell = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(I, H).to(device)
    w_ih, w_hh = cell.weight_ih, cell.weight_hh
    b_ih = cell.bias_ih if bias in ("both", "ih") else None
    b_hh = cell.bias_hh if bias in ("both", "hh") else None
    with torch.no_grad():  # nn has no one-bias cell: zero the other bias there
        if b_ih is None:
            cell.bias_ih.zero_()
        if b_hh is None:
            cell.bias_hh.zero_()
    x = torch.randn(B, I, device=device, requires_grad=grad)
    hx = torch.randn(B, H, device=device, requires_grad=grad)
    cx = torch.randn(B, H, device=device, requires_grad=grad)
    wrt = [x, hx] + ([cx] if kind == "lstm" else []) + [w_ih, w_hh]
    with torch.set_grad_enabled(grad):
        if kind == "lstm":
            fast = F.lstm_cell(x, hx, cx, w_ih, w_hh, b_ih, b_hh)
        else:
            fast = (F.gru_cell(x, hx, w_ih, w_hh, b_ih, b_hh),)
        expected_path = "cuda.step_loop" if device.type == "cuda" else (
            "cpu.single_step" if B <= 4 else "cpu.step_loop")
        assert last_path(f"{kind}_forward")["path"] == expected_path
        want = cell(x, (hx, cx)) if kind == "lstm" else (cell(x, hx),)
        # the same step through the layer op, with lengths (all 1 at T = 1)
        if kind == "lstm":
            _, h_l, c_l = F.lstm_layer(x[None], hx, cx, w_ih, w_hh, b_ih, b_hh, lengths=[1] * B)
            layer = (h_l, c_l)
        else:
            layer = (F.gru_layer(x[None], hx, w_ih, w_hh, b_ih, b_hh, lengths=[1] * B)[1],)
    names = ["h", "c"]
    if not grad:
        assert_match(list(fast), list(want), names, torch.float32, "single step outputs")
        assert_match(list(layer), list(want), names, torch.float32, "single step via layer")
        return
    cots = [torch.randn_like(o) for o in want]
    fo, fg = outputs_and_grads(fast, cots, wrt)
    wo, wg = outputs_and_grads(want, cots, wrt)
    lo, lg = outputs_and_grads(layer, cots, wrt)
    grad_names = [f"grad{i}" for i in range(len(wg))]
    assert_match(fo, wo, names, torch.float32, "single step outputs")
    assert_match(fg, wg, grad_names, torch.float32, "single step grads")
    assert_match(lo, wo, names, torch.float32, "single step via layer outputs")
    assert_match(lg, wg, grad_names, torch.float32, "single step via layer grads")


# --------------------------------------------------------------------------------------------
# torch.library.opcheck on every op


def _op_inputs(kind, device, lengths, bias, reverse, proj=0, T=3, B=3, I=2, H=3):
    g = torch.Generator().manual_seed(4)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=f64).to(device)

    G = 4 if kind == "lstm" else 3
    P = proj or H
    t = dict(x=r(T, B, I), h0=r(B, P), c0=r(B, H), w_ih=r(G * H, I), w_hh=r(G * H, P),
             b_ih=r(G * H) if bias else None, b_hh=r(G * H) if bias else None,
             w_hr=r(P, H) if proj else None,
             lengths=torch.tensor([2, T, 1][:B], dtype=torch.int64) if lengths else None)
    return t


OPCHECK_CASES = [
    pytest.param(False, False, False, 0, id="plain"),
    pytest.param(False, True, False, 0, id="bias"),
    pytest.param(True, False, True, 0, id="lengths-rev"),
    pytest.param(True, True, False, 0, id="lengths-bias"),
]


def _check_fwd_bwd(kind, t, reverse, has_bias):
    req = {k: v.clone().requires_grad_() if (v is not None and v.is_floating_point()) else v for k, v in t.items()}
    if kind == "lstm":
        fargs = (req["x"], req["h0"], req["c0"], req["w_ih"], req["w_hh"], req["b_ih"], req["b_hh"], req["w_hr"],
                 t["lengths"], reverse, True)
        torch.library.opcheck(ops.lstm_forward.default, fargs)
        y, h_n, c_n, ws = ops.lstm_forward(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                                           t["w_hr"], t["lengths"], reverse, True)
        bargs = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), t["x"], t["h0"], t["c0"],
                 t["w_ih"], t["w_hh"], t["w_hr"], y, ws, t["lengths"], reverse, has_bias)
        torch.library.opcheck(ops.lstm_backward.default, bargs)
    else:
        fargs = (req["x"], req["h0"], req["w_ih"], req["w_hh"], req["b_ih"], req["b_hh"], t["lengths"], reverse,
                 True)
        torch.library.opcheck(ops.gru_forward.default, fargs)
        y, h_n, ws = ops.gru_forward(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t["lengths"],
                                     reverse, True)
        bargs = (torch.randn_like(y), torch.randn_like(h_n), t["x"], t["h0"], t["w_ih"], t["w_hh"], y, ws,
                 t["lengths"], reverse, has_bias)
        torch.library.opcheck(ops.gru_backward.default, bargs)


# opcheck compares every output, ws included: the forward ops must define ws at padded steps
# too (see test_forward_outputs_are_deterministic).
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("lengths,bias,reverse,proj", OPCHECK_CASES)
def test_opcheck(device, kind, lengths, bias, reverse, proj):
    _check_fwd_bwd(kind, _op_inputs(kind, device, lengths, bias, reverse, proj), reverse, bias)


def test_opcheck_lstm_projection(device):
    _check_fwd_bwd("lstm", _op_inputs("lstm", device, True, True, True, proj=2, H=4), True, True)


def _relayout(t, layout):
    """The same values in other memory: "transposed" swaps the storage order of the first two
    dims (a batch_first x, a transposed weight); "strided" takes every other element of a buffer
    twice as wide (stride 2 in the last dim)."""
    if t is None:
        return None
    if layout == "transposed":
        return t if t.dim() < 2 else t.transpose(0, 1).contiguous().transpose(0, 1)
    return torch.stack([t, torch.zeros_like(t)], -1)[..., 0]


# opcheck compares the fake kernels' output strides with the real ones (which are contiguous
# whatever the inputs' strides): every input of every op, lengths included, non-contiguous.
@pytest.mark.parametrize("kind", ["lstm", "lstm-proj", "gru"])
@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_opcheck_non_contiguous_inputs(device, kind, layout):
    proj = 2 if kind == "lstm-proj" else 0
    kind = kind[:4] if proj else kind
    t = _op_inputs(kind, device, True, True, False, proj=proj, H=4 if proj else 3)
    fwd = [t[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")] if kind == "lstm" else \
        [t[k] for k in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")]
    op_f, op_b = (ops.lstm_forward, ops.lstm_backward) if kind == "lstm" else (ops.gru_forward, ops.gru_backward)
    outs = op_f(*fwd, t["lengths"], False, True)
    lengths = _relayout(t["lengths"], layout)
    moved = [_relayout(a, layout) for a in fwd]
    assert moved[0].shape == t["x"].shape and not moved[0].is_contiguous()
    fargs = [a.clone().requires_grad_() if a is not None and a.is_floating_point() else a for a in moved]
    torch.library.opcheck(op_f.default, (*fargs, lengths, False, True))
    cots = [_relayout(torch.randn_like(o), layout) for o in outs[:-1]]
    y, ws = _relayout(outs[0], layout), _relayout(outs[-1], layout)
    if kind == "lstm":
        x, h0, c0, w_ih, w_hh, _, _, w_hr = moved
        bargs = (*cots, x, h0, c0, w_ih, w_hh, w_hr, y, ws, lengths, False, True)
    else:
        x, h0, w_ih, w_hh, _, _ = moved
        bargs = (*cots, x, h0, w_ih, w_hh, y, ws, lengths, False, True)
    torch.library.opcheck(op_b.default, bargs)
    # and the real kernels do return fresh contiguous tensors (what the fake kernels promise)
    assert all(o.is_contiguous() for o in op_f(*moved, lengths, False, True))
    assert all(o.is_contiguous() for o in op_b(*bargs))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_forward_outputs_are_deterministic(device, kind):
    """Every output of the forward op, the workspace included, is fully defined: opcheck (and
    AOTAutograd under torch.compile) compare all outputs, so uninitialised memory in ws (e.g. at
    padded steps) shows up there as a random failure. Whatever memory the allocator hands back,
    torch's deterministic mode fills every fresh allocation with NaN
    (torch.utils.deterministic.fill_uninitialized_memory): an element the op leaves unwritten
    stays NaN there, and differs from a plain call."""
    t = _op_inputs(kind, device, True, True, False)

    def call():
        if kind == "lstm":
            return ops.lstm_forward(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None,
                                    t["lengths"], False, True)
        return ops.gru_forward(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t["lengths"], False, True)

    plain = call()
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    try:
        # warn_only: cuBLAS would refuse to run deterministically without CUBLAS_WORKSPACE_CONFIG
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            assert torch.isnan(torch.empty(64, dtype=f64, device=device)).all()  # the filling is on
            filled = call()
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]
    for i, (p, q) in enumerate(zip(filled, plain)):
        assert not torch.isnan(p).any(), f"output {i} of {kind}_forward has elements the op never wrote"
        assert torch.equal(p, q), f"output {i} of {kind}_forward differs between identical calls"


def test_opcheck_inference_mode_forward(device):
    """save=False forwards (what no_grad runs) pass opcheck too."""
    for kind in ("lstm", "gru"):
        t = _op_inputs(kind, device, True, True, False)
        if kind == "lstm":
            args = (t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None, t["lengths"], False,
                    False)
            torch.library.opcheck(ops.lstm_forward.default, args)
        else:
            args = (t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t["lengths"], False, False)
            torch.library.opcheck(ops.gru_forward.default, args)


# --------------------------------------------------------------------------------------------
# gradcheck (float64) through the functional layer


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm-proj"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck(device, kind, reverse):
    torch.manual_seed(5)
    T, B, I, H = 4, 3, 2, 3
    P = 2 if kind == "lstm-proj" else H
    G = 3 if kind == "gru" else 4
    lengths = torch.tensor([3, 4, 1])

    def r(*shape):
        return torch.randn(*shape, dtype=f64, device=device, requires_grad=True)

    x, h0, c0 = r(T, B, I), r(B, P), r(B, H)
    w_ih, w_hh, b_ih, b_hh = r(G * H, I), r(G * H, P), r(G * H), r(G * H)
    if kind == "gru":
        inputs = (x, h0, w_ih, w_hh, b_ih, b_hh)

        def fn(*a):
            return F.gru_layer(*a, lengths=lengths, reverse=reverse)
    else:
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh) + ((r(P, H),) if kind == "lstm-proj" else ())

        def fn(*a):
            return F.lstm_layer(*a[:7], lengths=lengths, reverse=reverse, w_hr=a[7] if len(a) > 7 else None)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# torch.compile


def test_torch_compile_fullgraph_matches_eager(device):
    """One compile per device: an LSTM layer feeding a reversed GRU layer, with lengths, forward
    and backward, with no graph break (fullgraph=True)."""
    torch.manual_seed(6)
    T, B, I, H = 5, 3, 4, 6
    lengths = torch.tensor([5, 2, 4])

    def model(x, lengths, lw_ih, lw_hh, lb_ih, lb_hh, gw_ih, gw_hh, gb_ih, gb_hh):
        y1, h1, c1 = F.lstm_layer(x, None, None, lw_ih, lw_hh, lb_ih, lb_hh, lengths=lengths)
        y2, h2 = F.gru_layer(y1, h1, gw_ih, gw_hh, gb_ih, gb_hh, lengths=lengths, reverse=True)
        return y2, h2, c1

    def r(*shape):
        return torch.randn(*shape, dtype=f64, device=device, requires_grad=True)

    args = [r(T, B, I), lengths, r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H), r(3 * H, H), r(3 * H, H), r(3 * H),
            r(3 * H)]
    wrt = [a for a in args if a.requires_grad]
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, fullgraph=True)
        got = compiled(*args)
        cots = [torch.randn_like(o) for o in got]
        got_o, got_g = outputs_and_grads(got, cots, wrt)
    finally:
        torch._dynamo.reset()
    want_o, want_g = outputs_and_grads(model(*args), cots, wrt)
    assert_match(got_o, want_o, ["y", "h_n", "c_n"], f64, "compiled vs eager")
    assert_match(got_g, want_g, [f"grad{i}" for i in range(len(want_g))], f64, "compiled vs eager")


# --------------------------------------------------------------------------------------------
# double backward, inference


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_backward_op_has_no_derivative(device, kind):
    """Double backward goes through the forward op (tests/test_double_backward.py); the raw
    backward op itself is not differentiable and says what to do instead."""
    t = _op_inputs(kind, device, False, True, False)
    if kind == "lstm":
        y, h_n, c_n, ws = ops.lstm_forward(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                                           None, None, False, True)
        dy = torch.ones_like(y, requires_grad=True)
        dx = ops.lstm_backward(dy, torch.ones_like(h_n), torch.ones_like(c_n), t["x"], t["h0"], t["c0"], t["w_ih"],
                               t["w_hh"], None, y, ws, None, False, True)[0]
    else:
        y, h_n, ws = ops.gru_forward(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None, False, True)
        dy = torch.ones_like(y, requires_grad=True)
        dx = ops.gru_backward(dy, torch.ones_like(h_n), t["x"], t["h0"], t["w_ih"], t["w_hh"], y, ws, None, False,
                              True)[0]
    with pytest.raises(RuntimeError, match=f"fastrnn::{kind}_backward has no derivative.*create_graph=True"):
        dx.sum().backward()


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "fastrnn":
            self.calls.append((func.__name__.split(".")[0], args, out))
        return out


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_inference_saves_nothing(device, kind):
    torch.manual_seed(8)
    T, B, I, H = 4, 2, 3, 5
    G = 4 if kind == "lstm" else 3
    x = torch.randn(T, B, I, dtype=f64, device=device)
    w_ih = torch.randn(G * H, I, dtype=f64, device=device, requires_grad=True)
    w_hh = torch.randn(G * H, H, dtype=f64, device=device, requires_grad=True)
    fwd_name = f"{kind}_forward"

    def call():
        rec = _RecordOps()
        with rec:
            if kind == "lstm":
                F.lstm_layer(x, None, None, w_ih, w_hh, lengths=[4, 2])
            else:
                F.gru_layer(x, None, w_ih, w_hh, lengths=[4, 2])
        (name, args, out), = [c for c in rec.calls if c[0] == fwd_name]
        return args[-1], out[-1]  # save flag, ws

    with torch.no_grad():
        save, ws = call()
    assert save is False and ws.numel() == 0
    save, ws = call()  # grad mode on and weights require grad: activations are saved
    assert save is True and ws.shape[:2] == (T, B) and ws.numel() > 0
    w_ih.requires_grad_(False)
    w_hh.requires_grad_(False)
    save, ws = call()  # grad mode on but nothing requires grad: nothing saved either
    assert save is False and ws.numel() == 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_backward_of_inference_forward_raises(device, kind):
    t = _op_inputs(kind, device, True, True, False)
    if kind == "lstm":
        y, h_n, c_n, ws = ops.lstm_forward(t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                                           None, t["lengths"], False, False)
        assert ws.numel() == 0
        with pytest.raises(RuntimeError, match=r"save=False"):
            ops.lstm_backward(torch.ones_like(y), torch.ones_like(h_n), torch.ones_like(c_n), t["x"], t["h0"],
                              t["c0"], t["w_ih"], t["w_hh"], None, y, ws, t["lengths"], False, True)
    else:
        y, h_n, ws = ops.gru_forward(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t["lengths"],
                                     False, False)
        assert ws.numel() == 0
        with pytest.raises(RuntimeError, match=r"save=False"):
            ops.gru_backward(torch.ones_like(y), torch.ones_like(h_n), t["x"], t["h0"], t["w_ih"], t["w_hh"], y, ws,
                             t["lengths"], False, True)


# --------------------------------------------------------------------------------------------
# low precision


def _rel_err(a, truth):
    return ((a.double() - truth).abs().max() / truth.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_no_worse_than_torch(device, kind, dtype):
    """fastrnn in bf16/fp16 vs a float64 reference on the same (rounded) inputs: its error must be
    at most 2x (forward) / 3x (backward) that of torch.nn run in the same dtype."""
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("the CPU low-precision check covers bfloat16 only")
    torch.manual_seed(9)
    T, B, I, H = 16, 8, 32, 32
    lengths = make_lengths("mixed", T, B)
    mod64 = nn_module(kind, I, H, True, False, f64, device)
    with torch.no_grad():  # round the parameters to dtype once: every run sees the same values
        for p in mod64.parameters():
            p.copy_(p.to(dtype))
    mod_lp = nn_module(kind, I, H, True, False, dtype, device)
    mod_lp.load_state_dict(mod64.state_dict())
    x64 = torch.randn(T, B, I, dtype=f64, device=device).to(dtype).double()
    h64 = torch.randn(B, H, dtype=f64, device=device).to(dtype).double()
    c64 = torch.randn(B, H, dtype=f64, device=device).to(dtype).double()
    cots64 = [torch.randn(T, B, H, dtype=f64, device=device).to(dtype).double()] + \
             [torch.randn(B, H, dtype=f64, device=device).to(dtype).double() for _ in range(2 if kind == "lstm" else 1)]

    def run(runner, mod, dt):
        x, h0, c0 = (t.detach().to(dt).requires_grad_() for t in (x64, h64, c64))
        c0 = c0 if kind == "lstm" else None
        p = layer_params(mod, False, True)
        wrt = [x, h0] + ([c0] if kind == "lstm" else []) + list(p.values())
        if runner is run_nn:
            outs = run_nn(kind, mod, x, h0, c0, lengths, False)
        else:
            outs = runner(kind, p, x, h0, c0, lengths, False)
        return outputs_and_grads(outs, [c.to(dt) for c in cots64], wrt)

    truth_o, truth_g = run(run_ref, mod64, f64)
    try:
        torch_o, torch_g = run(run_nn, mod_lp, dtype)
    except RuntimeError as e:  # e.g. a CPU build of torch.nn without this dtype
        pytest.skip(f"torch.nn {kind} does not run in {dtype} on {device}: {e}")
    fast_o, fast_g = run(run_fast, mod_lp, dtype)
    # The floor (1e-3 relative to the tensor's largest entry) only matters when torch.nn happens
    # to be almost exact on some tensor (e.g. it accumulates in fp32 and the result rounds well):
    # it is below one bf16 ulp at 1 (7.8e-3) and about one fp16 ulp (9.8e-4), i.e. under the
    # rounding error of merely storing the result in that dtype, so it does not loosen the test.
    floor = 1e-3
    failures = []
    for kind_, factor, fast, tor, truth in (("forward", 2, fast_o, torch_o, truth_o),
                                            ("backward", 3, fast_g, torch_g, truth_g)):
        for i, (a, b, t) in enumerate(zip(fast, tor, truth)):
            ef, et = _rel_err(a, t), _rel_err(b, t)
            if ef > max(factor * et, floor):
                failures.append(f"{kind_} tensor {i}: fastrnn err {ef:.2e} > "
                                f"max({factor} x torch err {et:.2e}, {floor})")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_backward_makes_no_workspace_sized_grad(device, kind):
    """ws is an output only to reach backward: autograd must not materialise a zero grad of its
    size ([T, B, 5H] / [T, B, 4H], as large as ws) at every backward."""
    T, B, I, H = 3, 2, 4, 7
    width = 5 * H if kind == "lstm" else 4 * H
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    w = [torch.randn(G * H, n, device=device, requires_grad=True) for G in [4 if kind == "lstm" else 3]
         for n in (I, H)]
    y = (F.lstm_layer(x, None, None, *w) if kind == "lstm" else F.gru_layer(x, None, *w))[0]
    made = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple) else (out,):
                made.append((str(func), tuple(t.shape) if isinstance(t, torch.Tensor) else None))
            return out

    with Spy():
        y.sum().backward()
    assert any(f.startswith(f"fastrnn.{kind}_backward") for f, _ in made)
    assert [m for m in made if m[1] == (T, B, width)] == []


# --------------------------------------------------------------------------------------------
# FLOP counts (torch.utils.flop_counter)


FLOP_CASES = [  # (module, kwargs, torch.nn counts it on the CPU)
    ("GRU", dict(num_layers=2, bidirectional=True), True),
    ("LSTM", dict(proj_size=2), True),
    ("LSTM", dict(), False),  # nn.LSTM without a projection runs oneDNN there, which counts 0
    ("LSTMCell", dict(), True),
    ("GRUCell", dict(), True),
]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("mode,kw,torch_counts", FLOP_CASES, ids=["gru-L2-bi", "lstm-proj", "lstm", "lstmcell",
                                                                    "grucell"])
def test_flop_counter_counts_the_gemms(device, mode, kw, torch_counts):
    """FlopCounterMode counts a fastrnn forward as torch counts torch.nn's decomposed one (2mnk
    per GEMM), and its backward as twice that: it computes dh0 too, which torch.nn's autograd
    skips when h0 needs no grad (so torch.nn's backward counts a little less)."""
    from torch.utils.flop_counter import FlopCounterMode

    T, B, I, H = 5, 2, 3, 4
    cell = mode.endswith("Cell")
    fast = getattr(fastrnn, mode)(I, H, device=device, **kw)
    x = torch.randn(*((B, I) if cell else (T, B, I)), device=device, requires_grad=True)

    def run(module, x, backward):
        with FlopCounterMode(display=False) as counter:
            out = module(x)
            if backward:
                (out[0] if isinstance(out, tuple) else out).sum().backward()
        return counter.get_total_flops()

    G = 3 if mode.startswith("GRU") else 4
    P = kw.get("proj_size") or H
    rows = B if cell else T * B
    layers = kw.get("num_layers", 1)
    directions = 2 if kw.get("bidirectional") else 1
    want = 0
    for layer in range(layers):
        layer_in = I if layer == 0 else directions * P
        want += directions * 2 * rows * (G * H * (layer_in + P) + (P * H if "proj_size" in kw else 0))
    assert run(fast, x, False) == want
    assert run(fast, x, True) == 3 * want
    if torch_counts:
        assert run(getattr(nn, mode)(I, H, **kw), x.detach().cpu(), False) == want

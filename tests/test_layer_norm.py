"""layer_norm=True on fastrnn.LSTM / GRU / LSTMCell / GRUCell: layer-normalised gates.

Semantics under test (issue 19): LN(v; w) = (v - mean v) / sqrt(var v + 1e-5) * w over all G*H
features of one batch entry (biased variance); gates = LN(W_ih x; w_ln_ih) + b_ih +
LN(W_hh h; w_ln_hh) + b_hh; LSTM h = o * tanh(LN(c; w_ln_c) + b_ln_c) with the state c
un-normalised, then the projection; GRU's n takes LN(W_hh h)_n + b_hn inside the reset product.

Oracle: fastrnn.reference's *_layer_norm_reference, a per-step Python loop over
F.layer_norm written from those equations (it uses no fastrnn op), stacked here over layers and
directions as torch.nn stacks them.
"""
import copy
import io
import pickle

import pytest
import torch
from torch import nn

import fastrnn
from _generators import OPTION_CONFIGS, OPTION_DIMS, OPTION_LENGTHS, config_id, option_inputs
from fastrnn import functional as Fn
from fastrnn import reference as R

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, B, I, H, P = OPTION_DIMS
LENGTHS = OPTION_LENGTHS
# float64 on both sides: each op rounds at 2^-53 ~ 1.1e-16. The longest chains are dot products of
# <= 2H + I = 14 terms and row means over G*H <= 20 features, per step over T = 6 steps and two
# layers; the norms multiply differences by rstd = 1/std of a row, which for these random weights
# (entries ~ U(-1/sqrt(H), 1/sqrt(H)) and O(1) inputs) stays below ~20. That bounds the accumulated
# difference near 1e-12; 1e-9 is a wide margin that any formula error (differences O(0.01) and
# more) cannot meet.
TOL64 = dict(rtol=1e-9, atol=1e-9)

CONFIGS = OPTION_CONFIGS


def _build(mode, opts, device, dtype=torch.float64):
    """The module with its norm parameters moved off their identity init (so a wrong use of any of
    them shows), in float64 unless dtype says otherwise."""
    kw = {k: v for k, v in opts.items() if k not in ("lengths", "unbatched")}
    torch.manual_seed(0)
    m = getattr(fastrnn, mode)(I, H, layer_norm=True, device=device, dtype=torch.float64, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "_ln_" in name:
                p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype).to(device))
    return m.to(dtype)


def _ln_inputs(mode, opts, device, dtype=torch.float64):
    return option_inputs(mode, opts, device, dtype, state_scale=0.5)


def _reference_stack(m, x, hx, lengths, params=None):
    """The module's forward from reference.py's layer functions, float64: torch.nn's stacking
    (layer by layer, forward direction first, the directions' outputs concatenated)."""
    p = dict(m.named_parameters()) if params is None else params
    p = {k: v.double() for k, v in p.items()}
    lstm = m.mode == "LSTM"
    unbatched = x.dim() == 2
    x = x.double()
    if unbatched:
        x = x.unsqueeze(1)
    elif m.batch_first:
        x = x.transpose(0, 1)
    h0, c0 = (hx if lstm else (hx, None))
    h0 = h0.double().unsqueeze(1) if unbatched else h0.double()
    c0 = None if c0 is None else (c0.double().unsqueeze(1) if unbatched else c0.double())
    D = 2 if m.bidirectional else 1
    hs, cs = [], []
    for layer in range(m.num_layers):
        ys = []
        for d in range(D):
            k, sfx = layer * D + d, f"_l{layer}" + ("_reverse" if d else "")
            w = [p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], p.get(f"bias_ih{sfx}"), p.get(f"bias_hh{sfx}")]
            ln = [p[f"weight_ln_ih{sfx}"], p[f"weight_ln_hh{sfx}"]]
            if lstm:
                ln += [p[f"weight_ln_c{sfx}"], p[f"bias_ln_c{sfx}"]]
                y, h, c = R.lstm_layer_norm_reference(x, h0[k], c0[k], *w, *ln, lengths, d == 1,
                                                      p.get(f"weight_hr{sfx}"))
                cs.append(c)
            else:
                y, h = R.gru_layer_norm_reference(x, h0[k], *w, *ln, lengths, d == 1)
            hs.append(h)
            ys.append(y)
        x = torch.cat(ys, 2)
    h_n = torch.stack(hs)
    c_n = torch.stack(cs) if lstm else None
    if unbatched:
        x, h_n = x.squeeze(1), h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    elif m.batch_first:
        x = x.transpose(0, 1)
    return (x, (h_n, c_n)) if lstm else (x, h_n)


def _flat(out):
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else [out]


def _loss(outs):
    """A fixed random projection of all the outputs (every element weighs in)."""
    g = torch.Generator().manual_seed(7)
    return sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
               for o in outs)


def _outputs_and_grads(out, leaves):
    outs = _flat(out)
    grads = torch.autograd.grad(_loss(outs), leaves, allow_unused=True)
    return outs, [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]


def _leaves(m, x, hx):
    """Every input that gets a gradient: x, the initial states and all parameters (norms included)."""
    x = x.detach().requires_grad_()
    hx = tuple(t.detach().requires_grad_() for t in hx) if isinstance(hx, tuple) else hx.detach().requires_grad_()
    params = list(m.parameters())
    return x, hx, [x, *(hx if isinstance(hx, tuple) else (hx,)), *params]


# --------------------------------------------------------------------------------------------
# against the reference


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_forward_and_grads_match_reference(config, device):
    mode, opts = config
    m = _build(mode, opts, device)
    x, hx, lengths = _ln_inputs(mode, opts, device)
    x, hx, leaves = _leaves(m, x, hx)
    got = _outputs_and_grads(m(x, hx, lengths=lengths), leaves)
    want = _outputs_and_grads(_reference_stack(m, x, hx, lengths), leaves)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, **TOL64)
    assert fastrnn._C.last_path(f"{mode.lower()}_backward")["path"].endswith("step_loop")


# The CPU backward keeps its gate grads, and with layer norm the hidden norm's grads and weight
# terms and the c norm's terms, in chunks of steps (step_loop.h: GradChunks, 8 MiB). At T=40,
# B=64, H=128 in float64 a step holds 64 rows of 14H (LSTM: 4H gate grads, 2 x 4H hidden norm, 2H
# c norm) or 10H (GRU) elements: chunks of 9 (LSTM) or 12 (GRU) steps, so boundaries fall
# mid-sequence and with lengths the buffers are re-zeroed. Reverse with lengths keeps all steps.
# Tolerance: TOL64's argument with longer chains (dot products of <= 2H + I = 265 terms, row means
# over G*H <= 512): still ~1e-12.
CHUNK_DIMS = (40, 64, 9, 128)  # T, B, I, H


@pytest.mark.parametrize("mode,chunks", [("LSTM", 5), ("GRU", 4)])
@pytest.mark.parametrize("lengths", [False, True], ids=["nolen", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["fwd", "bidir"])
def test_backward_in_chunks_matches_reference(mode, chunks, lengths, bidirectional, device):
    T, B, I_, H_ = CHUNK_DIMS
    torch.manual_seed(0)
    m = getattr(fastrnn, mode)(I_, H_, layer_norm=True, bidirectional=bidirectional, device=device,
                               dtype=torch.float64)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "_ln_" in name:
                p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype).to(device))
    g = torch.Generator().manual_seed(1)
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I_, generator=g, dtype=torch.float64).to(device)
    h0, c0 = (0.5 * torch.randn(D, B, H_, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    hx = (h0, c0) if mode == "LSTM" else h0
    lens = torch.randint(1, T + 1, (B,), generator=g) if lengths else None
    if lens is not None:
        lens[0] = T
    x, hx, leaves = _leaves(m, x, hx)
    got = _outputs_and_grads(m(x, hx, lengths=lens), leaves)
    if device.type == "cpu" and not bidirectional:
        assert fastrnn._C.last_path(f"{mode.lower()}_backward") == {"path": "cpu.step_loop", "grad_chunks": chunks}
    want = _outputs_and_grads(_reference_stack(m, x, hx, lens), leaves)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, **TOL64)


def test_padded_positions_are_zero_and_get_no_gradient(device):
    m = _build("LSTM", dict(bidirectional=True), device)
    x, hx, _ = _ln_inputs("LSTM", dict(bidirectional=True), device)
    x = x.detach().requires_grad_()
    y, _ = m(x, hx, lengths=LENGTHS)
    y.pow(2).sum().backward()
    for b, L in enumerate(LENGTHS):
        assert (y[L:, b] == 0).all() and (x.grad[L:, b] == 0).all()


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gradcheck_float64(mode, device):
    """torch.autograd.gradcheck of the layer function (the fused forward and backward ops) in
    float64, with lengths, in both directions, norm parameters included (and the LSTM's
    projection)."""
    g = torch.Generator().manual_seed(3)
    G = 4 if mode == "LSTM" else 3
    Tg, Bg, Ig, Hg, Pg = 4, 3, 3, 4, 2

    def r(*s, scale=0.5, shift=0.0):
        return (shift + scale * torch.randn(*s, generator=g, dtype=torch.float64)).to(device).requires_grad_()

    lengths = torch.tensor([4, 2, 3])
    for reverse in (False, True):
        if mode == "LSTM":
            args = (r(Tg, Bg, Ig, scale=1.0), r(Bg, Pg), r(Bg, Hg), r(G * Hg, Ig), r(G * Hg, Pg), r(G * Hg),
                    r(G * Hg), r(Pg, Hg), r(G * Hg, shift=1.0), r(G * Hg, shift=1.0), r(Hg, shift=1.0), r(Hg))

            def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c_w, ln_c_b):
                return Fn.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr, ln_ih, ln_hh,
                                     ln_c_w, ln_c_b)
        else:
            args = (r(Tg, Bg, Ig, scale=1.0), r(Bg, Hg), r(G * Hg, Ig), r(G * Hg, Hg), r(G * Hg), r(G * Hg),
                    r(G * Hg, shift=1.0), r(G * Hg, shift=1.0))

            def fn(x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh):
                return Fn.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, ln_ih, ln_hh)

        assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_double_backward(mode, device):
    """create_graph=True records the reference's layer-norm math (fastrnn._ops): second-order
    gradients agree with the reference's own."""
    opts = dict(lengths=True)
    m = _build(mode, opts, device)
    x, hx, lengths = _ln_inputs(mode, opts, device)
    x = x.detach().requires_grad_()
    params = list(m.parameters())

    def second(out):
        g1 = torch.autograd.grad(_loss(_flat(out)), [x], create_graph=True)[0]
        return torch.autograd.grad(g1.pow(2).sum(), params)

    for a, b in zip(second(m(x, hx, lengths=lengths)), second(_reference_stack(m, x, hx, lengths))):
        torch.testing.assert_close(a, b, **TOL64)


# Float32 and bfloat16 against the float64 reference run on the same (rounded) parameters and
# inputs, so only the computation's own rounding differs. Every stored value rounds at u (float32
# 2^-24 ~ 6e-8, bfloat16 2^-9 ~ 2e-3) relative; a norm turns a rounding of its input into one of
# its output up to sqrt(N - 1) ~ 4.4 times larger (|v - mean| <= sqrt(N - 1) std over a row of
# N = G*H <= 20 features). A path through T = 6 steps passes ~8 roundings a step: k ~ 48 in the
# forward, ~96 for the gradients (forward values re-read, then the backward's own).
# - float32: the worst case, u * 4.4 * k: 1.3e-5 (outputs), 2.5e-5 (gradients);
# - bfloat16: the worst case exceeds 1, so it is no test; independent roundings add like a random
#   walk, u * 4.4 * sqrt(k): 0.06 (outputs), 0.085 (gradients), taken with a factor 2 / 3 of
#   margin: 0.1 and 0.25. What it checks is that the half-type path (statistics in float32) runs
#   the same math, not its last bits; float32 checks the bits.
# Gradients are compared relative to each one's largest entry (the loss weights are O(1)).
LOW_TOL = {torch.float32: (dict(rtol=1.3e-5, atol=1.3e-5), dict(rtol=2.5e-5, atol=2.5e-5)),
           torch.bfloat16: (dict(rtol=0.1, atol=0.1), dict(rtol=0.25, atol=0.25))}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_low_precision_against_reference(mode, dtype, device):
    opts = dict(bidirectional=True, lengths=True)
    m = _build(mode, opts, device, dtype)
    x, hx, lengths = _ln_inputs(mode, opts, device, dtype)
    x, hx, leaves = _leaves(m, x, hx)
    got = _outputs_and_grads(m(x, hx, lengths=lengths), leaves)
    want = _outputs_and_grads(_reference_stack(m, x, hx, lengths), leaves)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a.double(), b, **LOW_TOL[dtype][0])
    for a, b in zip(got[1], want[1]):
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a.double() / scale, b.double() / scale, **LOW_TOL[dtype][1])


# --------------------------------------------------------------------------------------------
# cells


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_cells_match_reference(mode, unbatched, device):
    torch.manual_seed(0)
    cell = getattr(fastrnn, f"{mode}Cell")(I, H, layer_norm=True, device=device, dtype=torch.float64)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if "_ln_" in name:
                p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype).to(device))
    g = torch.Generator().manual_seed(2)
    batch = () if unbatched else (B,)
    x = torch.randn(*batch, I, generator=g, dtype=torch.float64).to(device).requires_grad_()
    h = torch.randn(*batch, H, generator=g, dtype=torch.float64).to(device).requires_grad_()
    c = torch.randn(*batch, H, generator=g, dtype=torch.float64).to(device).requires_grad_()
    p = dict(cell.named_parameters())
    leaves = [x, h] + ([c] if mode == "LSTM" else []) + list(p.values())
    w = [p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], p["weight_ln_ih"], p["weight_ln_hh"]]
    xb, hb, cb = (x.unsqueeze(0), h.unsqueeze(0), c.unsqueeze(0)) if unbatched else (x, h, c)
    if mode == "LSTM":
        got = cell(x, (h, c))
        want = R.lstm_cell_layer_norm_reference(xb, hb, cb, *w, p["weight_ln_c"], p["bias_ln_c"])
    else:
        got = cell(x, h)
        want = R.gru_cell_layer_norm_reference(xb, hb, *w)
    if unbatched:
        want = tuple(t.squeeze(0) for t in want) if mode == "LSTM" else want.squeeze(0)
    a, b = _outputs_and_grads(got, leaves), _outputs_and_grads(want, leaves)
    for u, v in zip(a[0] + a[1], b[0] + b[1]):
        torch.testing.assert_close(u, v, **TOL64)


def test_cell_parameters():
    cell = fastrnn.LSTMCell(I, H, layer_norm=True)
    names = [n for n, _ in cell.named_parameters()]
    assert names == ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ln_ih", "weight_ln_hh", "weight_ln_c",
                     "bias_ln_c"]
    assert (cell.weight_ln_ih == 1).all() and (cell.weight_ln_c == 1).all() and (cell.bias_ln_c == 0).all()
    gru = fastrnn.GRUCell(I, H, bias=False, layer_norm=True)
    assert [n for n, _ in gru.named_parameters()] == ["weight_ih", "weight_hh", "weight_ln_ih", "weight_ln_hh"]
    plain = fastrnn.LSTMCell(I, H)
    assert list(plain.state_dict()) == list(nn.LSTMCell(I, H).state_dict())
    assert plain.weight_ln_ih is None and "layer_norm" not in repr(plain)
    assert "layer_norm=True" in repr(cell)


# --------------------------------------------------------------------------------------------
# parameters, state_dict, pickles, options


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_parameters_and_state_dict_keys(mode):
    kw = dict(num_layers=2, bidirectional=True)
    m = getattr(fastrnn, mode)(I, H, layer_norm=True, **kw)
    plain = getattr(nn, mode)(I, H, **kw)
    G = 4 if mode == "LSTM" else 3
    keys = list(m.state_dict())
    for layer in range(2):
        for sfx in ("", "_reverse"):
            own = [f"weight_ih_l{layer}{sfx}", f"weight_hh_l{layer}{sfx}", f"bias_ih_l{layer}{sfx}",
                   f"bias_hh_l{layer}{sfx}", f"weight_ln_ih_l{layer}{sfx}", f"weight_ln_hh_l{layer}{sfx}"]
            if mode == "LSTM":
                own += [f"weight_ln_c_l{layer}{sfx}", f"bias_ln_c_l{layer}{sfx}"]
            i = keys.index(own[0])
            assert keys[i:i + len(own)] == own  # torch.nn's, then the norms', per layer and direction
            assert m.get_parameter(f"weight_ln_ih_l{layer}{sfx}").shape == (G * H,)
            assert (m.get_parameter(f"weight_ln_hh_l{layer}{sfx}") == 1).all()
            if mode == "LSTM":
                assert m.get_parameter(f"weight_ln_c_l{layer}{sfx}").shape == (H,)
                assert (m.get_parameter(f"bias_ln_c_l{layer}{sfx}") == 0).all()
    # torch.nn's own keys are all there, and with the option off nothing else
    assert set(plain.state_dict()) <= set(keys)
    assert list(getattr(fastrnn, mode)(I, H, **kw).state_dict()) == list(plain.state_dict())
    # reset_parameters keeps the norms at the identity
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(3.0)
    m.reset_parameters()
    for name, p in m.named_parameters():
        if name.startswith("weight_ln_"):
            assert (p == 1).all()
        elif name.startswith("bias_ln_"):
            assert (p == 0).all()
        else:
            assert p.abs().max() <= H ** -0.5


def test_identity_norm_differs_from_plain_but_loads_its_weights():
    """torch.nn's weights load into a layer-norm module with strict=False (the norms stay at the
    identity), and the result differs from the plain LSTM (the norms change the function)."""
    plain = fastrnn.LSTM(I, H)
    m = fastrnn.LSTM(I, H, layer_norm=True)
    missing, unexpected = m.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["bias_ln_c_l0", "weight_ln_c_l0", "weight_ln_hh_l0", "weight_ln_ih_l0"]
    assert not unexpected
    x = torch.randn(T, B, I)
    assert not torch.allclose(m(x)[0], plain(x)[0])


def test_keyword_only_and_type():
    with pytest.raises(TypeError):
        fastrnn.LSTM(I, H, 1, True, False, 0.0, False, 0, None, None, True)
    with pytest.raises(TypeError, match="layer_norm should be of type bool"):
        fastrnn.GRU(I, H, layer_norm=1)
    with pytest.raises(TypeError, match="layer_norm should be of type bool"):
        fastrnn.GRUCell(I, H, layer_norm="yes")


def test_extra_repr():
    assert "layer_norm=True" in repr(fastrnn.GRU(I, H, layer_norm=True))
    assert "layer_norm" not in repr(fastrnn.GRU(I, H))


def test_pickle_round_trip_and_old_pickles_load_off():
    m = _build("LSTM", dict(num_layers=2), "cpu")
    x, hx, _ = _ln_inputs("LSTM", dict(num_layers=2), "cpu")
    back = pickle.loads(pickle.dumps(m))
    assert back.layer_norm
    for a, b in zip(_flat(back(x, hx)), _flat(m(x, hx))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    old = fastrnn.GRU(I, H)
    del old.__dict__["layer_norm"]  # as pickled before the option existed
    assert pickle.loads(pickle.dumps(old)).layer_norm is False
    cell = fastrnn.LSTMCell(I, H)
    state = cell.__dict__.copy()
    del state["layer_norm"]
    for name in ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c"):
        del state["_parameters"][name]
    restored = fastrnn.LSTMCell.__new__(fastrnn.LSTMCell)
    restored.__setstate__(state)
    assert restored.layer_norm is False and restored.weight_ln_c is None
    xs = torch.randn(B, I)
    torch.testing.assert_close(restored(xs)[0], cell(xs)[0], rtol=0, atol=0)


def test_packed_sequence_matches_lengths():
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    opts = dict(num_layers=2, bidirectional=True, lengths=True)
    m = _build("LSTM", opts, "cpu")
    x, hx, lengths = _ln_inputs("LSTM", opts, "cpu")
    y, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
    y_l, (h_l, c_l) = m(x, hx, lengths=lengths)
    torch.testing.assert_close(pad_packed_sequence(y, total_length=T)[0], y_l, **TOL64)
    torch.testing.assert_close(h, h_l, **TOL64)
    torch.testing.assert_close(c, c_l, **TOL64)


# --------------------------------------------------------------------------------------------
# ops: fake kernels, checks


def _op_args(mode, device, dtype=torch.float64):
    g = torch.Generator().manual_seed(5)
    G = 4 if mode == "LSTM" else 3

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype).to(device)

    if mode == "LSTM":
        return [r(T, B, I), r(B, H), r(B, H), r(G * H, I), r(G * H, H), r(G * H), r(G * H), None, None, False, True,
                r(G * H), r(G * H), r(H), r(H)]
    return [r(T, B, I), r(B, H), r(G * H, I), r(G * H, H), r(G * H), r(G * H), None, False, True, r(G * H), r(G * H)]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_opcheck(mode, device):
    op = getattr(torch.ops.fastrnn, f"{mode.lower()}_forward")
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in _op_args(mode, device)]
    torch.library.opcheck(op, args)


def _bad_ln_cases(mode):
    """(index of the argument to replace, replacement factory, exception, message) for the
    forward op's layer-norm arguments."""
    first = 11 if mode == "LSTM" else 9
    names = ("ln_ih, ln_hh, ln_c_w and ln_c_b" if mode == "LSTM" else "ln_ih and ln_hh")
    G = 4 if mode == "LSTM" else 3
    return [
        (first + 1, lambda a: None, RuntimeError, f"expected the layer-norm parameters {names} all given or all None"),
        (first, lambda a: a[first][:-1], RuntimeError, rf"expected ln_ih of shape \[{G * H}\], got \[{G * H - 1}\]"),
        (first + 1, lambda a: a[first + 1].float(), RuntimeError, "expected ln_hh to have dtype Double"),
    ] + ([(first + 3, lambda a: a[first + 3][None], RuntimeError, rf"expected ln_c_b of shape \[{H}\]")]
         if mode == "LSTM" else [])


@pytest.mark.parametrize("meta", [False, True], ids=["eager", "fake"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_bad_layer_norm_arguments(mode, meta):
    """The kernel and the fake kernel refuse the same calls with the same messages."""
    op = getattr(torch.ops.fastrnn, f"{mode.lower()}_forward")
    for index, make, exc, msg in _bad_ln_cases(mode):
        args = _op_args(mode, "cpu")
        args[index] = make(args)
        if meta:
            args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(exc, match=f"fastrnn::{mode.lower()}_forward: {msg}"):
            op(*args)


def test_backward_op_returns_empty_norm_grads_without_layer_norm():
    x, h0, c0, w_ih, w_hh = torch.randn(T, B, I), torch.zeros(B, H), torch.zeros(B, H), torch.randn(4 * H, I), \
        torch.randn(4 * H, H)
    y, h, c, ws = torch.ops.fastrnn.lstm_forward(x, h0, c0, w_ih, w_hh, None, None, None, None, False, True)
    out = torch.ops.fastrnn.lstm_backward(torch.ones_like(y), torch.zeros_like(h), torch.zeros_like(c), x, h0, c0,
                                          w_ih, w_hh, None, y, ws, None, False, False)
    assert len(out) == 12 and all(t.numel() == 0 for t in out[-4:])


# --------------------------------------------------------------------------------------------
# dispatch: the persistent recurrences do not have layer norm


def test_forced_persistent_raises_and_prefer_falls_back(device, monkeypatch):
    for mode in ("LSTM", "GRU"):
        m = _build(mode, {}, device, torch.float32)
        x, hx, _ = _ln_inputs(mode, {}, device, torch.float32)
        monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
        with pytest.raises(NotImplementedError, match="layer_norm"):
            m(x, hx)
        monkeypatch.setenv("FASTRNN_RECURRENCE", "prefer-persistent")
        got = _flat(m(x, hx))
        rec = fastrnn._C.last_path(f"{mode.lower()}_forward")
        assert rec["path"] == f"{device.type}.step_loop"
        if device.type == "cuda":
            assert rec["fallback"] == "it has no layer_norm"
        monkeypatch.delenv("FASTRNN_RECURRENCE")
        for a, b in zip(got, _flat(m(x, hx))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cell_call_skips_the_fused_single_step():
    """The CPU's fused single step (float cell calls of few rows) has no layer norm: such a call
    runs the step loop."""
    cell = fastrnn.LSTMCell(I, H, layer_norm=True)
    cell(torch.randn(1, I))
    assert fastrnn._C.last_path("lstm_forward")["path"] == "cpu.step_loop"
    fastrnn.LSTMCell(I, H)(torch.randn(1, I))
    assert fastrnn._C.last_path("lstm_forward")["path"] == "cpu.single_step"


# --------------------------------------------------------------------------------------------
# TorchScript, torch.compile, torch.export, ONNX, to_torch


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script's deprecation notice
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_script_matches_eager(mode, device):
    opts = dict(num_layers=2, bidirectional=True, lengths=True)
    m = _build(mode, opts, device)
    x, hx, lengths = _ln_inputs(mode, opts, device)
    scripted = torch.jit.script(m)
    x, hx, leaves = _leaves(m, x, hx)
    got = _outputs_and_grads(scripted(x, hx, lengths=lengths), leaves)
    want = _outputs_and_grads(m(x, hx, lengths=lengths), leaves)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_script_cell(mode, device):
    cell = getattr(fastrnn, f"{mode}Cell")(I, H, layer_norm=True, device=device, dtype=torch.float64)
    scripted = torch.jit.script(cell)
    x = torch.randn(B, I, dtype=torch.float64, device=device)
    for a, b in zip(_flat(scripted(x)), _flat(cell(x))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.usefixtures("allow_rnn")
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_compile_fullgraph_matches_eager(mode, device):
    opts = dict(num_layers=2, bidirectional=True)
    m = _build(mode, opts, device)
    x, hx, _ = _ln_inputs(mode, opts, device)
    x, hx, leaves = _leaves(m, x, hx)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
        got = _outputs_and_grads(compiled(x, hx), leaves)
    finally:
        torch._dynamo.reset()
    want = _outputs_and_grads(m(x, hx), leaves)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_export(device):
    opts = dict(num_layers=2, bidirectional=True, batch_first=True)
    m = _build("LSTM", opts, device)
    x, hx, _ = _ln_inputs("LSTM", opts, device)
    ep = torch.export.export(m, (x, hx))
    fused = [n for n in ep.graph.nodes if getattr(n.target, "namespace", None) == "fastrnn"]
    assert len(fused) == 4
    with torch.no_grad():
        for a, b in zip(_flat(ep.module()(x, hx)), _flat(m(x, hx))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_onnx_refuses(mode, exporter):
    import fastrnn.onnx
    m = getattr(fastrnn, mode)(I, H, layer_norm=True).eval()
    x = torch.randn(T, B, I)
    with pytest.raises(fastrnn.onnx.UnsupportedExportError, match="layer_norm"):
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
            fastrnn.onnx.export(m, (x,), dynamo=True, verbose=False)
        else:
            fastrnn.onnx.export(m, (x,), io.BytesIO(), dynamo=False)


def test_to_torch_refuses():
    model = nn.Sequential(nn.Linear(I, I), fastrnn.GRU(I, H, layer_norm=True))
    with pytest.raises(ValueError, match="layer_norm"):
        fastrnn.to_torch(model)
    with pytest.raises(ValueError, match="layer_norm"):
        fastrnn.to_torch(fastrnn.LSTMCell(I, H, layer_norm=True))
    assert isinstance(fastrnn.to_torch(fastrnn.GRU(I, H)), nn.GRU)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_trace_matches_eager(device):
    opts = dict(num_layers=2, bidirectional=True)
    m = _build("GRU", opts, device)
    x, hx, _ = _ln_inputs("GRU", opts, device)
    traced = torch.jit.trace(m, (x, hx), check_trace=False)
    for a, b in zip(_flat(traced(x, hx)), _flat(m(x, hx))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_autocast_casts_the_norm_parameters():
    """Under CPU autocast (bfloat16) the layer runs in bfloat16, norm parameters included (the op
    refuses mixed dtypes), and agrees with the bfloat16 module run without autocast."""
    m = _build("LSTM", {}, "cpu", torch.float32)
    x, hx, _ = _ln_inputs("LSTM", {}, "cpu", torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = m(x, hx)
    assert y.dtype == torch.bfloat16
    m16 = copy.deepcopy(m).to(torch.bfloat16)  # the parameters rounded as autocast rounds them
    y16, _ = m16(x.bfloat16(), tuple(t.bfloat16() for t in hx))
    torch.testing.assert_close(y, y16, rtol=0, atol=0)  # the same casts, the same kernel

"""fastrnn's options together: layer_norm with zoneout (on h) and recurrent_dropout, in one fused
call, against fastrnn.reference's plain-PyTorch layers (which take every option at once); and the
one combination the kernels refuse (layer_norm with zoneout_cell).

Each option alone is tested in its own file (test_layer_norm.py, test_zoneout_recurrent_dropout.py,
test_weight_drop.py); here the masks are drawn the way the layers draw them (docs/DESIGN.md,
"Options beyond torch.nn": after weight drop's, layer by layer, forward direction first, each
layer's zoneout [T, B, P] by torch.bernoulli, then recurrent dropout's F.dropout of ones [B, P])
from the same seed, so both sides see the same masks.
"""
import pytest
import torch
import torch.nn.functional as F

import fastrnn
from fastrnn import reference as R

T, B, I, H = 5, 3, 4, 6
LENGTHS = [5, 2, 4]
ZONEOUT, RECDROP = 0.3, 0.4
# float64 on both sides: a few hundred roundings of 2^-53 each through O(1) activations, and the
# layer norms' 1/sigma of O(1) pre-activations, keep the difference near 1e-14; a wrong mask or
# a mask applied at the wrong place changes results by O(0.1).
TOL64 = dict(rtol=1e-9, atol=1e-10)


def _masks(mode, P, training, seed):
    """The masks of each direction, drawn as run_stack draws them (no zoneout_cell here)."""
    torch.manual_seed(seed)
    out = []
    for _ in range(2):
        zh = torch.bernoulli(torch.full((T, B, P), ZONEOUT, dtype=torch.float64)) if training \
            else torch.tensor(ZONEOUT, dtype=torch.float64)
        rec = F.dropout(torch.ones(B, P, dtype=torch.float64), RECDROP, True) if training else None
        out.append((zh, rec))
    return out


def _reference(mode, m, x, h0, c0, lengths, masks):
    ys, hs, cs = [], [], []
    for d, sfx in enumerate(("", "_reverse")):
        p = {n: getattr(m, f"{n}_l0{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                     "weight_ln_ih", "weight_ln_hh")}
        zh, rec = masks[d]
        if mode == "LSTM":
            ln = (p["weight_ln_ih"], p["weight_ln_hh"], getattr(m, f"weight_ln_c_l0{sfx}"),
                  getattr(m, f"bias_ln_c_l0{sfx}"))
            y, h, c = R.lstm_zoneout_reference(x, h0[d], c0[d], p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                               p["bias_hh"], lengths, d == 1, None, zh, None, rec, ln)
            cs.append(c)
        else:
            y, h = R.gru_zoneout_reference(x, h0[d], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                                           lengths, d == 1, zh, rec, (p["weight_ln_ih"], p["weight_ln_hh"]))
        ys.append(y)
        hs.append(h)
    states = (torch.stack(hs), torch.stack(cs)) if mode == "LSTM" else torch.stack(hs)
    return torch.cat(ys, 2), states


def _flat(out):
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_layer_norm_with_zoneout_and_recurrent_dropout(device, mode, training):
    torch.manual_seed(0)
    m = getattr(fastrnn, mode)(I, H, bidirectional=True, layer_norm=True, zoneout=ZONEOUT,
                               recurrent_dropout=RECDROP, dtype=torch.float64).to(device)
    with torch.no_grad():  # the norms off their identity init, so that they matter
        for name, p in m.named_parameters():
            if "_ln_" in name:
                p.add_(0.2 * torch.randn_like(p))
    m.train(training)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(device).requires_grad_()
    h0 = torch.randn(2, B, H, generator=g, dtype=torch.float64).to(device)
    c0 = torch.randn(2, B, H, generator=g, dtype=torch.float64).to(device)
    hx = (h0, c0) if mode == "LSTM" else h0
    lengths = torch.tensor(LENGTHS)
    masks = [tuple(None if t is None else t.to(device) for t in pair) for pair in _masks(mode, H, training, 3)]
    torch.manual_seed(3)
    got = _flat(m(x, hx, lengths=lengths))
    want = _flat(_reference(mode, m, x, h0, c0, lengths, masks))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL64)
    leaves = [x] + list(m.parameters())
    gw = torch.Generator().manual_seed(7)
    weights = [torch.randn(o.shape, generator=gw, dtype=o.dtype).to(device) for o in got]
    d_got = torch.autograd.grad(sum((o * w).sum() for o, w in zip(got, weights)), leaves)
    d_want = torch.autograd.grad(sum((o * w).sum() for o, w in zip(want, weights)), leaves)
    for a, b in zip(d_got, d_want):
        torch.testing.assert_close(a, b, **TOL64)


def test_gradcheck_layer_norm_zoneout_recurrent_dropout():
    """Exact gradients of a training-mode forward with every combinable option, re-seeded before
    each call so that every evaluation sees the same masks."""
    torch.manual_seed(0)
    m = fastrnn.LSTM(3, 4, layer_norm=True, zoneout=0.3, recurrent_dropout=0.3, weight_drop=0.2,
                     dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())
    names = [n for n, _ in m.named_parameters()]

    def f(x, *ps):
        torch.manual_seed(5)
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (x,), {"lengths": [4, 3]})
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, *params))


def test_layer_norm_with_zoneout_cell_is_refused():
    with pytest.raises(NotImplementedError, match="layer_norm with zoneout_cell"):
        fastrnn.LSTM(I, H, layer_norm=True, zoneout_cell=0.1)
    x = torch.randn(T, B, I)
    z = torch.zeros(B, H)
    w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
    ln = (torch.ones(4 * H), torch.ones(4 * H), torch.ones(H), torch.zeros(H))
    args = (x, z, z, w_ih, w_hh, None, None, None, None, False, False, *ln, None, torch.tensor(0.1), None)
    with pytest.raises(NotImplementedError, match="layer norm with zoneout_cell"):
        torch.ops.fastrnn.lstm_forward(*args)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:  # the fake kernel refuses it the same way
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(NotImplementedError, match="layer norm with zoneout_cell"):
            torch.ops.fastrnn.lstm_forward(*fake)

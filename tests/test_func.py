"""torch.func transforms (grad, vmap, jvp, jacrev, functional_call) and forward-mode AD through
fastrnn's layers and cells, against torch.nn's results (float64, computed on the CPU where
torch.nn supports the transform) or against plain autograd. Under a transform fastrnn runs
reference.py's math (the ops' torch.library autograd cannot serve there); outside one, the
fused ops, as before.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

import fastrnn
from fastrnn import functional as F

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN",
                                        "ignore:`torch.jit.script` is deprecated")

f64 = torch.float64
T, B, I, H, P = 5, 3, 3, 4, 2
LENGTHS = [5, 2, 4]

LAYERS = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=P, batch_first=True)),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
]
LAYER_IDS = ["lstm-L2-bi", "lstm-proj-bf", "gru-L2-bi-bf"]


def _pair(mode, cfg, device):
    torch.manual_seed(0)
    fast = getattr(fastrnn, mode)(I, H, dtype=f64, device=device, **cfg)
    ref = getattr(nn, mode)(I, H, dtype=f64, **cfg)  # on the CPU: oneDNN / ATen, no cuDNN
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _input(cfg, device):
    torch.manual_seed(1)
    shape = (B, T, I) if cfg.get("batch_first") else (T, B, I)
    return torch.randn(*shape, dtype=f64, device=device)


def _close(a, b):
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode,cfg", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_grad_of_functional_call_matches_torch_nn(device, mode, cfg, lengths):
    fast, ref = _pair(mode, cfg, device)
    x = _input(cfg, device)
    lens = torch.tensor(LENGTHS) if lengths else None

    def loss(module, params, x):
        if lens is None:
            y = functional_call(module, params, (x,))[0]
        else:  # torch.nn takes lengths as a PackedSequence
            if isinstance(module, (fastrnn.LSTM, fastrnn.GRU)):
                y = functional_call(module, params, (x,), {"lengths": lens})[0]
            else:
                packed = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=module.batch_first,
                                                           enforce_sorted=False)
                y = nn.utils.rnn.pad_packed_sequence(functional_call(module, params, (packed,))[0],
                                                     batch_first=module.batch_first, total_length=T)[0]
        return (y * y.cos()).sum()

    got = grad(loss, argnums=(1, 2))(fast, dict(fast.named_parameters()), x)
    # torch.nn's side by plain autograd: its RNNs with a PackedSequence fail under torch.func
    x_ref = x.cpu().requires_grad_()
    ref_params = dict(ref.named_parameters())
    found = torch.autograd.grad(loss(ref, ref_params, x_ref), [*ref_params.values(), x_ref])
    want = (dict(zip(ref_params, found[:-1])), found[-1])
    for name in got[0]:
        _close(got[0][name], want[0][name])
    _close(got[1], want[1])


@pytest.mark.parametrize("mode,cfg", LAYERS, ids=LAYER_IDS)
def test_per_sample_grads_with_vmap(device, mode, cfg):
    """vmap(grad(...)) over the batch: each entry's grads equal a plain backward on that entry
    alone (torch.nn's own RNNs fail under this vmap in this torch)."""
    fast, _ = _pair(mode, cfg, device)
    x = _input(cfg, device)
    bdim = 0 if cfg.get("batch_first") else 1
    params = {n: p.detach() for n, p in fast.named_parameters()}

    def loss(params, xi):
        y = functional_call(fast, params, (xi.unsqueeze(bdim),))[0]
        return y.square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, bdim))(params, x)
    for b in range(B):
        fast.zero_grad()
        fast(x.select(bdim, b).unsqueeze(bdim))[0].square().sum().backward()
        for name, p in fast.named_parameters():
            _close(per_sample[name][b], p.grad)


@pytest.mark.parametrize("mode,cfg", LAYERS, ids=LAYER_IDS)
def test_jvp_and_forward_ad_match_torch_nn(device, mode, cfg):
    fast, ref = _pair(mode, cfg, device)
    x = _input(cfg, device)
    torch.manual_seed(2)
    t = torch.randn_like(x)
    _, want = jvp(lambda x: ref(x)[0], (x.cpu(),), (t.cpu(),))
    _, got = jvp(lambda x: fast(x)[0], (x,), (t,))
    _close(got, want)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(fast(fwAD.make_dual(x, t))[0]).tangent
    _close(tangent, want)


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
def test_cells_under_jacrev_and_vmap(device, mode):
    torch.manual_seed(3)
    fast = getattr(fastrnn, mode)(I, H, dtype=f64, device=device)
    ref = getattr(nn, mode)(I, H, dtype=f64)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(B, I, dtype=f64, device=device)

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    _close(jacrev(lambda x: first(fast(x)))(x), jacrev(lambda x: first(ref(x)))(x.cpu()))
    # vmap over entries of an unbatched input equals the batched call
    _close(vmap(lambda xi: first(fast(xi)))(x), first(fast(x)))


def test_fused_ops_outside_transforms_reference_inside(monkeypatch):
    """The fallback is taken only under a transform: plain training keeps the fused ops."""
    calls = []
    for name in ("lstm_reference", "gru_reference"):
        real = getattr(F, name)
        monkeypatch.setattr(F, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    lstm, gru = fastrnn.LSTM(I, H, dtype=f64), fastrnn.GRU(I, H, dtype=f64)
    x = torch.randn(T, B, I, dtype=f64, requires_grad=True)
    (lstm(x)[0].sum() + gru(x)[0].sum()).backward()
    with torch.no_grad():
        lstm(x), gru(x)
    assert calls == []
    grad(lambda x: lstm(x)[0].sum() + gru(x)[0].sum())(x.detach())
    assert calls == ["lstm_reference", "gru_reference"]

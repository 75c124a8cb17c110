"""Double backward (create_graph=True, then a second backward through the RNN): gradgradcheck in
float64 on the functional layers and cells, second-order gradients of a gradient penalty against
torch.nn's, and which path runs: the differentiable recomputation only when the backward is
recorded, the fused backward kernels otherwise (eager and compiled).
"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import fastrnn
from fastrnn import functional as F

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

f64 = torch.float64
T, B, I, H, P = 4, 3, 2, 3, 2
LENGTHS = [3, 4, 1]


def _r(device, *shape):
    return torch.randn(*shape, dtype=f64, device=device, requires_grad=True)


@pytest.mark.parametrize("kind", ["lstm", "lstm-proj", "gru"])
@pytest.mark.parametrize("lengths,reverse", [(False, False), (True, False), (True, True)],
                         ids=["full", "lengths", "lengths-rev"])
def test_gradgradcheck_layers(device, kind, lengths, reverse):
    torch.manual_seed(0)
    proj = P if kind == "lstm-proj" else 0
    G = 3 if kind == "gru" else 4
    lens = torch.tensor(LENGTHS) if lengths else None
    x, h0 = _r(device, T, B, I), _r(device, B, proj or H)
    w = [_r(device, G * H, I), _r(device, G * H, proj or H), _r(device, G * H), _r(device, G * H)]
    if kind == "gru":
        inputs = (x, h0, *w)

        def fn(*a):
            return F.gru_layer(*a, lengths=lens, reverse=reverse)
    else:
        inputs = (x, h0, _r(device, B, H), *w) + ((_r(device, proj, H),) if proj else ())

        def fn(*a):
            return F.lstm_layer(*a[:7], lengths=lens, reverse=reverse, w_hr=a[7] if proj else None)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("bias", [True, False])
def test_gradgradcheck_cells(device, mode, bias):
    torch.manual_seed(1)
    cell = getattr(fastrnn, mode)(I, H, bias=bias, device=device, dtype=f64)
    params = list(cell.parameters())
    states = [_r(device, B, H) for _ in range(2 if mode == "LSTMCell" else 1)]

    def fn(x, *args):
        hx = tuple(args[:2]) if mode == "LSTMCell" else args[0]
        new = dict(zip([n for n, _ in cell.named_parameters()], args[len(states):]))
        return torch.func.functional_call(cell, new, (x, hx))

    assert torch.autograd.gradgradcheck(fn, (_r(device, B, I), *states, *params), eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# a gradient penalty, against torch.nn


def _penalty_grads(module, x, hx, lengths, batch_first):
    """d/d(x, hx, params) of loss + |d loss / d x|^2 with loss = sum(out * cot) + sum of states."""
    x = x.detach().clone().requires_grad_()
    hx = tuple(t.detach().clone().requires_grad_() for t in hx)
    module.zero_grad(set_to_none=True)
    lstm = len(hx) == 2
    inp = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, state = module(inp, hx if lstm else hx[0])
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    states = state if lstm else (state,)
    g = torch.Generator().manual_seed(5)
    loss = (out * torch.randn(out.shape, generator=g, dtype=f64).to(out.device)).sum() + \
        sum((s * s).sum() for s in states)
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    (loss + gx.square().sum()).backward()
    return [x.grad, *(t.grad for t in hx)] + [p.grad for p in module.parameters()]


PENALTY_CASES = [
    pytest.param("LSTM", dict(), None, id="lstm"),
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True), LENGTHS, id="lstm-L2-bi-bf-packed"),
    pytest.param("LSTM", dict(proj_size=P, bidirectional=True), LENGTHS, id="lstm-proj-bi-packed"),
    pytest.param("GRU", dict(num_layers=2), None, id="gru-L2"),
    pytest.param("GRU", dict(bidirectional=True, batch_first=True), LENGTHS, id="gru-bi-bf-packed"),
]


@pytest.mark.parametrize("mode,cfg,lengths", PENALTY_CASES)
def test_gradient_penalty_matches_torch_nn(device, mode, cfg, lengths):
    torch.manual_seed(2)
    ref = getattr(nn, mode)(I, H, **cfg, dtype=f64, device=device)
    fast = getattr(fastrnn, mode)(I, H, **cfg, dtype=f64, device=device)
    fast.load_state_dict(ref.state_dict())
    D = 2 if cfg.get("bidirectional") else 1
    L = cfg.get("num_layers", 1)
    bf = cfg.get("batch_first", False)
    x = torch.randn((B, T, I) if bf else (T, B, I), dtype=f64, device=device)
    hx = [torch.randn(L * D, B, cfg.get("proj_size") or H, dtype=f64, device=device)]
    if mode == "LSTM":
        hx.append(torch.randn(L * D, B, H, dtype=f64, device=device))
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's RNN has no double backward
        want = _penalty_grads(ref, x, hx, lengths, bf)
    got = _penalty_grads(fast, x, hx, lengths, bf)
    names = ["x"] + [f"hx{i}" for i in range(len(hx))] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
def test_cell_gradient_penalty_matches_torch_nn(device, mode):
    torch.manual_seed(3)
    ref = getattr(nn, mode)(I, H, dtype=f64, device=device)
    fast = getattr(fastrnn, mode)(I, H, dtype=f64, device=device)
    fast.load_state_dict(ref.state_dict())
    x0 = torch.randn(B, I, dtype=f64, device=device)
    results = []
    for m in (ref, fast):
        x = x0.clone().requires_grad_()
        out = m(x)
        loss = sum((o.sin() * (k + 1)).sum() for k, o in enumerate(out if isinstance(out, tuple) else (out,)))
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        gx.square().sum().backward()
        results.append([x.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------------
# which path runs


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastrnn":
            self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_fused_backward_unless_the_backward_is_recorded(device, mode):
    torch.manual_seed(4)
    m = getattr(fastrnn, mode)(I, H, num_layers=2, dtype=f64, device=device)
    x = torch.randn(T, B, I, dtype=f64, device=device, requires_grad=True)
    bwd = f"{mode.lower()}_backward"

    def backward_ops(create_graph):
        y, _ = m(x)
        rec = _RecordOps()
        with rec:
            grads = torch.autograd.grad(y.sum(), [x, *m.parameters()], create_graph=create_graph)
        return rec.names, grads

    first, g1 = backward_ops(False)
    assert first == [bwd, bwd]  # one fused backward per layer
    recorded, g2 = backward_ops(True)
    assert bwd not in recorded  # the differentiable recomputation
    assert all(g.requires_grad for g in g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)

@pytest.mark.usefixtures("allow_rnn")

def test_compiled_backward_keeps_the_fused_kernel():
    """AOTAutograd traces the backward with grad mode off: the compiled backward graph calls the
    fused backward op, not the recomputation."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = {}

    def keep(name):
        def compiler(gm, example_inputs):
            graphs[name] = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
            return make_boxed_func(gm)
        return compiler

    m = fastrnn.LSTM(I, H, batch_first=True)
    x = torch.randn(B, T, I, requires_grad=True)
    torch._dynamo.reset()
    try:
        f = torch.compile(m, fullgraph=True, backend=aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw")))
        f(x)[0].sum().backward()
    finally:
        torch._dynamo.reset()
    assert "fastrnn.lstm_forward.default" in graphs["fw"]
    assert "fastrnn.lstm_backward.default" in graphs["bw"]
    assert x.grad is not None and x.grad.shape == x.shape

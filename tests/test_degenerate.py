"""Empty batches (B = 0) and empty states (hidden_size = 0, cells only: nn.LSTM / nn.GRU refuse
it), which torch.nn takes and the fused kernels refuse: fastrnn must give torch.nn's results
(shapes, dtypes, autograd graph, zero grads) and raise where torch.nn raises.
"""
import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import functional as F
from fastrnn.reference import gru_reference, lstm_reference

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, I, H, P = 4, 3, 5, 2
f64 = torch.float64


def _pair(mode, device, dtype, **cfg):
    torch.manual_seed(0)
    ref = getattr(nn, mode)(**cfg, device=device, dtype=dtype)
    fast = getattr(fastrnn, mode)(**cfg, device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _run(module, x, hx, **kw):
    """Outputs, then grads of x, of hx and of every parameter after a backward through all outputs."""
    x = x.clone().requires_grad_()
    hx = None if hx is None else [t.clone().requires_grad_() for t in hx]
    module.zero_grad(set_to_none=True)
    arg = None if hx is None else (tuple(hx) if len(hx) == 2 else hx[0])
    outs = _flat(module(x, arg, **kw))
    assert all(o.requires_grad for o in outs)
    sum(o.sum() for o in outs).backward()
    return outs, [x.grad] + ([] if hx is None else [t.grad for t in hx]) + [p.grad for p in module.parameters()]


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert b is not None and a is not None
        assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device, (a.shape, b.shape)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


MODULE_CASES = [
    pytest.param("LSTM", dict(), False, f64, id="lstm"),
    pytest.param("LSTM", dict(batch_first=True, num_layers=2, bidirectional=True), True, f64, id="lstm-bf-L2-bi-hx"),
    pytest.param("LSTM", dict(proj_size=P, bidirectional=True), True, torch.float32, id="lstm-proj-bi-hx-f32"),
    pytest.param("GRU", dict(), True, torch.float32, id="gru-hx-f32"),
    pytest.param("GRU", dict(batch_first=True, num_layers=3, bidirectional=True), False, f64, id="gru-bf-L3-bi"),
]


@pytest.mark.parametrize("mode,cfg,with_hx,dtype", MODULE_CASES)
@pytest.mark.parametrize("lengths", [None, "list", "tensor"])
def test_empty_batch_modules_match_torch_nn(device, mode, cfg, with_hx, dtype, lengths):
    ref, fast = _pair(mode, device, dtype, input_size=I, hidden_size=H, **cfg)
    x = torch.randn((0, T, I) if cfg.get("batch_first") else (T, 0, I), device=device, dtype=dtype)
    hx = None
    if with_hx:
        D = 2 if cfg.get("bidirectional") else 1
        L = cfg.get("num_layers", 1)
        hx = [torch.randn(L * D, 0, cfg.get("proj_size") or H, device=device, dtype=dtype)]
        if mode == "LSTM":
            hx.append(torch.randn(L * D, 0, H, device=device, dtype=dtype))
    want_o, want_g = _run(ref, x, hx)  # torch.nn has no lengths; an empty batch has none to give
    kw = {} if lengths is None else {"lengths": [] if lengths == "list" else torch.zeros(0, dtype=torch.int64)}
    got_o, got_g = _run(fast, x, hx, **kw)
    _assert_same(got_o, want_o)
    _assert_same(got_g, want_g)  # zero-size grads of x and hx, all-zero grads of the parameters


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("with_hx", [False, True])
def test_empty_batch_cells_match_torch_nn(device, mode, with_hx):
    ref, fast = _pair(mode, device, f64, input_size=I, hidden_size=H)
    x = torch.randn(0, I, device=device, dtype=f64)
    hx = [torch.randn(0, H, device=device, dtype=f64) for _ in range(2 if mode == "LSTMCell" else 1)] \
        if with_hx else None
    for got, want in zip(_run(fast, x, hx), _run(ref, x, hx)):
        _assert_same(got, want)


def test_empty_batch_no_grad_and_errors_like_torch_nn():
    ref, fast = _pair("LSTM", "cpu", f64, input_size=I, hidden_size=H, num_layers=2)
    x = torch.randn(T, 0, I, dtype=f64)
    with torch.no_grad():
        got, want = _flat(fast(x)), _flat(ref(x))
    assert not any(t.requires_grad for t in got)
    _assert_same(got, want)
    # still refused, as torch.nn refuses them: no time steps, a state of the wrong batch size
    for m in (ref, fast):
        with pytest.raises(RuntimeError):
            m(torch.randn(0, 0, I, dtype=f64))
        with pytest.raises(RuntimeError, match=r"\(2, 0, 5\)"):
            m(x, (torch.zeros(2, 1, H, dtype=f64), torch.zeros(2, 1, H, dtype=f64)))
    for cell in _pair("GRUCell", "cpu", f64, input_size=I, hidden_size=H):
        with pytest.raises(RuntimeError):
            cell(torch.randn(0, I, dtype=f64), torch.zeros(1, H, dtype=f64))

@pytest.mark.usefixtures("allow_rnn")

def test_empty_batch_compiles():
    _, fast = _pair("GRU", "cpu", f64, input_size=I, hidden_size=H, bidirectional=True, batch_first=True)
    x = torch.randn(0, T, I, dtype=f64, requires_grad=True)
    torch._dynamo.reset()
    try:
        y, h = torch.compile(fast, fullgraph=True, backend="aot_eager")(x)
        (y.sum() + h.sum()).backward()
    finally:
        torch._dynamo.reset()
    assert y.shape == (0, T, 2 * H) and h.shape == (2, 0, H) and x.grad.shape == x.shape
    assert all(p.grad is not None and not p.grad.any() for p in fast.parameters())


# --------------------------------------------------------------------------------------------
# hidden_size = 0 (and input_size = 0) cells


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes", [(I, 0), (0, H), (0, 0)], ids=["H0", "I0", "I0H0"])
def test_zero_size_cells_match_torch_nn(device, mode, bias, sizes):
    in_size, hidden = sizes
    ref, fast = _pair(mode, device, f64, input_size=in_size, hidden_size=hidden, bias=bias)
    assert repr(fast) == repr(ref)
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    k = 2 if mode == "LSTMCell" else 1
    g = torch.Generator().manual_seed(1)
    for batch in ((3,), (), (0,)):  # batched, unbatched, empty batch
        x = torch.randn(*batch, in_size, generator=g, dtype=f64).to(device)
        hx = [torch.randn(*batch, hidden, generator=g, dtype=f64).to(device) for _ in range(k)]
        for states in (None, hx):
            got, want = _run(fast, x, states), _run(ref, x, states)
            for a, b in zip(got, want):
                _assert_same(a, b)


def test_cell_constructor_errors_like_torch_nn():
    for mode in ("LSTMCell", "GRUCell"):
        for args in ((I, -1), (-2, H)):
            with pytest.raises(RuntimeError) as want:
                getattr(nn, mode)(*args)
            with pytest.raises(RuntimeError) as got:
                getattr(fastrnn, mode)(*args)
            assert str(got.value) == str(want.value)
    for mode in ("LSTM", "GRU"):  # torch.nn refuses hidden_size = 0 for the layer modules
        for m in (nn, fastrnn):
            with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
                getattr(m, mode)(I, 0)


# --------------------------------------------------------------------------------------------
# the functional layers: one reference step stands for the whole sequence


FUNCTIONAL_CASES = [
    pytest.param("lstm", 0, 0, id="lstm-B0"),
    pytest.param("lstm", 3, 0, id="lstm-H0"),
    pytest.param("lstm-proj", 0, 0, id="lstm-proj-B0"),
    pytest.param("lstm-proj", 3, 0, id="lstm-proj-H0"),  # a projection of an empty cell: h = 0
    pytest.param("gru", 0, 0, id="gru-B0"),
    pytest.param("gru", 3, 0, id="gru-H0"),
]


@pytest.mark.parametrize("kind,batch,hidden_if_zero", FUNCTIONAL_CASES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_functional_layers_match_the_full_reference(device, kind, batch, hidden_if_zero, reverse):
    """Against reference.py's whole loop over time, with lengths, outputs and grads."""
    hidden = H if batch == 0 else hidden_if_zero
    proj = P if kind == "lstm-proj" else 0
    G = 3 if kind == "gru" else 4
    g = torch.Generator().manual_seed(2)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=f64).to(device).requires_grad_()

    lengths = torch.tensor([4, 1, 3][:batch], dtype=torch.int64)
    x, h0, c0 = r(T, batch, I), r(batch, proj or hidden), r(batch, hidden)
    w = [r(G * hidden, I), r(G * hidden, proj or hidden), r(G * hidden), r(G * hidden)]
    w_hr = r(proj, hidden) if proj else None
    if kind == "gru":
        inputs = [x, h0, *w]
        got = F.gru_layer(*inputs, lengths=lengths, reverse=reverse)
        want = gru_reference(*inputs, lengths=lengths, reverse=reverse)
    else:
        inputs = [x, h0, c0, *w] + ([w_hr] if proj else [])
        got = F.lstm_layer(x, h0, c0, *w, lengths=lengths, reverse=reverse, w_hr=w_hr)
        want = lstm_reference(x, h0, c0, *w, lengths=lengths, reverse=reverse, w_hr=w_hr)
    cots = [torch.randn(o.shape, generator=g, dtype=f64).to(device) for o in want]
    grads = [torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs, cots)), inputs) for outs in (got, want)]
    _assert_same(list(got) + list(grads[0]), list(want) + list(grads[1]))


def test_functional_checks_states_without_the_kernels():
    """A state of one row must not broadcast against an empty batch."""
    x = torch.randn(T, 0, I)
    h1 = torch.zeros(1, H)
    w = dict(w_ih=torch.randn(4 * H, I), w_hh=torch.randn(4 * H, H))
    with pytest.raises(RuntimeError, match=r"expected h0 of shape \[0, 5\], got \[1, 5\]"):
        F.lstm_layer(x, h1, None, **w)
    with pytest.raises(RuntimeError, match=r"expected cx of shape \[0, 5\], got \[1, 5\]"):
        F.lstm_cell(x[0], None, h1, **w)
    with pytest.raises(RuntimeError, match=r"expected h0 of shape \[0, 5\]"):
        F.gru_layer(x, h1, torch.randn(3 * H, I), torch.randn(3 * H, H))
    with pytest.raises(RuntimeError, match=r"expected hx of shape \[0, 5\]"):
        F.gru_cell(x[0], h1, torch.randn(3 * H, I), torch.randn(3 * H, H))

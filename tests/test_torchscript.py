"""TorchScript: torch.jit.script and torch.jit.trace of every module (and of a model holding
them) give eager's outputs and gradients, run fastrnn's ops, and survive jit.save / jit.load."""
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import fastrnn

# torch.jit.script / trace are deprecated in favour of torch.compile, still supported
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = [3, 5, 2]
F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)

RNN_CONFIGS = [
    ("LSTM", dict()),
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("LSTM", dict(num_layers=2, proj_size=P, bias=False)),
    ("GRU", dict()),
    ("GRU", dict(num_layers=3, bidirectional=True, batch_first=True, bias=False)),
]


def _rnn(mode, cfg, device):
    torch.manual_seed(0)
    return getattr(fastrnn, mode)(I, H, **cfg, device=device, dtype=F64)


def _inputs(mode, cfg, device, unbatched=False, with_hx=False):
    g = torch.Generator().manual_seed(1)
    D = 2 if cfg.get("bidirectional") else 1
    layers = cfg.get("num_layers", 1) * D
    shape = (T, I) if unbatched else ((B, T, I) if cfg.get("batch_first") else (T, B, I))
    x = torch.randn(shape, generator=g, dtype=F64).to(device)
    if not with_hx:
        return x, None
    batch = () if unbatched else (B,)
    h0 = torch.randn((layers, *batch, cfg.get("proj_size") or H), generator=g, dtype=F64).to(device)
    if mode == "GRU":
        return x, h0
    return x, (h0, torch.randn((layers, *batch, H), generator=g, dtype=F64).to(device))


def _flat(out):
    """All tensors of a module's output (or arguments), in order."""
    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _leaves(a):
    """Fresh leaves requiring grad for the floating tensors in a (a tensor, tuple or None)."""
    if isinstance(a, tuple):
        return tuple(_leaves(t) for t in a)
    if isinstance(a, torch.Tensor) and a.is_floating_point():
        return a.detach().clone().requires_grad_()
    return a


def _outputs_and_grads(fn, module, args):
    """Outputs of fn(*args) and the gradients of a fixed weighting of them w.r.t. the parameters
    and every floating input."""
    args = [_leaves(a) for a in args]
    outs = _flat(fn(*args))
    inputs = [t for a in args for t in _flat(a) if t.requires_grad] + list(module.parameters())
    loss = sum((o * (k + 1.5)).sin().sum() for k, o in enumerate(outs))
    return outs, torch.autograd.grad(loss, inputs)


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL)


def _uses_fastrnn_ops(compiled):
    """Whether the TorchScript code runs fastrnn's fused ops (and no torch.nn RNN op)."""
    graph = str(compiled.inlined_graph)  # method and function calls inlined
    return (("fastrnn::lstm_forward" in graph or "fastrnn::gru_forward" in graph)
            and not any(f"aten::{op}" in graph for op in ("lstm", "gru", "lstm_cell", "gru_cell")))


# --------------------------------------------------------------------------------------------
# torch.jit.script


@pytest.mark.parametrize("mode,cfg", RNN_CONFIGS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(RNN_CONFIGS)])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("form", ["batched", "unbatched", "lengths"])
def test_script_rnn_matches_eager(mode, cfg, with_hx, form, device):
    m = _rnn(mode, cfg, device)
    scripted = torch.jit.script(m)
    assert _uses_fastrnn_ops(scripted)
    x, hx = _inputs(mode, cfg, device, unbatched=form == "unbatched", with_hx=with_hx)
    if form == "lengths":
        lengths = torch.tensor(LENGTHS, device=device)
        want = _outputs_and_grads(lambda x, hx: m(x, hx, lengths=lengths), m, (x, hx))
        got = _outputs_and_grads(lambda x, hx: scripted(x, hx, lengths=lengths), m, (x, hx))
        got_positional = _outputs_and_grads(lambda x, hx: scripted(x, hx, lengths), m, (x, hx))
        _assert_same(got_positional[0], want[0])
    else:
        want = _outputs_and_grads(m, m, (x, hx))
        got = _outputs_and_grads(scripted, m, (x, hx))
    _assert_same(got[0], want[0])
    _assert_same(got[1], want[1])  # gradients reach the (shared) parameters and the inputs


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
def test_script_cell_matches_eager(mode, bias, batched, with_hx, device):
    torch.manual_seed(0)
    m = getattr(fastrnn, mode)(I, H, bias=bias, device=device, dtype=F64)
    scripted = torch.jit.script(m)
    assert _uses_fastrnn_ops(scripted)
    batch = (B,) if batched else ()
    x = torch.randn(*batch, I, device=device, dtype=F64)
    hx = None
    if with_hx:
        states = [torch.randn(*batch, H, device=device, dtype=F64) for _ in range(2 if mode == "LSTMCell" else 1)]
        hx = tuple(states) if mode == "LSTMCell" else states[0]
    _assert_same(_outputs_and_grads(scripted, m, (x, hx))[0], _outputs_and_grads(m, m, (x, hx))[0])
    _assert_same(_outputs_and_grads(scripted, m, (x, hx))[1], _outputs_and_grads(m, m, (x, hx))[1])


def test_script_no_grad_and_dropout(device):
    """Grad mode is decided when the scripted code runs (not when it was compiled); dropout
    follows train() / eval() of the scripted module as in eager."""
    m = _rnn("LSTM", dict(num_layers=3, dropout=0.5), device).eval()
    scripted = torch.jit.script(m)
    x, _ = _inputs("LSTM", {}, device)
    with torch.no_grad():
        y = scripted(x)[0]
    assert not y.requires_grad and torch.equal(y, m(x)[0].detach())
    scripted.train()
    m.train()
    torch.manual_seed(3)
    y_train = scripted(x)[0]
    torch.manual_seed(3)
    assert torch.equal(y_train, m(x)[0])  # the same dropout masks from the same seed
    assert not torch.equal(y_train, scripted.eval()(x)[0])


def test_script_refuses_bad_state_shapes():
    """The ops see one layer's state slice each: a wrong number of layers must still raise."""
    scripted = torch.jit.script(fastrnn.LSTM(I, H, num_layers=2))
    x = torch.randn(T, B, I)
    with pytest.raises(torch.jit.Error, match=rf"Expected hidden\[0\] size \(2, {B}, {H}\), got \[3, {B}, {H}\]"):
        scripted(x, (torch.zeros(3, B, H), torch.zeros(2, B, H)))
    with pytest.raises(torch.jit.Error, match=rf"Expected hidden\[1\] size \(2, {B}, {H}\), got \[2, {B}, {H + 1}\]"):
        scripted(x, (torch.zeros(2, B, H), torch.zeros(2, B, H + 1)))
    with pytest.raises(torch.jit.Error, match="2D or 3D"):
        scripted(torch.randn(1, T, B, I))
    with pytest.raises(torch.jit.Error, match="lengths must hold one length per batch entry"):
        scripted(x, None, torch.tensor([1, 2]))
    with pytest.raises(torch.jit.Error, match="1D or 2D"):
        torch.jit.script(fastrnn.GRUCell(I, H))(torch.randn(2, B, I))


# --------------------------------------------------------------------------------------------
# torch.jit.trace


@pytest.mark.parametrize("mode,cfg", RNN_CONFIGS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(RNN_CONFIGS)])
@pytest.mark.parametrize("with_hx", [False, True])
def test_trace_rnn_matches_eager(mode, cfg, with_hx, device):
    """torch.jit.trace with its default checks (it re-traces under no_grad and compares the
    graphs), then the trace on inputs of other sizes, with and without grad."""
    m = _rnn(mode, cfg, device)
    x, hx = _inputs(mode, cfg, device, with_hx=with_hx)
    traced = torch.jit.trace(m, (x,) if hx is None else (x, hx))
    assert _uses_fastrnn_ops(traced)
    x2 = torch.cat([x, x.flip(0)], dim=0 if cfg.get("batch_first") else 1)  # another batch size
    if hx is not None:  # (the trace keeps the arguments it was traced with)
        hx = tuple(torch.cat([t, t], 1) for t in hx) if mode == "LSTM" else torch.cat([hx, hx], 1)
    args = (x2,) if hx is None else (x2, hx)
    _assert_same(_outputs_and_grads(traced, m, args)[0], _outputs_and_grads(m, m, args)[0])
    _assert_same(_outputs_and_grads(traced, m, args)[1], _outputs_and_grads(m, m, args)[1])
    with torch.no_grad():
        _assert_same(_flat(traced(*args)), _flat(m(*args)))


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_trace_made_under_no_grad_trains(mode, device):
    """Whether to save activations for backward is decided when the trace runs: a trace
    recorded under no_grad (an inference export, say) still trains like eager."""
    torch.manual_seed(0)
    m = getattr(fastrnn, mode)(I, H, device=device, dtype=F64)
    x = torch.randn((B, I) if mode.endswith("Cell") else (T, B, I), device=device, dtype=F64)
    with torch.no_grad():
        traced = torch.jit.trace(m, (x,))
    _assert_same(_outputs_and_grads(traced, m, (x,))[1], _outputs_and_grads(m, m, (x,))[1])


class _Model(nn.Module):
    """Every fastrnn module in one model, with lengths as a tensor argument."""

    def __init__(self):
        super().__init__()
        self.lstm = fastrnn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = fastrnn.GRU(2 * H, H, batch_first=True)
        self.lstm_cell = fastrnn.LSTMCell(H, H)
        self.gru_cell = fastrnn.GRUCell(H, H)
        self.head = nn.Linear(H, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x, lengths=lengths)
        y, h = self.gru(y, None, lengths)
        hc, cc = self.lstm_cell(h[0])
        hg = self.gru_cell(cc, hc)
        return self.head(hg + y.sum(1))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_model_script_and_trace_match_eager(how, device):
    torch.manual_seed(0)
    model = _Model().to(device)
    x = torch.randn(B, T, I, device=device)
    lengths = torch.tensor(LENGTHS, device=device)
    compiled = torch.jit.script(model) if how == "script" else torch.jit.trace(model, (x, lengths))
    assert _uses_fastrnn_ops(compiled)
    other = torch.tensor([1, 4, 5], device=device)  # the lengths are an input of the trace too
    for lens in (lengths, other):
        want, want_grads = _outputs_and_grads(model, model, (x, lens))
        got, grads = _outputs_and_grads(compiled, model, (x, lens))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads, want_grads, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
def test_trace_cell_decode_loop(mode, device):
    torch.manual_seed(0)
    cell = getattr(fastrnn, mode)(I, H, device=device)
    x = torch.randn(B, I, device=device)
    state = (torch.zeros(B, H, device=device),) * (2 if mode == "LSTMCell" else 1)
    hx = state if mode == "LSTMCell" else state[0]
    traced = torch.jit.trace(cell, (x, hx))
    assert _uses_fastrnn_ops(traced)
    want = got = hx
    for t in range(4):
        xt = x * (t + 1)
        want, got = cell(xt, want), traced(xt, got)
        _assert_same(_flat(got), _flat(want))


# --------------------------------------------------------------------------------------------
# jit.save / jit.load


def test_save_load_scripted_model(tmp_path, device):
    torch.manual_seed(0)
    model = _Model().to(device)
    x = torch.randn(B, T, I, device=device)
    lengths = torch.tensor(LENGTHS, device=device)
    path = os.fspath(tmp_path / "model.pt")
    torch.jit.save(torch.jit.script(model), path)
    loaded = torch.jit.load(path, map_location=device)
    want = model(x, lengths)
    torch.testing.assert_close(loaded(x, lengths), want, rtol=1e-6, atol=1e-6)
    # the loaded module trains: gradients reach its own parameters
    loaded(x, lengths).sum().backward()
    assert all(p.grad is not None for p in loaded.parameters())

    # a fresh process needs `import fastrnn` (it registers the ops) before loading
    x_path, want_path = os.fspath(tmp_path / "x.pt"), os.fspath(tmp_path / "want.pt")
    torch.save((x.cpu(), lengths.cpu()), x_path)
    torch.save(want.detach().cpu(), want_path)
    script = textwrap.dedent(f"""
        import torch
        try:
            torch.jit.load({path!r}, map_location="cpu")
            raise SystemExit("loaded without fastrnn's ops")
        except RuntimeError as e:
            assert "fastrnn" in str(e), e
        import fastrnn
        loaded = torch.jit.load({path!r}, map_location="cpu")
        x, lengths = torch.load({x_path!r})
        torch.testing.assert_close(loaded(x, lengths), torch.load({want_path!r}), rtol=1e-6, atol=1e-6)
        print("ok")
    """)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_eager_keyword_and_positional_lengths():
    """lengths stays a keyword argument for eager callers (and may be the third positional one)."""
    m = fastrnn.GRU(I, H)
    x = torch.randn(T, B, I)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = m(x, lengths=LENGTHS)
        b = m(x, None, torch.tensor(LENGTHS))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

"""torch.compile (fullgraph, forward and backward with input grads) and torch.export of the
modules, against eager fastrnn on the same weights (eager itself is checked against torch.nn in
test_modules.py).

Most compiles use the aot_eager_decomp_partition_crossref backend: AOTAutograd's forward and
backward graphs, run op by op with every result compared against the op's fake kernel (shapes,
dtypes and strides). That is what inductor relies on (it asserts the strides the fake kernels
promise) at a fraction of inductor's compile time; a few cases run inductor itself.
PackedSequence is not in the grid: Dynamo refuses to trace pack_padded_sequence, and padding a
PackedSequence has data-dependent shapes.
"""
import pytest
import torch
from torch import nn
from torch.export import Dim

import fastrnn
from _generators import pairwise_cases

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, B, I, H, P = 5, 3, 4, 5, 3
LENGTHS = [3, 5, 2]
CROSSREF = "aot_eager_decomp_partition_crossref"
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}

FACTORS = {
    "mode": ["LSTM", "GRU"],
    "num_layers": [1, 2],
    "bidirectional": [False, True],
    "batch_first": [False, True],
    "bias": [True, False],
    "proj": [0, P],
    "hx": [False, True],
    "kind": ["padded", "unbatched", "lengths_list", "lengths_tensor"],
    "dtype": [torch.float32, torch.float64],
}


def _valid(case):
    return not (case["mode"] == "GRU" and case["proj"])


CASES = pairwise_cases(FACTORS, _valid, 0)


def _case_id(c):
    return "-".join([c["mode"], f"L{c['num_layers']}", "bi" if c["bidirectional"] else "uni",
                     "bf" if c["batch_first"] else "tm", "bias" if c["bias"] else "nobias", f"p{c['proj']}",
                     "hx" if c["hx"] else "nohx", c["kind"], str(c["dtype"])[6:]])


def _module_and_inputs(case, device):
    cfg = dict(num_layers=case["num_layers"], bidirectional=case["bidirectional"], batch_first=case["batch_first"],
               bias=case["bias"])
    if case["proj"]:
        cfg["proj_size"] = case["proj"]
    torch.manual_seed(0)
    module = getattr(fastrnn, case["mode"])(I, H, **cfg, device=device, dtype=case["dtype"])
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(shape, generator=g, dtype=case["dtype"]).to(device)

    unbatched = case["kind"] == "unbatched"
    batch = () if unbatched else (B,)
    x = r(T, I) if unbatched else (r(B, T, I) if case["batch_first"] else r(T, B, I))
    states = []
    if case["hx"]:
        D = 2 if case["bidirectional"] else 1
        states.append(r(case["num_layers"] * D, *batch, case["proj"] or H))
        if case["mode"] == "LSTM":
            states.append(r(case["num_layers"] * D, *batch, H))
    return module, x, states


def _forward(module, case):
    """f(x, lengths, *states) -> the module's outputs as a flat tuple."""
    lstm = case["mode"] == "LSTM"
    as_list = case["kind"] == "lengths_list"

    def f(x, lengths, *states):
        hx = None if not states else (tuple(states) if lstm else states[0])
        y, s = module(x, hx, lengths=LENGTHS if as_list else lengths)
        return (y, *s) if lstm else (y, s)

    return f


def _outputs_and_grads(f, module, x, states, lengths):
    leaves = [t.detach().clone().requires_grad_() for t in [x, *states]]
    outs = f(leaves[0], lengths, *leaves[1:])
    g = torch.Generator().manual_seed(2)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
    return [o.detach() for o in outs], list(grads)


def _compiled_matches_eager(case, device, backend):
    module, x, states = _module_and_inputs(case, device)
    lengths = torch.tensor(LENGTHS, device=device) if case["kind"] == "lengths_tensor" else None
    f = _forward(module, case)
    want_o, want_g = _outputs_and_grads(f, module, x, states, lengths)
    torch._dynamo.reset()
    try:
        got_o, got_g = _outputs_and_grads(torch.compile(f, fullgraph=True, backend=backend), module, x, states,
                                          lengths)
    finally:
        torch._dynamo.reset()
    names = [f"output {i}" for i in range(len(want_o))] + ["grad x"] + [f"grad state {i}" for i in range(len(states))] \
        + [f"grad {n}" for n, _ in module.named_parameters()]
    for name, a, b in zip(names, got_o + got_g, want_o + want_g):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, **TOL[case["dtype"]], msg=lambda m: f"{name}: {m}")


@pytest.mark.usefixtures("allow_rnn")
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_compile_fullgraph_matches_eager(case, device):
    _compiled_matches_eager(case, device, CROSSREF)


# inductor on the cases that broke it: batch_first input grads (the fake backward once promised
# the input's transposed strides for dx), with projection and lengths
INDUCTOR_CASES = [
    dict(mode="LSTM", num_layers=1, bidirectional=False, batch_first=True, bias=True, proj=0, hx=False,
         kind="padded", dtype=torch.float32),
    dict(mode="LSTM", num_layers=2, bidirectional=True, batch_first=True, bias=True, proj=P, hx=True,
         kind="lengths_list", dtype=torch.float64),
    dict(mode="GRU", num_layers=2, bidirectional=True, batch_first=True, bias=False, proj=0, hx=False,
         kind="lengths_tensor", dtype=torch.float32),
]


@pytest.mark.usefixtures("allow_rnn")
@pytest.mark.parametrize("case", INDUCTOR_CASES, ids=[_case_id(c) for c in INDUCTOR_CASES])
def test_compile_inductor_matches_eager(case, device):
    # no compile caches: a graph cached by an earlier run would carry that run's stride asserts
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        _compiled_matches_eager(case, device, "inductor")


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
def test_compile_cells(mode, device):
    torch.manual_seed(0)
    cell = getattr(fastrnn, mode)(I, H, device=device, dtype=torch.float64)
    x = torch.randn(B, I, dtype=torch.float64, device=device)
    h = torch.randn(B, H, dtype=torch.float64, device=device)

    def f(x, h):
        out = cell(x, (h, h.cos()) if mode == "LSTMCell" else h)
        return out if isinstance(out, tuple) else (out,)

    def run(fn):
        leaves = [x.clone().requires_grad_(), h.clone().requires_grad_()]
        outs = fn(*leaves)
        loss = sum((o * (k + 1)).sin().sum() for k, o in enumerate(outs))
        return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves + list(cell.parameters())))

    want = run(f)
    torch._dynamo.reset()
    try:
        got = run(torch.compile(f, fullgraph=True, backend=CROSSREF))
    finally:
        torch._dynamo.reset()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


# --------------------------------------------------------------------------------------------
# torch.export


class _Tagger(nn.Module):
    """An embedding-free sequence tagger: a stacked bidirectional RNN and a linear head."""

    def __init__(self, mode, proj=0):
        super().__init__()
        kw = dict(proj_size=proj) if proj else {}
        self.rnn = getattr(fastrnn, mode)(I, H, num_layers=2, bidirectional=True, batch_first=True, **kw)
        self.head = nn.Linear(2 * (proj or H), 2)

    def forward(self, x, lengths=None):
        y, state = self.rnn(x, lengths=lengths)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(y), h_n


@pytest.mark.parametrize("mode,proj", [("LSTM", 0), ("LSTM", P), ("GRU", 0)], ids=["lstm", "lstm-proj", "gru"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_export_dynamic_batch_and_time(mode, proj, with_lengths, grad_mode, device):
    torch.manual_seed(0)
    model = _Tagger(mode, proj).to(device).eval()
    batch, seq = Dim("batch"), Dim("seq")
    x = torch.randn(B, T, I, device=device)
    if with_lengths:
        args, dynamic = (x, torch.tensor(LENGTHS)), {"x": {0: batch, 1: seq}, "lengths": {0: batch}}
    else:
        args, dynamic = (x,), {"x": {0: batch, 1: seq}}
    with torch.set_grad_enabled(grad_mode):
        ep = torch.export.export(model, args, dynamic_shapes=dynamic)
    ops = [n.target for n in ep.graph.nodes if getattr(n.target, "namespace", None) == "fastrnn"]
    assert len(ops) == 4  # one fused call per layer and direction, nothing decomposed
    exported = ep.module()
    for b, t in ((B, T), (2, 9), (7, 1), (1, 4)):  # other batch sizes and sequence lengths
        x = torch.randn(b, t, I, device=device)
        run_args = (x, torch.randint(1, t + 1, (b,))) if with_lengths else (x,)
        with torch.no_grad():
            got, want = exported(*run_args), model(*run_args)
        for a, w in zip(got, want):
            assert a.shape == w.shape
            torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,proj", [("LSTM", P), ("GRU", 0)], ids=["lstm-proj", "gru"])
def test_export_strict(mode, proj, device):
    """strict=True export traces with dynamo, which takes fastrnn's layers (nn.LSTM / nn.GRU
    instances) without torch._dynamo.config.allow_rnn."""
    torch.manual_seed(0)
    model = _Tagger(mode, proj).to(device).eval()
    args = (torch.randn(B, T, I, device=device), torch.tensor(LENGTHS))
    with torch.no_grad():
        ep = torch.export.export(model, args, strict=True)
        got, want = ep.module()(*args), model(*args)
    assert sum(getattr(n.target, "namespace", None) == "fastrnn" for n in ep.graph.nodes) == 4
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)


def test_export_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _Tagger("LSTM").eval()
    x = torch.randn(B, T, I)
    ep = torch.export.export(model, (x, torch.tensor(LENGTHS)),
                             dynamic_shapes={"x": {0: Dim("batch"), 1: Dim("seq")}, "lengths": {0: Dim("batch")}})
    torch.export.save(ep, tmp_path / "tagger.pt2")
    loaded = torch.export.load(tmp_path / "tagger.pt2").module()
    x = torch.randn(4, 8, I)
    lengths = torch.tensor([8, 1, 5, 3])
    for a, w in zip(loaded(x, lengths), model(x, lengths)):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)

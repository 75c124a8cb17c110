"""fastrnn.LSTM / GRU / LSTMCell / GRUCell against torch.nn with the same weights.

The parity grid samples the configuration space with pairwise coverage (every pair of factor
values appears in some case) instead of the full product, which would take far too long here.
"""
import copy
import io
import pickle
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fastrnn
from _generators import pairwise_cases

# nn.LSTM's own notice that oneDNN lacks projections (the oracle falls back to ATen): not ours
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, B, I, H, P = 5, 3, 4, 5, 3
LENGTHS_UNSORTED = [3, 5, 2]
LENGTHS_SORTED = [5, 3, 2]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=2e-5)}


# --------------------------------------------------------------------------------------------
# pairwise grid

FACTORS = {
    "mode": ["LSTM", "GRU"],
    "num_layers": [1, 2, 3],
    "bidirectional": [False, True],
    "batch_first": [False, True],
    "bias": [True, False],
    "proj": [0, P],
    "hx": [False, True],
    "kind": ["padded", "unbatched", "packed_sorted", "packed_unsorted", "lengths_list", "lengths_tensor"],
    "dtype": [torch.float64, torch.float32],
}


def _valid(case):
    return not (case["mode"] == "GRU" and case["proj"])


def _case_id(c):
    return "-".join([c["mode"], f"L{c['num_layers']}", "bi" if c["bidirectional"] else "uni",
                     "bf" if c["batch_first"] else "tm", "bias" if c["bias"] else "nobias",
                     f"p{c['proj']}", "hx" if c["hx"] else "nohx", c["kind"], str(c["dtype"])[6:]])


def _cases():
    # two pairwise covering arrays from different seeds (more triples covered), plus the cases
    # where torch.nn's batch permutation matters most: unsorted packed input with hx given
    cases = pairwise_cases(FACTORS, _valid, 0) + pairwise_cases(FACTORS, _valid, 1)
    for mode, proj in (("LSTM", 0), ("LSTM", P), ("GRU", 0)):
        cases.append(dict(mode=mode, num_layers=2, bidirectional=True, batch_first=False, bias=True, proj=proj,
                          hx=True, kind="packed_unsorted", dtype=torch.float64))
    unique = []
    for c in cases:
        if c not in unique:
            unique.append(c)
    return unique


CASES = _cases()


# --------------------------------------------------------------------------------------------
# helpers


def _pair(mode, dtype, device, **cfg):
    torch.manual_seed(1234)
    ref = getattr(nn, mode)(**cfg, dtype=dtype, device=device)
    fast = getattr(fastrnn, mode)(**cfg, dtype=dtype, device=device)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _run(module, fast, case, x, hx, lengths_arg):
    """Runs one module the way the case says; returns the list of output tensors to compare."""
    kind, bf = case["kind"], case["batch_first"]
    if kind.startswith("packed"):
        packed = pack_padded_sequence(x, lengths_arg, batch_first=bf, enforce_sorted=kind == "packed_sorted")
        out, state = module(packed, hx)
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        for a, b in ((out.sorted_indices, packed.sorted_indices), (out.unsorted_indices, packed.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        out = out.data
    elif kind.startswith("lengths") and fast:
        lens = torch.tensor(lengths_arg) if kind == "lengths_tensor" else lengths_arg
        out, state = module(x, hx, lengths=lens)
    elif kind.startswith("lengths"):
        packed = pack_padded_sequence(x, lengths_arg, batch_first=bf, enforce_sorted=False)
        out, state = module(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=bf, total_length=T)
    else:
        out, state = module(x, hx)
    states = list(state) if isinstance(state, tuple) else [state]
    return [out] + states


def _forward_backward(module, fast, case, x, hx, lengths_arg, cotangents=None):
    x = x.detach().clone().requires_grad_()
    hx_leaves = None
    if hx is not None:
        hx_leaves = tuple(t.detach().clone().requires_grad_() for t in hx)
    module.zero_grad(set_to_none=True)
    hx_arg = None if hx_leaves is None else (hx_leaves if case["mode"] == "LSTM" else hx_leaves[0])
    outs = _run(module, fast, case, x, hx_arg, lengths_arg)
    if cotangents is None:
        g = torch.Generator().manual_seed(7)
        cotangents = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in outs]
    loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
    loss.backward()
    grads = {"input": x.grad}
    if hx_leaves is not None:
        for i, t in enumerate(hx_leaves):
            grads[f"hx{i}"] = t.grad
    for name, p in module.named_parameters():
        grads[name] = p.grad
    return outs, grads, cotangents


def _assert_close(a, b, dtype, what):
    assert a is not None and b is not None, what
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------------------------
# parity grid


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
@pytest.mark.usefixtures("exact_fp32")  # float32 vs torch.nn: no TF32 in cuDNN (tests/_precision.py)
def test_parity_with_torch_nn(case, device):
    dtype = case["dtype"]
    cfg = dict(input_size=I, hidden_size=H, num_layers=case["num_layers"], bias=case["bias"],
               batch_first=case["batch_first"], bidirectional=case["bidirectional"])
    if case["proj"]:
        cfg["proj_size"] = case["proj"]
    ref, fast = _pair(case["mode"], dtype, device, **cfg)
    D = 2 if case["bidirectional"] else 1
    out_size = case["proj"] or H
    g = torch.Generator().manual_seed(3)
    unbatched = case["kind"] == "unbatched"
    shape = (T, I) if unbatched else ((B, T, I) if case["batch_first"] else (T, B, I))
    x = torch.randn(shape, generator=g, dtype=dtype).to(device)
    hx = None
    if case["hx"]:
        batch = () if unbatched else (B,)
        h0 = torch.randn((case["num_layers"] * D, *batch, out_size), generator=g, dtype=dtype).to(device)
        c0 = torch.randn((case["num_layers"] * D, *batch, H), generator=g, dtype=dtype).to(device)
        hx = (h0, c0) if case["mode"] == "LSTM" else (h0,)
    lengths = LENGTHS_SORTED if case["kind"] == "packed_sorted" else LENGTHS_UNSORTED

    ref_outs, ref_grads, cot = _forward_backward(ref, False, case, x, hx, lengths)
    outs, grads, _ = _forward_backward(fast, True, case, x, hx, lengths, cot)
    for i, (a, b) in enumerate(zip(outs, ref_outs)):
        _assert_close(a, b, dtype, f"output {i}")
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        _assert_close(grads[name], ref_grads[name], dtype, f"grad of {name}")
    if case["kind"].startswith("lengths"):
        # outputs at padded steps are exactly zero
        y = outs[0] if not case["batch_first"] else outs[0].transpose(0, 1)
        for b, L in enumerate(lengths):
            assert torch.all(y[L:, b] == 0)


def test_packed_and_lengths_agree(device):
    torch.manual_seed(0)
    m = fastrnn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, device=device,
                     dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64, device=device)
    h0 = torch.randn(4, B, H, dtype=torch.float64, device=device)
    c0 = torch.randn(4, B, H, dtype=torch.float64, device=device)
    y, (h, c) = m(x, (h0, c0), lengths=torch.tensor(LENGTHS_UNSORTED, device=device))
    packed = pack_padded_sequence(x, LENGTHS_UNSORTED, batch_first=True, enforce_sorted=False)
    yp, (hp, cp) = m(packed, (h0, c0))
    yp, _ = pad_packed_sequence(yp, batch_first=True, total_length=T)
    torch.testing.assert_close(y, yp, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, hp, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, cp, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.usefixtures("exact_fp32")  # float32 vs torch.nn: no TF32 in cuDNN (tests/_precision.py)
def test_float32_default_config(mode, device):
    """The default constructor (1 layer, fp32, time-major) on a longer sequence."""
    ref, fast = _pair(mode, torch.float32, device, input_size=8, hidden_size=16)
    x = torch.randn(20, 4, 8, device=device)
    yr, sr = ref(x)
    yf, sf = fast(x)
    torch.testing.assert_close(yf, yr, rtol=1e-4, atol=2e-5)
    for a, b in zip(sf if mode == "LSTM" else [sf], sr if mode == "LSTM" else [sr]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


# --------------------------------------------------------------------------------------------
# construction, parameters, repr


CONFIGS = [
    ("LSTM", dict(input_size=3, hidden_size=4)),
    ("LSTM", dict(input_size=3, hidden_size=4, num_layers=3, bias=False, bidirectional=True, proj_size=2)),
    ("LSTM", dict(input_size=3, hidden_size=4, num_layers=2, batch_first=True, dropout=0.5)),
    ("GRU", dict(input_size=3, hidden_size=4)),
    ("GRU", dict(input_size=3, hidden_size=4, num_layers=2, bias=False, bidirectional=True, dropout=0.25)),
    ("LSTMCell", dict(input_size=3, hidden_size=4)),
    ("LSTMCell", dict(input_size=3, hidden_size=4, bias=False)),
    ("GRUCell", dict(input_size=3, hidden_size=4)),
    ("GRUCell", dict(input_size=3, hidden_size=4, bias=False)),
]


@pytest.mark.parametrize("mode,cfg", CONFIGS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CONFIGS)])
def test_parameters_and_init_match_torch(mode, cfg):
    torch.manual_seed(5)
    ref = getattr(nn, mode)(**cfg)
    torch.manual_seed(5)
    fast = getattr(fastrnn, mode)(**cfg)
    # code that treats RNNs by type (init loops, flatten_parameters calls) finds fastrnn's too
    assert isinstance(fast, getattr(nn, mode))
    assert isinstance(fast, nn.RNNCellBase) == mode.endswith("Cell")
    assert isinstance(fast, nn.RNNBase) != mode.endswith("Cell")
    ref_params = list(ref.named_parameters())
    fast_params = list(fast.named_parameters())
    assert [n for n, _ in fast_params] == [n for n, _ in ref_params]  # names and registration order
    for (n, a), (_, b) in zip(fast_params, ref_params):
        assert a.shape == b.shape and a.dtype == b.dtype, n
        assert torch.equal(a, b), n  # same init from the same seed: uniform(-1/sqrt(H), 1/sqrt(H))
    bound = 1 / cfg["hidden_size"] ** 0.5
    assert all(p.abs().max() <= bound for p in fast.parameters())
    assert repr(fast) == repr(ref)  # extra_repr like torch.nn
    # state_dict loads both ways
    fast2 = getattr(fastrnn, mode)(**cfg)
    fast2.load_state_dict(ref.state_dict())
    ref2 = getattr(nn, mode)(**cfg)
    ref2.load_state_dict(fast.state_dict())
    for (n, a), (_, b) in zip(fast2.named_parameters(), ref2.named_parameters()):
        assert torch.equal(a, b), n
    if mode in ("LSTM", "GRU"):
        assert [[p.shape for p in ws] for ws in fast.all_weights] == [[p.shape for p in ws] for ws in ref.all_weights]
        fast.flatten_parameters()  # exists, does nothing harmful
        assert all(a is b for a, b in zip(fast._flat_weights, fast.parameters()))


def test_code_that_finds_rnns_by_type_finds_fastrnn():
    """The usual init loop (orthogonal recurrent weights, forget-gate bias 1) and flatten_parameters
    call, written for nn.LSTM / nn.GRU, reach fastrnn's layers and give torch.nn's results."""
    def init(model):
        torch.manual_seed(3)
        for m in model.modules():
            if isinstance(m, (nn.LSTM, nn.GRU)):
                m.flatten_parameters()
                for name, p in m.named_parameters():
                    if name.startswith("weight_hh"):
                        nn.init.orthogonal_(p)
                    elif name.startswith("bias") and isinstance(m, nn.LSTM):
                        with torch.no_grad():
                            p.zero_()[H:2 * H] = 1  # forget gate
        return model

    def build(lstm, gru):
        torch.manual_seed(0)
        return nn.Sequential(lstm(I, H, num_layers=2, dtype=torch.float64),
                             gru(H, H, dtype=torch.float64)).eval()

    ref = init(build(nn.LSTM, nn.GRU))
    fast = init(build(fastrnn.LSTM, fastrnn.GRU))
    for (n, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n
    assert not torch.equal(fast[0].weight_hh_l0, build(fastrnn.LSTM, fastrnn.GRU)[0].weight_hh_l0)  # init ran
    x = torch.randn(T, B, I, dtype=torch.float64)
    y_ref, h_ref = ref[1](ref[0](x)[0])
    y, h = fast[1](fast[0](x)[0])
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)


class _Head(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(H, 1, dtype=torch.float64)

    def forward(self, x):
        return self.head(self.rnn(x)[0]).sum()


def test_compile_treats_fastrnn_layers_as_nn_lstm():
    """As instances of nn.LSTM / nn.GRU, fastrnn's layers get dynamo's rule for those: without
    torch._dynamo.config.allow_rnn a fullgraph compile refuses them as it refuses nn.LSTM, and a
    default compile breaks the graph there and still gives eager's loss and grads (the layer then
    runs eagerly, on the fused ops). With allow_rnn see test_compile_fullgraph_matches_eager."""
    import torch._dynamo

    x = torch.randn(T, B, I, dtype=torch.float64)

    def refused(rnn):
        torch._dynamo.reset()
        try:
            torch.compile(_Head(rnn), fullgraph=True, backend="eager")(x)
        except torch._dynamo.exc.Unsupported as e:
            assert re.search(r"RNN, GRU,? (or )?LSTM", str(e)), e
            return True
        return False

    with torch._dynamo.config.patch(allow_rnn=False):
        # the same answer as for nn.LSTM (refused in torch 2.14; if a later torch lifts the
        # rule, fastrnn's layers must compile too)
        torch_refuses = refused(nn.LSTM(I, H, dtype=torch.float64))
        assert refused(fastrnn.LSTM(I, H, dtype=torch.float64)) == torch_refuses
        assert refused(fastrnn.GRU(I, H, dtype=torch.float64)) == torch_refuses
        for rnn in (fastrnn.LSTM(I, H, dtype=torch.float64), fastrnn.GRU(I, H, dtype=torch.float64)):
            model = _Head(rnn)
            want = model(x)
            want_grads = torch.autograd.grad(want, list(model.parameters()))
            torch._dynamo.reset()
            try:
                got = torch.compile(model, backend="aot_eager")(x)
                grads = torch.autograd.grad(got, list(model.parameters()))
            finally:
                torch._dynamo.reset()
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            for g, w in zip(grads, want_grads):
                torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_state_dict_round_trip_keeps_results():
    ref, fast = _pair("LSTM", torch.float64, "cpu", input_size=I, hidden_size=H, num_layers=2, proj_size=2)
    back = nn.LSTM(I, H, num_layers=2, proj_size=2, dtype=torch.float64)
    back.load_state_dict(fast.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(back(x)[0], ref(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(fast(x)[0], ref(x)[0], rtol=1e-9, atol=1e-10)


BAD_CONSTRUCTOR_ARGS = [
    dict(dropout=1.5), dict(dropout=-0.1), dict(dropout=True), dict(dropout="0.1"), dict(bias="yes"),
    dict(batch_first=1), dict(input_size=0), dict(hidden_size=0), dict(hidden_size=2.5), dict(num_layers=0),
    dict(proj_size=-1), dict(proj_size=H), dict(proj_size=H + 1),
]


@pytest.mark.parametrize("bad", BAD_CONSTRUCTOR_ARGS, ids=[repr(b) for b in BAD_CONSTRUCTOR_ARGS])
def test_constructor_validation_like_torch(bad):
    args = dict(input_size=I, hidden_size=H)
    args.update(bad)
    with pytest.raises((TypeError, ValueError)) as ref_err:
        nn.LSTM(**args)
    with pytest.raises(ref_err.type) as err:
        fastrnn.LSTM(**args)
    assert type(err.value) is type(ref_err.value)  # exactly torch.nn's type, not a subclass of it


def test_constructor_dropout_warning_and_gru_proj():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        fastrnn.GRU(I, H, dropout=0.5)
    for cls in (nn.GRU, fastrnn.GRU):  # torch.nn's exception type and message
        with pytest.raises(ValueError, match="^proj_size argument is only supported for LSTM, not RNN or GRU$"):
            cls(I, H, proj_size=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'projection'"):
        fastrnn.GRU(I, H, projection=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastrnn.LSTM(I, H, num_layers=2, dropout=0.5)


# --------------------------------------------------------------------------------------------
# cells


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
def test_cell_parity(mode, bias, batched, with_hx, device):
    dtype = torch.float64
    ref, fast = _pair(mode, dtype, device, input_size=I, hidden_size=H, bias=bias)
    batch = (B,) if batched else ()
    x = torch.randn(*batch, I, dtype=dtype, device=device)
    states = [torch.randn(*batch, H, dtype=dtype, device=device) for _ in range(2 if mode == "LSTMCell" else 1)]
    results = []
    for m in (ref, fast):
        xl = x.clone().requires_grad_()
        sl = [s.clone().requires_grad_() for s in states]
        hx = None if not with_hx else (tuple(sl) if mode == "LSTMCell" else sl[0])
        out = m(xl, hx)
        outs = list(out) if isinstance(out, tuple) else [out]
        sum(((o * (k + 1.5)).sin()).sum() for k, o in enumerate(outs)).backward()
        grads = [xl.grad] + ([s.grad for s in sl] if with_hx else []) + [p.grad for p in m.parameters()]
        results.append((outs, grads))
    (ro, rg), (fo, fg) = results
    assert len(ro) == len(fo) and len(rg) == len(fg)
    for a, b in zip(fo + fg, ro + rg):
        _assert_close(a, b, dtype, mode)


def test_cell_errors():
    cell = fastrnn.LSTMCell(I, H)
    with pytest.raises(ValueError, match="1D or 2D"):
        cell(torch.randn(2, B, I))
    with pytest.raises(RuntimeError, match=f"got {I + 1} expected {I}"):
        cell(torch.randn(B, I + 1))
    with pytest.raises(RuntimeError, match=r"Expected hx\[0\] size"):
        cell(torch.randn(B, I), (torch.randn(B + 1, H), torch.randn(B, H)))
    with pytest.raises(ValueError, match=r"hx\[1\]"):
        cell(torch.randn(B, I), (torch.randn(B, H), torch.randn(H)))
    with pytest.raises(TypeError, match="tuple"):
        cell(torch.randn(B, I), torch.randn(B, H))
    with pytest.raises(RuntimeError, match="meta.*cpu"):
        cell(torch.randn(B, I, device="meta"))
    with pytest.raises(TypeError, match="Tensor"):
        cell([0.0] * I)
    with pytest.raises(TypeError, match="hidden_size"):  # sizes of 0 are valid: tests/test_degenerate.py
        fastrnn.LSTMCell(I, 2.0)
    gcell = fastrnn.GRUCell(I, H)
    with pytest.raises(TypeError, match="Tensor"):
        gcell(torch.randn(B, I), (torch.randn(B, H),))
    with pytest.raises(RuntimeError, match="Expected hx\\[0\\] size"):
        gcell(torch.randn(B, I), torch.randn(B, H + 1))
    with pytest.raises(ValueError, match="dtype"):
        gcell(torch.randn(B, I, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# dropout, train/eval


def test_dropout_semantics():
    x = torch.randn(T, B, I, dtype=torch.float64)
    ref, fast = _pair("LSTM", torch.float64, "cpu", input_size=I, hidden_size=H, num_layers=3, dropout=0.5)
    fast.train()
    torch.manual_seed(11)
    y1, _ = fast(x)
    torch.manual_seed(11)
    y2, _ = fast(x)
    assert torch.equal(y1, y2)  # fixed seed -> deterministic
    y3, _ = fast(x)
    assert not torch.equal(y1, y3)  # and dropout really is active in training
    fast.eval()
    ref.eval()
    torch.testing.assert_close(fast(x)[0], ref(x)[0], **TOL[torch.float64])  # eval: no dropout, like nn
    # dropout is applied between layers only: with one layer it does nothing even in training
    with pytest.warns(UserWarning):
        one_ref, one = _pair("GRU", torch.float64, "cpu", input_size=I, hidden_size=H, dropout=0.9)
    one.train()
    torch.testing.assert_close(one(x)[0], one_ref(x)[0], **TOL[torch.float64])


def test_dropout_zero_train_equals_eval():
    fast = fastrnn.GRU(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    y_train, h_train = fast.train()(x)
    y_eval, h_eval = fast.eval()(x)
    assert torch.equal(y_train, y_eval) and torch.equal(h_train, h_eval)


def test_dropout_is_on_layer_inputs():
    """Reproduce nn.LSTM's dropout by hand: F.dropout on the input of layers >= 1, not on the output."""
    torch.manual_seed(0)
    fast = fastrnn.LSTM(I, H, num_layers=2, dropout=0.3, dtype=torch.float64)
    layer0 = nn.LSTM(I, H, dtype=torch.float64)
    layer1 = nn.LSTM(H, H, dtype=torch.float64)
    for k, layer in enumerate((layer0, layer1)):
        layer.load_state_dict({n: getattr(fast, n.replace("_l0", f"_l{k}"))
                               for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")})
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(3)
    y, (h, c) = fast(x)
    torch.manual_seed(3)
    mid, (h0, _) = layer0(x)
    want, (h1, _) = layer1(torch.nn.functional.dropout(mid, 0.3, True))
    torch.testing.assert_close(y, want, **TOL[torch.float64])
    torch.testing.assert_close(h, torch.stack([h0[0], h1[0]]), **TOL[torch.float64])


# --------------------------------------------------------------------------------------------
# autocast, dtype conversions, serialization


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_autocast(mode, device):
    """CPU: bf16 autocast; CUDA: fp16 autocast."""
    ac_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    ref, fast = _pair(mode, torch.float32, device, input_size=8, hidden_size=16, num_layers=2)
    x = torch.randn(12, 4, 8, device=device)
    y32, _ = fast(x)
    with torch.autocast(device.type, dtype=ac_dtype):
        y, s = fast(x)
    # torch.nn's low-precision answer from parameters cast to the autocast dtype: under CPU bf16
    # autocast itself nn.LSTM needs oneDNN's bf16 LSTM, absent on CPUs without AVX-512 (it raises
    # there, where fastrnn runs).
    y_ref, _ = copy.deepcopy(ref).to(ac_dtype)(x.to(ac_dtype))
    # fastrnn runs in the autocast dtype (for GRU too, which CPU autocast leaves fp32 in torch.nn)
    states = s if mode == "LSTM" else (s,)
    assert y.dtype == ac_dtype and all(t.dtype == ac_dtype for t in states)
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    err = (y.float() - y32).abs().max().item()
    # within what torch's own low-precision computation makes (plus slack)
    ref_err = (y_ref.float() - y32).abs().max().item()
    assert err <= 2 * ref_err + 1e-3, (err, ref_err)
    # autocast's unit roundoff u (bf16 2^-8, fp16 2^-11): y (|y| < 1) carries the roundings of x, the
    # weights and each step's state, a few u (measured <= 0.93u over 100 seeds, CPU bf16); 8u leaves
    # room for cuBLAS's low-precision reductions on the GPU.
    assert err < 8 * torch.finfo(ac_dtype).eps / 2, err
    y.float().sum().backward()
    for name, p in fast.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_autocast_cell_and_lengths():
    cell = fastrnn.LSTMCell(4, 6)
    lstm = fastrnn.LSTM(4, 6, bidirectional=True)
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, c = cell(x)
        y, _ = lstm(torch.randn(5, 3, 4), lengths=[5, 2, 1])
    assert h.dtype == c.dtype == y.dtype == torch.bfloat16
    assert torch.all(y[2:, 1] == 0) and torch.all(y[1:, 2] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_modules(dtype, device):
    ref, fast = _pair("LSTM", torch.float32, device, input_size=I, hidden_size=H, num_layers=2)
    fast = fast.to(dtype) if dtype == torch.bfloat16 else fast.half()
    assert all(p.dtype == dtype for p in fast.parameters())
    x = torch.randn(T, B, I, device=device)
    y, (h, c) = fast(x.to(dtype))
    assert y.dtype == h.dtype == c.dtype == dtype
    # Unit roundoff u: 2^-11 (fp16), 2^-8 (bf16). y (|y| < 1) is stored rounded (u/2) and carries the
    # roundings of x, the weights and each step's h and c (u relative each) through gates of slope
    # <= 1 over T = 5 steps and 2 layers: a few u (measured <= 0.7u over 300 seeds, both dtypes, CPU).
    # cuBLAS may also reduce in the low precision (torch's allow_*_reduced_precision_reduction):
    # a few more roundings of the pre-activations, twice the allowance there.
    u = torch.finfo(dtype).eps / 2
    torch.testing.assert_close(y.float(), ref(x)[0], rtol=0, atol=(4 if device.type == "cpu" else 8) * u)


def test_double_and_to():
    ref, fast = _pair("GRU", torch.float32, "cpu", input_size=I, hidden_size=H)
    fast = fast.double()
    ref = ref.double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(fast(x)[0], ref(x)[0], **TOL[torch.float64])
    fast = fast.to(torch.float32)
    assert fast(x.float())[0].dtype == torch.float32


def test_pickle_deepcopy_torch_save():
    ref, fast = _pair("LSTM", torch.float64, "cpu", input_size=I, hidden_size=H, num_layers=2, proj_size=2,
                      bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    want = fast(x)[0]
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    clones = [copy.deepcopy(fast), pickle.loads(pickle.dumps(fast)), torch.load(buf, weights_only=False)]
    for clone in clones:
        assert type(clone) is fastrnn.LSTM
        assert torch.equal(clone(x)[0], want)
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    buf.seek(0)
    ref.load_state_dict(torch.load(buf))
    torch.testing.assert_close(ref(x)[0], want, **TOL[torch.float64])
    cell = fastrnn.GRUCell(I, H)
    assert torch.equal(copy.deepcopy(cell)(x[0].float()), cell(x[0].float()))


def test_no_grad_and_inference_mode_match_grad_mode():
    fast = fastrnn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2)
    x = torch.randn(T, B, I)
    want = fast(x, lengths=LENGTHS_UNSORTED)[0]
    with torch.no_grad():
        y1 = fast(x, lengths=LENGTHS_UNSORTED)[0]
    with torch.inference_mode():
        y2 = fast(x, lengths=LENGTHS_UNSORTED)[0]
    assert not y1.requires_grad and torch.equal(y1, want.detach()) and torch.equal(y2, want.detach())


def test_lengths_on_device_and_forms(device):
    m = fastrnn.GRU(I, H, device=device, dtype=torch.float64)
    x = torch.randn(T, B, I, device=device, dtype=torch.float64)
    outs = [m(x, lengths=L) for L in (LENGTHS_UNSORTED, tuple(LENGTHS_UNSORTED), torch.tensor(LENGTHS_UNSORTED),
                                       torch.tensor(LENGTHS_UNSORTED, device=device),
                                       torch.tensor(LENGTHS_UNSORTED, dtype=torch.int32))]
    for i, (y, h) in enumerate(outs[1:], 1):
        if i == 3 and device.type == "cuda":
            # Lengths on the GPU: every step runs all B rows, masked; CPU lengths: rows sorted by
            # length, each step only the active prefix. cuBLAS may sum GEMMs of different row counts
            # in a different order, so the two paths agree to rounding, not bitwise (README: lengths).
            torch.testing.assert_close(y, outs[0][0], rtol=0, atol=1e-12)
            torch.testing.assert_close(h, outs[0][1], rtol=0, atol=1e-12)
        else:  # the same path: bitwise (on the CPU, device lengths are CPU lengths)
            assert torch.equal(y, outs[0][0]) and torch.equal(h, outs[0][1]), i
    # full lengths == no lengths
    y, h = m(x, lengths=[T] * B)
    y2, h2 = m(x)
    torch.testing.assert_close(y, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h2, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# torch.compile

@pytest.mark.usefixtures("allow_rnn")

def test_compile_fullgraph_matches_eager(device):
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = fastrnn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(2 * H, 2)

        def forward(self, x, lengths):
            y, (h, c) = self.rnn(x, lengths=lengths)
            return self.head(y).sum() + h.square().sum() + c.sum()

    model = Model().to(device)
    x = torch.randn(B, T, I, device=device)
    lengths = torch.tensor(LENGTHS_UNSORTED, device=device)
    eager_loss = model(x, lengths)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(x, lengths)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_fx_symbolic_trace_keeps_layers_as_leaves(device):
    """torch.fx.symbolic_trace records fastrnn's layers and cells as call_module leaves, as it does
    torch.nn's, and the GraphModule gives eager's results and grads."""
    import torch.fx

    class Model(nn.Module):
        def __init__(self, lstm, gru, cell):
            super().__init__()
            self.lstm, self.gru, self.cell = lstm, gru, cell

        def forward(self, x, lengths):
            y, (h, c) = self.lstm(x, lengths=lengths) if lengths is not None else self.lstm(x)
            y, h2 = self.gru(y, h[-1:])
            hc, cc = self.cell(y[:, -1], (h2[0], c[0]))
            return y.sum() + h.square().sum() + hc.sum() + cc.cos().sum()

    def build(ns):
        torch.manual_seed(0)
        return Model(ns.LSTM(I, H, num_layers=2, batch_first=True), ns.GRU(H, H, batch_first=True),
                     ns.LSTMCell(H, H)).to(device=device, dtype=torch.float64)

    x = torch.randn(B, T, I, dtype=torch.float64, device=device)
    lengths = torch.tensor(LENGTHS_UNSORTED)
    leaves = lambda gm: [(n.target, len(n.args)) for n in gm.graph.nodes if n.op == "call_module"]  # noqa: E731
    ref = torch.fx.symbolic_trace(build(nn), concrete_args={"lengths": None})
    model = build(fastrnn)
    gm = torch.fx.symbolic_trace(model)
    assert [t for t, _ in leaves(gm)] == ["lstm", "gru", "cell"] == [t for t, _ in leaves(ref)]
    assert isinstance(gm.get_submodule("lstm"), fastrnn.LSTM)
    for lens in (None, lengths):
        want = model(x, lens)
        want_grads = torch.autograd.grad(want, list(model.parameters()))
        got = gm(x, lens)
        grads = torch.autograd.grad(got, list(gm.parameters()))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# misuse: a clear exception naming expected vs given


def _lstm():
    return fastrnn.LSTM(I, H, num_layers=2)


ERROR_CASES = [
    ("rank 1 input", lambda m: m(torch.randn(I)), ValueError, "2D or 3D, got 1D"),
    ("rank 4 input", lambda m: m(torch.randn(1, T, B, I)), ValueError, "2D or 3D, got 4D"),
    ("input size", lambda m: m(torch.randn(T, B, I + 1)), RuntimeError, f"Expected {I}, got {I + 1}"),
    ("input dtype", lambda m: m(torch.randn(T, B, I, dtype=torch.float64)), ValueError, "float64"),
    ("h0 shape", lambda m: m(torch.randn(T, B, I), (torch.randn(2, B + 1, H), torch.randn(2, B, H))),
     RuntimeError, rf"\(2, {B}, {H}\), got \[2, {B + 1}, {H}\]"),
    ("c0 shape", lambda m: m(torch.randn(T, B, I), (torch.randn(2, B, H), torch.randn(1, B, H))),
     RuntimeError, rf"hidden\[1\] size \(2, {B}, {H}\), got \[1, {B}, {H}\]"),
    ("hx rank batched", lambda m: m(torch.randn(T, B, I), (torch.randn(2, H), torch.randn(2, H))),
     RuntimeError, "3-D"),
    ("hx rank unbatched", lambda m: m(torch.randn(T, I), (torch.randn(2, 1, H), torch.randn(2, 1, H))),
     RuntimeError, "2-D"),
    ("hx not a tuple", lambda m: m(torch.randn(T, B, I), torch.randn(2, B, H)), TypeError, "tuple"),
    ("hx device", lambda m: m(torch.randn(T, B, I), (torch.randn(2, B, H, device="meta"), torch.randn(2, B, H))),
     RuntimeError, "cpu.*meta"),
    ("hx dtype", lambda m: m(torch.randn(T, B, I), (torch.randn(2, B, H).double(), torch.randn(2, B, H))),
     RuntimeError, "float32.*float64"),
    ("lengths count", lambda m: m(torch.randn(T, B, I), lengths=[1, 2]), ValueError, f"expected {B}, got 2"),
    ("lengths tensor count", lambda m: m(torch.randn(T, B, I), lengths=torch.tensor([1, 2])), ValueError,
     rf"\({B},\), got \(2,\)"),
    ("lengths zero", lambda m: m(torch.randn(T, B, I), lengths=[0, 2, 3]), ValueError, r"\[1, 5\]"),
    ("lengths too long", lambda m: m(torch.randn(T, B, I), lengths=[1, T + 1, 3]), ValueError, r"\[1, 5\]"),
    ("lengths tensor zero", lambda m: m(torch.randn(T, B, I), lengths=torch.tensor([0, 2, 3])), ValueError,
     r"\[1, T=5\].*lengths\[0\] = 0"),
    ("lengths tensor too long", lambda m: m(torch.randn(T, B, I), lengths=torch.tensor([1, T + 1, 3])),
     ValueError, r"\[1, T=5\].*lengths\[1\] = 6"),
    ("lengths float", lambda m: m(torch.randn(T, B, I), lengths=torch.tensor([1.0, 2.0, 3.0])), TypeError,
     "integer"),
    ("packed plus lengths",
     lambda m: m(pack_padded_sequence(torch.randn(T, B, I), LENGTHS_SORTED), lengths=LENGTHS_SORTED),
     ValueError, "not both"),
    ("packed hx shape",
     lambda m: m(pack_padded_sequence(torch.randn(T, B, I), LENGTHS_SORTED),
                 (torch.randn(2, B - 1, H), torch.randn(2, B - 1, H))), RuntimeError, "Expected hidden"),
    ("input not a tensor", lambda m: m([1.0, 2.0]), TypeError, "PackedSequence"),
    ("input device", lambda m: m(torch.randn(T, B, I, device="meta")), RuntimeError, "meta.*cpu"),
    ("lengths device", lambda m: m(torch.randn(T, B, I), lengths=torch.ones(B, dtype=torch.int64, device="meta")),
     ValueError, "CPU or on the input's device"),
    ("lengths not a sequence", lambda m: m(torch.randn(T, B, I), lengths=3), TypeError, "sequence of ints"),
    ("packed data rank", lambda m: m(PackedSequence(torch.randn(T, B, I), torch.tensor([B] * T))), RuntimeError,
     "2 dimensions"),
]


@pytest.mark.parametrize("what,call,exc,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors(what, call, exc, match):
    with pytest.raises(exc, match=match):
        call(_lstm())


def test_gru_errors():
    m = fastrnn.GRU(I, H)
    with pytest.raises(RuntimeError, match=rf"Expected hidden size \(1, {B}, {H}\), got \[1, {B}, {H + 1}\]"):
        m(torch.randn(T, B, I), torch.randn(1, B, H + 1))
    with pytest.raises(TypeError, match="Tensor"):
        m(torch.randn(T, B, I), (torch.randn(1, B, H),))
    with pytest.raises(RuntimeError, match="2-D"):
        m(torch.randn(T, I), torch.randn(1, 1, H))


# What nn.LSTM raises for the ERROR_CASES it can express: the same type as fastrnn but for "hx
# not a tuple" (nn.LSTM unpacks the tensor and fails on the ranks; fastrnn names the mistake).
# The last two messages come from inside torch's backends (oneDNN, broadcasting), hence the loose
# patterns. Not here: lengths (nn.LSTM has none), "hx device" and "input not a tensor" (nn.LSTM
# crashes differently), "packed data rank" (nn.LSTM does not check it without hx).
TORCH_ERRORS = {
    "rank 1 input": (ValueError, "Expected input to be 2D or 3D, got 1D instead"),
    "rank 4 input": (ValueError, "Expected input to be 2D or 3D, got 4D instead"),
    "input size": (RuntimeError, rf"input.size\(-1\) must be equal to input_size. Expected {I}, got {I + 1}"),
    "input dtype": (ValueError, r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    "h0 shape": (RuntimeError, rf"Expected hidden\[0\] size \(2, {B}, {H}\), got \[2, {B + 1}, {H}\]"),
    "c0 shape": (RuntimeError, rf"Expected hidden\[1\] size \(2, {B}, {H}\), got \[1, {B}, {H}\]"),
    "hx rank batched": (RuntimeError, "For batched 3-D input, hx and cx should also be 3-D"),
    "hx rank unbatched": (RuntimeError, "For unbatched 2-D input, hx and cx should also be 2-D"),
    "hx not a tuple": (RuntimeError, "For batched 3-D input, hx and cx should also be 3-D"),
    "input device": (RuntimeError, "not at the same device, found input tensor at meta"),
    "hx dtype": (RuntimeError, "(?i)dtype|data type"),
    "packed hx shape": (RuntimeError, "(?i)size|shape"),
}


@pytest.mark.parametrize("what", list(TORCH_ERRORS))
def test_errors_that_torch_nn_also_raises(what):
    """Every misuse above that nn.LSTM can express is rejected by nn.LSTM too (we are not stricter)."""
    call = next(c for w, c, _, _ in ERROR_CASES if w == what)
    exc, match = TORCH_ERRORS[what]
    with pytest.raises(exc, match=match) as err:
        call(nn.LSTM(I, H, num_layers=2))
    assert type(err.value) is exc


def test_torch_errors_table_is_complete():
    expressible = [w for w, _, _, _ in ERROR_CASES
                   if "lengths" not in w and w not in ("hx device", "input not a tensor", "packed data rank")]
    assert sorted(TORCH_ERRORS) == sorted(expressible)

@pytest.mark.usefixtures("allow_rnn")

def test_compile_fullgraph_gru_cell_autocast_hx():
    """Second compile (cheap backend): GRU with hx and list lengths, a cell, and autocast inside the
    graph; all must trace without a break and match eager."""
    torch.manual_seed(0)
    gru = fastrnn.GRU(I, H, num_layers=2, bidirectional=True)
    cell = fastrnn.LSTMCell(2 * H, H)

    def f(x, h0):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, h = gru(x, h0, lengths=LENGTHS_UNSORTED)
            hc, cc = cell(y[-1])
        return y.float().sum() + h.float().square().sum() + hc.float().sum() + cc.float().sum()

    x = torch.randn(T, B, I)
    h0 = torch.randn(4, B, H, requires_grad=True)
    eager = f(x, h0)
    eager_grads = torch.autograd.grad(eager, [h0, *gru.parameters(), *cell.parameters()])
    torch._dynamo.reset()
    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(x, h0)
    grads = torch.autograd.grad(loss, [h0, *gru.parameters(), *cell.parameters()])
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-4)
    for g, e in zip(grads, eager_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


def test_device_mismatch_errors(device):
    other = "meta" if device.type == "cpu" else "cpu"
    m = fastrnn.GRU(I, H, device=device)
    x = torch.randn(T, B, I, device=device)
    with pytest.raises(RuntimeError, match=f"not at the same device, found input tensor at {device}"):
        m(x, torch.randn(1, B, H, device=other))
    with pytest.raises(RuntimeError, match="parameters are on"):
        m(x.to(other))


# --------------------------------------------------------------------------------------------
# documentation


DOC_TERMS = {
    "LSTM": ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
             "proj_size", "device, dtype", "weight_hr_l{k}"],
    "GRU": ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
            "device, dtype", "``proj_size`` is refused with ValueError"],
    "LSTMCell": ["input_size", "hidden_size", "bias", "device, dtype", "weight_ih", "(B, I)", "(I,)", "(h', c')"],
    "GRUCell": ["input_size", "hidden_size", "bias", "device, dtype", "weight_ih", "(B, I)", "(I,)", "h'"],
}
FORWARD_TERMS = ["input:", "hx:", "lengths:", "(T, B, I)", "(B, T, I)", "(T, I)", "unbatched", "PackedSequence",
                 "(L*D, B, H)", "enforce_sorted=False", "Differences from torch.nn", "TorchScript"]


@pytest.mark.parametrize("mode", list(DOC_TERMS))
def test_help_documents_arguments_and_shapes(mode):
    """help() shows the constructor arguments, forward's inputs and outputs with their shapes and
    the differences from torch.nn, not nn.Module's generic text."""
    import pydoc

    cls = getattr(fastrnn, mode)
    for term in DOC_TERMS[mode]:
        assert term in cls.__doc__ + cls.forward.__doc__, term
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert "Define the computation performed at every call" not in text  # nn.Module.forward's
    assert "Initialize internal Module state" not in text  # nn.Module.__init__'s
    assert "Run the" in text or "One step." in text
    if not mode.endswith("Cell"):
        for term in FORWARD_TERMS + (["(L*D, B, P)", "proj_size"] if mode == "LSTM" else []):
            assert term in cls.forward.__doc__, term

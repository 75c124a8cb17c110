"""weight_drop= on fastrnn.LSTM / GRU: DropConnect on every weight_hh (AWD-LSTM's weight drop).

Semantics under test: in training, one mask per forward call, layer and direction over the
elements of W_hh, values 0 or 1 / (1 - p), shared by every step and batch entry, drawn from
torch's generator (a seed reproduces it) in layer order, forward direction first, before the
first layer runs; gradients reach W_hh through the mask; eval uses W_hh as is.

Two oracles: (1) plain PyTorch: the masks drawn with F.dropout under the same seed, then
nn.LSTM / nn.GRU run (torch.func.functional_call) with the masked W_hh; (2) the mask fastrnn
used, read back from its own gradients (with W_hh = 0 the forward does not depend on the mask,
so the parameter's gradient is the mask times the eval gradient), which the statistical checks
use and which, put into W_hh by hand, must reproduce the training forward in eval mode.
"""
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from _generators import OPTION_CONFIGS, OPTION_DIMS, OPTION_LENGTHS, config_id, option_inputs

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, B, I, H, P = OPTION_DIMS
LENGTHS = OPTION_LENGTHS
# float64 on both sides: each op rounds at 2^-53 ~ 1.1e-16; dot products of <= 2H + I = 14
# terms over T = 6 steps with |W_hh_eff| entries <= 1/sqrt(H) / (1 - p) <= 0.9 keep the
# accumulated difference near 1e-14 (state derivatives stay O(1) through the saturating
# activations); 1e-10 is a wide margin that a wrong mask (differences O(0.1)) cannot meet.
TOL64 = dict(rtol=1e-9, atol=1e-10)

CONFIGS = OPTION_CONFIGS


def _build(mode, opts, device, p):
    kw = {k: v for k, v in opts.items() if k not in ("lengths", "unbatched")}
    torch.manual_seed(0)
    fast = getattr(fastrnn, mode)(I, H, weight_drop=p, device=device, dtype=torch.float64, **kw)
    plain = getattr(nn, mode)(I, H, device=device, dtype=torch.float64, **kw)
    plain.load_state_dict(fast.state_dict())
    return fast, plain


def _hh_names(module):
    """The weight_hh names in the order the masks are drawn: layer by layer, forward first."""
    return [n for names in module._all_weights for n in names if n.startswith("weight_hh")]


def _run_plain(plain, params, x, hx, lengths, batch_first):
    """nn.LSTM / nn.GRU with the given parameters; with lengths through a PackedSequence (padded
    positions zero), which is fastrnn's lengths= semantics."""
    if lengths is None:
        return torch.func.functional_call(plain, params, (x, hx))
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    y, state = torch.func.functional_call(plain, params, (packed, hx))
    return pad_packed_sequence(y, batch_first=batch_first, total_length=T)[0], state


def _reference(fast, plain, x, hx, lengths, seed):
    """Oracle (1): the masks of a training call seeded with `seed`, drawn in fastrnn's order with
    F.dropout (0 or 1/(1-p), the same generator), and nn's layer run with them, in eval mode
    (no inter-layer dropout in these configurations)."""
    torch.manual_seed(seed)
    params = dict(fast.named_parameters())
    for n in _hh_names(fast):
        params[n] = F.dropout(params[n], fast.weight_drop, True)
    plain.eval()
    return _run_plain(plain, params, x, hx, lengths, fast.batch_first)


def _flat(out):
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else [out]


def _run_fast(fast, x, hx, lengths, seed):
    torch.manual_seed(seed)
    return fast(x, hx, lengths=lengths)


def _loss(outs):
    """A fixed random projection of all the outputs (every element weighs in)."""
    g = torch.Generator().manual_seed(7)
    return sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in outs)


def _outputs_and_grads(out, leaves):
    """Outputs flattened, and the grads of `_loss` of them w.r.t. leaves."""
    outs = _flat(out)
    grads = torch.autograd.grad(_loss(outs), leaves, allow_unused=True)
    return outs, [torch.zeros_like(leaf) if gr is None else gr for gr, leaf in zip(grads, leaves)]


# --------------------------------------------------------------------------------------------
# against plain PyTorch with the same masks


@pytest.mark.parametrize("p", [0.3, 0.7])
@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_forward_and_grads_match_nn_with_masked_weight_hh(config, p, device):
    mode, opts = config
    fast, plain = _build(mode, opts, device, p)
    fast.train()
    x, hx, lengths = option_inputs(mode, opts, device)
    hxs = list(hx) if isinstance(hx, tuple) else [hx]
    x.requires_grad_(True)
    for h in hxs:
        h.requires_grad_(True)
    leaves = [x, *hxs, *fast.parameters()]
    got_o, got_g = _outputs_and_grads(_run_fast(fast, x, hx, lengths, seed=3), leaves)
    want_o, want_g = _outputs_and_grads(_reference(fast, plain, x, hx, lengths, seed=3), leaves)
    names = [f"output {i}" for i in range(len(got_o))] + ["grad x"] + [f"grad hx {i}" for i in range(len(hxs))] \
        + [f"grad {n}" for n, _ in fast.named_parameters()]
    for name, a, b in zip(names, got_o + got_g, want_o + want_g):
        torch.testing.assert_close(a, b, **TOL64, msg=lambda m: f"{name}: {m}")
    # and the mask did something: the eval forward (no mask) differs
    fast.eval()
    with torch.no_grad():
        assert not torch.allclose(fast(x, hx, lengths=lengths)[0], got_o[0])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gradcheck_training_forward(mode, device):
    """Exact gradients through the mask: every call re-seeds, so gradcheck's perturbed forwards
    all see the one mask."""
    opts = dict(num_layers=2, bidirectional=True, lengths=True)
    fast, _ = _build(mode, opts, device, 0.4)
    fast.train()
    x, hx, lengths = option_inputs(mode, opts, device)
    hxs = list(hx) if isinstance(hx, tuple) else [hx]
    names = [n for n, _ in fast.named_parameters()]
    inputs = [t.detach().clone().requires_grad_(True) for t in [x, *hxs, *fast.parameters()]]
    n_state = len(hxs)

    def f(x, *rest):
        states, params = rest[:n_state], rest[n_state:]
        torch.manual_seed(11)
        h = tuple(states) if mode == "LSTM" else states[0]
        return tuple(_flat(torch.func.functional_call(fast, dict(zip(names, params)), (x, h),
                                                      {"lengths": lengths})))

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# the mask itself, read back from fastrnn's gradients


def _masks(fast, x, hx, lengths, seed):
    """Oracle (2): {weight_hh name: the scaled mask fastrnn applied} in a training call seeded
    with `seed`. With every weight_hh zero, the masked copy is zero whatever the mask, so the
    training and eval forwards are the same function and d loss / d W_hh_eff is the eval
    gradient; the parameter's training gradient is that times the mask (dropout's backward):
    the ratio is the mask, exact up to the one rounding of that product."""
    saved = {n: getattr(fast, n).detach().clone() for n in _hh_names(fast)}
    with torch.no_grad():
        for n in saved:
            getattr(fast, n).zero_()
    try:
        grads = {}
        for training in (False, True):
            fast.train(training)
            fast.zero_grad()
            _loss(_flat(_run_fast(fast, x, hx, lengths, seed))).backward()
            grads[training] = {n: getattr(fast, n).grad.clone() for n in saved}
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                getattr(fast, n).copy_(w)
        fast.zero_grad()
    masks = {}
    for n in saved:
        ev = grads[False][n]
        assert (ev != 0).all(), "a zero eval gradient hides that mask element"
        masks[n] = grads[True][n] / ev
    return masks


def _binomial_bound(n, p):
    # |zeros - n p| <= 6 sd: a correct mask fails this with probability < 2e-9 (normal tail; n
    # is in the hundreds), a wrong rate (e.g. keep probability p) fails it for p != 0.5
    return 6 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.25, 0.6])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_mask_values_rate_and_independence(mode, p, device):
    opts = dict(num_layers=2, bidirectional=True, lengths=True)
    fast, _ = _build(mode, opts, device, p)
    x, hx, lengths = option_inputs(mode, opts, device)
    masks = _masks(fast, x, hx, lengths, seed=5)
    assert len(masks) == 4  # one per layer and direction
    scale = 1 / (1 - p)
    for n, m in masks.items():
        dropped = m.abs() < 1e-12
        # the ratio of two float64 values, the numerator one rounding from scale * denominator
        torch.testing.assert_close(m[~dropped], torch.full_like(m[~dropped], scale), rtol=1e-13, atol=0,
                                   msg=lambda s: f"{n}: {s}")
        zeros, total = int(dropped.sum()), m.numel()
        assert abs(zeros - total * p) <= _binomial_bound(total, p), (n, zeros, total)
    # all zeros over all four masks: the same bound on the pooled count
    zeros = sum(int((m.abs() < 1e-12).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(zeros - total * p) <= _binomial_bound(total, p)
    # a different mask per layer and direction (all W_hh have the same shape here)
    ms = list(masks.values())
    for a in range(len(ms)):
        for b in range(a + 1, len(ms)):
            assert not torch.equal(ms[a], ms[b])
    # the same seed, the same masks; another seed, other masks
    again = _masks(fast, x, hx, lengths, seed=5)
    other = _masks(fast, x, hx, lengths, seed=6)
    for n in masks:
        torch.testing.assert_close(again[n], masks[n], rtol=1e-13, atol=0)
        assert not torch.allclose(other[n], masks[n])


@pytest.mark.parametrize("config", CONFIGS[:3] + CONFIGS[6:7], ids=[config_id(c) for c in CONFIGS[:3] + CONFIGS[6:7]])
def test_one_mask_for_every_step_and_batch_entry(config, device):
    """The training forward equals the eval forward with W_hh replaced by mask * W_hh, with the
    mask read back from fastrnn itself: so one effective W_hh served every step and entry."""
    mode, opts = config
    fast, _ = _build(mode, opts, device, 0.5)
    x, hx, lengths = option_inputs(mode, opts, device)
    masks = _masks(fast, x, hx, lengths, seed=9)
    fast.train()
    with torch.no_grad():
        got = _flat(_run_fast(fast, x, hx, lengths, seed=9))
        fast.eval()
        for n, m in masks.items():
            getattr(fast, n).mul_(m.round(decimals=12))  # exact 0 or 2: the mask read back, unrounded
        want = _flat(fast(x, hx, lengths=lengths))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL64)


def test_fresh_mask_per_call(device):
    fast, _ = _build("LSTM", {}, device, 0.5)
    fast.train()
    x, hx, _ = option_inputs("LSTM", {}, device)
    torch.manual_seed(0)
    with torch.no_grad():
        a, b = fast(x, hx)[0], fast(x, hx)[0]
        torch.manual_seed(0)
        c = fast(x, hx)[0]
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# eval, p = 0, p = 1, and the argument


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_eval_uses_weight_hh_as_is_and_draws_nothing(mode, device):
    opts = dict(num_layers=2, bidirectional=True)
    fast, plain = _build(mode, opts, device, 0.5)
    fast.eval()
    plain.eval()
    x, hx, _ = option_inputs(mode, opts, device)
    state = torch.get_rng_state()
    with torch.no_grad():
        got = _flat(fast(x, hx))
    assert torch.equal(torch.get_rng_state(), state)  # no mask drawn
    with torch.no_grad():
        want = _flat(plain(x, hx))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL64)


def test_default_is_off(device):
    fast, plain = _build("LSTM", dict(num_layers=2), device, 0.0)
    assert fast.weight_drop == 0.0 and "weight_drop" not in repr(fast)
    assert list(fast.state_dict()) == list(plain.state_dict())
    x, hx, _ = option_inputs("LSTM", dict(num_layers=2), device)
    fast.train()
    state = torch.get_rng_state()
    with torch.no_grad():
        fast(x, hx)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_p_one_zeroes_weight_hh(mode, device):
    fast, _ = _build(mode, {}, device, 1.0)
    x, hx, _ = option_inputs(mode, {}, device)
    fast.train()
    out = fast(x, hx)
    zeroed, _ = _build(mode, {}, device, 0.0)
    with torch.no_grad():
        zeroed.weight_hh_l0.zero_()
        want = zeroed(x, hx)
    for a, b in zip(_flat(out), _flat(want)):
        torch.testing.assert_close(a, b, **TOL64)
    sum(o.sum() for o in _flat(out)).backward()
    assert torch.equal(fast.weight_hh_l0.grad, torch.zeros_like(fast.weight_hh_l0))
    assert fast.weight_ih_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5", float("nan")])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_bad_rate_raises_torch_nn_dropout_wording(mode, bad):
    with pytest.raises(ValueError) as want:
        getattr(nn, mode)(I, H, dropout=bad)
    with pytest.raises(ValueError) as own:
        getattr(fastrnn, mode)(I, H, dropout=bad)
    with pytest.raises(ValueError) as got:
        getattr(fastrnn, mode)(I, H, weight_drop=bad)
    # torch.nn's sentence with the option's name, then the value, as fastrnn words its dropout
    assert str(got.value).startswith(str(want.value).replace("dropout", "weight_drop", 1))
    assert str(got.value) == str(own.value).replace("dropout", "weight_drop", 1)


def test_keyword_only():
    with pytest.raises(TypeError):
        fastrnn.LSTM(I, H, 1, True, False, 0.0, False, 0, None, None, 0.5)
    with pytest.raises(TypeError):
        fastrnn.GRU(I, H, 1, True, False, 0.0, False, None, None, 0.5)


def test_extra_repr():
    assert repr(fastrnn.LSTM(I, H, weight_drop=0.5)) == "LSTM(4, 5, weight_drop=0.5)"
    assert repr(fastrnn.GRU(I, H, 2, weight_drop=0.25)) == "GRU(4, 5, num_layers=2, weight_drop=0.25)"


# --------------------------------------------------------------------------------------------
# persistence and conversion


def test_pickle_and_state_dict_round_trip():
    fast = fastrnn.LSTM(I, H, 2, weight_drop=0.3)
    loaded = pickle.loads(pickle.dumps(fast))
    assert loaded.weight_drop == 0.3
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False).weight_drop == 0.3
    other = fastrnn.LSTM(I, H, 2, weight_drop=0.3)
    other.load_state_dict(fast.state_dict())  # the keys are torch.nn's
    assert other.weight_drop == 0.3


def test_old_pickle_without_the_attribute_loads_off():
    fast = fastrnn.GRU(I, H)
    state = fast.__getstate__()
    state = {k: v for k, v in state.items() if k != "weight_drop"}
    old = fastrnn.GRU.__new__(fastrnn.GRU)
    old.__setstate__(state)
    assert old.weight_drop == 0.0
    x = torch.randn(T, B, I)
    old.train()
    torch.testing.assert_close(old(x)[0], fast(x)[0], rtol=0, atol=0)


def test_to_torch_keeps_eval_results(device):
    fast, _ = _build("LSTM", dict(num_layers=2, proj_size=P), device, 0.5)
    fast.eval()
    x, hx, _ = option_inputs("LSTM", dict(num_layers=2, proj_size=P), device)
    with torch.no_grad():
        want = _flat(fast(x, hx))
        plain = fastrnn.to_torch(fast, inplace=False)
        assert type(plain) is nn.LSTM
        got = _flat(plain(x, hx))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL64)


# --------------------------------------------------------------------------------------------
# TorchScript, torch.compile, torch.export, ONNX


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script's deprecation notice
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_script_matches_eager(mode, device):
    opts = dict(num_layers=2, bidirectional=True, lengths=True)
    fast, _ = _build(mode, opts, device, 0.4)
    fast.train()
    scripted = torch.jit.script(fast)
    x, hx, lengths = option_inputs(mode, opts, device)
    leaves = list(fast.parameters())
    got = _outputs_and_grads(_run_fast(scripted, x, hx, lengths, seed=2), leaves)
    want = _outputs_and_grads(_run_fast(fast, x, hx, lengths, seed=2), leaves)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_trace_draws_masks_at_run_time(device):
    """torch.jit.trace records the scripted stack (fastrnn._runner.traceable): the trace draws a
    fresh mask per call, as eager does, rather than baking in the one seen while tracing."""
    opts = dict(num_layers=2, bidirectional=True)
    fast, _ = _build("LSTM", opts, device, 0.4)
    fast.train()
    x, hx, _ = option_inputs("LSTM", opts, device)
    traced = torch.jit.trace(fast, (x, hx), check_trace=False)
    for seed in (2, 3):
        torch.manual_seed(seed)
        got = _flat(traced(x, hx))
        want = _flat(_run_fast(fast, x, hx, None, seed))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fx_leaf_keeps_weight_drop(device):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = fastrnn.GRU(I, H, weight_drop=0.5, device=device, dtype=torch.float64)

        def forward(self, x):
            return self.rnn(x)[0].sum(-1)

    net = Net().train()
    gm = torch.fx.symbolic_trace(net)
    assert [n.op for n in gm.graph.nodes].count("call_module") == 1
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    torch.manual_seed(1)
    got = gm(x)
    torch.manual_seed(1)
    torch.testing.assert_close(got, net(x), rtol=0, atol=0)


def test_packed_sequence_input_takes_the_same_masks(device):
    opts = dict(num_layers=2, bidirectional=True, lengths=True)
    fast, _ = _build("LSTM", opts, device, 0.5)
    fast.train()
    x, hx, lengths = option_inputs("LSTM", opts, device)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    torch.manual_seed(4)
    y, (h, c) = fast(packed, hx)
    y_l, (h_l, c_l) = _run_fast(fast, x, hx, lengths, seed=4)
    torch.testing.assert_close(pad_packed_sequence(y, total_length=T)[0], y_l, **TOL64)
    torch.testing.assert_close(h, h_l, **TOL64)
    torch.testing.assert_close(c, c_l, **TOL64)


@pytest.mark.usefixtures("allow_rnn")
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_compile_fullgraph_training_matches_eager(mode, device):
    """Compiled with the eager backend (dynamo's graph run by ATen): the dropout in the graph
    draws from the same generator, so the same seed gives the same masks."""
    opts = dict(num_layers=2, bidirectional=True)
    fast, _ = _build(mode, opts, device, 0.4)
    fast.train()
    x, hx, _ = option_inputs(mode, opts, device)
    leaves = list(fast.parameters())
    torch._dynamo.reset()
    try:
        compiled = torch.compile(fast, fullgraph=True, backend="eager")
        got = _outputs_and_grads(_run_fast(compiled, x, hx, None, seed=4), leaves)
    finally:
        torch._dynamo.reset()
    want = _outputs_and_grads(_run_fast(fast, x, hx, None, seed=4), leaves)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.usefixtures("allow_rnn")
def test_compile_fullgraph_aot_training_draws_masks(device):
    """Through AOTAutograd (the backward compiled too) the masks may come from a functionalised
    generator; checked on what does not depend on the draw: a mask applies (training differs
    from eval), the gradients reach W_hh, and the dropped share of W_hh's gradient matches p."""
    fast, _ = _build("LSTM", {}, device, 0.5)
    x, hx, _ = option_inputs("LSTM", {}, device)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
        masks = _masks(compiled, x, hx, None, seed=1)["weight_hh_l0"]
    finally:
        torch._dynamo.reset()
    dropped = int((masks.abs() < 1e-12).sum())
    assert abs(dropped - masks.numel() * 0.5) <= _binomial_bound(masks.numel(), 0.5)
    torch.testing.assert_close(masks[masks.abs() >= 1e-12], torch.full((masks.numel() - dropped,), 2.0,
                               dtype=masks.dtype, device=masks.device), rtol=1e-13, atol=0)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_export(training, device):
    opts = dict(num_layers=2, bidirectional=True, batch_first=True)
    fast, _ = _build("GRU", opts, device, 0.5)
    fast.train(training)
    x, hx, _ = option_inputs("GRU", opts, device)
    ep = torch.export.export(fast, (x, hx))
    fused = sum(getattr(n.target, "namespace", None) == "fastrnn" for n in ep.graph.nodes)
    assert fused == 4
    dropouts = [n for n in ep.graph.nodes if "dropout" in str(n.target)]
    assert len(dropouts) == (4 if training else 0)  # one mask per layer and direction, or none
    with torch.no_grad():
        torch.manual_seed(8)
        got = _flat(ep.module()(x, hx))
        want = _flat(_run_fast(fast, x, hx, None, seed=8))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_exports_the_plain_layer(exporter):
    """Weight drop is training-only: an eval module exports as the plain layer."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import fastrnn.onnx
    fast = fastrnn.LSTM(I, H, 2, bidirectional=True, weight_drop=0.5).eval()
    x = torch.randn(T, B, I)
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
        model = fastrnn.onnx.export(fast, (x,), dynamo=True, verbose=False).model_proto.SerializeToString()
    else:
        f = io.BytesIO()
        torch.onnx.export(fast, (x,), f, dynamo=False)
        model = f.getvalue()
    ops = [n.op_type for n in onnx.load_from_string(model).graph.node]
    assert ops.count("LSTM") == 4 and not any("Dropout" in o for o in ops)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = _flat(fast(x))
    for a, b in zip(got, want):
        # float32, ONNX Runtime's LSTM against fastrnn's: the sums of I + P = 9 or 2P + P terms
        # round at 6e-8 and 2 layers x 6 steps compound it to ~1e-6
        torch.testing.assert_close(torch.from_numpy(a), b, rtol=1e-4, atol=1e-5)

"""zoneout=, zoneout_cell= and recurrent_dropout= on fastrnn.LSTM / GRU (and zoneout= on the cells).

Semantics under test (docs/DESIGN.md, "Options beyond torch.nn"), per layer and direction:
- zoneout on h (after the projection), zoneout_cell on c: the cell computes its own new state
  s~_t from the zoned s_{t-1}, then s_t = z s_{t-1} + (1 - z) s~_t with z a Bernoulli(p) draw in
  {0, 1}, fresh per step and element, in training; the constant p in eval; y_t = h_t.
- recurrent_dropout: one [B, P] mask (0 or 1/(1-p)) per call, layer and direction, fixed across
  time; W_hh (m * h_{t-1}) only; state, the GRU's z * h_{t-1} and outputs unmasked; eval: off.
- masks drawn from torch's generator before the first layer runs, after weight drop's, layer by
  layer, forward direction first, each: zoneout [T, B, P] (torch.bernoulli of p), zoneout_cell
  [T, B, H], recurrent dropout (F.dropout of ones [B, P]); the backward sees the forward's.

The oracle (`_reference`) is plain PyTorch written here from those equations: a Python loop over
time per entry, with its own lengths handling, that re-seeds and draws the masks in that order.
It uses no fastrnn code.
"""
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastrnn
from _generators import OPTION_CONFIGS, OPTION_DIMS, OPTION_LENGTHS, config_id, option_inputs

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, B, I, H, P = OPTION_DIMS
LENGTHS = OPTION_LENGTHS
# float64 on both sides: each op rounds at 2^-53 ~ 1.1e-16; dot products of <= I + 2H = 14
# terms over T = 6 steps, with O(1) weights and states and saturating activations, keep the
# accumulated difference near 1e-14; 1e-10 is a wide margin that a wrong mask, a mask at the
# wrong time index or a wrong blend (differences O(0.1)) cannot meet.
TOL64 = dict(rtol=1e-9, atol=1e-10)

CONFIGS = OPTION_CONFIGS

# the regulariser settings: zoneout, zoneout_cell (LSTM only), recurrent_dropout
OPTIONS = {
    "zoneout": dict(zoneout=0.4),
    "zoneout_cell": dict(zoneout_cell=0.3),
    "recurrent_dropout": dict(recurrent_dropout=0.35),
    "all": dict(zoneout=0.25, zoneout_cell=0.5, recurrent_dropout=0.3),
}


def _options(mode, name):
    o = dict(OPTIONS[name])
    if mode == "GRU":
        o.pop("zoneout_cell", None)
    return o


def _build(mode, opts, device, **options):
    kw = {k: v for k, v in opts.items() if k not in ("lengths", "unbatched")}
    torch.manual_seed(0)
    return getattr(fastrnn, mode)(I, H, device=device, dtype=torch.float64, **kw, **options)


def _flat(out):
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else [out]


def _loss(outs):
    """A fixed random projection of all the outputs (every element weighs in)."""
    g = torch.Generator().manual_seed(7)
    return sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in outs)


def _outputs_and_grads(out, leaves):
    outs = _flat(out)
    grads = torch.autograd.grad(_loss(outs), leaves, allow_unused=True)
    return outs, [torch.zeros_like(leaf) if gr is None else gr for gr, leaf in zip(grads, leaves)]


# --------------------------------------------------------------------------------------------
# the oracle


def _cell(mode, x, h, c, w, rec):
    """One step of the plain cell from the state (h, c): (h~, c~); rec multiplies h only where it
    enters W_hh."""
    hin = h if rec is None else h * rec
    gi = x @ w["weight_ih"].t() + (w["bias_ih"] if "bias_ih" in w else 0)
    gh = hin @ w["weight_hh"].t() + (w["bias_hh"] if "bias_hh" in w else 0)
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if "weight_hr" in w:
            h_new = h_new @ w["weight_hr"].t()
        return h_new, c_new
    ir, iz, in_ = gi.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (1 - z) * n + z * h, None


def _ref_layer(mode, x, h, c, w, lengths, reverse, zh, zc, rec):
    """One layer and direction over x [T, B, I]: entry b runs L_b steps, at iteration s reading
    time t = s (t = L_b - 1 - s in reverse); zh / zc [T, B, W] or 0-dim, by time index."""
    Tn, Bn = x.shape[0], x.shape[1]
    L = torch.as_tensor(lengths if lengths is not None else [Tn] * Bn).cpu()
    rows = torch.arange(Bn)
    y = x.new_zeros(Tn, Bn, h.shape[1])
    for s in range(Tn):
        active = s < L
        t = torch.where(active, (L - 1 - s) if reverse else torch.full_like(L, s), torch.zeros_like(L))
        h_new, c_new = _cell(mode, x[t, rows], h, c, w, rec)
        if zc is not None:
            zct = zc if zc.dim() == 0 else zc[t, rows]
            c_new = zct * c + (1 - zct) * c_new
        if zh is not None:
            zht = zh if zh.dim() == 0 else zh[t, rows]
            h_new = zht * h + (1 - zht) * h_new
        a = active.unsqueeze(1).to(x.device)
        h = torch.where(a, h_new, h)
        if c is not None:
            c = torch.where(a, c_new, c)
        y = y.index_put((t[active].to(x.device), rows[active].to(x.device)), h_new[active.to(x.device)])
    return y, h, c


def _reference(module, params, x, hx, lengths, seed, masks=None):
    """The module's forward from the semantics, with `params` (name -> tensor), after seeding
    with `seed` and drawing the masks in fastrnn's order (none in eval: constant keep weights),
    or with `masks` (per layer and direction (zh, zc, rec)) when given."""
    mode = module.mode
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)
        hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
    elif module.batch_first:
        x = x.transpose(0, 1)
    h0, c0 = hx if mode == "LSTM" else (hx, None)
    D = 2 if module.bidirectional else 1
    Tn, Bn = x.shape[0], x.shape[1]
    Pw = module.proj_size or module.hidden_size
    torch.manual_seed(seed)
    drawn = []
    for _ in range(module.num_layers * D):
        def keep(p, width):
            if p == 0:
                return None
            return torch.bernoulli(x.new_full((Tn, Bn, width), p)) if module.training else x.new_full((), p)
        zh = keep(module.zoneout, Pw)
        zc = keep(module.zoneout_cell, module.hidden_size) if mode == "LSTM" else None
        rec = None
        if module.recurrent_dropout > 0 and module.training:
            rec = F.dropout(x.new_ones(Bn, Pw), module.recurrent_dropout, True)
        drawn.append((zh, zc, rec))
    masks = drawn if masks is None else masks
    hs, cs = [], []
    for layer in range(module.num_layers):
        ys = []
        for d in range(D):
            k = layer * D + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = {n[:-len(sfx)]: p for n, p in params.items() if n.endswith(sfx)}
            y, h, c = _ref_layer(mode, x, h0[k], None if c0 is None else c0[k], w, lengths, d == 1, *masks[k])
            ys.append(y)
            hs.append(h)
            cs.append(c)
        x = torch.cat(ys, dim=2)
    y, h_n = x, torch.stack(hs)
    if unbatched:
        y, h_n = y.squeeze(1), h_n.squeeze(1)
    elif module.batch_first:
        y = y.transpose(0, 1)
    if mode == "GRU":
        return y, h_n
    c_n = torch.stack(cs)
    return y, (h_n, c_n.squeeze(1) if unbatched else c_n)


def _run_fast(fast, x, hx, lengths, seed):
    torch.manual_seed(seed)
    return fast(x, hx, lengths=lengths)


# --------------------------------------------------------------------------------------------
# against the oracle: forward and every gradient, training and eval


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_forward_and_grads_match_reference(config, option, training, device):
    mode, opts = config
    if mode == "GRU" and option == "zoneout_cell":
        pytest.skip("a GRU has no cell state")
    fast = _build(mode, opts, device, **_options(mode, option))
    fast.train(training)
    x, hx, lengths = option_inputs(mode, opts, device)
    hxs = list(hx) if isinstance(hx, tuple) else [hx]
    x.requires_grad_(True)
    for h in hxs:
        h.requires_grad_(True)
    params = dict(fast.named_parameters())
    leaves = [x, *hxs, *params.values()]
    got_o, got_g = _outputs_and_grads(_run_fast(fast, x, hx, lengths, seed=3), leaves)
    want_o, want_g = _outputs_and_grads(_reference(fast, params, x, hx, lengths, seed=3), leaves)
    names = [f"output {i}" for i in range(len(got_o))] + ["grad x"] + [f"grad hx {i}" for i in range(len(hxs))] \
        + [f"grad {n}" for n in params]
    for name, a, b in zip(names, got_o + got_g, want_o + want_g):
        torch.testing.assert_close(a, b, **TOL64, msg=lambda m: f"{name}: {m}")
    # and the option did something: the plain layer differs
    plain = _build(mode, opts, device)
    plain.train(training)
    with torch.no_grad():
        if training or option != "recurrent_dropout":
            assert not torch.allclose(_run_fast(plain, x, hx, lengths, seed=3)[0], got_o[0])
        else:  # recurrent dropout is off in eval
            torch.testing.assert_close(_run_fast(plain, x, hx, lengths, seed=3)[0], got_o[0], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gradcheck_training_forward(mode, device):
    """Exact gradients with the masks: every call re-seeds, so gradcheck's perturbed forwards all
    see the same masks."""
    opts = dict(num_layers=2, bidirectional=True, lengths=True)
    if mode == "LSTM":
        opts["proj_size"] = P
    fast = _build(mode, opts, device, **_options(mode, "all"))
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
        return tuple(_flat(torch.func.functional_call(fast, dict(zip(names, params)), (x, h), {"lengths": lengths})))

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_float32_simd_lanes_match_reference(mode, device, monkeypatch):
    """float32 runs the SIMD lanes on the CPU (16 units at a time, then a tail: H = 37), with the
    eval keep weight broadcast from a 0-dim tensor: compared with the float64 oracle, given the
    masks fastrnn drew (float32 and float64 draws from one seed differ)."""
    Hs = 37
    seen = _recorded_masks(monkeypatch)
    for training in (True, False):
        seen.clear()
        torch.manual_seed(0)
        fast = getattr(fastrnn, mode)(I, Hs, zoneout=0.3, recurrent_dropout=0.2, device=device,
                                      **({"zoneout_cell": 0.4} if mode == "LSTM" else {}))
        fast.train(training)
        x = torch.randn(T, B, I, device=device)
        got = _flat(_run_fast(fast, x, None, None, seed=2))
        params = {n: p.detach().double() for n, p in fast.named_parameters()}
        zeros = torch.zeros(1, B, Hs, dtype=torch.float64, device=device)
        hx = (zeros, zeros) if mode == "LSTM" else zeros
        masks = [tuple(None if m is None else m.double() for m in ms) for ms in seen]
        want = _flat(_reference(fast, params, x.double(), hx, None, seed=2, masks=masks))
        # float32 rounds at 2^-24 ~ 6e-8 a op; the lanes' exp / tanh are within a few ulp; the
        # dot products of I + H = 41 terms over T = 6 steps with O(1) values stay within ~1e-5
        # of float64; 1e-4 still fails for a wrong mask (O(0.1)).
        for a, b in zip(got, want):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# the masks: read back from the kernels' results, and the draws themselves


def _binomial_bound(n, p):
    # |count - n p| <= 6 sd: a correct draw fails with probability < 2e-9 (normal tail; n is in
    # the thousands), a wrong rate (e.g. 1 - p) fails it
    return 6 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_zoneout_mask_rate_and_fresh_per_step(mode, device):
    """Where zoneout keeps h, h_t equals h_{t-1} exactly (1 * h + 0 * h~); elsewhere h_t = h~_t,
    which equals h_{t-1} with probability 0. So y read back is the mask the kernel applied."""
    p, Tn, Bn, Hn = 0.3, 40, 16, 24
    torch.manual_seed(0)
    fast = getattr(fastrnn, mode)(I, Hn, zoneout=p, device=device, dtype=torch.float64).train()
    x = torch.randn(Tn, Bn, I, dtype=torch.float64, device=device)
    h0 = torch.randn(1, Bn, Hn, dtype=torch.float64, device=device)
    hx = (h0, torch.zeros_like(h0)) if mode == "LSTM" else h0
    with torch.no_grad():
        y = _run_fast(fast, x, hx, None, seed=4)[0]
    prev = torch.cat([h0, y[:-1]])
    kept = (y == prev).double()  # [T, B, H]
    n = kept.numel()
    assert abs(kept.sum().item() - n * p) <= _binomial_bound(n, p)
    # fresh per step and element: a step's mask agrees with the previous step's where two
    # independent draws agree, with probability p^2 + (1-p)^2 (not 1, as a mask locked in time)
    same = (kept[1:] == kept[:-1]).double()
    q = p * p + (1 - p) * (1 - p)
    assert abs(same.sum().item() - same.numel() * q) <= _binomial_bound(same.numel(), q)
    # and it is the draw the documented order gives
    torch.manual_seed(4)
    torch.testing.assert_close(kept, torch.bernoulli(torch.full((Tn, Bn, Hn), p, dtype=torch.float64)).to(device),
                               rtol=0, atol=0)


def _recorded_masks(monkeypatch):
    """Records what _runner.regularisers draws (the draws, unchanged) per layer and direction."""
    from fastrnn import _runner
    seen = []
    draw = _runner.regularisers

    def record(*args):
        out = draw(*args)
        seen.append(out)
        return out

    monkeypatch.setattr(_runner, "regularisers", record)
    return seen


@pytest.mark.parametrize("p", [0.25, 0.6])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_recurrent_dropout_mask_values_rate_locked_and_per_entry(mode, p, device, monkeypatch):
    Bn, Hn = 64, 32
    seen = _recorded_masks(monkeypatch)
    torch.manual_seed(0)
    fast = getattr(fastrnn, mode)(I, Hn, 2, bidirectional=True, recurrent_dropout=p, device=device,
                                  dtype=torch.float64).train()
    x = torch.randn(1, Bn, I, dtype=torch.float64, device=device)
    with torch.no_grad():
        _run_fast(fast, x, None, None, seed=5)
    assert len(seen) == 4  # one per layer and direction
    masks = [rec for _, _, rec in seen]
    for m in masks:
        assert m.shape == (Bn, Hn)  # one value per entry and unit, for every step
        dropped = m == 0
        torch.testing.assert_close(m[~dropped], torch.full_like(m[~dropped], 1 / (1 - p)), rtol=0, atol=0)
        zeros = int(dropped.sum())
        assert abs(zeros - m.numel() * p) <= _binomial_bound(m.numel(), p)
        # per batch entry: entries do not share a mask (equal rows among 64 of 32 Bernoulli
        # draws each have probability <= 64^2 * 0.6^32 ~ 3e-4 ... for p = 0.25: 0.625^32)
        assert len({tuple(r.tolist()) for r in m}) > Bn // 2
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(masks[a], masks[b])
    # the kernel applies exactly the drawn mask: with T = 1 and h0 = 0 the training forward is
    # the eval one, and an LSTM's d loss / d h0 is the mask times the eval gradient (h0 enters
    # only as the recurrent product's input m * h0): the ratio reads the first layer's mask back.
    # (A GRU's h0 also enters unmasked as z * h0: test_recurrent_dropout_locked_across_time
    # checks the GRU's applied mask.)
    if mode == "GRU":
        return
    one = getattr(fastrnn, mode)(I, Hn, recurrent_dropout=p, device=device, dtype=torch.float64)
    h0 = torch.zeros(1, Bn, Hn, dtype=torch.float64, device=device, requires_grad=True)
    hx = (h0, torch.zeros_like(h0)) if mode == "LSTM" else h0
    grads = []
    seen.clear()
    for training in (True, False):
        one.train(training)
        (g,) = torch.autograd.grad(_loss(_flat(_run_fast(one, x, hx, None, seed=8))), h0)
        grads.append(g[0])
    assert (grads[1] != 0).all()
    torch.testing.assert_close(grads[0] / grads[1], seen[0][2], rtol=1e-12, atol=1e-12)


def test_recurrent_dropout_locked_across_time(device, monkeypatch):
    """Over T steps the training forward is the layer function with the one drawn [B, P] mask, and
    not with a mask redrawn per step."""
    seen = _recorded_masks(monkeypatch)
    fast = _build("GRU", {}, device, recurrent_dropout=0.5).train()
    x, hx, _ = option_inputs("GRU", {}, device)
    with torch.no_grad():
        got = _run_fast(fast, x, hx, None, seed=1)[0]
        (_, _, m), = seen
        w = [fast.weight_ih_l0, fast.weight_hh_l0, fast.bias_ih_l0, fast.bias_hh_l0]
        want = fastrnn.functional.gru_layer(x, hx[0], *w, rec_mask=m)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_lengths_finished_entries_keep_their_state(device):
    """Past an entry's end zoneout does not apply: h_n is the output at its last step."""
    opts = dict(bidirectional=True, lengths=True)
    fast = _build("LSTM", opts, device, zoneout=0.5, zoneout_cell=0.5).train()
    x, hx, lengths = option_inputs("LSTM", opts, device)
    with torch.no_grad():
        y, (h_n, _) = _run_fast(fast, x, hx, lengths, seed=2)
    for b, L in enumerate(LENGTHS):
        torch.testing.assert_close(h_n[0, b], y[L - 1, b, :H], rtol=0, atol=0)  # forward direction
        torch.testing.assert_close(h_n[1, b], y[0, b, H:], rtol=0, atol=0)  # reverse ends at t = 0
        assert (y[L:, b] == 0).all()


# --------------------------------------------------------------------------------------------
# edges: p = 1, off by default, the arguments


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_zoneout_one_keeps_the_initial_state(mode, device):
    fast = _build(mode, {}, device, zoneout=1.0, **({"zoneout_cell": 1.0} if mode == "LSTM" else {}))
    x, hx, _ = option_inputs(mode, {}, device)
    h0 = hx[0] if mode == "LSTM" else hx
    for training in (True, False):
        fast.train(training)
        out = _flat(_run_fast(fast, x, hx, None, seed=0))
        torch.testing.assert_close(out[0], h0.expand(T, B, H), rtol=0, atol=0)
        for o, s in zip(out[1:], _flat(hx)):
            torch.testing.assert_close(o, s, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_recurrent_dropout_one_masks_all_of_h(mode, device):
    """p = 1: the mask is all zero (as F.dropout's), so W_hh sees zeros: the layer with W_hh = 0."""
    fast = _build(mode, {}, device, recurrent_dropout=1.0).train()
    x, hx, _ = option_inputs(mode, {}, device)
    out = _flat(_run_fast(fast, x, hx, None, seed=0))
    zeroed = _build(mode, {}, device)
    with torch.no_grad():
        zeroed.weight_hh_l0.zero_()
        want = _flat(zeroed(x, hx))
    for a, b in zip(out, want):
        torch.testing.assert_close(a, b, **TOL64)
    _loss(out).backward()
    assert torch.equal(fast.weight_hh_l0.grad, torch.zeros_like(fast.weight_hh_l0))


def test_default_is_off_and_draws_nothing(device):
    fast = _build("LSTM", dict(num_layers=2), device)
    assert fast.zoneout == fast.zoneout_cell == fast.recurrent_dropout == 0.0
    assert repr(fast) == "LSTM(4, 5, num_layers=2)"
    assert list(fast.state_dict()) == list(nn.LSTM(I, H, 2).state_dict())
    x, hx, _ = option_inputs("LSTM", dict(num_layers=2), device)
    fast.train()
    state = torch.get_rng_state()
    with torch.no_grad():
        fast(x, hx)
    assert torch.equal(torch.get_rng_state(), state)
    # eval with zoneout draws nothing either (the constant p)
    fast = _build("LSTM", {}, device, zoneout=0.5, recurrent_dropout=0.5).eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        fast(x, (hx[0][:1], hx[1][:1]))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("option", ["zoneout", "zoneout_cell", "recurrent_dropout"])
@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5", float("nan")])
def test_bad_rate_raises_torch_nn_dropout_wording(option, bad):
    with pytest.raises(ValueError) as want:
        nn.LSTM(I, H, dropout=bad)
    classes = [fastrnn.LSTM] + ([fastrnn.GRU] if option != "zoneout_cell" else [])
    for cls in classes:
        with pytest.raises(ValueError) as got:
            cls(I, H, **{option: bad})
        assert str(got.value).startswith(str(want.value).replace("dropout", option, 1).split(", got")[0])
    if option == "zoneout":
        for cls in (fastrnn.LSTMCell, fastrnn.GRUCell):
            with pytest.raises(ValueError, match="^zoneout should be a number in range"):
                cls(I, H, zoneout=bad)


def test_keyword_only_and_gru_has_no_cell_option():
    with pytest.raises(TypeError):
        fastrnn.GRU(I, H, zoneout_cell=0.5)
    with pytest.raises(TypeError):
        fastrnn.LSTMCell(I, H, True, None, None, 0.5)


def test_extra_repr_pickle_and_old_pickles():
    fast = fastrnn.LSTM(I, H, 2, zoneout=0.1, zoneout_cell=0.2, recurrent_dropout=0.3)
    assert repr(fast) == "LSTM(4, 5, num_layers=2, zoneout=0.1, zoneout_cell=0.2, recurrent_dropout=0.3)"
    assert repr(fastrnn.GRUCell(I, H, zoneout=0.5)) == "GRUCell(4, 5, zoneout=0.5)"
    loaded = pickle.loads(pickle.dumps(fast))
    assert (loaded.zoneout, loaded.zoneout_cell, loaded.recurrent_dropout) == (0.1, 0.2, 0.3)
    buf = io.BytesIO()
    torch.save(fastrnn.LSTMCell(I, H, zoneout=0.4), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False).zoneout == 0.4
    for obj in (fastrnn.GRU(I, H), fastrnn.LSTMCell(I, H)):
        state = {k: v for k, v in obj.__getstate__().items()
                 if k not in ("zoneout", "zoneout_cell", "recurrent_dropout")}
        old = type(obj).__new__(type(obj))
        old.__setstate__(state)
        assert old.zoneout == 0.0
        assert getattr(old, "recurrent_dropout", 0.0) == 0.0


# --------------------------------------------------------------------------------------------
# cells


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_cell_zoneout_fresh_mask_per_call_and_eval_expectation(mode, device):
    torch.manual_seed(0)
    cell = getattr(fastrnn, mode + "Cell")(I, H, zoneout=0.4, device=device, dtype=torch.float64)
    params = {n: p for n, p in cell.named_parameters()}
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, I, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    h = torch.randn(B, H, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    c = torch.randn(B, H, generator=g, dtype=torch.float64).to(device)
    hx = (h, c) if mode == "LSTM" else h
    w = {"weight_ih": params["weight_ih"], "weight_hh": params["weight_hh"], "bias_ih": params["bias_ih"],
         "bias_hh": params["bias_hh"]}
    for training in (True, False):
        cell.train(training)
        torch.manual_seed(9)
        got = _flat(cell(x, hx))
        torch.manual_seed(9)
        z = torch.bernoulli(x.new_full((B, H), 0.4)) if training else x.new_full((), 0.4)
        h_new, c_new = _cell(mode, x, h, c if mode == "LSTM" else None, w, None)
        want = [z * h + (1 - z) * h_new] + ([c_new] if mode == "LSTM" else [])  # zoneout on h only
        leaves = [x, h, *params.values()]
        for a, b in zip(_outputs_and_grads(got, leaves), _outputs_and_grads(want, leaves)):
            for u, v in zip(a, b):
                torch.testing.assert_close(u, v, **TOL64)
    cell.train()
    with torch.no_grad():
        a, b = _flat(cell(x, hx))[0], _flat(cell(x, hx))[0]
    assert not torch.equal(a, b)  # a fresh mask each call
    # unbatched input: the same step without the batch dimension
    cell.eval()
    with torch.no_grad():
        one = _flat(cell(x[0], tuple(s[0] for s in hx) if mode == "LSTM" else h[0]))[0]
        torch.testing.assert_close(one, _flat(cell(x, hx))[0][0], **TOL64)


# --------------------------------------------------------------------------------------------
# TorchScript, torch.compile, torch.export, ONNX, to_torch


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_matches_eager(mode, device):
    opts = dict(num_layers=2, bidirectional=True)
    fast = _build(mode, opts, device, **_options(mode, "all"))
    scripted = torch.jit.script(fast)
    x, hx, _ = option_inputs(mode, opts, device)
    for training in (True, False):
        fast.train(training)
        scripted.train(training)
        with torch.no_grad():
            for a, b in zip(_flat(_run_fast(scripted, x, hx, None, 6)), _flat(_run_fast(fast, x, hx, None, 6))):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    cell = torch.jit.script(getattr(fastrnn, mode + "Cell")(I, H, zoneout=0.5, device=device, dtype=torch.float64))
    eager = getattr(fastrnn, mode + "Cell")(I, H, zoneout=0.5, device=device, dtype=torch.float64)
    eager.load_state_dict(cell.state_dict())
    torch.manual_seed(1)
    a = _flat(cell(x[0]))[0]
    torch.manual_seed(1)
    torch.testing.assert_close(a, _flat(eager(x[0]))[0], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_compile_fullgraph(mode, device, allow_rnn):
    opts = dict(num_layers=2, bidirectional=True, lengths=True)
    fast = _build(mode, opts, device, **_options(mode, "all"))
    x, hx, lengths = option_inputs(mode, opts, device)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    for training in (True, False):
        fast.train(training)
        x1 = x.detach().requires_grad_(True)
        got = _outputs_and_grads(_run_fast(compiled, x1, hx, lengths, 4), [x1])
        x2 = x.detach().requires_grad_(True)
        want = _outputs_and_grads(_run_fast(fast, x2, hx, lengths, 4), [x2])
        for a, b in zip(got[0] + got[1], want[0] + want[1]):
            torch.testing.assert_close(a, b, **TOL64)


def test_export_eval_zoneout(device):
    fast = _build("LSTM", dict(proj_size=P), device, zoneout=0.3, zoneout_cell=0.2, recurrent_dropout=0.5).eval()
    x, hx, _ = option_inputs("LSTM", dict(proj_size=P), device)
    ep = torch.export.export(fast, (x, hx))
    for a, b in zip(_flat(ep.module()(x, hx)), _flat(fast(x, hx))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_op_checks_and_fake_kernels_agree():
    """A bad mask fails the same way run and traced (the fake kernel's checks are the C++ ones),
    and opcheck passes with every mask form."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0, c0 = torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    w_ih = torch.randn(4 * H, I, generator=g, dtype=torch.float64)
    w_hh = torch.randn(4 * H, H, generator=g, dtype=torch.float64)
    zh = torch.bernoulli(torch.full((T, B, H), 0.5, dtype=torch.float64), generator=g)
    rec = torch.ones(B, H, dtype=torch.float64) * 2
    op = torch.ops.fastrnn.lstm_forward
    for bad, match in (((zh[:2], None, None), "expected zoneout_h of shape \\[6, 3, 5\\] or \\[\\]"),
                       ((None, zh.float(), None), "expected zoneout_c to have dtype Double"),
                       ((None, None, rec[:, :2]), "expected rec_mask of shape \\[3, 5\\]")):
        no_ln = (None, None, None, None)  # the layer-norm group comes first
        args = (x, h0, c0, w_ih, w_hh, None, None, None, None, False, False, *no_ln, *bad)
        with pytest.raises(RuntimeError, match=match):
            op(*args)
        with FakeTensorMode() as mode:
            fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            with pytest.raises(RuntimeError, match=match):
                op(*fake)
    for masks in ((zh, zh, rec), (torch.tensor(0.3, dtype=torch.float64), None, None)):
        args = (x, h0, c0, w_ih.requires_grad_(), w_hh.requires_grad_(), None, None, None, None, True, True,
                None, None, None, None, *masks)
        torch.library.opcheck(op, args)
        gargs = (x, h0, w_ih[:3 * H].detach().requires_grad_(), w_hh[:3 * H].detach().requires_grad_(), None, None,
                 torch.tensor(LENGTHS), False, True, None, None, masks[0], masks[2])
        torch.library.opcheck(torch.ops.fastrnn.gru_forward, gargs)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("option", ["zoneout", "zoneout_cell"])
def test_onnx_refuses_zoneout(option, exporter):
    pytest.importorskip("onnx")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    net = fastrnn.LSTM(I, H, **{option: 0.3}).eval()
    x = torch.randn(T, B, I)
    with pytest.raises(fastrnn.onnx.UnsupportedExportError, match=option):
        fastrnn.onnx.export(net, (x,), io.BytesIO(), dynamo=exporter == "dynamo")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_exports_recurrent_dropout_as_the_plain_layer():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = fastrnn.GRU(I, H, recurrent_dropout=0.5).eval()
    x = torch.randn(T, B, I)
    f = io.BytesIO()
    torch.onnx.export(net, (x,), f, dynamo=False)
    assert "GRU" in [n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node]
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = net(x)[0].numpy()
    # float32 both sides: ONNX Runtime's GRU against the fused kernel, ~1e-6 apart over 6 steps
    torch.testing.assert_close(torch.from_numpy(got[0]), torch.from_numpy(want), rtol=1e-4, atol=1e-5)


def test_to_torch_refuses_zoneout_and_converts_recurrent_dropout(device):
    for kw, name in ((dict(zoneout=0.2), "zoneout"), (dict(zoneout_cell=0.2), "zoneout_cell")):
        with pytest.raises(ValueError, match=name):
            fastrnn.to_torch(nn.Sequential(fastrnn.LSTM(I, H, **kw)))
    with pytest.raises(ValueError, match="zoneout"):
        fastrnn.to_torch(fastrnn.GRUCell(I, H, zoneout=0.1))
    fast = _build("LSTM", dict(num_layers=2), device, recurrent_dropout=0.5).eval()
    x, hx, _ = option_inputs("LSTM", dict(num_layers=2), device)
    with torch.no_grad():
        want = _flat(fast(x, hx))
        plain = fastrnn.to_torch(fast, inplace=False)
        assert type(plain) is nn.LSTM
        for a, b in zip(_flat(plain(x, hx)), want):
            torch.testing.assert_close(a, b, **TOL64)


# --------------------------------------------------------------------------------------------
# dispatch: the options run on the step loop


@pytest.mark.parametrize("option", ["zoneout", "zoneout_cell", "recurrent_dropout"])
def test_forced_persistent_raises_and_prefer_falls_back(option, device, monkeypatch):
    mode = "GRU" if option == "recurrent_dropout" else "LSTM"
    fast = getattr(fastrnn, mode)(I, H, device=device, **{option: 0.5}).train()
    x = torch.randn(T, B, I, device=device)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    with pytest.raises(NotImplementedError, match=f"it does not run {option} yet"):
        fast(x)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "prefer-persistent")
    fast(x)
    rec = fastrnn._C.last_path(f"{mode.lower()}_forward")
    assert rec["path"] == f"{device.type}.step_loop"
    if device.type == "cuda":
        assert rec["fallback"] == f"it does not run {option} yet"
    # and without the option the same call may run persistent (the refusal is the option's)
    plain = getattr(fastrnn, mode)(I, H, device=device).train()
    monkeypatch.setenv("FASTRNN_RECURRENCE", "persistent")
    try:
        plain(x)
    except NotImplementedError as e:  # the device's own limits, never the option
        assert option not in str(e)


def test_cell_call_with_zoneout_takes_the_step_loop(monkeypatch):
    """The CPU's fused single step (float cell calls of a few rows) has no zoneout: the step loop
    runs them."""
    cell = fastrnn.LSTMCell(I, H, zoneout=0.5)
    monkeypatch.setenv("FASTRNN_RECURRENCE", "step")
    with torch.no_grad():
        cell(torch.randn(2, I))
    assert fastrnn._C.last_path("lstm_forward")["path"] == "cpu.step_loop"
    with torch.no_grad():
        fastrnn.LSTMCell(I, H)(torch.randn(2, I))
    assert fastrnn._C.last_path("lstm_forward")["path"] == "cpu.single_step"


# --------------------------------------------------------------------------------------------
# the layer functions under double backward, torch.func and autocast


def _layer_args(mode, device):
    g = torch.Generator().manual_seed(2)
    G = 4 if mode == "LSTM" else 3

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_(True)

    x, h0 = r(T, B, I), r(B, H)
    w = [r(G * H, I), r(G * H, H), r(G * H), r(G * H)]
    zh = torch.bernoulli(torch.full((T, B, H), 0.4, dtype=torch.float64), generator=g).to(device)
    rec = (torch.rand(B, H, generator=g, dtype=torch.float64) > 0.3).double().to(device) / 0.7
    if mode == "LSTM":
        c0 = r(B, H)
        zc = torch.bernoulli(torch.full((T, B, H), 0.3, dtype=torch.float64), generator=g).to(device)

        def f(x, h0, c0, *w):
            return fastrnn.functional.lstm_layer(x, h0, c0, *w, lengths=LENGTHS, zoneout_h=zh, zoneout_c=zc,
                                                 rec_mask=rec)
        return f, [x, h0, c0, *w]

    def f(x, h0, *w):
        return fastrnn.functional.gru_layer(x, h0, *w, lengths=LENGTHS, reverse=True, zoneout_h=zh, rec_mask=rec)
    return f, [x, h0, *w]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_double_backward_with_masks(mode, device):
    """create_graph=True differentiates reference.py's recomputation with the saved masks."""
    f, args = _layer_args(mode, device)
    assert torch.autograd.gradgradcheck(lambda *a: tuple(f(*a)), args, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_torch_func_grad_matches_autograd(mode, device):
    f, args = _layer_args(mode, device)
    want = torch.autograd.grad(_loss(_flat(f(*args))), args)
    got = torch.func.grad(lambda *a: _loss(_flat(f(*a))), argnums=tuple(range(len(args))))(*args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL64)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_autocast_draws_masks_in_the_autocast_dtype(mode, device):
    fast = getattr(fastrnn, mode)(I, H, zoneout=0.3, recurrent_dropout=0.3, device=device).train()
    x = torch.randn(T, B, I, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = fast(x)[0]
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert fast.weight_hh_l0.grad is not None and torch.isfinite(fast.weight_hh_l0.grad).all()

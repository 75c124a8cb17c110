"""The one input normalisation (fastrnn/_inputs.py): functional and the modules take the same
lengths forms and refuse the same misuse with the same messages; TorchScript raises what eager
raises; whole-module pickles name the classes as they always have (fastrnn.modules.*)."""
import io
import pickle

import pytest
import torch

import fastrnn
from fastrnn import functional

T, B, I, H = 5, 3, 4, 6
LENGTHS = [3, 5, 2]
F64 = torch.float64


def _lengths_forms(device):
    """Every form the docs promise: list, tuple, int32 / int64 tensors on the CPU and on x's device."""
    forms = {"list": LENGTHS, "tuple": tuple(LENGTHS)}
    for dtype in (torch.int32, torch.int64):
        for where in ("cpu", device):
            forms[f"{dtype}-{torch.device(where).type}"] = torch.tensor(LENGTHS, dtype=dtype, device=where)
    return forms


def _layer_args(kind, device):
    g = torch.Generator().manual_seed(0)
    G = 4 if kind == "lstm" else 3

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(device)

    x, h0, c0 = r(T, B, I), r(B, H), r(B, H)
    weights = (r(G * H, I), r(G * H, H), r(G * H), r(G * H))
    return (x, h0, c0, *weights) if kind == "lstm" else (x, h0, *weights)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_functional_takes_every_lengths_form(kind, device):
    """functional.*_layer takes what the modules take (int32 included, which the op itself
    refuses), and every form gives the same result, bit for bit (the same op call)."""
    layer = getattr(functional, f"{kind}_layer")
    args = _layer_args(kind, device)
    want = layer(*args, lengths=torch.tensor(LENGTHS, device=device), reverse=True)
    for name, lengths in _lengths_forms(device).items():
        got = layer(*args, lengths=lengths, reverse=True)
        for a, b in zip(got, want):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_functional_and_module_refuse_lengths_alike(kind):
    """The same bad lengths raise the same exception with the same message from functional and
    from the module (one check: fastrnn._inputs.lengths_tensor)."""
    layer = getattr(functional, f"{kind}_layer")
    args = _layer_args(kind, "cpu")
    module = (fastrnn.LSTM if kind == "lstm" else fastrnn.GRU)(I, H, dtype=F64)
    bad = {"count": [1, 2], "zero": [0, 2, 3], "too long": [1, T + 1, 3], "float": torch.tensor([1.0, 2.0, 3.0]),
           "rank": torch.ones(1, B, dtype=torch.int64), "not a sequence": 3, "string": "123",
           "device": torch.ones(B, dtype=torch.int64, device="meta")}
    for what, lengths in bad.items():
        with pytest.raises((TypeError, ValueError)) as from_functional:
            layer(*args, lengths=lengths)
        with pytest.raises((TypeError, ValueError)) as from_module:
            module(args[0], lengths=lengths)
        assert type(from_functional.value) is type(from_module.value), what
        assert str(from_functional.value) == str(from_module.value), what


def _message(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001  (the message is what is compared)
        return e
    raise AssertionError("no exception")


LAYER_MISUSE = {
    "rank": lambda m: m(torch.randn(1, T, B, I)),
    "input size": lambda m: m(torch.randn(T, B, I + 1)),
    "input dtype": lambda m: m(torch.randn(T, B, I, dtype=F64)),
    "h0 shape": lambda m: m(torch.randn(T, B, I), (torch.randn(3, B, H), torch.randn(2, B, H))),
    "c0 shape": lambda m: m(torch.randn(T, B, I), (torch.randn(2, B, H), torch.randn(2, B, H + 1))),
    "hx rank": lambda m: m(torch.randn(T, B, I), (torch.randn(2, H), torch.randn(2, H))),
    "hx rank unbatched": lambda m: m(torch.randn(T, I), (torch.randn(2, 1, H), torch.randn(2, 1, H))),
    "hx dtype": lambda m: m(torch.randn(T, B, I), (torch.randn(2, B, H, dtype=F64), torch.randn(2, B, H))),
    "input device": lambda m: m(torch.randn(T, B, I, device="meta")),
    "hx device": lambda m: m(torch.randn(T, B, I), (torch.randn(2, B, H, device="meta"), torch.randn(2, B, H))),
    "lengths count": lambda m: m(torch.randn(T, B, I), None, torch.tensor([1, 2])),
    "lengths dtype": lambda m: m(torch.randn(T, B, I), None, torch.tensor([1.0, 2.0, 3.0])),
}
CELL_MISUSE = {
    "rank": lambda m: m(torch.randn(2, B, I)),
    "input size": lambda m: m(torch.randn(B, I + 1)),
    "input dtype": lambda m: m(torch.randn(B, I, dtype=F64)),
    "h shape": lambda m: m(torch.randn(B, I), (torch.randn(B + 1, H), torch.randn(B, H))),
    "c rank": lambda m: m(torch.randn(B, I), (torch.randn(B, H), torch.randn(H))),
    "c dtype": lambda m: m(torch.randn(B, I), (torch.randn(B, H), torch.randn(B, H, dtype=F64))),
}
GRU_MISUSE = {
    "h shape": lambda m: m(torch.randn(T, B, I), torch.randn(2, B, H + 1)),
    "h rank": lambda m: m(torch.randn(T, I), torch.randn(2, 1, H)),
}


@pytest.mark.parametrize("what", list(LAYER_MISUSE) + [f"cell {w}" for w in CELL_MISUSE] +
                         [f"GRU {w}" for w in GRU_MISUSE])
def test_script_raises_what_eager_raises(what):
    """torch.jit.script runs the same checks (fastrnn._inputs is compiled with it): the scripted
    module's error carries the eager message word for word (TorchScript wraps it in
    torch.jit.Error with its traceback)."""
    if what.startswith("cell "):
        m, call = fastrnn.LSTMCell(I, H), CELL_MISUSE[what[5:]]
    elif what.startswith("GRU "):
        m, call = fastrnn.GRU(I, H, bidirectional=True), GRU_MISUSE[what[4:]]
    else:
        m, call = fastrnn.LSTM(I, H, num_layers=2), LAYER_MISUSE[what]
    eager = _message(lambda: call(m))
    scripted = _message(lambda: call(torch.jit.script(m)))
    assert isinstance(scripted, torch.jit.Error)
    assert str(eager) in str(scripted)


MODULES = {"LSTM": dict(num_layers=2, proj_size=2, bias=False), "GRU": dict(bidirectional=True),
           "LSTMCell": {}, "GRUCell": {}}


@pytest.mark.parametrize("mode", list(MODULES))
def test_pickles_name_fastrnn_modules(mode):
    """A whole-module pickle names the class fastrnn.modules.<name>, as every pickle made so far
    does (the cells live in cells.py, under that name), and loads with weights_only=True."""
    m = getattr(fastrnn, mode)(I, H, **MODULES[mode])
    assert type(m).__module__ == "fastrnn.modules" and type(m).__qualname__ == mode
    data = pickle.dumps(m, protocol=2)  # torch.save's protocol: GLOBAL "module\nname\n"
    assert f"cfastrnn.modules\n{mode}\n".encode() in data
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    assert type(torch.load(buf)) is type(m)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_pickle_without_weight_slots_loads(mode):
    """Pickles made before the layers kept their weight slots and state shapes (the state as
    fastrnn.modules.LSTM / GRU pickled it then) load with weights_only=True and run as the module
    did."""
    m = getattr(fastrnn, mode)(I, H, **MODULES[mode]).eval()
    x = torch.randn(T, B, I)
    want = m(x)[0]
    del m._weight_slots, m._state_shapes  # the state of an older pickle
    buf = io.BytesIO()
    torch.save(m, buf)
    assert b"_weight_slots" not in buf.getvalue() and f"fastrnn.modules\n{mode}\n".encode() in buf.getvalue()
    buf.seek(0)
    loaded = torch.load(buf)
    assert torch.equal(loaded(x)[0], want)

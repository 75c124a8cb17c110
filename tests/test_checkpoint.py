"""Whole-module checkpoints: torch.save(module) and torch.load(path) with torch's default
weights_only=True.

What loads by default: fastrnn.LSTM / GRU / LSTMCell / GRUCell themselves (fastrnn allows them on
import). A model that holds them loads once its *other* classes are allowed, the user's own class
and torch.nn's containers and layers (nn.Sequential, nn.Linear, ...), which torch does not allow
by default; fastrnn's classes never need to be named. state_dict checkpoints need nothing.
"""
import io
import os
import pickle

import pytest
import torch
from torch import nn

import fastrnn

T, B, I, H = 5, 3, 4, 6

MODULES = [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True)),
    ("GRU", dict(num_layers=2, bias=False, dropout=0.25)),
    ("LSTMCell", dict()),
    ("GRUCell", dict(bias=False)),
]


def _input(mode, device):
    shape = (B, I) if mode.endswith("Cell") else (B, T, I)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)


def _save_load(obj, tmp_path, **load_kwargs):
    path = os.fspath(tmp_path / "ckpt.pt")
    torch.save(obj, path)
    return torch.load(path, **load_kwargs)


def _flat(out):
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _flat(o)]


@pytest.mark.parametrize("mode,cfg", MODULES, ids=[m for m, _ in MODULES])
def test_whole_module_loads_with_weights_only(mode, cfg, tmp_path, device):
    torch.manual_seed(0)
    m = getattr(fastrnn, mode)(I, H, **cfg, device=device).eval()
    x = _input(mode, device)
    want = _flat(m(x))
    loaded = _save_load(m, tmp_path)  # weights_only=True: torch's default
    assert type(loaded) is type(m) and not loaded.training
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in m.named_parameters()]
    for a, b in zip(_flat(loaded(x)), want):
        assert torch.equal(a, b)
    if isinstance(loaded, nn.RNNBase):  # nn.RNNBase's weight list is the loaded parameters
        assert all(a is b for a, b in zip(loaded._flat_weights, loaded.parameters()))
    loaded = loaded.double()  # and keeps following them through .to()
    assert all(a is b for a, b in zip(getattr(loaded, "_flat_weights", []), loaded.parameters()))
    assert all(t.dtype == torch.float64 for t in _flat(loaded(x.double())))


def test_fastrnn_classes_are_safe_globals():
    allowed = torch.serialization.get_safe_globals()
    for cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.LSTMCell, fastrnn.GRUCell):
        assert cls in allowed


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(fastrnn.LSTM(I, H, batch_first=True))
        self.gru = fastrnn.GRU(H, H, batch_first=True)
        self.cells = nn.ModuleList([fastrnn.LSTMCell(H, H), fastrnn.GRUCell(H, H)])
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        y, _ = self.body[0](x)
        y, h = self.gru(y)
        hc, cc = self.cells[0](h[0])
        return self.head(self.cells[1](cc, hc))


def test_model_holding_every_module(tmp_path, device):
    torch.manual_seed(0)
    model = Model().to(device)
    x = _input("LSTM", device)
    want = model(x)
    path = os.fspath(tmp_path / "model.pt")
    torch.save(model, path)
    # by default only torch's own classes block the load: the user's model class comes first...
    with pytest.raises(pickle.UnpicklingError, match=r"Unsupported global: GLOBAL [\w.]*\.Model "):
        torch.load(path)
    # ...then torch.nn's containers and layers, never fastrnn's classes
    blockers = []
    allowed = [Model]
    while True:
        try:
            with torch.serialization.safe_globals(allowed):
                loaded = torch.load(path)
            break
        except pickle.UnpicklingError as e:  # one load per missing class
            name = str(e).split("GLOBAL ")[1].split(" ")[0]
            assert not name.startswith("fastrnn"), name
            cls = {"torch.nn.modules.container.Sequential": nn.Sequential,
                   "torch.nn.modules.container.ModuleList": nn.ModuleList,
                   "torch.nn.modules.linear.Linear": nn.Linear}[name]
            blockers.append(name)
            allowed.append(cls)
    assert sorted(blockers) == ["torch.nn.modules.container.ModuleList", "torch.nn.modules.container.Sequential",
                                "torch.nn.modules.linear.Linear"]
    assert type(loaded.gru) is fastrnn.GRU and type(loaded.cells[1]) is fastrnn.GRUCell
    assert torch.equal(loaded(x), want)


def test_state_dict_checkpoint_needs_nothing(tmp_path):
    model = Model()
    loaded = _save_load(model.state_dict(), tmp_path)
    fresh = Model()
    fresh.load_state_dict(loaded)
    x = _input("LSTM", "cpu")
    assert torch.equal(fresh(x), model(x))


def test_pickle_from_before_rnnbase_loads():
    """fastrnn 0.1 modules were plain nn.Modules: their pickled state has no _flat_weights
    (nor its weak references); __setstate__ rebuilds them."""
    m = fastrnn.LSTM(I, H, num_layers=2)
    state = m.__getstate__()
    del state["_flat_weights"]
    old = fastrnn.LSTM.__new__(fastrnn.LSTM)
    old.__setstate__(state)
    assert all(a is b for a, b in zip(old._flat_weights, m.parameters()))
    x = torch.randn(T, B, I)
    assert torch.equal(old(x)[0], m(x)[0])
    buf = io.BytesIO()
    torch.save(old, buf)  # and it pickles again (its weak references were rebuilt)
    buf.seek(0)
    assert torch.equal(torch.load(buf)(x)[0], m(x)[0])

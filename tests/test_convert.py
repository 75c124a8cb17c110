"""fastrnn.convert / fastrnn.to_torch on small models."""
import copy
import warnings

import pytest
import torch
from torch import nn

import fastrnn


class CharModel(nn.Module):
    """embedding -> 2-layer LSTM -> linear, the shape of a char-level language model."""

    def __init__(self, vocab=11, emb=6, hidden=8, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, num_layers=2, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        y, _ = self.rnn(self.embed(tokens))
        return self.head(y)


def _loss_and_grads(model, tokens, targets):
    model.zero_grad(set_to_none=True)
    logits = model(tokens)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_convert_char_model_same_loss_and_grads(device):
    torch.manual_seed(0)
    model = CharModel().to(device=device, dtype=torch.float64)
    tokens = torch.randint(0, 11, (3, 7), device=device)
    targets = torch.randint(0, 11, (3, 7), device=device)
    want_loss, want_grads = _loss_and_grads(model, tokens, targets)
    params_before = {n: p for n, p in model.named_parameters()}

    out = fastrnn.convert(model)
    assert out is model and type(model.rnn) is fastrnn.LSTM
    assert model.rnn.num_layers == 2 and model.rnn.batch_first and model.rnn.hidden_size == 8
    # the very same Parameter objects: an optimizer built before convert() still works
    assert all(p is params_before[n] for n, p in model.named_parameters())
    loss, grads = _loss_and_grads(model, tokens, targets)
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
    assert grads.keys() == want_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-9, atol=1e-11, msg=n)

    back = fastrnn.to_torch(model)
    assert back is model and type(model.rnn) is nn.LSTM
    assert all(p is params_before[n] for n, p in model.named_parameters())
    loss, grads = _loss_and_grads(model, tokens, targets)
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
    for n in grads:
        torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-9, atol=1e-11, msg=n)


def test_convert_not_inplace_and_training_mode():
    model = CharModel(dropout=0.2).eval()
    copy_ = fastrnn.convert(model, inplace=False)
    assert type(model.rnn) is nn.LSTM  # the original is untouched
    assert type(copy_.rnn) is fastrnn.LSTM and copy_.rnn.dropout == 0.2
    assert not copy_.rnn.training and not copy_.training
    assert copy_.rnn.weight_ih_l0 is not model.rnn.weight_ih_l0
    assert torch.equal(copy_.rnn.weight_ih_l0, model.rnn.weight_ih_l0)
    model.train()
    assert fastrnn.convert(model, inplace=False).rnn.training


@pytest.mark.parametrize("make", [
    lambda: nn.LSTM(3, 6, num_layers=3, bias=False, batch_first=True, bidirectional=True, proj_size=2),
    lambda: nn.GRU(3, 4, num_layers=2, dropout=0.5, bidirectional=True),
    lambda: nn.LSTMCell(3, 4, bias=False),
    lambda: nn.GRUCell(3, 4),
], ids=["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_convert_root_module_and_back(make):
    torch.manual_seed(0)
    ref = make().double().eval()  # eval: the GRU has dropout between layers
    fast = fastrnn.convert(ref, inplace=False)
    assert not fast.training
    assert type(fast).__name__ == type(ref).__name__ and type(fast).__module__ == "fastrnn.modules"
    assert repr(fast) == repr(ref)
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert all(p.dtype == torch.float64 for p in fast.parameters())
    is_cell = "Cell" in type(ref).__name__
    x = torch.randn(2, 3, dtype=torch.float64) if is_cell else torch.randn(4, 2, 3, dtype=torch.float64)
    want, got = ref(x), fast(x)
    flat = lambda o: [o] if isinstance(o, torch.Tensor) else [t for item in o for t in flat(item)]  # noqa: E731
    for a, b in zip(flat(got), flat(want)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    back = fastrnn.to_torch(fast, inplace=False)
    assert type(back) is type(ref)
    for a, b in zip(flat(back(x)), flat(want)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_convert_nested_and_shared():
    shared = nn.GRU(4, 4)
    model = nn.Sequential(nn.ModuleDict({"a": shared, "b": nn.ModuleList([shared, nn.LSTMCell(4, 4)])}),
                          nn.Linear(4, 4))
    fastrnn.convert(model)
    assert type(model[0]["a"]) is fastrnn.GRU
    assert model[0]["a"] is model[0]["b"][0]  # still one shared module
    assert type(model[0]["b"][1]) is fastrnn.LSTMCell
    fastrnn.to_torch(model)
    assert type(model[0]["a"]) is nn.GRU and model[0]["a"] is model[0]["b"][0]
    assert type(model[0]["b"][1]) is nn.LSTMCell


def test_convert_keeps_hooks():
    model = nn.Sequential(nn.GRU(3, 4))
    calls = []
    handle = model[0].register_forward_hook(lambda mod, inp, out: calls.append(type(mod)))
    fastrnn.convert(model)
    model(torch.randn(2, 1, 3))
    assert calls == [fastrnn.GRU]
    handle.remove()  # the handle from before the swap still works
    model(torch.randn(2, 1, 3))
    assert calls == [fastrnn.GRU]
    fastrnn.to_torch(model)
    model(torch.randn(2, 1, 3))
    assert calls == [fastrnn.GRU]


class CustomLSTM(nn.LSTM):
    def forward(self, input, hx=None):
        y, state = super().forward(input, hx)
        return y * 2, state


class PlainSubclass(nn.GRU):
    pass


def test_convert_warns_and_leaves_unconvertible_alone():
    model = nn.Sequential(CustomLSTM(3, 4), PlainSubclass(4, 4), nn.LSTM(4, 4))
    with pytest.warns(UserWarning) as record:
        fastrnn.convert(model)
    messages = [str(w.message) for w in record]
    assert any("0" in m and "CustomLSTM" in m and "forward" in m for m in messages), messages
    assert any("1" in m and "PlainSubclass" in m and "subclass" in m for m in messages), messages
    assert type(model[0]) is CustomLSTM and type(model[1]) is PlainSubclass
    assert type(model[2]) is fastrnn.LSTM


class MyFastCell(fastrnn.LSTMCell):
    pass


def test_convert_leaves_fastrnn_modules_alone():
    """fastrnn's cells are nn.LSTMCell / nn.GRUCell instances: convert must not take them for
    subclasses to warn about, and converting twice changes nothing."""
    model = nn.Sequential(nn.LSTMCell(3, 4), nn.GRUCell(4, 4), MyFastCell(4, 4), nn.GRU(4, 4))
    fastrnn.convert(model)
    before = list(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastrnn.convert(model)
    assert [type(m) for m in model] == [fastrnn.LSTMCell, fastrnn.GRUCell, MyFastCell, fastrnn.GRU]
    assert all(a is b for a, b in zip(model, before))
    with pytest.warns(UserWarning, match=r"2 \(MyFastCell\).*subclass"):
        fastrnn.to_torch(model)
    assert [type(m) for m in model] == [nn.LSTMCell, nn.GRUCell, MyFastCell, nn.GRU]


def test_convert_warns_on_unsupported_dtype():
    model = nn.Sequential(nn.GRU(3, 4, dtype=torch.complex64), nn.LSTM(3, 4))
    with pytest.warns(UserWarning, match=r"0 \(GRU\).*complex64"):
        fastrnn.convert(model)
    assert type(model[0]) is nn.GRU and type(model[1]) is fastrnn.LSTM


def test_convert_warns_on_unsupported_device():
    model = nn.Sequential(nn.LSTM(3, 4, device="meta"))
    with pytest.warns(UserWarning, match=r"0 \(LSTM\).*meta"):
        fastrnn.convert(model)
    assert type(model[0]) is nn.LSTM


def test_convert_no_warning_when_all_convertible():
    model = CharModel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastrnn.convert(model)
        fastrnn.to_torch(model)


def test_converted_model_trains_with_existing_optimizer():
    torch.manual_seed(0)
    model = CharModel()
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    fastrnn.convert(model)  # after building the optimizer: the parameters are shared
    tokens = torch.randint(0, 11, (2, 6))
    for _ in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(tokens).square().mean().backward()
            o.step()
    for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)

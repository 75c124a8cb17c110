"""ONNX export (fastrnn.onnx): fastrnn layers become ONNX LSTM / GRU nodes, and onnxruntime runs
the exported models with eager fastrnn's results. Both of torch's exporters: the torch.export-based
one ("dynamo", through fastrnn.onnx.export) and the TorchScript-based one ("torchscript", plain
torch.onnx.export(..., dynamo=False): its symbolics are registered by `import fastrnn`). Plain
torch.onnx.export with the default exporter after only `import fastrnn`: the subprocess tests at
the end."""
import io
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import fastrnn
import fastrnn.onnx

from _subprocess import describe, run_python

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

EXPORTERS = ["dynamo", "torchscript"]

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the TorchScript exporter's notice
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]


def _needs_onnxscript(exporter):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")


def _export(net, args, exporter, **kwargs) -> bytes:
    _needs_onnxscript(exporter)
    if exporter == "dynamo":
        program = fastrnn.onnx.export(net, args, dynamo=True, verbose=False, **kwargs)
        return program.model_proto.SerializeToString()
    f = io.BytesIO()
    torch.onnx.export(net, args, f, dynamo=False, **kwargs)
    return f.getvalue()


def _run(model: bytes, args):
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    assert len(inputs) == len(args)
    return sess.run(None, {i.name: a.cpu().numpy() for i, a in zip(inputs, args)})


def _flat(out):
    return [a for t in out for a in _flat(t)] if isinstance(out, (tuple, list)) else [out.cpu().numpy()]


def _eager(net, args):
    """The outputs of net(*args), nested tuples flattened (nn.LSTM's (y, (h, c)) -> [y, h, c])."""
    with torch.no_grad():
        return _flat(net(*args))


def _assert_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def _op_types(model: bytes):
    return [n.op_type for n in onnx.load_from_string(model).graph.node]


class Net(nn.Module):
    """A user model around one fastrnn LSTM / GRU, with positional inputs
    x, [lengths], [h0, [c0]] and outputs (y, h_n[, c_n])."""

    def __init__(self, rnn, with_lengths, with_states):
        super().__init__()
        self.rnn, self.with_lengths, self.with_states = rnn, with_lengths, with_states
        self.eval()

    def forward(self, x, *extra):
        lengths = extra[0] if self.with_lengths else None
        states = extra[1:] if self.with_lengths else extra
        lstm = isinstance(self.rnn, fastrnn.LSTM)
        hx = None
        if self.with_states:
            hx = tuple(states) if lstm else states[0]
        y, h = self.rnn(x, hx, lengths=lengths)
        return (y, *h) if lstm else (y, h)


def _inputs(rnn, B, T, with_lengths, with_states, lengths=None):
    x = torch.randn((B, T, rnn.input_size) if rnn.batch_first else (T, B, rnn.input_size))
    args = [x]
    if with_lengths:
        args.append(torch.tensor(lengths) if lengths is not None else torch.randint(1, T + 1, (B,)))
    if with_states:
        D = rnn.num_layers * (2 if rnn.bidirectional else 1)
        args.append(torch.randn(D, B, rnn.hidden_size))
        if isinstance(rnn, fastrnn.LSTM):
            args.append(torch.randn(D, B, rnn.hidden_size))
    return tuple(args)


# name: (constructor kwargs, with_lengths, with_states)
CONFIGS = {
    "basic": (dict(), False, False),
    "bidir_2layers_lengths": (dict(num_layers=2, bidirectional=True), True, False),
    "bidir_2layers_batch_first_lengths_states": (dict(num_layers=2, bidirectional=True, batch_first=True),
                                                 True, True),
    "batch_first_states_no_bias": (dict(batch_first=True, bias=False), False, True),
    "bidir_lengths_states": (dict(bidirectional=True), True, True),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_matches_eager(exporter, mode, config):
    kwargs, with_lengths, with_states = CONFIGS[config]
    torch.manual_seed(0)
    rnn = getattr(fastrnn, mode)(4, 5, **kwargs).eval()
    net = Net(rnn, with_lengths, with_states)
    # distinct lengths, the longest not first: each reverse direction must start at its own L-1
    args = _inputs(rnn, 4, 7, with_lengths, with_states, lengths=[3, 7, 1, 5])
    model = _export(net, args, exporter)
    # one single-direction ONNX node per layer and direction, nothing left of fastrnn's ops
    assert _op_types(model).count(mode) == rnn.num_layers * (2 if rnn.bidirectional else 1)
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load_from_string(model).graph.node)
    _assert_close(_run(model, args), _eager(net, args))


class Layer(nn.Module):
    """One layer in one direction (fastrnn.functional) over masked lengths, with the biases
    named in ``biases`` (the functional API allows either one alone)."""

    def __init__(self, mode, reverse=False, biases=("ih", "hh")):
        super().__init__()
        self.mode, self.reverse = mode, reverse
        self.eval()
        G = 4 if mode == "LSTM" else 3
        self.w_ih = nn.Parameter(torch.randn(G * 5, 3) * 0.5)
        self.w_hh = nn.Parameter(torch.randn(G * 5, 5) * 0.5)
        self.b_ih = nn.Parameter(torch.randn(G * 5) * 0.5) if "ih" in biases else None
        self.b_hh = nn.Parameter(torch.randn(G * 5) * 0.5) if "hh" in biases else None

    def forward(self, x, lengths):
        p = (self.w_ih, self.w_hh, self.b_ih, self.b_hh)
        if self.mode == "LSTM":
            y, h, c = fastrnn.functional.lstm_layer(x, None, None, *p, lengths=lengths, reverse=self.reverse)
            return y, h, c
        return fastrnn.functional.gru_layer(x, None, *p, lengths=lengths, reverse=self.reverse)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_reverse_with_lengths_reads_each_entry_from_its_last_step(exporter, mode):
    # fastrnn: entry b of length L reads t = L-1 down to 0; ONNX's reverse direction with
    # sequence_lens must do the same, i.e. match the layer run on x[:L, b] alone
    torch.manual_seed(1)
    net = Layer(mode, reverse=True)
    T, lengths = 6, [2, 6, 4]
    x = torch.randn(T, 3, 3)
    got = _run(_export(net, (x, torch.tensor(lengths)), exporter), (x, torch.tensor(lengths)))
    for b, L in enumerate(lengths):
        want = _eager(net, (x[:L, b:b + 1], torch.tensor([L])))
        np.testing.assert_allclose(got[0][:L, b:b + 1], want[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got[0][L:, b], 0)
        for g, w in zip(got[1:], want[1:]):
            np.testing.assert_allclose(g[b:b + 1], w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bias", ["ih", "hh"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_one_bias_only(exporter, mode, bias):
    torch.manual_seed(7)
    net = Layer(mode, biases=(bias,))
    args = (torch.randn(5, 2, 3), torch.tensor([5, 3]))
    _assert_close(_run(_export(net, args, exporter), args), _eager(net, args))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dynamic_batch_and_time(exporter, mode):
    torch.manual_seed(2)
    rnn = getattr(fastrnn, mode)(4, 5, num_layers=2, bidirectional=True, batch_first=True).eval()
    net = Net(rnn, with_lengths=True, with_states=False)
    args = _inputs(rnn, 3, 7, True, False)
    names = ["x", "lengths"]
    if exporter == "dynamo":
        B, T = torch.export.Dim("B"), torch.export.Dim("T")
        kw = dict(dynamic_shapes=({0: B, 1: T}, ({0: B},)), input_names=names)  # (x, *extra)
    else:
        kw = dict(dynamic_axes={"x": {0: "B", 1: "T"}, "lengths": {0: "B"}}, input_names=names)
    model = _export(net, args, exporter, **kw)
    other = _inputs(rnn, 5, 9, True, False, lengths=[9, 1, 4, 8, 3])  # batch and length not exported with
    _assert_close(_run(model, other), _eager(net, other))


class Cell(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.eval()

    def forward(self, x, *states):
        out = self.cell(x, tuple(states) if len(states) == 2 else states[0])
        return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cells(exporter, mode):
    torch.manual_seed(3)
    net = Cell(getattr(fastrnn, mode)(4, 5).eval())
    n_states = 2 if mode == "LSTMCell" else 1
    args = (torch.randn(3, 4), *[torch.randn(3, 5) for _ in range(n_states)])
    model = _export(net, args, exporter)
    assert _op_types(model).count(mode[:-4]) == 1
    _assert_close(_run(model, args), _eager(net, args))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_of_a_model_on_device(device, exporter):
    # exported from the device's kernels (TorchScript: traced by running them), run on the CPU
    torch.manual_seed(8)
    rnn = fastrnn.LSTM(4, 5, num_layers=2, bidirectional=True, batch_first=True).eval().to(device)
    net = Net(rnn, with_lengths=True, with_states=True)
    args = tuple(a.to(device) for a in _inputs(rnn, 3, 6, True, True, lengths=[2, 6, 4]))
    _assert_close(_run(_export(net, args, exporter), args), _eager(net, args))


def test_custom_translation_table_with_plain_torch_onnx_export():
    pytest.importorskip("onnxscript")
    torch.manual_seed(4)
    net = Net(fastrnn.GRU(4, 5, bidirectional=True).eval(), with_lengths=True, with_states=False)
    args = _inputs(net.rnn, 3, 6, True, False)
    program = torch.onnx.export(net, args, dynamo=True, verbose=False,
                                custom_translation_table=fastrnn.onnx.custom_translation_table())
    _assert_close(_run(program.model_proto.SerializeToString(), args), _eager(net, args))


def test_opset_11_torchscript():
    # before opset 13 Squeeze / Unsqueeze take their axes as an attribute
    torch.manual_seed(5)
    net = Net(fastrnn.LSTM(4, 5, bidirectional=True).eval(), with_lengths=True, with_states=True)
    args = _inputs(net.rnn, 3, 6, True, True)
    model = _export(net, args, "torchscript", opset_version=11)
    assert onnx.load_from_string(model).opset_import[0].version == 11
    _assert_close(_run(model, args), _eager(net, args))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_proj_size_raises(exporter):
    _needs_onnxscript(exporter)
    net = Net(fastrnn.LSTM(4, 5, proj_size=3).eval(), with_lengths=False, with_states=False)
    x = torch.randn(6, 2, 4)
    with pytest.raises(fastrnn.onnx.UnsupportedExportError, match="proj_size"):
        fastrnn.onnx.export(net, (x,), io.BytesIO(), dynamo=exporter == "dynamo")
    if exporter == "torchscript":  # the symbolic's own error, through plain torch.onnx.export
        with pytest.raises(fastrnn.onnx.UnsupportedExportError, match="proj_size"):
            torch.onnx.export(net, (x,), io.BytesIO(), dynamo=False)
    else:  # the dynamo exporter wraps it in its ConversionError, message included
        with pytest.raises(Exception, match="proj_size"):
            torch.onnx.export(net, (x,), dynamo=True, verbose=False,
                              custom_translation_table=fastrnn.onnx.custom_translation_table())


@pytest.mark.parametrize("with_lengths", [False, True])
def test_torchscript_exporter_bare_module(with_lengths):
    # the TorchScript exporter passes forward's arguments positionally: (x, None, None) or, given
    # them, (x, None, lengths)
    torch.manual_seed(9)
    net = fastrnn.LSTM(4, 5, bidirectional=True).eval()
    x = torch.randn(6, 3, 4)
    args = (x, None, torch.tensor([2, 6, 4])) if with_lengths else (x,)
    model = _export(net, args, "torchscript")
    feeds = (x, args[2]) if with_lengths else (x,)
    _assert_close(_run(model, feeds), _eager(net, args))


def test_export_of_bare_module_dynamo():
    torch.manual_seed(6)
    net = fastrnn.GRU(4, 5, num_layers=2).eval()
    x = torch.randn(6, 2, 4)
    model = _export(net, (x,), "dynamo")
    _assert_close(_run(model, (x,)), _eager(net, (x,)))


def _python(code: str) -> str:
    out = run_python(["-c", textwrap.dedent(code)], timeout=600)
    assert out.returncode == 0, describe(out)
    return out.stdout


# Child-process code shared by the tests below: eager vs onnxruntime on an exported model file.
_CHECK = """
    import sys, numpy as np, onnx, onnxruntime as ort, torch

    def check(path, net, args, n_nodes=None, op=None):
        # the model file at path, run in onnxruntime, gives eager net(*args)'s outputs
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feeds = [a for a in args if a is not None]
        got = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), feeds)})
        with torch.no_grad():
            y, h = net(*args)
        want = [y, *h] if isinstance(h, tuple) else [y, h]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            # float32 through two implementations of the same recurrence: rounding only
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)
        if op is not None:
            assert [n.op_type for n in onnx.load(path).graph.node].count(op) == n_nodes
"""


def test_default_exporter_works_after_import_fastrnn(tmp_path):
    # only `import fastrnn`, then torch.onnx.export(model, args, f) as torch's docs write it: the
    # default exporter (the torch.export-based one, whose result is an ONNXProgram) on the bare
    # layers, lengths passed positionally
    pytest.importorskip("onnxscript")
    out = _python(_CHECK + f"""
    import fastrnn
    assert "onnxscript" not in sys.modules
    torch.manual_seed(0)
    for mode in ("LSTM", "GRU"):
        net = getattr(fastrnn, mode)(4, 5, num_layers=2, bidirectional=True, batch_first=True).eval()
        args = (torch.randn(3, 7, 4), None, torch.tensor([3, 7, 5]))
        path = r"{tmp_path}" + f"/{{mode}}.onnx"
        program = torch.onnx.export(net, args, path)
        assert isinstance(program, torch.onnx.ONNXProgram), type(program)
        check(path, net, args, n_nodes=4, op=mode)  # 2 layers x 2 directions
    # the hook is gone once it has run; torch's module keeps its own loader
    assert not any(type(f).__module__ == "fastrnn.onnx" for f in sys.meta_path)
    m = sys.modules["torch.onnx._internal.exporter._registration"]
    assert type(m.__loader__).__module__ != "fastrnn.onnx" and m.__spec__.loader is m.__loader__
    print("ok")
    """)
    assert out.split()[-1] == "ok"


def test_default_exporter_used_before_import_fastrnn(tmp_path):
    # an export before `import fastrnn` has loaded the exporter already: the import registers then
    pytest.importorskip("onnxscript")
    out = _python(_CHECK + f"""
    torch.onnx.export(torch.nn.Linear(2, 3), (torch.randn(1, 2),), r"{tmp_path}/linear.onnx")
    import fastrnn
    torch.manual_seed(1)
    net = fastrnn.GRU(4, 5, num_layers=2).eval()
    args = (torch.randn(6, 2, 4),)
    torch.onnx.export(net, args, r"{tmp_path}/gru.onnx")
    check(r"{tmp_path}/gru.onnx", net, args, n_nodes=2, op="GRU")
    print("ok")
    """)
    assert out.split()[-1] == "ok"


def test_failed_registration_leaves_torch_onnx_working(tmp_path):
    # should adding the translations fail (say, onnxscript changed), the exporter still works for
    # models without fastrnn layers, with a warning; fastrnn's ops then find no translation
    pytest.importorskip("onnxscript")
    out = _python(f"""
    import warnings, torch, fastrnn
    def fail():
        raise RuntimeError("no library")
    fastrnn.onnx.register = fail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(torch.nn.Linear(2, 3), (torch.randn(1, 2),), r"{tmp_path}/linear.onnx")
    assert any("no library" in str(w.message) for w in caught), [str(w.message) for w in caught]
    try:
        torch.onnx.export(fastrnn.GRU(4, 5).eval(), (torch.randn(6, 2, 4),), r"{tmp_path}/gru.onnx")
        print("exported")
    except Exception as e:
        assert "fastrnn.gru_forward" in str(e), e
        print("ok")
    """)
    assert out.split()[-1] == "ok"


def test_import_fastrnn_imports_no_onnx_package():
    # installed or not, `import fastrnn` imports neither onnx nor onnxscript (a second of import
    # time): the translations are added when the exporter is first used
    out = _python("""
        import sys, fastrnn
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxscript", "onnx_ir")))
        """)
    assert out.split("\n")[0] == "[]"


def test_import_fastrnn_needs_no_onnx_packages():
    # with onnx / onnxscript not importable, `import fastrnn` works and imports neither; an export
    # with the default exporter then fails with torch's own error, every time (the hook stays quiet)
    out = _python("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("onnx", "onnxscript", "onnx_ir", "onnxruntime"):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import torch, fastrnn
        assert not any(m.split(".")[0] in ("onnx", "onnxscript", "onnx_ir") for m in sys.modules)
        y, h = fastrnn.GRU(4, 5)(torch.randn(3, 2, 4))
        for net in (fastrnn.GRU(4, 5), torch.nn.GRU(4, 5), fastrnn.GRU(4, 5)):
            try:
                torch.onnx.export(net, (torch.randn(3, 2, 4),))
                print("exported")
            except ImportError as e:
                assert str(e) == "blocked: onnxscript", e
        try:
            fastrnn.onnx.register()
        except ImportError:
            print("register needs onnxscript")
        """)
    assert out.split("\n")[0] == "register needs onnxscript"


def test_register_is_idempotent():
    pytest.importorskip("onnxscript")
    out = _python("""
        import torch, fastrnn
        from onnxscript.function_libs.torch_lib import registration
        fastrnn.onnx.register()
        fastrnn.onnx.register()
        torch.onnx.export(fastrnn.LSTM(4, 5).eval(), (torch.randn(6, 2, 4),), verbose=False)  # once more by itself
        for name in ("fastrnn::lstm_forward", "fastrnn::gru_forward"):
            print(name, len(registration.default_registry[name].overloads))
        """)
    assert out.split("\n")[-3:-1] == ["fastrnn::lstm_forward 1", "fastrnn::gru_forward 1"]

"""ONNX export of fastrnn layers as the standard ONNX ``LSTM`` and ``GRU`` operators.

Every ``torch.ops.fastrnn.{lstm,gru}_forward`` call (one layer, one direction) becomes one
single-direction ONNX LSTM / GRU node, so a model with fastrnn layers exports to an ONNX graph
that any runtime runs, with the same results as eager fastrnn:

- torch's gate order is permuted into ONNX's (LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h), the
  two biases are concatenated per direction (``[Wb, Rb]``), GRU uses ``linear_before_reset=1``
  (torch's GRU), ``lengths`` becomes ``sequence_lens`` (ONNX reads a reverse direction from each
  entry's own last valid step, as fastrnn does), and the states gain ONNX's direction axis;
- the op's ``ws`` output (activations saved for backward) is an empty tensor: an exported model
  does inference only.

Both of torch's exporters work after a plain ``import fastrnn``:

- the default, torch.export-based one (``torch.onnx.export(model, args, f)``, i.e. ``dynamo=True``;
  needs ``onnxscript``): fastrnn's translations are added to onnxscript's torch function library,
  which that exporter reads at each export, the first time torch imports the exporter's registry
  module (see ``_install_hook``) -- so ``import fastrnn`` imports neither onnx nor onnxscript.
  ``fastrnn.onnx.export(...)`` (the same, raising ``UnsupportedExportError`` as it is) and
  ``custom_translation_table=fastrnn.onnx.custom_translation_table()`` work too;
- the TorchScript-based one (``dynamo=False``): the symbolic functions are registered when
  fastrnn is imported.

What ONNX's operators cannot express raises ``UnsupportedExportError`` naming it: an LSTM with
``proj_size > 0`` (ONNX's LSTM has no projection), and zoneout (``zoneout`` / ``zoneout_cell`` > 0:
it changes eval results, which ONNX's LSTM / GRU cannot reproduce). ``recurrent_dropout`` and
``weight_drop`` act in training only, so such a module exports as the plain layer. Plain ``torch.onnx.export(dynamo=True)`` wraps
it in its own ConversionError; ``fastrnn.onnx.export`` raises it as it is.

Not exportable as such: a PackedSequence input (pass ``lengths=`` instead).

Importing this module costs no more than ``import torch.onnx``: onnx and onnxscript are imported
only when an export needs them.
"""
import importlib.abc
import sys
import warnings
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["export", "custom_translation_table", "register", "UnsupportedExportError"]


class UnsupportedExportError(RuntimeError):
    """A fastrnn configuration that ONNX's LSTM / GRU operators cannot express."""


# Row order of ONNX's gates in torch's weight/bias layout: ONNX gate k is torch's chunk _GATES[k].
_GATES = {"LSTM": (0, 3, 1, 2),  # torch i, f, g, o -> ONNX i, o, f, c
          "GRU": (1, 0, 2)}      # torch r, z, n    -> ONNX z, r, h


def _gate_rows(mode: str, H: int) -> List[int]:
    return [k * H + j for k in _GATES[mode] for j in range(H)]


def _emit(e, mode: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse: bool, layer_norm: bool = False):
    """One fastrnn op call as one ONNX RNN node, through the emitter ``e`` (one per exporter).

    x [T, B, I]; h0 (and c0) [B, H]; w_ih [G*H, I]; w_hh [G*H, H]; b_ih / b_hh [G*H] or None;
    lengths int64 [B] or None; layer_norm: the call has the layer-norm parameters. Returns the op's
    outputs: (y [T, B, H], h_n [B, H], [c_n,] ws [0]).
    """
    if layer_norm:
        raise UnsupportedExportError(
            f"fastrnn ONNX export: {mode} with layer_norm=True cannot be exported (ONNX's {mode} operator "
            "has no layer normalisation inside the recurrence)")
    if w_hr is not None:
        raise UnsupportedExportError(
            "fastrnn ONNX export: LSTM with proj_size > 0 cannot be exported (ONNX's LSTM operator "
            "has no projection, weight_hr)")
    H = e.sizes(w_hh)[1]
    rows = e.int64s(_gate_rows(mode, H))
    W = e.unsqueeze(e.gather(w_ih, rows), 0)  # [1, G*H, I]
    R = e.unsqueeze(e.gather(w_hh, rows), 0)  # [1, G*H, H]
    B = None
    if b_ih is not None or b_hh is not None:
        b_ih = e.zeros_like(b_hh) if b_ih is None else b_ih
        b_hh = e.zeros_like(b_ih) if b_hh is None else b_hh
        B = e.unsqueeze(e.concat([e.gather(b_ih, rows), e.gather(b_hh, rows)]), 0)  # [1, 2*G*H]
    seq = None if lengths is None else e.int32(lengths)
    inputs = [x, W, R, B, seq, e.unsqueeze(h0, 0)]
    attrs = {"hidden_size": H, "direction": "reverse" if reverse else "forward"}
    if mode == "LSTM":
        y, h_n, c_n = e.node("LSTM", inputs + [e.unsqueeze(c0, 0)], 3, attrs)
        states = [e.squeeze(h_n, 0), e.squeeze(c_n, 0)]
    else:
        y, h_n = e.node("GRU", inputs, 2, dict(attrs, linear_before_reset=1))
        states = [e.squeeze(h_n, 0)]
    # Y is [T, num_directions=1, B, H]
    return (e.squeeze(y, 1), *states, e.empty_like(x))


# --------------------------------------------------------------------------------------------
# TorchScript-based exporter (dynamo=False)


class _TorchScriptEmitter:
    def __init__(self, g):
        self.g = g

    @staticmethod
    def sizes(v) -> List[int]:
        return v.type().sizes()

    def int64s(self, values):
        return self.g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    def gather(self, v, rows):
        return self.g.op("Gather", v, rows, axis_i=0)

    def concat(self, vs):
        return self.g.op("Concat", *vs, axis_i=0)

    def _axes_op(self, name, v, axis):
        if self.g.opset >= 13:  # axes became an input in opset 13
            return self.g.op(name, v, self.int64s([axis]))
        return self.g.op(name, v, axes_i=[axis])

    def unsqueeze(self, v, axis):
        return self._axes_op("Unsqueeze", v, axis)

    def squeeze(self, v, axis):
        return self._axes_op("Squeeze", v, axis)

    def int32(self, v):
        return self.g.op("Cast", v, to_i=torch.onnx.TensorProtoDataType.INT32)

    def zeros_like(self, v):
        return self.g.op("Constant", value_t=torch.zeros(self.sizes(v), dtype=v.type().dtype()))

    def empty_like(self, v):
        return self.g.op("Constant", value_t=torch.empty(0, dtype=v.type().dtype()))

    def node(self, op_type, inputs, outputs, attrs):
        inputs = [self._missing() if v is None else v for v in inputs]
        kw = {f"{k}_{'s' if isinstance(a, str) else 'i'}": a for k, a in attrs.items()}
        return self.g.op(op_type, *inputs, outputs=outputs, **kw)

    def _missing(self):
        # an omitted optional input ("" in the ONNX node)
        v = self.g.op("prim::Constant")
        v.setType(torch._C.OptionalType.ofTensor())
        return v


def _refuse_regularisers(zoneout_h, zoneout_c, rec_mask) -> None:
    """Zoneout changes eval results, which ONNX's LSTM / GRU cannot express; a recurrent-dropout
    mask is there only in training mode."""
    for arg, option in ((zoneout_h, "zoneout"), (zoneout_c, "zoneout_cell"), (rec_mask, "recurrent_dropout")):
        if arg is not None:
            where = " in training mode" if option == "recurrent_dropout" else ""
            raise UnsupportedExportError(f"fastrnn ONNX export: {option}{where} cannot be exported (ONNX's LSTM / "
                                         f"GRU operators have no {option})")


def _optional(v):
    return None if v.node().mustBeNone() else v


def _bool(v) -> bool:
    # a constant argument, by then either still prim::Constant or already onnx::Constant
    node = v.node()
    return bool(node.t("value")) if node.kind() == "onnx::Constant" else bool(v.toIValue())


def _lstm_symbolic(g, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save, ln_ih=None, ln_hh=None,
                   ln_c_w=None, ln_c_b=None, zoneout_h=None, zoneout_c=None, rec_mask=None):
    _refuse_regularisers(*(None if v is None else _optional(v) for v in (zoneout_h, zoneout_c, rec_mask)))
    return _emit(_TorchScriptEmitter(g), "LSTM", x, h0, c0, w_ih, w_hh, _optional(b_ih), _optional(b_hh),
                 _optional(w_hr), _optional(lengths), _bool(reverse), ln_ih is not None and _optional(ln_ih) is not None)


def _gru_symbolic(g, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, ln_ih=None, ln_hh=None, zoneout_h=None,
                  rec_mask=None):
    _refuse_regularisers(*(None if v is None else _optional(v) for v in (zoneout_h, None, rec_mask)))
    return _emit(_TorchScriptEmitter(g), "GRU", x, h0, None, w_ih, w_hh, _optional(b_ih), _optional(b_hh),
                 None, _optional(lengths), _bool(reverse), ln_ih is not None and _optional(ln_ih) is not None)


_SYMBOLICS = {"fastrnn::lstm_forward": _lstm_symbolic, "fastrnn::gru_forward": _gru_symbolic}
_TS_MIN_OPSET = 9  # for opset 9 (torch's base opset) and later; ONNX's LSTM / GRU are older


def _register_torchscript() -> None:
    for name, fn in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, _TS_MIN_OPSET)


# --------------------------------------------------------------------------------------------
# torch.export-based exporter (dynamo=True, onnxscript)


class _OnnxScriptEmitter:
    def __init__(self):
        from onnxscript import ir, opset18 as op

        self.op, self.ir = op, ir

    @staticmethod
    def sizes(v) -> List[int]:
        return [int(d) for d in v.shape]

    def int64s(self, values):
        return self.op.Constant(value_ints=list(values))

    def gather(self, v, rows):
        return self.op.Gather(v, rows, axis=0)

    def concat(self, vs):
        return self.op.Concat(*vs, axis=0)

    def unsqueeze(self, v, axis):
        return self.op.Unsqueeze(v, self.int64s([axis]))

    def squeeze(self, v, axis):
        return self.op.Squeeze(v, self.int64s([axis]))

    def int32(self, v):
        return self.op.Cast(v, to=self.ir.DataType.INT32)

    def zeros_like(self, v):
        return self.op.CastLike(self.op.ConstantOfShape(self.op.Shape(v)), v)

    def empty_like(self, v):
        return self.op.CastLike(self.op.ConstantOfShape(self.int64s([0])), v)

    def node(self, op_type, inputs, outputs, attrs):
        outs = getattr(self.op, op_type)(*inputs, **attrs)  # all of the op's outputs
        assert len(outs) == outputs
        return outs


# The translations: plain Python functions that the exporter traces (onnxscript "trace-only").
# Tensor parameters stay unannotated (any type); the bools are attributes.


def _lstm_onnx(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None, reverse: bool = False,
               save: bool = False, ln_ih=None, ln_hh=None, ln_c_w=None, ln_c_b=None, zoneout_h=None,
               zoneout_c=None, rec_mask=None):
    _refuse_regularisers(zoneout_h, zoneout_c, rec_mask)
    return _emit(_OnnxScriptEmitter(), "LSTM", x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                 ln_ih is not None)


def _gru_onnx(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse: bool = False, save: bool = False,
              ln_ih=None, ln_hh=None, zoneout_h=None, rec_mask=None):
    _refuse_regularisers(zoneout_h, None, rec_mask)
    return _emit(_OnnxScriptEmitter(), "GRU", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, lengths, reverse,
                 ln_ih is not None)


def custom_translation_table() -> Dict[Callable, Callable]:
    """fastrnn's ops -> their ONNX translations, for
    ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)`` (a new dict each call)."""
    ops = torch.ops.fastrnn
    return {ops.lstm_forward.default: _lstm_onnx, ops.gru_forward.default: _gru_onnx}


_translations = custom_translation_table  # for export(), whose parameter has the same name


def register() -> None:
    """Add fastrnn's translations to onnxscript's torch function library, which plain
    ``torch.onnx.export`` (dynamo=True) reads at each export. Imports onnxscript (ImportError
    without it). Idempotent. Done by itself when that exporter is first used after
    ``import fastrnn`` (``_install_hook``), so there is no need to call it."""
    import onnxscript
    from onnxscript.function_libs.torch_lib import registration

    opset = onnxscript.values.Opset("pkg.fastrnn", 1)
    for name, fn in (("fastrnn::lstm_forward", _lstm_onnx), ("fastrnn::gru_forward", _gru_onnx)):
        if name not in registration.default_registry:
            registration.default_registry.register(onnxscript.values.TracedOnnxFunction(opset, fn), name)


# --------------------------------------------------------------------------------------------
# register() by itself, on the dynamo exporter's first use
#
# torch.onnx.export(dynamo=True) builds its table of translations at each export
# (ONNXRegistry.from_torchlib, which also reads onnxscript's library) in the module below, which
# that export imports first. Importing it imports onnxscript (about a second of CPU time), so
# fastrnn does not: a finder on sys.meta_path waits for that module's import and calls register()
# right after the module has run, before any export reads the library. onnxscript is imported by
# then (the module imports it), so register() adds little. Without onnxscript the module's own
# import fails first and torch's error reaches the caller unchanged.

_EXPORTER_REGISTRY = "torch.onnx._internal.exporter._registration"


def _register_quietly() -> None:
    # a failure here must not break torch.onnx for models without fastrnn layers
    try:
        register()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"fastrnn: could not add its ONNX translations to torch.onnx's exporter ({e!r}); "
                      "fastrnn layers will not export with plain torch.onnx.export(dynamo=True)")


class _RegisterAfter(importlib.abc.Loader):
    """Runs a module with its own loader, then register(); afterwards the module keeps its own
    loader (``__loader__``, ``__spec__.loader``), so nothing of this stays on it."""

    def __init__(self, loader, finder):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)  # an ImportError (no onnxscript) propagates: torch's own
        self.finder.remove()
        _register_quietly()


class _RegistryImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the spec the other finders give for the
    exporter's registry module."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _EXPORTER_REGISTRY:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # not a loader this can wrap: leave the import alone
        spec.loader = _RegisterAfter(spec.loader, self)
        return spec

    def remove(self):
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _install_hook() -> None:
    if _EXPORTER_REGISTRY in sys.modules:  # the exporter was used already: onnxscript is loaded
        _register_quietly()
    elif not any(isinstance(f, _RegistryImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegistryImportFinder())


def export(model, args=(), f=None, *, dynamo: bool = True,
           custom_translation_table: Optional[Dict[Callable, Callable]] = None, **kwargs):
    """``torch.onnx.export(model, args, f, dynamo=dynamo, **kwargs)`` with fastrnn's translations
    added to ``custom_translation_table`` (entries given by the caller take precedence).
    Returns what torch.onnx.export returns (an ONNXProgram when dynamo=True)."""
    if dynamo:
        table = _translations()
        table.update(custom_translation_table or {})
        kwargs["custom_translation_table"] = table
    elif custom_translation_table is not None:
        raise ValueError("custom_translation_table applies to dynamo=True exports only")
    try:
        return torch.onnx.export(model, args, f, dynamo=dynamo, **kwargs)
    except Exception as e:
        # the dynamo exporter wraps a translation's error in its own, a few causes deep
        cause = e.__cause__
        while cause is not None and not isinstance(cause, UnsupportedExportError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise UnsupportedExportError(str(cause)) from e


_register_torchscript()
_install_hook()

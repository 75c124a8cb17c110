"""fastrnn.LSTMCell and fastrnn.GRUCell, drop-ins for torch.nn.LSTMCell / GRUCell: one step each.

The classes' ``__module__`` is ``fastrnn.modules`` (which imports them): pickles and
``torch.load(weights_only=True)``'s allow list name a class by that path, and have named these
``fastrnn.modules.LSTMCell`` / ``GRUCell`` since the first release.

One path per step: the arguments are checked by fastrnn._inputs (``cell_inputs``) and the step
runs in fastrnn._runner (``lstm_cell`` / ``gru_cell``), in eager code, in ``torch.jit.script``
(the same calls, compiled) and in ``torch.jit.trace`` (the step scripted, see
``_runner.traceable``); under ``torch.fx.symbolic_trace`` a cell is a ``call_module`` leaf. The
eager step of a plain batched tensor calls the op before the Python checks, which then only
run to word the op's refusal as torch.nn does (docs/DESIGN.md, "Python layers": cells run once
per token).
"""
from typing import List, Optional, Tuple

import torch
import torch.fx
from torch import Tensor, nn

from . import _cells, _inputs
from ._runner import fx_leaf, gru_cell, lstm_cell, traceable

__all__ = ["LSTMCell", "GRUCell"]


class _LayerNormInit:
    """The reset_parameters of fastrnn's layers and cells (a base before torch.nn's class)."""

    def reset_parameters(self) -> None:
        """torch.nn's init, U(-1/sqrt(H), 1/sqrt(H)) on every parameter; then, with layer_norm, the
        norms' weights (weight_ln_*) back to ones and their biases (bias_ln_*) to zeros: the
        identity norm."""
        super().reset_parameters()
        with torch.no_grad():
            for name, p in self.named_parameters(recurse=False):
                if name.startswith("weight_ln_"):
                    p.fill_(1.0)
                elif name.startswith("bias_ln_"):
                    p.zero_()


class _CellBase(_LayerNormInit, nn.RNNCellBase):
    """Shared by LSTMCell and GRUCell. nn.RNNCellBase.__init__ is not run: this builds the same
    parameters after checking the arguments; reset_parameters and extra_repr are nn.RNNCellBase's."""

    _name = ""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, gates: int, device=None,
                 dtype=None, layer_norm: bool = False, zoneout: float = 0.0) -> None:
        nn.Module.__init__(self)
        _inputs.check_rate("zoneout", zoneout)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        # like torch.nn's cells: sizes of 0 are fine (functional runs them without the kernels),
        # negative ones fail in torch.empty below
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.zoneout = float(zoneout)
        self.weight_ih = nn.Parameter(torch.empty((gates * hidden_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gates * hidden_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        # layer_norm's parameters (None when off: not in the state_dict, as torch.nn's cells);
        # LSTMCell's weight_ln_c / bias_ln_c are registered by LSTMCell
        if not isinstance(layer_norm, bool):
            raise TypeError(f"layer_norm should be of type bool, got: {type(layer_norm).__name__}")
        self.layer_norm = layer_norm
        for name in ("weight_ln_ih", "weight_ln_hh"):
            self.register_parameter(name, nn.Parameter(torch.empty(gates * hidden_size, **factory))
                                    if layer_norm else None)
        for name in self._cell_norm_names:
            self.register_parameter(name, nn.Parameter(torch.empty(hidden_size, **factory)) if layer_norm else None)
        self.reset_parameters()

    _cell_norm_names: Tuple[str, ...] = ()  # LSTMCell: the norm of c

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.layer_norm:
            s += ", layer_norm=True"
        return s + f", zoneout={self.zoneout}" if self.zoneout > 0 else s

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if "layer_norm" not in self.__dict__:  # pickled before the option existed
            self.layer_norm = False
            for name in ("weight_ln_ih", "weight_ln_hh") + self._cell_norm_names:
                self._parameters.setdefault(name, None)
        if "zoneout" not in self.__dict__:  # pickled before the option existed: off
            self.zoneout = 0.0

    def _ln_weights(self) -> Tuple[Optional[Tensor], ...]:
        """layer_norm's parameters in the step functions' order (None when off)."""
        p = self._parameters
        return (p["weight_ln_ih"], p["weight_ln_hh"]) + tuple(p[n] for n in self._cell_norm_names)

    def _states(self, hx) -> List[Optional[Tensor]]:
        """hx as the list of initial states (None: zeros), or TypeError naming what it must be."""
        raise NotImplementedError

    def _eager(self, input, hx, step):
        """One eager step: step(x [B, I], *states ([B, H] or None), w_ih, w_hh, b_ih, b_hh) ->
        output(s), run on the checked, batched, autocast inputs; returns the output(s) as the
        user's input was batched."""
        p = self._parameters
        # A plain step (a batched tensor outside autocast, compilation and tracing) calls the op
        # first: its own checks refuse whatever cell_inputs would, which then only words the
        # refusal (docs/DESIGN.md, "Python layers"). (is_compiling first: under dynamo the rest
        # is never traced; one any-autocast query costs a third of the two per-device ones.)
        if (type(input) is Tensor and input.dim() == 2 and not torch.compiler.is_compiling()
                and not torch._C._is_any_autocast_enabled() and torch._C._get_tracing_state() is None):
            states = self._states(hx)
            try:
                return step(input, *states, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                            *self._ln_weights(), self.zoneout, self.training)
            except (RuntimeError, TypeError):
                self._checked(input, states)  # raises torch.nn's error for what the op refused
                raise
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, (input, hx))
        x, states, weights, is_batched = self._checked(input, self._states(hx))
        out = traceable(step)(x, *states, *weights, self.zoneout, self.training)
        if is_batched:
            return out
        return out.squeeze(0) if isinstance(out, Tensor) else tuple(o.squeeze(0) for o in out)

    def _checked(self, input, states: List[Optional[Tensor]]):
        """(x [B, I], states, (w_ih, w_hh, b_ih, b_hh), is_batched): cell_inputs' checks, then the
        autocast dtype."""
        if not isinstance(input, Tensor):
            raise TypeError(f"{self._name}: input must be a Tensor, got {type(input).__name__}")
        p = self._parameters
        weights = (p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]) + self._ln_weights()
        ac_dtype = _inputs.autocast_dtype(input)
        x, states, is_batched = _inputs.cell_inputs(self._name, input, states, self.input_size, self.hidden_size,
                                                    weights[0], ac_dtype is None)
        if ac_dtype is not None:
            x = _inputs.cast(x, ac_dtype)
            states = [_inputs.cast(s, ac_dtype) for s in states]
            weights = tuple(None if w is None else _inputs.cast(w, ac_dtype) for w in weights)
        return x, states, weights, is_batched


_CELL_DOC = """One {kind} step over fastrnn's fused kernels, a drop-in for (and an instance of) torch.nn.{kind}Cell.

    Same constructor, parameters, forward signature, outputs and errors as torch.nn.{kind}Cell;
    the math of one step of fastrnn.{kind} (gates {gates}). Meant for step-by-step decoding:
    a batched call on a Tensor goes straight to the fused op.

    Args:
        input_size: features of the input (I).
        hidden_size: features of the {states} (H).
        bias: whether there are bias weights ``bias_ih`` and ``bias_hh``. Default True.
        device, dtype: of the parameters (float32, float64, float16 or bfloat16; CPU or CUDA).
        layer_norm: (fastrnn only, keyword-only) the layer-normalised step of fastrnn.{kind}
            with ``layer_norm=True``, with the parameters ``weight_ln_ih``, ``weight_ln_hh``
            [{G}H] (ones at init){ln} (None when off). Default False.
        zoneout: (fastrnn only, keyword-only) zoneout on the new hidden state: in training each
            element of h' keeps the previous h with this probability (a fresh draw every call),
            in eval h' = p h + (1 - p) h~ (the expectation). Default 0 (off).

    Parameters (torch.nn's names, shapes and initialisation, U(-1/sqrt(H), 1/sqrt(H))):
    ``weight_ih`` [{G}H, I], ``weight_hh`` [{G}H, H], ``bias_ih`` and ``bias_hh`` [{G}H] (None
    without bias).
    """

_STEP_DOC = """One step.

        Args:
            input: ``(B, I)``, or ``(I,)`` unbatched.
            hx: {hx}; zeros when None.

        Returns:
            {out}.

        Differences from torch.nn: under autocast the step runs in the autocast dtype with fp32
        accumulation. Under TorchScript autocast is not applied.
        """


class LSTMCell(_CellBase, nn.LSTMCell):
    __doc__ = _CELL_DOC.format(kind="LSTM", gates="i, f, g, o", states="hidden and cell state", G=_cells.LSTM.gates,
                               ln=", ``weight_ln_c`` and ``bias_ln_c`` [H] (ones, zeros)")

    _name = "LSTMCell"

    _cell_norm_names = ("weight_ln_c", "bias_ln_c")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 layer_norm: bool = False, zoneout: float = 0.0) -> None:
        """Build the parameters (see the class docstring for the arguments); torch.nn.LSTMCell's checks."""
        super().__init__(input_size, hidden_size, bias, _cells.LSTM.gates, device, dtype, layer_norm, zoneout)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if torch.jit.is_scripting():
            states: List[Optional[Tensor]] = [None, None] if hx is None else [hx[0], hx[1]]
            x, states, is_batched = _inputs.cell_inputs("LSTMCell", input, states, self.input_size,
                                                        self.hidden_size, self.weight_ih, True)
            h, c = lstm_cell(x, states[0], states[1], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                             self.weight_ln_ih, self.weight_ln_hh, self.weight_ln_c, self.bias_ln_c, self.zoneout,
                             self.training)
            return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))
        return self._eager(input, hx, lstm_cell)

    forward.__doc__ = _STEP_DOC.format(hx="``(h, c)``, each ``(B, H)`` (``(H,)`` unbatched)",
                                       out="``(h', c')``, each ``(B, H)`` (``(H,)`` unbatched)")

    def _states(self, hx) -> List[Optional[Tensor]]:
        if hx is None:
            return [None, None]
        if (isinstance(hx, (tuple, list)) and len(hx) == 2 and isinstance(hx[0], Tensor)
                and isinstance(hx[1], Tensor)):
            return [hx[0], hx[1]]
        raise TypeError(f"LSTMCell: hx must be a tuple (h, c) of two tensors, got {type(hx).__name__}")


class GRUCell(_CellBase, nn.GRUCell):
    __doc__ = _CELL_DOC.format(kind="GRU", gates="r, z, n", states="hidden state", G=_cells.GRU.gates, ln="")

    _name = "GRUCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 layer_norm: bool = False, zoneout: float = 0.0) -> None:
        """Build the parameters (see the class docstring for the arguments); torch.nn.GRUCell's checks."""
        super().__init__(input_size, hidden_size, bias, _cells.GRU.gates, device, dtype, layer_norm, zoneout)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if torch.jit.is_scripting():
            x, states, is_batched = _inputs.cell_inputs("GRUCell", input, [hx], self.input_size, self.hidden_size,
                                                        self.weight_ih, True)
            h = gru_cell(x, states[0], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.weight_ln_ih,
                         self.weight_ln_hh, self.zoneout, self.training)
            return h if is_batched else h.squeeze(0)
        return self._eager(input, hx, gru_cell)

    forward.__doc__ = _STEP_DOC.format(hx="``(B, H)`` (``(H,)`` unbatched)", out="h': ``(B, H)`` (``(H,)`` unbatched)")

    def _states(self, hx) -> List[Optional[Tensor]]:
        if hx is not None and not isinstance(hx, Tensor):
            raise TypeError(f"GRUCell: hx must be a Tensor, got {type(hx).__name__}")
        return [hx]


# pickles name the classes by their public module (see the module docstring)
for _cls in (LSTMCell, GRUCell):
    _cls.__module__ = "fastrnn.modules"

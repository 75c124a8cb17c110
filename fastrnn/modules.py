"""fastrnn.LSTM and fastrnn.GRU, drop-ins for torch.nn.LSTM / GRU; and, from cells.py, the cells.

Constructors, parameter names, shapes, registration order and initialisation are torch.nn's, so
``load_state_dict`` works both ways. Multi-layer stacking, bidirectionality, batch_first,
dropout between layers, PackedSequence and autocast are handled in Python; every layer and
direction is one fused op call. ``forward`` also takes ``lengths=`` (masked variable lengths
without packing): outputs at padded steps are zero and the final state of each entry is the one
after its last valid step, which is what a PackedSequence gives, without the packing.

One path per forward: the arguments are checked and normalised by fastrnn._inputs
(``layer_inputs``), then fastrnn._runner's ``run_stack`` runs the layers. Eager code reaches it
from ``_forward_eager`` (which adds what TorchScript cannot take: PackedSequence, lengths as a
list, autocast), ``torch.jit.script`` from ``_forward_script`` (the same two calls, compiled),
``torch.jit.trace`` records the eager path with ``run_stack`` scripted (``_runner.traceable``), and
under ``torch.fx.symbolic_trace`` the module is one ``call_module`` leaf (``_runner.fx_leaf``).
The code uses only static Python control flow, so dynamo traces it without graph breaks.

Class hierarchy: each class subclasses its torch.nn namesake (``nn.LSTM``, ``nn.GRU``,
``nn.LSTMCell``, ``nn.GRUCell``, so ``nn.RNNBase`` / ``nn.RNNCellBase``), so code that finds RNNs
by type finds these. torch.compile therefore treats LSTM / GRU as it treats every nn.LSTM /
nn.GRU: dynamo breaks the graph at them unless ``torch._dynamo.config.allow_rnn`` is set; with it,
``fullgraph=True`` works and the graph holds fastrnn's ops.
"""
import numbers
import warnings
from typing import List, Optional, Tuple

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _cells, _inputs
from ._inputs import Lengths
from ._runner import fx_leaf, run_stack, traceable, weight_slots
# the cells live in cells.py and are fastrnn.modules' classes too (their __module__: pickles)
from .cells import GRUCell, LSTMCell, _LayerNormInit

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell"]


class _RNNBase(_LayerNormInit, nn.RNNBase):
    """Shared by LSTM (4 gates, optional projection) and GRU (3 gates).

    The subclasses are nn.LSTM / nn.GRU too (listed after this base, so these methods win).
    From nn.RNNBase come ``all_weights``, ``reset_parameters`` (the same init), ``extra_repr``,
    pickling (``__getstate__`` / ``__setstate__``) and the ``_flat_weights`` list, which its
    ``__setattr__`` and ``_apply`` (``.to()`` and friends) keep equal to the parameters;
    ``flatten_parameters`` is overridden to do nothing, so cuDNN's weight flattening never runs.
    The forward pass reads the parameters by name, not through ``_flat_weights``."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, weight_drop: float = 0.0, zoneout: float = 0.0,
                 zoneout_cell: float = 0.0, recurrent_dropout: float = 0.0, layer_norm: bool = False) -> None:
        # nn.RNNBase.__init__ is not run: it builds the parameters with checks and messages of
        # its own; this builds the same parameters, in the same order, with the same init
        nn.Module.__init__(self)
        # the same checks, in the same order, as torch.nn.RNNBase
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of "
                             f"an element being zeroed, got {dropout!r}")
        if (not isinstance(weight_drop, numbers.Number) or isinstance(weight_drop, bool)
                or not 0 <= weight_drop <= 1):  # fastrnn's option, worded as torch.nn words dropout
            raise ValueError("weight_drop should be a number in range [0, 1] representing the probability of "
                             f"an element being zeroed, got {weight_drop!r}")
        for name, rate in (("zoneout", zoneout), ("zoneout_cell", zoneout_cell),
                           ("recurrent_dropout", recurrent_dropout)):
            _inputs.check_rate(name, rate)
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero "
                          f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        for name, value, kind in (("bias", bias, bool), ("batch_first", batch_first, bool),
                                  ("layer_norm", layer_norm, bool),
                                  ("input_size", input_size, int), ("hidden_size", hidden_size, int),
                                  ("num_layers", num_layers, int), ("proj_size", proj_size, int)):
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"{name} should be of type {kind.__name__}, got: {type(value).__name__}")
        if layer_norm and zoneout_cell > 0:  # the kernels' limit (docs/DESIGN.md, "Options beyond torch.nn")
            raise NotImplementedError("layer_norm with zoneout_cell is not implemented yet")
        if input_size <= 0:
            raise ValueError(f"input_size must be greater than zero, got {input_size}")
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be greater than zero, got {hidden_size}")
        if num_layers <= 0:
            raise ValueError(f"num_layers must be greater than zero, got {num_layers}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections, "
                             f"got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
                             f"hidden_size={hidden_size}")

        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = proj_size
        self.weight_drop = float(weight_drop)
        self.zoneout = float(zoneout)
        self.zoneout_cell = float(zoneout_cell)
        self.recurrent_dropout = float(recurrent_dropout)
        self.layer_norm = layer_norm

        factory = {"device": device, "dtype": dtype}
        gate_size = _cells.CELLS[mode.lower()].gates * hidden_size
        real_hidden = proj_size if proj_size > 0 else hidden_size
        num_directions = 2 if bidirectional else 1
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else real_hidden * num_directions
            for direction in range(num_directions):
                suffix = "_reverse" if direction == 1 else ""
                shapes = [("weight_ih", (gate_size, layer_input)), ("weight_hh", (gate_size, real_hidden))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                if layer_norm:  # after torch.nn's own: docs/DESIGN.md, "Options beyond torch.nn"
                    shapes += [("weight_ln_ih", (gate_size,)), ("weight_ln_hh", (gate_size,))]
                    if mode == "LSTM":
                        shapes += [("weight_ln_c", (hidden_size,)), ("bias_ln_c", (hidden_size,))]
                names = []
                for base, shape in shapes:
                    name = f"{base}_l{layer}{suffix}"
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self._init_flat_weights()  # _flat_weights and its weak references, as nn.RNNBase keeps them
        self._set_layout()
        self.reset_parameters()

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels read each weight where it is (kept for torch.nn compatibility)."""

    def extra_repr(self) -> str:
        s = super().extra_repr()
        for name in self._options:
            if getattr(self, name) > 0:
                s += f", {name}={getattr(self, name)}"
        return s + ", layer_norm=True" if self.layer_norm else s

    # fastrnn's rate options, in extra_repr's order; all default to 0 (off)
    _options = ("weight_drop", "zoneout", "zoneout_cell", "recurrent_dropout")

    def __setstate__(self, state) -> None:
        # modules pickled before the layers subclassed nn.RNNBase (fastrnn 0.1.0 in development)
        # lack the _flat_weights list; all pickled before _set_layout lack what it sets, and all
        # pickled before an option existed lack it (off)
        if "_flat_weights" not in state:
            state = dict(state)
            state["_flat_weights"] = [state["_parameters"].get(n) for n in state["_flat_weights_names"]]
        super().__setstate__(state)
        for name in self._options:
            if name not in self.__dict__:
                setattr(self, name, 0.0)
        if "layer_norm" not in self.__dict__:
            self.layer_norm = False
        self._set_layout()

    def _set_layout(self) -> None:
        """What forward reads of the configuration, derived once (at construction and unpickling):
        where each layer's weights stand in _flat_weights (see _runner.weight_slots), and the
        initial states' shapes without B, [[L*D, P]] for h (, [L*D, H] for c)."""
        self._weight_slots: List[List[int]] = weight_slots(self._all_weights, self._flat_weights_names)
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h = [layers, self.proj_size if self.proj_size > 0 else self.hidden_size]
        self._state_shapes: List[List[int]] = [h, [layers, self.hidden_size]] if self.mode == "LSTM" else [h]

    def _forward_eager(self, input, hx, lengths: Lengths):
        """forward outside TorchScript: a Tensor or PackedSequence input, hx as given (checked
        here), lengths in any `Lengths` form, autocast. Returns (output, h_n, c_n or None)."""
        lstm = self.mode == "LSTM"
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            if lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
                    raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
                h0, c0 = hx[0], hx[1]
            elif not isinstance(hx, Tensor):
                raise TypeError(f"GRU: hx must be a Tensor, got {type(hx).__name__}")
            else:
                h0 = hx
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError(f"{self.mode}: pass either a PackedSequence or lengths=, not both (a "
                                 "PackedSequence already carries its lengths)")
            data, batch_sizes, sorted_idx, unsorted_idx = input
            if data.dim() != 2:
                raise RuntimeError(f"{self.mode}: packed input data must have 2 dimensions, got {data.dim()}")
            # padded time-major, in the packed (sorted) batch order, run masked: torch.nn runs the
            # packed batch in sorted order with hx permuted into it
            input, lens = torch._VF._pad_packed_sequence(data, batch_sizes, False, 0.0, batch_sizes.shape[0])
        elif not isinstance(input, Tensor):
            raise TypeError(f"{self.mode}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        batch_first = self.batch_first and not packed
        weights = [getattr(self, name) for name in self._flat_weights_names]  # by name: parametrizations
        ac_dtype = _inputs.autocast_dtype(input)
        x, h0, c0, is_batched = _inputs.layer_inputs(self.mode, input, h0, c0, batch_first, self.input_size,
                                                     self._state_shapes, weights[0], ac_dtype is None)
        if packed:
            if sorted_idx is not None and h0 is not None:  # into the packed batch order
                h0 = h0.index_select(1, sorted_idx)
                c0 = None if c0 is None else c0.index_select(1, sorted_idx)
        else:
            lens = _inputs.lengths_tensor(lengths, x.shape[0], x.shape[1], x.device)
        if ac_dtype is not None:
            x, h0, c0 = _inputs.cast(x, ac_dtype), _inputs.cast(h0, ac_dtype), _inputs.cast(c0, ac_dtype)
            weights = [_inputs.cast(w, ac_dtype) for w in weights]
        y, states = traceable(run_stack)(x, h0, c0, weights, self._weight_slots, lstm, 2 if self.bidirectional else 1,
                                         lens, self.dropout, self.training, self.weight_drop, self.zoneout,
                                         self.zoneout_cell, self.recurrent_dropout)
        h_n, c_n = states[0], (states[1] if lstm else None)
        if not packed:
            return _inputs.layer_outputs(y, h_n, c_n, is_batched, batch_first)
        output = PackedSequence(torch._VF._pack_padded_sequence(y, lens, False)[0], batch_sizes, sorted_idx,
                                unsorted_idx)
        if unsorted_idx is not None:
            h_n = h_n.index_select(1, unsorted_idx)
            c_n = None if c_n is None else c_n.index_select(1, unsorted_idx)
        return output, h_n, c_n

    def _forward_script(self, input: Tensor, h0: Optional[Tensor], c0: Optional[Tensor],
                        lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """forward under TorchScript: the same checks and stack as _forward_eager, for a Tensor
        input, lengths as a tensor, in the parameters' dtype (no autocast)."""
        x, h0, c0, is_batched = _inputs.layer_inputs(self.mode, input, h0, c0, self.batch_first, self.input_size,
                                                     self._state_shapes, self._flat_weights[0], True)
        if lengths is not None:
            lengths = _inputs.check_lengths(lengths, x.shape[1], x.device)
        y, states = run_stack(x, h0, c0, self._flat_weights, self._weight_slots, self.mode == "LSTM",
                              2 if self.bidirectional else 1, lengths, self.dropout, self.training,
                              self.weight_drop, self.zoneout, self.zoneout_cell, self.recurrent_dropout)
        return _inputs.layer_outputs(y, states[0], states[1] if len(states) > 1 else None, is_batched,
                                     self.batch_first)


_RNN_ARGS_DOC = """
    Args:
        input_size: features per input step (I).
        hidden_size: features of the hidden state (H).
        num_layers: stacked layers, each one's output the next one's input (L). Default 1.
        bias: whether there are bias weights ``b_ih`` and ``b_hh``. Default True.
        batch_first: input and output as ``(B, T, feature)`` instead of ``(T, B, feature)``
            (the states are ``(L*D, B, ...)`` either way). Default False.
        dropout: probability of dropout on the outputs of every layer but the last, in
            training mode. Default 0.
        bidirectional: run every layer in both directions and concatenate them (D = 2, else
            1). Default False.{extra}
        device, dtype: of the parameters (float32, float64, float16 or bfloat16; CPU or CUDA).
        weight_drop: (fastrnn only, keyword-only) DropConnect on the recurrent weights (AWD-LSTM's
            weight drop): in training mode every forward call zeroes each element of every
            ``weight_hh_l{{k}}`` with this probability and scales the rest by 1 / (1 - p), one
            mask per layer and direction shared by all steps and batch entries; gradients reach
            ``weight_hh`` through the mask. Eval uses the weights as they are. Default 0 (off).
        zoneout: (fastrnn only, keyword-only) zoneout on the hidden state h (after the
            projection): in training each element of h_t keeps its previous value h_{{t-1}} with
            this probability (a fresh draw every step and element), else takes the cell's new
            value; the output is the zoned h_t. Eval takes the expectation
            p h_{{t-1}} + (1 - p) h~_t. Default 0 (off).{zoneout_cell}
        recurrent_dropout: (fastrnn only, keyword-only) variational dropout on h_{{t-1}} where
            it enters the recurrent product ``W_hh (m * h_{{t-1}})``: in training one mask per
            forward call, layer and direction, of shape (B, {out}), values 0 or 1 / (1 - p),
            the same at every step; the state itself and the outputs are not masked. Eval: off.
            Default 0 (off).
        layer_norm: (fastrnn only, keyword-only) layer-normalised gates (Ba et al. 2016):
            gates = LN(W_ih x; w_ln_ih) + b_ih + LN(W_hh h; w_ln_hh) + b_hh, LN over all G*H
            features of an entry (eps 1e-5, biased variance); an LSTM's output is
            ``o * tanh(LN(c; w_ln_c) + b_ln_c)`` with the state c itself un-normalised; a GRU's n
            takes LN(W_hn h) + b_hn inside the reset product. Adds the parameters below.
            Default False.

    Parameters, torch.nn's names, shapes, order and initialisation U(-1/sqrt(H), 1/sqrt(H)),
    so ``state_dict`` loads both ways; G = {gates}:
        ``weight_ih_l{{k}}``: ``(G*H, I)`` for k = 0, ``(G*H, D*{out})`` above
        ``weight_hh_l{{k}}``: ``(G*H, {out})``
        ``bias_ih_l{{k}}``, ``bias_hh_l{{k}}``: ``(G*H,)`` (with bias){hr}
        with layer_norm, after those: ``weight_ln_ih_l{{k}}``, ``weight_ln_hh_l{{k}}``: ``(G*H,)``,
        ones at init{ln}
    and a ``_reverse`` twin of each for the backward direction of a bidirectional layer.
"""

_RNN_FORWARD_DOC = """Run the {name} over a whole sequence.

        Shapes: T steps, B batch entries, I = input_size, H = hidden_size, L = num_layers,
        D = 2 if bidirectional else 1{p_def}.

        Args:
            input: ``(T, B, I)``, ``(B, T, I)`` with batch_first, ``(T, I)`` unbatched, or a
                PackedSequence (data ``(sum of lengths, I)``, from ``pack_padded_sequence``).
            hx: the initial state, zeros when None:
                {hx_doc};
                without the B dimension for unbatched input; with a PackedSequence, in the
                original batch order (as torch.nn).
            lengths: (fastrnn only, with a Tensor input) one length per batch entry,
                ``1 <= L_b <= T``: a list, tuple or integer tensor of shape ``(B,)``, on the CPU
                or on the input's device; keyword or third positional argument. Entry b then
                runs steps 0 .. L_b-1 only (the backward direction from L_b-1 down to 0): its
                outputs at later steps are zero, its final state is the one after its last
                valid step and its padded inputs get no gradient. That is what torch.nn gives
                for ``pack_padded_sequence(input, lengths, enforce_sorted=False)``, without
                the packing and unpacking.

        Returns:
            ``{returns}``:
            output: ``(T, B, D*{out})``, ``(B, T, D*{out})`` with batch_first, ``(T, D*{out})``
                unbatched, or a PackedSequence when the input is one: the last layer's output
                at every step, both directions concatenated.
            {final}:
                the final state of every layer and direction (layer by layer, forward
                direction first); without the B dimension for unbatched input.

        Differences from torch.nn: the ``lengths`` argument; no cuDNN weight flattening
        (``flatten_parameters`` does nothing); under autocast the computation runs in the
        autocast dtype with fp32 accumulation. Under TorchScript (``torch.jit.script``) the
        input must be a Tensor, ``lengths`` a tensor, and autocast is not applied.
        """


class LSTM(_RNNBase, nn.LSTM):
    __doc__ = """Multi-layer (bidirectional) LSTM over fastrnn's fused kernels, a drop-in for torch.nn.LSTM.

    Same constructor, parameters, forward signature, outputs and errors as torch.nn.LSTM,
    plus ``forward(..., lengths=...)``: masked variable-length sequences without packing. Each
    layer and direction is one fused op call; stacking, bidirectionality, batch_first,
    dropout, PackedSequence and autocast are handled in Python. An nn.LSTM: under torch.compile,
    set ``torch._dynamo.config.allow_rnn = True`` for a graph without a break at it (dynamo's rule
    for every nn.LSTM).

    Per step, with gates i, f, g, o::

        i, f, o = sigmoid(W_i* x + b_i* + W_h* h + b_h*),  g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        c' = f * c + i * g,   h' = o * tanh(c')   (h' = W_hr (o * tanh(c')) with proj_size)
""" + _RNN_ARGS_DOC.format(
        extra="\n        proj_size: if > 0, the hidden state's size P: h is projected to it after every "
              "step\n            with ``weight_hr``. Default 0 (P = H).",
        out="P", hr="\n        ``weight_hr_l{k}``: ``(P, H)`` (with proj_size)", gates="4 (gates i, f, g, o)",
        zoneout_cell="\n        zoneout_cell: (fastrnn only, keyword-only) zoneout on the cell state c, the same way."
                     " Default 0\n            (off).",
        ln="; ``weight_ln_c_l{k}``, ``bias_ln_c_l{k}``: ``(H,)``, ones and zeros at init")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, weight_drop: float = 0.0, zoneout: float = 0.0,
                 zoneout_cell: float = 0.0, recurrent_dropout: float = 0.0, layer_norm: bool = False) -> None:
        """Build the parameters (see the class docstring for the arguments); torch.nn.LSTM's checks."""
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, weight_drop, zoneout, zoneout_cell,
                         recurrent_dropout, layer_norm)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None,
                lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if torch.jit.is_scripting():
            h0: Optional[Tensor] = None
            c0: Optional[Tensor] = None
            if hx is not None:
                h0, c0 = hx[0], hx[1]
            output, h_n, c_n = self._forward_script(input, h0, c0, lengths)
            assert c_n is not None
            return output, (h_n, c_n)
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, (input, hx), lengths)
        output, h_n, c_n = self._forward_eager(input, hx, lengths)
        return output, (h_n, c_n)

    forward.__doc__ = _RNN_FORWARD_DOC.format(
        name="LSTM", p_def=", P = proj_size if > 0 else H", out="P",
        hx_doc="``(h_0, c_0)``: h_0 ``(L*D, B, P)``, c_0 ``(L*D, B, H)``",
        returns="(output, (h_n, c_n))", final="h_n ``(L*D, B, P)``, c_n ``(L*D, B, H)``")


class GRU(_RNNBase, nn.GRU):
    __doc__ = """Multi-layer (bidirectional) GRU over fastrnn's fused kernels, a drop-in for torch.nn.GRU.

    Same constructor, parameters, forward signature, outputs and errors as torch.nn.GRU, plus
    ``forward(..., lengths=...)``: masked variable-length sequences without packing. Each layer
    and direction is one fused op call. ``proj_size`` is refused with ValueError, as torch.nn.GRU
    does. An nn.GRU: under torch.compile, set ``torch._dynamo.config.allow_rnn = True`` for a
    graph without a break at it (dynamo's rule for every nn.GRU).

    Per step, with gates r, z, n::

        r, z = sigmoid(W_i* x + b_i* + W_h* h + b_h*),  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h
""" + _RNN_ARGS_DOC.format(extra="", out="H", hr="", gates="3 (gates r, z, n)", zoneout_cell="", ln="")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, weight_drop: float = 0.0, zoneout: float = 0.0,
                 recurrent_dropout: float = 0.0, layer_norm: bool = False, **kwargs) -> None:
        """Build the parameters (see the class docstring for the arguments); torch.nn.GRU's checks."""
        if "proj_size" in kwargs:  # torch.nn.GRU's error, for the argument LSTM has
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU.__init__() got an unexpected keyword argument '{next(iter(kwargs))}'")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, weight_drop, zoneout, 0.0, recurrent_dropout, layer_norm)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None,
                lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if torch.jit.is_scripting():
            output, h_n, _ = self._forward_script(input, hx, None, lengths)
            return output, h_n
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, (input, hx), lengths)
        output, h_n, _ = self._forward_eager(input, hx, lengths)
        return output, h_n

    forward.__doc__ = _RNN_FORWARD_DOC.format(
        name="GRU", p_def="", out="H", hx_doc="h_0 ``(L*D, B, H)``", returns="(output, h_n)",
        final="h_n ``(L*D, B, H)``")

"""Drop-in replacements for torch.nn.LSTM / GRU / LSTMCell / GRUCell over fastrnn.functional.

Constructors, parameter names, shapes, registration order and initialisation are torch.nn's, so
``load_state_dict`` works both ways. Multi-layer stacking, bidirectionality, batch_first,
dropout between layers, PackedSequence and autocast are handled here in Python; every layer and
direction is one fused op call. ``forward`` also takes ``lengths=`` (masked variable lengths
without packing): outputs at padded steps are zero and the final state of each entry is the one
after its last valid step, which is what a PackedSequence gives, without the packing.

The forward code uses only static Python control flow (loops over layers and directions, shape
checks), so dynamo traces it without graph breaks, into the fused ops.

TorchScript: ``torch.jit.script`` compiles a TorchScript-only branch of each ``forward`` (Tensor
input, ``lengths`` as a tensor, no autocast), ``torch.jit.trace`` records the eager path with the
op calls inside one scripted function (see ``_traceable``); both run the same fused ops.

Class hierarchy: each class subclasses its torch.nn namesake (``nn.LSTM``, ``nn.GRU``,
``nn.LSTMCell``, ``nn.GRUCell``, so ``nn.RNNBase`` / ``nn.RNNCellBase``), so code that finds RNNs
by type finds these. torch.compile therefore treats LSTM / GRU as it treats every nn.LSTM /
nn.GRU: dynamo breaks the graph at them unless ``torch._dynamo.config.allow_rnn`` is set; with it,
``fullgraph=True`` works and the graph holds fastrnn's ops.
"""
import numbers
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell"]

Lengths = Optional[Union[Tensor, Sequence[int]]]


def _autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast would run an RNN in for x's device, or None when autocast is off."""
    device_type = x.device.type
    # only the device types fastrnn runs on (asking about e.g. "meta" raises)
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _cast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    # autocast leaves float64 alone (ATen's eligibility rule); mirror it
    if t is None or dtype is None or t.dtype == torch.float64 or t.dtype == dtype:
        return t
    return t.to(dtype)


def _check_state(name: str, t: Tensor, expected: Tuple[int, ...], x: Tensor, check_dtype: bool) -> None:
    if tuple(t.shape) != expected:
        raise RuntimeError(f"Expected {name} size {expected}, got {list(t.shape)}")
    if t.device != x.device:
        raise RuntimeError(f"Input and hidden tensors are not at the same device, found input tensor at "
                           f"{x.device} and {name} tensor at {t.device}")
    if check_dtype and t.dtype != x.dtype:
        raise RuntimeError(f"Expected {name} dtype {x.dtype} (the input's), got {t.dtype}")


# --------------------------------------------------------------------------------------------
# The op calls, written once for eager, TorchScript and torch.jit.trace. Eager runs go through
# fastrnn.functional (which skips the autograd kernel when nothing needs a gradient);
# TorchScript cannot express that shortcut, so scripted code calls the op objects. Only
# TorchScript types in the signatures: these functions are compiled with torch.jit.script.


def _needs_grad(tensors: List[Optional[Tensor]]) -> bool:
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def _lstm_layer(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor], lengths: Optional[Tensor],
                reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """functional.lstm_layer (same shapes), callable from TorchScript."""
    if not torch.jit.is_scripting():
        return functional.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse, w_hr=w_hr)
    H = w_hh.shape[0] // 4
    if h0 is None:
        h0 = x.new_zeros([x.shape[1], H if w_hr is None else w_hr.shape[0]])
    if c0 is None:
        c0 = x.new_zeros([x.shape[1], H])
    save = _needs_grad([x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr])
    y, h, c, _ = torch.ops.fastrnn.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save)
    return y, h, c


def _gru_layer(x: Tensor, h0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
               b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool) -> Tuple[Tensor, Tensor]:
    """functional.gru_layer (same shapes), callable from TorchScript."""
    if not torch.jit.is_scripting():
        return functional.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse)
    if h0 is None:
        h0 = x.new_zeros([x.shape[1], w_hh.shape[1]])
    save = _needs_grad([x, h0, w_ih, w_hh, b_ih, b_hh])
    y, h, _ = torch.ops.fastrnn.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save)
    return y, h


def _lstm_cell(x: Tensor, hx: Optional[Tensor], cx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """functional.lstm_cell: x [B, I], hx / cx [B, H] -> (h', c'), callable from TorchScript."""
    if not torch.jit.is_scripting():
        return functional.lstm_cell(x, hx, cx, w_ih, w_hh, b_ih, b_hh)
    _, h, c = _lstm_layer(x.unsqueeze(0), hx, cx, w_ih, w_hh, b_ih, b_hh, None, None, False)
    return h, c


def _gru_cell(x: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor]) -> Tensor:
    """functional.gru_cell: x [B, I], hx [B, H] -> h', callable from TorchScript."""
    if not torch.jit.is_scripting():
        return functional.gru_cell(x, hx, w_ih, w_hh, b_ih, b_hh)
    return _gru_layer(x.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh, None, False)[1]


def _stack(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], weights: List[Tensor], lstm: bool,
           num_layers: int, num_directions: int, has_bias: bool, has_proj: bool, lengths: Optional[Tensor],
           dropout: float, training: bool) -> Tuple[Tensor, List[Tensor]]:
    """All layers and directions over time-major x [T, B, I]; weights in _flat_weights_names
    order. h0 [L*D, B, P], c0 [L*D, B, H] or None. Returns (y [T, B, D*P], [h_n] or, for the
    LSTM, [h_n, c_n]) (a list: a trace cannot record a None output)."""
    per = 2 + (2 if has_bias else 0) + (1 if has_proj else 0)  # weights per layer and direction
    h_out: List[Tensor] = []
    c_out: List[Tensor] = []
    for layer in range(num_layers):
        if layer > 0 and dropout > 0 and training:
            # nn.LSTM's semantics: dropout on the output of every layer but the last
            x = F.dropout(x, dropout, True)
        ys: List[Tensor] = []
        for direction in range(num_directions):
            k = layer * num_directions + direction
            w = weights[k * per:(k + 1) * per]
            b_ih: Optional[Tensor] = w[2] if has_bias else None
            b_hh: Optional[Tensor] = w[3] if has_bias else None
            hk: Optional[Tensor] = None if h0 is None else h0[k]
            if lstm:
                w_hr: Optional[Tensor] = w[per - 1] if has_proj else None
                ck: Optional[Tensor] = None if c0 is None else c0[k]
                y, h, c = _lstm_layer(x, hk, ck, w[0], w[1], b_ih, b_hh, w_hr, lengths, direction == 1)
                c_out.append(c)
            else:
                y, h = _gru_layer(x, hk, w[0], w[1], b_ih, b_hh, lengths, direction == 1)
            h_out.append(h)
            ys.append(y)
        x = ys[0] if num_directions == 1 else torch.cat(ys, dim=2)
    return x, ([torch.stack(h_out, 0), torch.stack(c_out, 0)] if lstm else [torch.stack(h_out, 0)])


def _fx_leaf(module: nn.Module, args: tuple, lengths=None):
    """The call recorded as one ``call_module`` node of the torch.fx.symbolic_trace in progress
    (args[0] is its Proxy), as fx records torch.nn's own RNNs and cells: fx keeps a module as
    a leaf by its class's Python module name (torch.nn.*), so it would trace into fastrnn's
    forward, whose shape checks a Proxy cannot pass."""
    tracer = args[0].tracer
    kwargs = {} if lengths is None else {"lengths": lengths}
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, kwargs)


_scripted: Dict[str, object] = {}


def _traceable(fn):
    """fn, or its TorchScript version while torch.jit.trace records. A trace then holds one call
    to the scripted function, which decides at run time whether to save activations for
    backward (that depends on grad mode): traced Python would bake in this call's choice, and
    the trace checker, re-running under no_grad, would see a different graph. The ONNX
    exporter traces too, but needs the op calls themselves in the graph (fastrnn.onnx maps
    each to an ONNX LSTM / GRU node), and it exports inference: there fn is traced as it is."""
    if torch._C._get_tracing_state() is None or torch.onnx.is_in_onnx_export():  # not tracing, or ONNX
        return fn
    scripted = _scripted.get(fn.__name__)
    if scripted is None:
        scripted = _scripted[fn.__name__] = torch.jit.script(fn)
    return scripted


class _RNNBase(nn.RNNBase):
    """Shared by LSTM (4 gates, optional projection) and GRU (3 gates).

    The subclasses are nn.LSTM / nn.GRU too (listed after this base, so these methods win).
    From nn.RNNBase come ``all_weights``, ``reset_parameters`` (the same init), ``extra_repr``,
    pickling (``__getstate__`` / ``__setstate__``) and the ``_flat_weights`` list, which its
    ``__setattr__`` and ``_apply`` (``.to()`` and friends) keep equal to the parameters;
    ``flatten_parameters`` is overridden to do nothing, so cuDNN's weight flattening never runs.
    The forward pass reads the parameters by name, not through ``_flat_weights``."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        # nn.RNNBase.__init__ is not run: it builds the parameters with checks and messages of
        # its own; this builds the same parameters, in the same order, with the same init
        nn.Module.__init__(self)
        # the same checks, in the same order, as torch.nn.RNNBase
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of "
                             f"an element being zeroed, got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero "
                          f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        for name, value, kind in (("bias", bias, bool), ("batch_first", batch_first, bool),
                                  ("input_size", input_size, int), ("hidden_size", hidden_size, int),
                                  ("num_layers", num_layers, int), ("proj_size", proj_size, int)):
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"{name} should be of type {kind.__name__}, got: {type(value).__name__}")
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

        factory = {"device": device, "dtype": dtype}
        gate_size = (4 if mode == "LSTM" else 3) * hidden_size
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
                names = []
                for base, shape in shapes:
                    name = f"{base}_l{layer}{suffix}"
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self._init_flat_weights()  # _flat_weights and its weak references, as nn.RNNBase keeps them
        self.reset_parameters()

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels read each weight where it is (kept for torch.nn compatibility)."""

    def __setstate__(self, state) -> None:
        # modules pickled by fastrnn <= 0.1 (not an nn.RNNBase then) lack the _flat_weights list
        if "_flat_weights" not in state:
            state = dict(state)
            state["_flat_weights"] = [state["_parameters"].get(n) for n in state["_flat_weights_names"]]
        super().__setstate__(state)

    def _weights(self, dtype: Optional[torch.dtype]) -> List[Tensor]:
        """The parameters in _flat_weights_names order (read by name, so reassigned or
        parametrized weights are seen), cast to the autocast dtype when one is given."""
        return [_cast(getattr(self, name), dtype) for name in self._flat_weights_names]

    def _lengths_tensor(self, lengths, x: Tensor) -> Tensor:
        """Validate user lengths against x [T, B, I] (shape checks only for tensors: their values
        are checked by the op, which does so without a host sync where it can)."""
        T, B = x.shape[0], x.shape[1]
        if isinstance(lengths, Tensor):
            if lengths.dim() != 1 or lengths.shape[0] != B:
                raise ValueError(f"lengths must hold one length per batch entry: expected shape ({B},), "
                                 f"got {tuple(lengths.shape)}")
            if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
                raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
            if lengths.device.type != "cpu" and lengths.device != x.device:
                raise ValueError(f"lengths must be on the CPU or on the input's device ({x.device}), "
                                 f"got {lengths.device}")
            return lengths.to(torch.int64)
        if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__"):
            raise TypeError(f"lengths must be a sequence of ints or an integer tensor, got "
                            f"{type(lengths).__name__}")
        values = [int(v) for v in lengths]
        if len(values) != B:
            raise ValueError(f"lengths must hold one length per batch entry: expected {B}, got {len(values)}")
        for b, v in enumerate(values):
            if v < 1 or v > T:
                raise ValueError(f"lengths[{b}] = {v} is out of range: every length must be in [1, {T}] "
                                 f"(the sequence length)")
        return torch.tensor(values, dtype=torch.int64)

    def _forward_impl(self, input, hx, lengths: Lengths):
        lstm = self.mode == "LSTM"
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        weight = getattr(self, self._flat_weights_names[0])
        if packed:
            if lengths is not None:
                raise ValueError(f"{self.mode}: pass either a PackedSequence or lengths=, not both (a "
                                 "PackedSequence already carries its lengths)")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if data.dim() != 2:
                raise RuntimeError(f"{self.mode}: packed input data must have 2 dimensions, got {data.dim()}")
            x = data
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{self.mode}: input must be a Tensor or a PackedSequence, got "
                                f"{type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{self.mode}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            x = input
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.shape[-1]}")
        ac_dtype = _autocast_dtype(x)
        if ac_dtype is None and x.dtype != weight.dtype:
            raise ValueError(f"{self.mode} input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
                             f"Convert input: input.to({weight.dtype}), or convert model: model.to({x.dtype})")
        if x.device != weight.device:
            raise RuntimeError(f"{self.mode}: input is on {x.device} but the module's parameters are on "
                               f"{weight.device}")

        is_batched = True
        sorted_idx: Optional[Tensor] = None
        unsorted_idx: Optional[Tensor] = None
        lens: Optional[Tensor] = None
        if packed:
            # pad (time-major, in the packed/sorted batch order) and run masked, as torch.nn runs the
            # packed batch in sorted order with hx permuted into it
            x, lens = torch._VF._pad_packed_sequence(data, batch_sizes, False, 0.0, batch_sizes.shape[0])
            sorted_idx, unsorted_idx = sorted_indices, unsorted_indices
        else:
            is_batched = x.dim() == 3
            if not is_batched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
        B = x.shape[1]

        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            if lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
                    raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got "
                                    f"{type(hx).__name__}")
                h0, c0 = hx[0], hx[1]
                want = 3 if is_batched else 2
                if h0.dim() != want or c0.dim() != want:
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                       f"({h0.dim()}-D, {c0.dim()}-D) tensors")
            else:
                if not isinstance(hx, Tensor):
                    raise TypeError(f"GRU: hx must be a Tensor, got {type(hx).__name__}")
                h0 = hx
                want = 3 if is_batched else 2
                if h0.dim() != want:
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {h0.dim()}-D tensor")
            if not is_batched:
                h0 = h0.unsqueeze(1)
                c0 = None if c0 is None else c0.unsqueeze(1)
            check_dtype = ac_dtype is None
            _check_state("hidden[0]" if lstm else "hidden", h0,
                         (self.num_layers * num_directions, B, real_hidden), x, check_dtype)
            if c0 is not None:
                _check_state("hidden[1]", c0, (self.num_layers * num_directions, B, self.hidden_size), x,
                             check_dtype)
            if sorted_idx is not None:
                h0 = h0.index_select(1, sorted_idx)
                c0 = None if c0 is None else c0.index_select(1, sorted_idx)

        if lengths is not None:
            lens = self._lengths_tensor(lengths, x)

        x = _cast(x, ac_dtype)
        h0 = _cast(h0, ac_dtype)
        c0 = _cast(c0, ac_dtype)
        y, states = _traceable(_stack)(x, h0, c0, self._weights(ac_dtype), lstm, self.num_layers, num_directions,
                                       self.bias, self.proj_size > 0, lens, self.dropout, self.training)
        h_n, c_n = states[0], (states[1] if lstm else None)

        if packed:
            out_data, _ = torch._VF._pack_padded_sequence(y, lens, False)
            output = PackedSequence(out_data, batch_sizes, sorted_idx, unsorted_idx)
            if unsorted_idx is not None:
                h_n = h_n.index_select(1, unsorted_idx)
                c_n = None if c_n is None else c_n.index_select(1, unsorted_idx)
        elif not is_batched:
            output = y.squeeze(1)
            h_n = h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        else:
            output = y.transpose(0, 1) if self.batch_first else y
        return output, h_n, c_n

    def _forward_script(self, input: Tensor, h0: Optional[Tensor], c0: Optional[Tensor],
                        lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """forward under TorchScript: a Tensor input (not a PackedSequence), lengths as a tensor,
        the parameters' dtype (no autocast). The ops check dtypes, devices and lengths values;
        the state shapes are checked here (each op call sees one layer's slice only)."""
        is_batched = input.dim() == 3
        if input.dim() != 2 and not is_batched:
            raise ValueError(f"{self.mode}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {input.shape[-1]}")
        x = input.transpose(0, 1) if is_batched and self.batch_first else input
        if not is_batched:
            x = x.unsqueeze(1)
            h0 = None if h0 is None else h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        num_directions = 2 if self.bidirectional else 1
        layers, B = self.num_layers * num_directions, x.shape[1]
        if h0 is not None and h0.shape != [layers, B, self.proj_size if self.proj_size > 0 else self.hidden_size]:
            raise RuntimeError(f"{self.mode}: hidden state h_0 has shape {h0.shape} for input {input.shape}")
        if c0 is not None and c0.shape != [layers, B, self.hidden_size]:
            raise RuntimeError(f"{self.mode}: cell state c_0 has shape {c0.shape} for input {input.shape}")
        if lengths is not None:
            if lengths.dim() != 1 or lengths.shape[0] != B:
                raise ValueError(f"lengths must hold one length per batch entry: expected shape ({B},), "
                                 f"got {lengths.shape}")
            if not lengths.is_floating_point() and not lengths.is_complex() and lengths.dtype != torch.bool:
                lengths = lengths.to(torch.int64)  # the op refuses the rest
        lstm = self.mode == "LSTM"
        y, states = _stack(x, h0, c0, self._flat_weights, lstm, self.num_layers, num_directions, self.bias,
                           self.proj_size > 0, lengths, self.dropout, self.training)
        h_n, c_n = states[0], (states[1] if lstm else None)
        if not is_batched:
            return y.squeeze(1), h_n.squeeze(1), (None if c_n is None else c_n.squeeze(1))
        return (y.transpose(0, 1) if self.batch_first else y), h_n, c_n


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

    Parameters, torch.nn's names, shapes, order and initialisation U(-1/sqrt(H), 1/sqrt(H)),
    so ``state_dict`` loads both ways; G = {gates}:
        ``weight_ih_l{{k}}``: ``(G*H, I)`` for k = 0, ``(G*H, D*{out})`` above
        ``weight_hh_l{{k}}``: ``(G*H, {out})``
        ``bias_ih_l{{k}}``, ``bias_hh_l{{k}}``: ``(G*H,)`` (with bias){hr}
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
        out="P", hr="\n        ``weight_hr_l{k}``: ``(P, H)`` (with proj_size)", gates="4 (gates i, f, g, o)")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        """Build the parameters (see the class docstring for the arguments); torch.nn.LSTM's checks."""
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)

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
            return _fx_leaf(self, (input, hx), lengths)
        output, h_n, c_n = self._forward_impl(input, hx, lengths)
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
""" + _RNN_ARGS_DOC.format(extra="", out="H", hr="", gates="3 (gates r, z, n)")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, **kwargs) -> None:
        """Build the parameters (see the class docstring for the arguments); torch.nn.GRU's checks."""
        if "proj_size" in kwargs:  # torch.nn.GRU's error, for the argument LSTM has
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU.__init__() got an unexpected keyword argument '{next(iter(kwargs))}'")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None,
                lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if torch.jit.is_scripting():
            output, h_n, _ = self._forward_script(input, hx, None, lengths)
            return output, h_n
        if isinstance(input, torch.fx.Proxy):
            return _fx_leaf(self, (input, hx), lengths)
        output, h_n, _ = self._forward_impl(input, hx, lengths)
        return output, h_n

    forward.__doc__ = _RNN_FORWARD_DOC.format(
        name="GRU", p_def="", out="H", hx_doc="h_0 ``(L*D, B, H)``", returns="(output, h_n)",
        final="h_n ``(L*D, B, H)``")


# --------------------------------------------------------------------------------------------
# cells


class _CellBase(nn.RNNCellBase):
    """Shared by LSTMCell and GRUCell. nn.RNNCellBase.__init__ is not run: this builds the same
    parameters after checking the arguments; reset_parameters and extra_repr are nn.RNNCellBase's."""

    _name = ""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, gates: int, device=None,
                 dtype=None) -> None:
        nn.Module.__init__(self)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        # like torch.nn's cells: sizes of 0 are fine (functional runs them without the kernels),
        # negative ones fail in torch.empty below
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty((gates * hidden_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gates * hidden_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    @staticmethod
    def _fast_path_ok(input: Tensor) -> bool:
        """Whether a call may go straight to the op, whose own checks cover shapes, dtypes and
        devices (on failure _prepare then raises torch.nn's error). Cells run once per token and
        their Python overhead is paid with caches just flushed by the weight reads, where it
        measured ~10x its warm cost: a 2-D input outside autocast, compilation and tracing
        skips it."""
        # (is_compiling first: under dynamo the rest is never traced; one any-autocast query
        # costs a third of the two per-device ones; _get_tracing_state is torch.jit.is_tracing)
        return (type(input) is Tensor and input.dim() == 2 and not torch.compiler.is_compiling()
                and not torch._C._is_any_autocast_enabled() and torch._C._get_tracing_state() is None)

    def _unbatched_script(self, input: Tensor) -> bool:
        """TorchScript's input check: whether input [I] is unbatched (else [B, I])."""
        if input.dim() != 1 and input.dim() != 2:
            raise ValueError(f"Expected input to be 1D or 2D, got {input.dim()}D instead")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.shape[-1]} "
                               f"expected {self.input_size}")
        return input.dim() == 1

    def _prepare(self, input: Tensor, states: List[Optional[Tensor]]):
        """Checks, unbatched -> batched, autocast. Returns (x, states, params, is_batched).

        Cells run once per generated token, so this stays lean: each attribute and device is
        read once, and messages are only formatted on failure."""
        if not isinstance(input, Tensor):
            raise TypeError(f"{self._name}: input must be a Tensor, got {type(input).__name__}")
        dim = input.dim()
        if dim not in (1, 2):
            raise ValueError(f"{self._name}: Expected input to be 1D or 2D, got {dim}D instead")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"{self._name}: input has inconsistent input_size: got {input.shape[-1]} "
                               f"expected {self.input_size}")
        params = self._parameters
        w_ih = params["weight_ih"]
        is_batched = dim == 2
        x = input if is_batched else input.unsqueeze(0)
        ac_dtype = _autocast_dtype(x)
        if ac_dtype is None and x.dtype != w_ih.dtype:
            raise ValueError(f"{self._name}: input dtype ({x.dtype}) does not match weight dtype "
                             f"({w_ih.dtype})")
        device = x.device
        if device != w_ih.device:
            raise RuntimeError(f"{self._name}: input is on {device} but the parameters are on {w_ih.device}")
        expected = (x.shape[0], self.hidden_size)
        out: List[Optional[Tensor]] = []
        for i, s in enumerate(states):
            if s is not None:
                if s.dim() != dim:
                    raise ValueError(f"{self._name}: Expected hx[{i}] to be {dim}D like the input, "
                                     f"got {s.dim()}D instead")
                if not is_batched:
                    s = s.unsqueeze(0)
                if s.shape != expected or s.device != device or (ac_dtype is None and s.dtype != x.dtype):
                    _check_state(f"hx[{i}]", s, expected, x, ac_dtype is None)
                if ac_dtype is not None:
                    s = _cast(s, ac_dtype)
            out.append(s)
        weights = [params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"]]
        if ac_dtype is not None:
            weights = [_cast(w, ac_dtype) for w in weights]
            x = _cast(x, ac_dtype)
        return x, out, weights, is_batched


class LSTMCell(_CellBase, nn.LSTMCell):
    """One LSTM step over fastrnn's fused kernels, a drop-in for (and an instance of) torch.nn.LSTMCell.

    Same constructor, parameters, forward signature, outputs and errors as torch.nn.LSTMCell;
    the math of one step of fastrnn.LSTM (gates i, f, g, o). Meant for step-by-step decoding:
    a batched call on a Tensor goes straight to the fused op.

    Args:
        input_size: features of the input (I).
        hidden_size: features of the hidden and cell state (H).
        bias: whether there are bias weights ``bias_ih`` and ``bias_hh``. Default True.
        device, dtype: of the parameters (float32, float64, float16 or bfloat16; CPU or CUDA).

    Parameters (torch.nn's names, shapes and initialisation, U(-1/sqrt(H), 1/sqrt(H))):
    ``weight_ih`` [4H, I], ``weight_hh`` [4H, H], ``bias_ih`` and ``bias_hh`` [4H] (None
    without bias).
    """

    _name = "LSTMCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        """Build the parameters (see the class docstring for the arguments); torch.nn.LSTMCell's checks."""
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        """One step.

        Args:
            input: ``(B, I)``, or ``(I,)`` unbatched.
            hx: ``(h, c)``, each ``(B, H)`` (``(H,)`` unbatched); zeros when None.

        Returns:
            ``(h', c')``, each ``(B, H)`` (``(H,)`` unbatched).

        Differences from torch.nn: under autocast the step runs in the autocast dtype with fp32
        accumulation. Under TorchScript autocast is not applied.
        """
        if torch.jit.is_scripting():
            unbatched = self._unbatched_script(input)
            h0: Optional[Tensor] = None
            c0: Optional[Tensor] = None
            if hx is not None:
                h0, c0 = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if unbatched else (hx[0], hx[1])
            h, c = _lstm_cell(input.unsqueeze(0) if unbatched else input, h0, c0, self.weight_ih, self.weight_hh,
                              self.bias_ih, self.bias_hh)
            return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)
        return self._forward_eager(input, hx)

    def _forward_eager(self, input, hx):
        # (a method of its own: TorchScript's parser refuses the try statement even in a branch
        # it does not compile)
        if self._fast_path_ok(input) and (hx is None or (type(hx) is tuple and len(hx) == 2 and
                                                         isinstance(hx[0], Tensor) and isinstance(hx[1], Tensor))):
            h0, c0 = (None, None) if hx is None else hx
            p = self._parameters
            try:
                return functional.lstm_cell(input, h0, c0, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
            except (RuntimeError, TypeError):
                self._prepare(input, [h0, c0])  # raises torch.nn's error for what the op refused
                raise
        if isinstance(input, torch.fx.Proxy):
            return _fx_leaf(self, (input, hx))
        if hx is None:
            states: List[Optional[Tensor]] = [None, None]
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
                raise TypeError(f"LSTMCell: hx must be a tuple (h, c) of two tensors, got {type(hx).__name__}")
            states = [hx[0], hx[1]]
        x, (h0, c0), (w_ih, w_hh, b_ih, b_hh), is_batched = self._prepare(input, states)
        h, c = _traceable(_lstm_cell)(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(_CellBase, nn.GRUCell):
    """One GRU step over fastrnn's fused kernels, a drop-in for (and an instance of) torch.nn.GRUCell.

    Same constructor, parameters, forward signature, outputs and errors as torch.nn.GRUCell;
    the math of one step of fastrnn.GRU (gates r, z, n). A batched call on a Tensor goes
    straight to the fused op.

    Args:
        input_size: features of the input (I).
        hidden_size: features of the hidden state (H).
        bias: whether there are bias weights ``bias_ih`` and ``bias_hh``. Default True.
        device, dtype: of the parameters (float32, float64, float16 or bfloat16; CPU or CUDA).

    Parameters (torch.nn's names, shapes and initialisation, U(-1/sqrt(H), 1/sqrt(H))):
    ``weight_ih`` [3H, I], ``weight_hh`` [3H, H], ``bias_ih`` and ``bias_hh`` [3H] (None
    without bias).
    """

    _name = "GRUCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        """Build the parameters (see the class docstring for the arguments); torch.nn.GRUCell's checks."""
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        """One step.

        Args:
            input: ``(B, I)``, or ``(I,)`` unbatched.
            hx: ``(B, H)`` (``(H,)`` unbatched); zeros when None.

        Returns:
            h': ``(B, H)`` (``(H,)`` unbatched).

        Differences from torch.nn: under autocast the step runs in the autocast dtype with fp32
        accumulation. Under TorchScript autocast is not applied.
        """
        if torch.jit.is_scripting():
            unbatched = self._unbatched_script(input)
            h0 = None if hx is None else (hx.unsqueeze(0) if unbatched else hx)
            h = _gru_cell(input.unsqueeze(0) if unbatched else input, h0, self.weight_ih, self.weight_hh,
                          self.bias_ih, self.bias_hh)
            return h.squeeze(0) if unbatched else h
        return self._forward_eager(input, hx)

    def _forward_eager(self, input, hx):
        if self._fast_path_ok(input) and (hx is None or type(hx) is Tensor):
            p = self._parameters
            try:
                return functional.gru_cell(input, hx, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
            except (RuntimeError, TypeError):
                self._prepare(input, [hx])  # raises torch.nn's error for what the op refused
                raise
        if isinstance(input, torch.fx.Proxy):
            return _fx_leaf(self, (input, hx))
        if hx is not None and not isinstance(hx, Tensor):
            raise TypeError(f"GRUCell: hx must be a Tensor, got {type(hx).__name__}")
        x, (h0,), (w_ih, w_hh, b_ih, b_hh), is_batched = self._prepare(input, [hx])
        h = _traceable(_gru_cell)(x, h0, w_ih, w_hh, b_ih, b_hh)
        return h if is_batched else h.squeeze(0)

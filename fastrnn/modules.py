"""Drop-in replacements for torch.nn.LSTM / GRU / LSTMCell / GRUCell over fastrnn.functional.

Constructors, parameter names, shapes, registration order and initialisation are torch.nn's, so
``load_state_dict`` works both ways. Multi-layer stacking, bidirectionality, batch_first,
dropout between layers, PackedSequence and autocast are handled here in Python; every layer and
direction is one fused op call. ``forward`` also takes ``lengths=`` (masked variable lengths
without packing): outputs at padded steps are zero and the final state of each entry is the one
after its last valid step, which is what a PackedSequence gives, without the packing.

The forward code uses only static Python control flow (loops over layers and directions, shape
checks), so ``torch.compile(fullgraph=True)`` traces it without graph breaks.
"""
import math
import numbers
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init
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


class _RNNBase(nn.Module):
    """Shared by LSTM (4 gates, optional projection) and GRU (3 gates)."""

    _mode = ""
    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size"]

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__()
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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels read each weight where it is (kept for torch.nn compatibility)."""

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> List[nn.Parameter]:
        return [getattr(self, name) for name in self._flat_weights_names]

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    # ----------------------------------------------------------------------------------------

    def _layer_params(self, layer: int, direction: int, dtype: Optional[torch.dtype]):
        suffix = "_reverse" if direction == 1 else ""
        w_ih = _cast(getattr(self, f"weight_ih_l{layer}{suffix}"), dtype)
        w_hh = _cast(getattr(self, f"weight_hh_l{layer}{suffix}"), dtype)
        b_ih = b_hh = w_hr = None
        if self.bias:
            b_ih = _cast(getattr(self, f"bias_ih_l{layer}{suffix}"), dtype)
            b_hh = _cast(getattr(self, f"bias_hh_l{layer}{suffix}"), dtype)
        if self.proj_size > 0:
            w_hr = _cast(getattr(self, f"weight_hr_l{layer}{suffix}"), dtype)
        return w_ih, w_hh, b_ih, b_hh, w_hr

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

    def _stack(self, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], lengths: Optional[Tensor],
               dtype: Optional[torch.dtype]):
        """Run all layers and directions over time-major x. Returns (y, h_n, c_n or None)."""
        lstm = self.mode == "LSTM"
        num_directions = 2 if self.bidirectional else 1
        h_out: List[Tensor] = []
        c_out: List[Tensor] = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                # nn.LSTM's semantics: dropout on the output of every layer but the last
                x = F.dropout(x, self.dropout, True)
            ys: List[Tensor] = []
            for direction in range(num_directions):
                k = layer * num_directions + direction
                w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_params(layer, direction, dtype)
                hk = None if h0 is None else h0[k]
                if lstm:
                    ck = None if c0 is None else c0[k]
                    y, h, c = functional.lstm_layer(x, hk, ck, w_ih, w_hh, b_ih, b_hh, lengths=lengths,
                                                    reverse=direction == 1, w_hr=w_hr)
                    c_out.append(c)
                else:
                    y, h = functional.gru_layer(x, hk, w_ih, w_hh, b_ih, b_hh, lengths=lengths,
                                                reverse=direction == 1)
                h_out.append(h)
                ys.append(y)
            x = ys[0] if num_directions == 1 else torch.cat(ys, dim=2)
        return x, torch.stack(h_out, 0), (torch.stack(c_out, 0) if lstm else None)

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
        y, h_n, c_n = self._stack(x, h0, c0, lens, ac_dtype)

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


class LSTM(_RNNBase):
    """torch.nn.LSTM's interface and results over fastrnn's fused kernels.

    ``forward(input, hx=None, *, lengths=None)`` returns ``(output, (h_n, c_n))`` exactly as
    nn.LSTM. ``lengths`` (list or int64 tensor, one per batch entry, 1 <= L <= T) gives masked
    variable-length processing without a PackedSequence.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None, *, lengths: Lengths = None):
        output, h_n, c_n = self._forward_impl(input, hx, lengths)
        return output, (h_n, c_n)


class GRU(_RNNBase):
    """torch.nn.GRU's interface and results over fastrnn's fused kernels.

    ``forward(input, hx=None, *, lengths=None)`` returns ``(output, h_n)`` exactly as nn.GRU.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)

    def forward(self, input, hx: Optional[Tensor] = None, *, lengths: Lengths = None):
        output, h_n, _ = self._forward_impl(input, hx, lengths)
        return output, h_n


# --------------------------------------------------------------------------------------------
# cells


class _CellBase(nn.Module):
    __constants__ = ["input_size", "hidden_size", "bias"]
    _name = ""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, gates: int, device=None,
                 dtype=None) -> None:
        super().__init__()
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

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        return s.format(**self.__dict__)

    @staticmethod
    def _fast_path_ok(input: Tensor) -> bool:
        """Whether a call may go straight to the op, whose own checks cover shapes, dtypes and
        devices (on failure _prepare then raises torch.nn's error). Cells run once per token and
        their Python overhead is paid with caches just flushed by the weight reads, where it
        measured ~10x its warm cost: a 2-D input outside autocast and compilation skips it."""
        return (type(input) is Tensor and input.dim() == 2 and not torch.is_autocast_enabled("cpu")
                and not torch.is_autocast_enabled("cuda") and not torch.compiler.is_compiling())

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


class LSTMCell(_CellBase):
    """torch.nn.LSTMCell over fastrnn.functional.lstm_cell: ``forward(input, hx=None) -> (h', c')``."""

    _name = "LSTMCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if self._fast_path_ok(input) and (hx is None or (type(hx) is tuple and len(hx) == 2 and
                                                         isinstance(hx[0], Tensor) and isinstance(hx[1], Tensor))):
            h0, c0 = (None, None) if hx is None else hx
            p = self._parameters
            try:
                return functional.lstm_cell(input, h0, c0, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
            except (RuntimeError, TypeError):
                self._prepare(input, [h0, c0])  # raises torch.nn's error for what the op refused
                raise
        if hx is None:
            states: List[Optional[Tensor]] = [None, None]
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
                raise TypeError(f"LSTMCell: hx must be a tuple (h, c) of two tensors, got {type(hx).__name__}")
            states = [hx[0], hx[1]]
        x, (h0, c0), (w_ih, w_hh, b_ih, b_hh), is_batched = self._prepare(input, states)
        h, c = functional.lstm_cell(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(_CellBase):
    """torch.nn.GRUCell over fastrnn.functional.gru_cell: ``forward(input, hx=None) -> h'``."""

    _name = "GRUCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if self._fast_path_ok(input) and (hx is None or type(hx) is Tensor):
            p = self._parameters
            try:
                return functional.gru_cell(input, hx, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
            except (RuntimeError, TypeError):
                self._prepare(input, [hx])  # raises torch.nn's error for what the op refused
                raise
        if hx is not None and not isinstance(hx, Tensor):
            raise TypeError(f"GRUCell: hx must be a Tensor, got {type(hx).__name__}")
        x, (h0,), (w_ih, w_hh, b_ih, b_hh), is_batched = self._prepare(input, [hx])
        h = functional.gru_cell(x, h0, w_ih, w_hh, b_ih, b_hh)
        return h if is_batched else h.squeeze(0)

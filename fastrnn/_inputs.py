"""Input normalisation: the one place where the arguments of fastrnn's layers, cells and layer
functions are checked and brought into the form the ops take.

Eager, ``torch.jit.script``, ``torch.jit.trace``, torch.compile and the runs of an fx graph (which
call the module) all go through `layer_inputs` / `cell_inputs`, so every check and message is
written once; the messages are torch.nn's where torch.nn has the check. The functions marked
"scriptable" use only TorchScript's subset of Python: the scripted forwards call them too.
Values the ops check themselves without a host sync (the values of a lengths tensor) are left to
the ops, whose own contract checks stay as they are (docs/DESIGN.md, "Op contract").
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

# lengths as the user may give them: a list / tuple of ints, or an integer tensor (int32 or int64,
# on the CPU or on the input's device)
Lengths = Optional[Union[Tensor, Sequence[int]]]


def needs_grad(tensors: List[Optional[Tensor]]) -> bool:
    """Whether autograd will want a gradient of the op's inputs (so the op must save its
    activations). Scriptable."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def state_or_zeros(state: Optional[Tensor], x: Tensor, width: int) -> Tensor:
    """The initial state as given, or the default one: zeros [B, width] with x's dtype and device,
    B = x.shape[-2] (x [T, B, I] for a layer, [B, I] for a cell). Scriptable."""
    if state is None:
        return x.new_zeros([x.shape[-2], width])
    return state


def lstm_widths(w_hh: Tensor) -> Tuple[int, int]:
    """(P, H) of an LSTM from w_hh [4H, P]: the widths of its hidden state (P = proj_size with a
    projection, else H) and of its cell state. Scriptable."""
    return w_hh.shape[1], w_hh.shape[0] // 4


# --------------------------------------------------------------------------------------------
# lengths


def check_lengths(lengths: Tensor, B: int, device: torch.device) -> Tensor:
    """A lengths tensor's shape [B], integer dtype and device (the CPU or the input's device);
    returns it as int64, the op's type. Its values are the op's to check (on a device without a
    host sync). Scriptable."""
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must hold one length per batch entry: expected shape ({B},), "
                         f"got {_fmt(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {_dtype(lengths.dtype)}")
    if lengths.device.type != "cpu" and lengths.device != device:
        raise ValueError(f"lengths must be on the CPU or on the input's device ({device}), got {lengths.device}")
    return lengths.to(torch.int64)


def lengths_tensor(lengths: Lengths, T: int, B: int, device: torch.device) -> Optional[Tensor]:
    """User lengths (any form of `Lengths`) for an input of T steps and B entries, checked, as the
    op's int64 tensor [B] (None stays None). A list's values are host data and are checked here."""
    if lengths is None:
        return None
    if isinstance(lengths, Tensor):
        return check_lengths(lengths, B, device)
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__"):
        raise TypeError(f"lengths must be a sequence of ints or an integer tensor, got {type(lengths).__name__}")
    values = [int(v) for v in lengths]
    if len(values) != B:
        raise ValueError(f"lengths must hold one length per batch entry: expected {B}, got {len(values)}")
    for b, v in enumerate(values):
        if v < 1 or v > T:
            raise ValueError(f"lengths[{b}] = {v} is out of range: every length must be in [1, {T}] "
                             f"(the sequence length)")
    return torch.tensor(values, dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# shared checks


def check_rate(name: str, value) -> None:
    """A rate option of fastrnn's (weight_drop, zoneout, ...): a number in [0, 1], else ValueError
    worded as torch.nn words its check of ``dropout``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1] representing the probability of "
                         f"an element being zeroed, got {value!r}")


def _fmt(shape: List[int]) -> str:
    """A shape as a Python tuple prints, "(2, 3, 5)" or "(3,)": torch.nn's "expected" form."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join([str(s) for s in shape]) + ")"


def _dtype(d: torch.dtype) -> str:
    """A dtype as eager Python prints it ("torch.float32"); TorchScript would print its number."""
    if not torch.jit.is_scripting():
        return str(d)
    for name, t in [("float32", torch.float32), ("float64", torch.float64), ("float16", torch.float16),
                    ("bfloat16", torch.bfloat16), ("int64", torch.int64), ("int32", torch.int32)]:
        if d == t:
            return "torch." + name
    return f"dtype {d}"


def check_input(mode: str, x: Tensor, input_size: int, weight: Tensor, check_dtype: bool, cell: bool) -> None:
    """x's feature size, dtype (unless autocast will cast it) and device against the module's
    weight; torch.nn's messages (a cell's size message is torch.nn's cells'). Scriptable."""
    if x.shape[-1] != input_size:
        if cell:
            raise RuntimeError(f"{mode}: input has inconsistent input_size: got {x.shape[-1]} expected {input_size}")
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {input_size}, got {x.shape[-1]}")
    if check_dtype and x.dtype != weight.dtype:
        xd, wd = _dtype(x.dtype), _dtype(weight.dtype)
        raise ValueError(f"{mode} input dtype ({xd}) does not match weight dtype ({wd}). "
                         f"Convert input: input.to({wd}), or convert model: model.to({xd})")
    if x.device != weight.device:
        raise RuntimeError(f"{mode}: input is on {x.device} but the module's parameters are on {weight.device}")


def check_state(name: str, state: Tensor, expected: List[int], x: Tensor, check_dtype: bool) -> None:
    """One initial state's shape, device and (unless autocast will cast it) dtype against x's;
    torch.nn's messages. Scriptable."""
    shape = list(state.shape)
    if shape != expected:
        raise RuntimeError(f"Expected {name} size {_fmt(expected)}, got {shape}")
    if state.device != x.device:
        raise RuntimeError(f"Input and hidden tensors are not at the same device, found input tensor at "
                           f"{x.device} and {name} tensor at {state.device}")
    if check_dtype and state.dtype != x.dtype:
        raise RuntimeError(f"Expected {name} dtype {_dtype(x.dtype)} (the input's), got {_dtype(state.dtype)}")


# --------------------------------------------------------------------------------------------
# layers (LSTM, GRU) and cells (LSTMCell, GRUCell)


def layer_inputs(mode: str, input: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], batch_first: bool,
                 input_size: int, state_shapes: List[List[int]], weight: Tensor, check_dtype: bool
                 ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], bool]:
    """Checks and time-major, batched form of an LSTM / GRU forward's arguments. Scriptable.

    input: (T, B, I), (B, T, I) with batch_first, or (T, I) unbatched; h0 / c0: the states as
    given (None: zeros later), (L*D, B, W) with [L*D, W] = state_shapes[0] / [1], without B
    unbatched; c0 is None for a GRU (and only for a GRU: an LSTM's hx is a pair); weight: any of
    the module's weights (its dtype and device); check_dtype: False where autocast will cast.
    Returns (x [T, B, I], h0 [L*D, B, P] or None, c0 [L*D, B, H] or None, is_batched); the
    lengths are checked against x by `lengths_tensor` / `check_lengths`."""
    if input.dim() != 2 and input.dim() != 3:
        raise ValueError(f"{mode}: Expected input to be 2D or 3D, got {input.dim()}D instead")
    check_input(mode, input, input_size, weight, check_dtype, False)
    is_batched = input.dim() == 3
    if not is_batched:
        x = input.unsqueeze(1)
    elif batch_first:
        x = input.transpose(0, 1)
    else:
        x = input
    B = x.shape[1]
    if h0 is not None:
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if c0 is None:
            if h0.dim() != want:
                raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {h0.dim()}-D tensor")
        elif h0.dim() != want or c0.dim() != want:
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                               f"({h0.dim()}-D, {c0.dim()}-D) tensors")
        h0 = h0 if is_batched else h0.unsqueeze(1)
        check_state("hidden[0]" if c0 is not None else "hidden", h0,
                    [state_shapes[0][0], B, state_shapes[0][1]], x, check_dtype)
        if c0 is not None:
            c0 = c0 if is_batched else c0.unsqueeze(1)
            check_state("hidden[1]", c0, [state_shapes[1][0], B, state_shapes[1][1]], x, check_dtype)
    return x, h0, c0, is_batched


def layer_outputs(y: Tensor, h_n: Tensor, c_n: Optional[Tensor], is_batched: bool, batch_first: bool
                  ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The inverse of layer_inputs' reshaping: y [T, B, D*P] -> the user's layout; h_n / c_n
    [L*D, B, W] lose B for unbatched input. Scriptable."""
    if not is_batched:
        return y.squeeze(1), h_n.squeeze(1), (None if c_n is None else c_n.squeeze(1))
    return (y.transpose(0, 1) if batch_first else y), h_n, c_n


def cell_inputs(mode: str, input: Tensor, states: List[Optional[Tensor]], input_size: int, hidden_size: int,
                weight: Tensor, check_dtype: bool) -> Tuple[Tensor, List[Optional[Tensor]], bool]:
    """Checks and batched form of an LSTMCell / GRUCell step's arguments. Scriptable.

    input: (B, I), or (I,) unbatched; states: (h, c) or (h,), each (B, H) (unbatched (H,)) or None.
    Returns (x [B, I], states [B, H] or None, is_batched)."""
    dim = input.dim()
    if dim != 1 and dim != 2:
        raise ValueError(f"{mode}: Expected input to be 1D or 2D, got {dim}D instead")
    check_input(mode, input, input_size, weight, check_dtype, True)
    is_batched = dim == 2
    x = input if is_batched else input.unsqueeze(0)
    out: List[Optional[Tensor]] = []
    for i, s in enumerate(states):
        if s is not None:
            if s.dim() != dim:
                raise ValueError(f"{mode}: Expected hx[{i}] to be {dim}D like the input, got {s.dim()}D instead")
            s = s if is_batched else s.unsqueeze(0)
            check_state(f"hx[{i}]", s, [x.shape[0], hidden_size], x, check_dtype)
        out.append(s)
    return x, out, is_batched


# --------------------------------------------------------------------------------------------
# autocast (eager only: TorchScript runs in the parameters' dtype)


def autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype autocast would run an RNN in for x's device, or None when autocast is off."""
    device_type = x.device.type
    # only the device types fastrnn runs on (asking about e.g. "meta" raises)
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def cast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    """t in the autocast dtype (None: as it is). float64 stays: ATen's autocast eligibility rule."""
    if t is None or dtype is None or t.dtype == torch.float64 or t.dtype == dtype:
        return t
    return t.to(dtype)

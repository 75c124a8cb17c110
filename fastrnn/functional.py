"""Layer-level functions over the fused ops: one layer, one direction, the whole sequence.

Shapes (time-major): x [T, B, I]; h0, c0 [B, H]; w_ih [G*H, I]; w_hh [G*H, H]; b_ih, b_hh [G*H]
with G = 4 (LSTM, gates i, f, g, o) or 3 (GRU, gates r, z, n) — torch.nn's layouts, so
nn.LSTM / nn.GRU parameters are passed as they are.

``lengths`` (optional): one length per batch entry, 1 <= L <= T, as a list or an int64 tensor
(CPU, or the device of x). Entry b then only sees steps 0..L-1: outputs at t >= L are zero, the
returned state is the one after step L-1, and no gradient reaches padded inputs. With
``reverse=True`` each entry is read from its own step L-1 down to 0 (the backward direction
of a bidirectional layer). This equals nn.LSTM / nn.GRU over
``pack_padded_sequence(x, lengths, enforce_sorted=False)``.

Activations are saved for backward only when autograd needs them (grad mode on and some input
requires grad), so inference saves nothing.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

_ops = torch.ops.fastrnn

Lengths = Optional[Union[Tensor, Sequence[int]]]

__all__ = ["lstm_layer", "gru_layer", "lstm_cell", "gru_cell"]


def _lengths(lengths: Lengths) -> Optional[Tensor]:
    if lengths is None or isinstance(lengths, Tensor):
        return lengths
    return torch.as_tensor(list(lengths), dtype=torch.int64)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# The C++ entry point of each op's overload, without the Python frames of OpOverloadPacket /
# OpOverload (~3 us per call warm, several times that in a decode loop): used on the no-autograd
# eager path only; autograd and torch.compile go through the op objects.
_raw = {op: getattr(getattr(op, "default", op), "_op", op) for op in (_ops.lstm_forward, _ops.gru_forward)}


def _call(op, save: bool, *args):
    # Without autograd (save=False: nothing needs a gradient) skip the Python autograd kernel
    # the op is registered with: it costs tens of microseconds per call, which matters for
    # cell-by-cell decoding. Under torch.compile the op is traced as it is.
    if not save and not torch.compiler.is_compiling():
        with torch._C._AutoDispatchBelowAutograd():
            return _raw.get(op, op)(*args)
    return op(*args)


def _zeros_state(x: Tensor, size: int) -> Tensor:
    return x.new_zeros((x.shape[1], size))


def lstm_layer(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, lengths: Lengths = None,
               reverse: bool = False, w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer over x [T, B, I]. Returns (y [T, B, P], h_n [B, P], c_n [B, H]) where
    P = H, or with a projection w_hr [P, H] (nn.LSTM's proj_size) P = w_hr.shape[0] and
    w_hh is [4H, P]. h0 / c0 default to zeros."""
    H = w_hh.shape[0] // 4
    if h0 is None:
        h0 = _zeros_state(x, H if w_hr is None else w_hr.shape[0])
    if c0 is None:
        c0 = _zeros_state(x, H)
    save = _needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    y, h_n, c_n, _ = _call(_ops.lstm_forward, save, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, _lengths(lengths),
                           reverse, save)
    return y, h_n, c_n


def gru_layer(x: Tensor, h0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
              b_hh: Optional[Tensor] = None, lengths: Lengths = None,
              reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """One GRU layer over x [T, B, I]. Returns (y [T, B, H], h_n [B, H]). h0 defaults to zeros."""
    if h0 is None:
        h0 = _zeros_state(x, w_hh.shape[1])
    save = _needs_grad(x, h0, w_ih, w_hh, b_ih, b_hh)
    y, h_n, _ = _call(_ops.gru_forward, save, x, h0, w_ih, w_hh, b_ih, b_hh, _lengths(lengths), reverse, save)
    return y, h_n


def lstm_cell(x: Tensor, hx: Optional[Tensor], cx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One LSTM step: x [B, I], hx / cx [B, H] -> (h' [B, H], c' [B, H]). A length-1 sequence
    through the same fused ops (lstm_layer without the frames: cells run once per token)."""
    if hx is None:
        hx = x.new_zeros((x.shape[0], w_hh.shape[1]))
    if cx is None:
        cx = x.new_zeros((x.shape[0], w_hh.shape[0] // 4))
    save = _needs_grad(x, hx, cx, w_ih, w_hh, b_ih, b_hh)
    _, h, c, _ = _call(_ops.lstm_forward, save, x.unsqueeze(0), hx, cx, w_ih, w_hh, b_ih, b_hh, None, None, False, save)
    return h, c


def gru_cell(x: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None) -> Tensor:
    """One GRU step: x [B, I], hx [B, H] -> h' [B, H]."""
    if hx is None:
        hx = x.new_zeros((x.shape[0], w_hh.shape[1]))
    save = _needs_grad(x, hx, w_ih, w_hh, b_ih, b_hh)
    _, h, _ = _call(_ops.gru_forward, save, x.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh, None, False, save)
    return h

"""Layer-level functions over the fused ops: one layer, one direction, the whole sequence.

Shapes (time-major): x [T, B, I]; h0, c0 [B, H]; w_ih [G*H, I]; w_hh [G*H, H]; b_ih, b_hh [G*H]
with G = 4 (LSTM, gates i, f, g, o) or 3 (GRU, gates r, z, n) — torch.nn's layouts, so
nn.LSTM / nn.GRU parameters are passed as they are.

``lengths`` (optional): one length per batch entry, 1 <= L <= T, as a list or tuple of ints or an
int32 / int64 tensor (CPU, or the device of x): the forms the modules take, checked by the same
code (fastrnn._inputs). Entry b then only sees steps 0..L-1: outputs at t >= L are zero, the
returned state is the one after step L-1, and no gradient reaches padded inputs. With
``reverse=True`` each entry is read from its own step L-1 down to 0 (the backward direction
of a bidirectional layer). This equals nn.LSTM / nn.GRU over
``pack_padded_sequence(x, lengths, enforce_sorted=False)``.

Activations are saved for backward only when autograd needs them (grad mode on and some input
requires grad), so inference saves nothing.

Zoneout and recurrent dropout take their masks, drawn by the caller (the modules draw them:
docs/DESIGN.md, "Options beyond torch.nn"): ``zoneout_h`` [T, B, P] / ``zoneout_c`` [T, B, H] keep
weights by time index (s_t = z s_{t-1} + (1 - z) s~_t), or a 0-dim tensor (one weight everywhere,
eval's rate); ``rec_mask`` [B, P] multiplies h_{t-1} where it enters W_hh. The cells take one
step's [B, H] weights (or a 0-dim tensor) as ``zoneout_h`` / ``zoneout_c``.

An empty batch (B = 0) or state (H = 0), which torch.nn takes and the kernels refuse, runs
reference.py's plain PyTorch instead (see _without_kernels). So do calls under a torch.func
transform or forward-mode AD, which the ops' autograd formula cannot serve (see _transformed).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

import torch.autograd.forward_ad as _forward_ad

from ._inputs import Lengths, lengths_tensor, lstm_widths, needs_grad, state_or_zeros
from .reference import (gru_cell_reference, gru_reference, gru_zoneout_reference, lstm_cell_reference,
                        lstm_reference, lstm_zoneout_reference)

_ops = torch.ops.fastrnn

__all__ = ["lstm_layer", "gru_layer", "lstm_cell", "gru_cell"]


def _checked_lengths(lengths: Lengths, x: Tensor) -> Optional[Tensor]:
    # x [T, B, I]; an x of another rank is the op's to refuse, with its message
    if lengths is None or x.dim() != 3:
        return lengths
    return lengths_tensor(lengths, x.shape[0], x.shape[1], x.device)


# The C++ entry point of each op's overload, without the Python frames of OpOverloadPacket /
# OpOverload (~3 us per call warm, several times that in a decode loop): used on the no-autograd
# eager path only; autograd and torch.compile go through the op objects.
_raw = {op: getattr(getattr(op, "default", op), "_op", op) for op in (_ops.lstm_forward, _ops.gru_forward)}


def _call(op, save: bool, *args, **kwargs):
    # Without autograd (save=False: nothing needs a gradient) skip the Python autograd kernel
    # the op is registered with: it costs tens of microseconds per call, which matters for
    # cell-by-cell decoding. Under torch.compile the op is traced as it is.
    if not save and not torch.compiler.is_compiling():
        with torch._C._AutoDispatchBelowAutograd():
            return _raw.get(op, op)(*args, **kwargs)
    return op(*args, **kwargs)


def _transformed() -> bool:
    """True under a torch.func transform (grad, vjp, jacrev, jacfwd, jvp, vmap, hessian, ...) or
    inside a forward-mode AD level (torch.autograd.forward_ad.dual_level). The ops' autograd is
    torch.library's, which functorch refuses ("must override the setup_context staticmethod")
    and which has no forward derivative; there each call runs reference.py's plain PyTorch, which
    every transform handles, as torch.nn's RNNs on the CPU do: the same results, at the speed
    of a Python loop over time. Not checked under torch.compile (the transforms' state is not
    traceable; dynamo's own torch.func support sees the ops)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None or _forward_ad._current_level >= 0


def _without_kernels(x: Tensor, step) -> Tuple[Tensor, ...]:
    """A layer over x [T, B, I] with B = 0 or H = 0. Every step then gives what the first one
    gives (there is no entry, or no cell state, to carry: with H = 0 and a projection h is 0 at
    every step), so step(x[0]) -> (h, [c]), one step of reference.py's math, yields every output
    with torch.nn's shapes, dtypes and autograd graph (all grads zero, as torch.nn's), in time
    independent of T. Returns (y [T, B, P], h_n, [c_n])."""
    if x.shape[0] == 0:
        raise RuntimeError(f"fastrnn: expected a sequence of length T >= 1, got x of shape {tuple(x.shape)}")
    states = step(x[0])
    return (states[0].unsqueeze(0).expand(x.shape[0], -1, -1), *states)


def _expect_rows(B: int, **states) -> None:
    """The kernels' check of the states' shapes, name=(tensor, width), for the calls that skip
    the kernels (the plain math would broadcast a state of 1 row against an empty batch)."""
    for name, (t, width) in states.items():
        if tuple(t.shape) != (B, width):
            raise RuntimeError(f"fastrnn: expected {name} of shape [{B}, {width}], got {list(t.shape)}")


def lstm_layer(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, lengths: Lengths = None,
               reverse: bool = False, w_hr: Optional[Tensor] = None, *, zoneout_h: Optional[Tensor] = None,
               zoneout_c: Optional[Tensor] = None, rec_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer over x [T, B, I]. Returns (y [T, B, P], h_n [B, P], c_n [B, H]) where
    P = H, or with a projection w_hr [P, H] (nn.LSTM's proj_size) P = w_hr.shape[0] and
    w_hh is [4H, P]. h0 [B, P] / c0 [B, H] default to zeros. zoneout_h, zoneout_c, rec_mask: see
    the module docstring."""
    return _lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, _checked_lengths(lengths, x), reverse, w_hr, zoneout_h,
                       zoneout_c, rec_mask)


def _lstm_layer(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                b_ih: Optional[Tensor], b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                w_hr: Optional[Tensor], zoneout_h: Optional[Tensor] = None, zoneout_c: Optional[Tensor] = None,
                rec_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """lstm_layer with lengths already checked (int64 [B] or None): the modules' entry."""
    P, H = lstm_widths(w_hh)
    h0 = state_or_zeros(h0, x, P)
    c0 = state_or_zeros(c0, x, H)
    if not (x.shape[1] and w_hh.shape[0]):  # B = 0 or H = 0
        _expect_rows(x.shape[1], h0=(h0, P), c0=(c0, H))
        return _without_kernels(x, lambda x0: lstm_cell_reference(x0, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
    regularised = zoneout_h is not None or zoneout_c is not None or rec_mask is not None
    if _transformed():
        if regularised:
            return lstm_zoneout_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr, zoneout_h,
                                          zoneout_c, rec_mask)
        return lstm_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr)
    save = needs_grad([x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr])
    if regularised:
        y, h_n, c_n, _ = _call(_ops.lstm_forward, save, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                               save, zoneout_h=zoneout_h, zoneout_c=zoneout_c, rec_mask=rec_mask)
    else:
        y, h_n, c_n, _ = _call(_ops.lstm_forward, save, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                               save)
    return y, h_n, c_n


def gru_layer(x: Tensor, h0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
              b_hh: Optional[Tensor] = None, lengths: Lengths = None,
              reverse: bool = False, *, zoneout_h: Optional[Tensor] = None,
              rec_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One GRU layer over x [T, B, I]. Returns (y [T, B, H], h_n [B, H]). h0 [B, H] defaults to zeros.
    zoneout_h, rec_mask: see the module docstring."""
    return _gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, _checked_lengths(lengths, x), reverse, zoneout_h, rec_mask)


def _gru_layer(x: Tensor, h0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
               b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, zoneout_h: Optional[Tensor] = None,
               rec_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """gru_layer with lengths already checked (int64 [B] or None): the modules' entry."""
    H = w_hh.shape[1]
    h0 = state_or_zeros(h0, x, H)
    if not (x.shape[1] and w_hh.shape[0]):  # B = 0 or H = 0
        _expect_rows(x.shape[1], h0=(h0, H))
        return _without_kernels(x, lambda x0: (gru_cell_reference(x0, h0, w_ih, w_hh, b_ih, b_hh),))
    regularised = zoneout_h is not None or rec_mask is not None
    if _transformed():
        if regularised:
            return gru_zoneout_reference(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, zoneout_h, rec_mask)
        return gru_reference(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    save = needs_grad([x, h0, w_ih, w_hh, b_ih, b_hh])
    if regularised:
        y, h_n, _ = _call(_ops.gru_forward, save, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save,
                          zoneout_h=zoneout_h, rec_mask=rec_mask)
    else:
        y, h_n, _ = _call(_ops.gru_forward, save, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save)
    return y, h_n


def lstm_cell(x: Tensor, hx: Optional[Tensor], cx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, *,
              zoneout_h: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One LSTM step: x [B, I], hx / cx [B, H] -> (h' [B, H], c' [B, H]). A length-1 sequence
    through the same fused ops (lstm_layer without the frames: cells run once per token).
    zoneout_h: [B, H] keep weights of h' or a 0-dim one (see the module docstring)."""
    if zoneout_h is not None:
        return _zoned_cell(True, x, hx, cx, w_ih, w_hh, b_ih, b_hh, zoneout_h)
    if hx is None or cx is None:  # (the widths only when needed: cells run once per token)
        P, H = lstm_widths(w_hh)
        hx, cx = state_or_zeros(hx, x, P), state_or_zeros(cx, x, H)
    # B = 0 or H = 0, which the kernels refuse: reference.py's math (I = 0, which they take, lands
    # here too; numel() is the cheapest test)
    if not (x.numel() and w_hh.numel()):
        P, H = lstm_widths(w_hh)
        _expect_rows(x.shape[0], hx=(hx, P), cx=(cx, H))
        return lstm_cell_reference(x, hx, cx, w_ih, w_hh, b_ih, b_hh)
    if _transformed():
        return lstm_cell_reference(x, hx, cx, w_ih, w_hh, b_ih, b_hh)
    save = needs_grad([x, hx, cx, w_ih, w_hh, b_ih, b_hh])
    _, h, c, _ = _call(_ops.lstm_forward, save, x.unsqueeze(0), hx, cx, w_ih, w_hh, b_ih, b_hh, None, None, False, save)
    return h, c


def gru_cell(x: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None, *, zoneout_h: Optional[Tensor] = None) -> Tensor:
    """One GRU step: x [B, I], hx [B, H] -> h' [B, H]. zoneout_h: as lstm_cell's."""
    if zoneout_h is not None:
        return _zoned_cell(False, x, hx, None, w_ih, w_hh, b_ih, b_hh, zoneout_h)[0]
    hx = state_or_zeros(hx, x, w_hh.shape[1])
    if not (x.numel() and w_hh.numel()):  # see lstm_cell
        _expect_rows(x.shape[0], hx=(hx, w_hh.shape[1]))
        return gru_cell_reference(x, hx, w_ih, w_hh, b_ih, b_hh)
    if _transformed():
        return gru_cell_reference(x, hx, w_ih, w_hh, b_ih, b_hh)
    save = needs_grad([x, hx, w_ih, w_hh, b_ih, b_hh])
    _, h, _ = _call(_ops.gru_forward, save, x.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh, None, False, save)
    return h


def _zoned_cell(lstm: bool, x: Tensor, hx: Optional[Tensor], cx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                b_ih: Optional[Tensor], b_hh: Optional[Tensor], zoneout_h: Tensor) -> Tuple[Tensor, ...]:
    """A cell step with zoneout on h as a one-step layer, whose keep weights are [1, B, H] (or
    0-dim). Returns (h', c') for the LSTM, (h',) for the GRU."""
    z = zoneout_h if zoneout_h.dim() == 0 else zoneout_h.unsqueeze(0)
    if not lstm:
        return (_gru_layer(x.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh, None, False, z)[1],)
    _, h, c = _lstm_layer(x.unsqueeze(0), hx, cx, w_ih, w_hh, b_ih, b_hh, None, False, None, z)
    return h, c

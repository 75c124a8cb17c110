"""Plain-PyTorch reference LSTM / GRU: the test oracle.

Written from the textbook equations and torch.nn's documented parameter layout, independently
of the C++/CUDA kernels (it uses neither fastrnn ops nor nn.LSTM / nn.GRU). It is a Python loop
over time built from ordinary differentiable tensor ops, so autograd gives its gradients.
Slow by design: simple and obviously right is the point.

Conventions (the same as fastrnn.functional):
  time-major x [T, B, I]; LSTM gates i, f, g, o and GRU gates r, z, n in that order along the
  first dim of w_ih [G*H, I] / w_hh [G*H, H] / b_ih, b_hh [G*H]; GRU's b_hn sits inside
  r * (W_hn h + b_hn). LSTM projection (nn.LSTM's proj_size): w_hr [P, H], h = (o * tanh c) w_hr^T,
  so h0 / y / h_n are [.., P] and w_hh is [4H, P].

Variable lengths: entry b with length L sees steps 0..L-1. Masking is done with torch.where on
the step index: past L the state is carried unchanged and the output is zero. The reverse
direction reads entry b at times L-1, L-2, ..., 0: implemented by gathering each entry's own
reversed sequence (time index L-1-t for t < L), running the forward loop, and gathering back
with the same (self-inverse) index map.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["lstm_cell_reference", "gru_cell_reference", "lstm_reference", "gru_reference",
           "lstm_cell_layer_norm_reference", "gru_cell_layer_norm_reference", "lstm_layer_norm_reference",
           "gru_layer_norm_reference", "lstm_zoneout_reference", "gru_zoneout_reference"]


def _linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    out = x @ w.t()
    return out if b is None else out + b


def lstm_cell_reference(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
                        w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One LSTM step: x [B, I], h [B, P], c [B, H] -> (h' [B, P], c' [B, H])."""
    gates = _linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def gru_cell_reference(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
                       b_hh: Optional[Tensor] = None) -> Tensor:
    """One GRU step: x [B, I], h [B, H] -> h' [B, H]."""
    xr, xz, xn = _linear(x, w_ih, b_ih).chunk(3, dim=1)
    hr, hz, hn = _linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def _lengths_tensor(lengths, T: int, B: int, device) -> Tensor:
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int64, device=device)
    lengths = torch.as_tensor(lengths, dtype=torch.int64).to(device)
    assert lengths.shape == (B,) and bool(((lengths >= 1) & (lengths <= T)).all()), lengths
    return lengths


def _reversal_index(lengths: Tensor, T: int, feat: int) -> Tensor:
    """Index [T, B, feat] for gather along time: t -> L-1-t for t < L, t -> t otherwise.
    Applying it twice is the identity."""
    t = torch.arange(T, device=lengths.device).unsqueeze(1)  # [T, 1]
    L = lengths.unsqueeze(0)  # [1, B]
    idx = torch.where(t < L, L - 1 - t, t)  # [T, B]
    return idx.unsqueeze(2).expand(T, lengths.shape[0], feat)


def _flip_within_lengths(seq: Tensor, lengths: Tensor) -> Tensor:
    return seq.gather(0, _reversal_index(lengths, seq.shape[0], seq.shape[2]))


def _run(step, x: Tensor, states, lengths, reverse: bool):
    """Runs step(x_t, states) -> new states (states[0] is the output) over time with masking.
    Returns (y, final states)."""
    T, B, _ = x.shape
    L = _lengths_tensor(lengths, T, B, x.device)
    if reverse:
        x = _flip_within_lengths(x, L)
    ys = []
    for t in range(T):
        new = step(x[t], states)
        valid = (t < L).unsqueeze(1)  # [B, 1]
        states = tuple(torch.where(valid, n, s) for n, s in zip(new, states))
        ys.append(torch.where(valid, new[0], torch.zeros_like(new[0])))
    y = torch.stack(ys)
    if reverse:
        y = _flip_within_lengths(y, L)
    return y, states


def lstm_reference(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                   b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
                   lengths: Optional[Union[Tensor, Sequence[int]]] = None, reverse: bool = False,
                   w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer, one direction. Returns (y [T, B, P], h_n [B, P], c_n [B, H])."""
    def step(xt, states):
        return lstm_cell_reference(xt, states[0], states[1], w_ih, w_hh, b_ih, b_hh, w_hr)

    y, (h_n, c_n) = _run(step, x, (h0, c0), lengths, reverse)
    return y, h_n, c_n


def gru_reference(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
                  b_hh: Optional[Tensor] = None, lengths: Optional[Union[Tensor, Sequence[int]]] = None,
                  reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """One GRU layer, one direction. Returns (y [T, B, H], h_n [B, H])."""
    def step(xt, states):
        return (gru_cell_reference(xt, states[0], w_ih, w_hh, b_ih, b_hh),)

    y, (h_n,) = _run(step, x, (h0,), lengths, reverse)
    return y, h_n


# --------------------------------------------------------------------------------------------
# Layer-normalised cells (fastrnn's layer_norm option), from the semantics: LN(v; w) =
# (v - mean(v)) / sqrt(var(v) + 1e-5) * w over all G*H features of a batch entry (biased
# variance). LSTM: gates = LN(W_ih x; ln_ih) + b_ih + LN(W_hh h; ln_hh) + b_hh,
# h' = o * tanh(LN(c'; ln_c_w) + ln_c_b) (then the projection), the state c' un-normalised.
# GRU: ih = LN(W_ih x; ln_ih) + b_ih, hh = LN(W_hh h; ln_hh) + b_hh, then the usual r, z, n.

LAYER_NORM_EPS = 1e-5


def _layer_norm(v: Tensor, w: Tensor, b: Optional[Tensor] = None) -> Tensor:
    return torch.nn.functional.layer_norm(v, (v.shape[-1],), w, b, LAYER_NORM_EPS)


def lstm_cell_layer_norm_reference(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                                   b_ih: Optional[Tensor], b_hh: Optional[Tensor], ln_ih: Tensor, ln_hh: Tensor,
                                   ln_c_w: Tensor, ln_c_b: Tensor,
                                   w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One layer-normalised LSTM step: x [B, I], h [B, P], c [B, H]; ln_ih, ln_hh [4H], ln_c_w,
    ln_c_b [H] -> (h' [B, P], c' [B, H])."""
    gates = _layer_norm(x @ w_ih.t(), ln_ih, b_ih) + _layer_norm(h @ w_hh.t(), ln_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(_layer_norm(c_new, ln_c_w, ln_c_b))
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def gru_cell_layer_norm_reference(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                                  b_hh: Optional[Tensor], ln_ih: Tensor, ln_hh: Tensor) -> Tensor:
    """One layer-normalised GRU step: x [B, I], h [B, H]; ln_ih, ln_hh [3H] -> h' [B, H]."""
    xr, xz, xn = _layer_norm(x @ w_ih.t(), ln_ih, b_ih).chunk(3, dim=1)
    hr, hz, hn = _layer_norm(h @ w_hh.t(), ln_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def lstm_layer_norm_reference(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                              b_ih: Optional[Tensor], b_hh: Optional[Tensor], ln_ih: Tensor, ln_hh: Tensor,
                              ln_c_w: Tensor, ln_c_b: Tensor,
                              lengths: Optional[Union[Tensor, Sequence[int]]] = None, reverse: bool = False,
                              w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One layer-normalised LSTM layer, one direction. Returns (y [T, B, P], h_n [B, P], c_n [B, H])."""
    def step(xt, states):
        return lstm_cell_layer_norm_reference(xt, states[0], states[1], w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh,
                                              ln_c_w, ln_c_b, w_hr)

    y, (h_n, c_n) = _run(step, x, (h0, c0), lengths, reverse)
    return y, h_n, c_n


def gru_layer_norm_reference(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                             b_hh: Optional[Tensor], ln_ih: Tensor, ln_hh: Tensor,
                             lengths: Optional[Union[Tensor, Sequence[int]]] = None,
                             reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """One layer-normalised GRU layer, one direction. Returns (y [T, B, H], h_n [B, H])."""
    def step(xt, states):
        return (gru_cell_layer_norm_reference(xt, states[0], w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh),)

    y, (h_n,) = _run(step, x, (h0,), lengths, reverse)
    return y, h_n


# --------------------------------------------------------------------------------------------
# Zoneout and recurrent dropout (docs/DESIGN.md, "Options beyond torch.nn"), with the masks given:
# zoneout_h [T, B, P] / zoneout_c [T, B, H] keep weights z by time index t (the weight applied
# when the state at time t is made), or a 0-dim tensor (one weight for every position), or None;
# rec_mask [B, P] multiplies h_{t-1} where it enters W_hh, or None. The cell computes its own new
# state s~_t from the zoned s_{t-1}, then s_t = z s_{t-1} + (1 - z) s~_t; y_t = h_t.


def _with_keep_weights(x: Tensor, masks) -> Tuple[Tensor, list]:
    """x [T, B, I] with each mask ([T, B, W], 0-dim, or None) appended along the features, so
    that _run's reversal within lengths moves them with the time index; and their widths."""
    parts, widths = [x], []
    for m, width in masks:
        if m is not None:
            parts.append(m.expand(x.shape[0], x.shape[1], width) if m.dim() == 0 else m)
        widths.append(width if m is not None else 0)
    return torch.cat(parts, dim=2), widths


def _blend(keep: Tensor, prev: Tensor, fresh: Tensor) -> Tensor:
    return keep * prev + (1 - keep) * fresh


def lstm_zoneout_reference(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                           b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
                           lengths: Optional[Union[Tensor, Sequence[int]]] = None, reverse: bool = False,
                           w_hr: Optional[Tensor] = None, zoneout_h: Optional[Tensor] = None,
                           zoneout_c: Optional[Tensor] = None, rec_mask: Optional[Tensor] = None,
                           ln: Optional[Sequence[Tensor]] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer, one direction, with zoneout on h (after the projection) and c and
    recurrent dropout, of a layer-normalised cell when ln = (ln_ih, ln_hh, ln_c_w, ln_c_b) is
    given. Returns (y [T, B, P], h_n [B, P], c_n [B, H])."""
    I, P, H = x.shape[2], h0.shape[1], c0.shape[1]
    xz, (wh, wc) = _with_keep_weights(x, [(zoneout_h, P), (zoneout_c, H)])

    def step(xt, states):
        h, c = states
        xt, zh, zc = xt.split([I, wh, wc], dim=1)
        h_in = h if rec_mask is None else h * rec_mask
        if ln is None:
            h_new, c_new = lstm_cell_reference(xt, h_in, c, w_ih, w_hh, b_ih, b_hh, w_hr)
        else:
            h_new, c_new = lstm_cell_layer_norm_reference(xt, h_in, c, w_ih, w_hh, b_ih, b_hh, *ln, w_hr)
        if zoneout_c is not None:
            c_new = _blend(zc, c, c_new)
        if zoneout_h is not None:
            h_new = _blend(zh, h, h_new)
        return h_new, c_new

    y, (h_n, c_n) = _run(step, xz, (h0, c0), lengths, reverse)
    return y, h_n, c_n


def gru_zoneout_reference(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
                          b_hh: Optional[Tensor] = None, lengths: Optional[Union[Tensor, Sequence[int]]] = None,
                          reverse: bool = False, zoneout_h: Optional[Tensor] = None,
                          rec_mask: Optional[Tensor] = None,
                          ln: Optional[Sequence[Tensor]] = None) -> Tuple[Tensor, Tensor]:
    """One GRU layer, one direction, with zoneout on h and recurrent dropout (which masks h only
    in W_hh h: z * h uses the state itself), of a layer-normalised cell when ln = (ln_ih, ln_hh)
    is given. Returns (y [T, B, H], h_n [B, H])."""
    I, H = x.shape[2], h0.shape[1]
    xz, (wh,) = _with_keep_weights(x, [(zoneout_h, H)])

    def step(xt, states):
        (h,) = states
        xt, zh = xt.split([I, wh], dim=1)
        h_in = h if rec_mask is None else h * rec_mask
        if ln is None:
            xr, xz_, xn = _linear(xt, w_ih, b_ih).chunk(3, dim=1)
            hr, hz, hn = _linear(h_in, w_hh, b_hh).chunk(3, dim=1)
        else:
            xr, xz_, xn = _layer_norm(xt @ w_ih.t(), ln[0], b_ih).chunk(3, dim=1)
            hr, hz, hn = _layer_norm(h_in @ w_hh.t(), ln[1], b_hh).chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz_ + hz)
        n = torch.tanh(xn + r * hn)
        h_new = (1 - z) * n + z * h
        return (h_new if zoneout_h is None else _blend(zh, h, h_new),)

    y, (h_n,) = _run(step, xz, (h0,), lengths, reverse)
    return y, h_n

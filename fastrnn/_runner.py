"""The layer stack and the op calls, written once for eager, TorchScript and torch.jit.trace.

Inputs arrive normalised (fastrnn._inputs): time-major, batched, checked. Eager runs go through
fastrnn.functional (which skips the autograd kernel when nothing needs a gradient); TorchScript
cannot express that shortcut, so scripted code calls the op objects. Only TorchScript types in
the signatures: `run_stack` and the cell functions are compiled with torch.jit.script (by a
scripted module, and by `traceable` while torch.jit.trace records).
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional
from ._inputs import lstm_widths, needs_grad, state_or_zeros

# The weights of one layer in one direction, torch.nn's names: (weight_ih [G*H, I],
# weight_hh [G*H, P], bias_ih [G*H] or None, bias_hh [G*H] or None, weight_hr [P, H] or None).
LayerWeights = Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]

# The kinds of weight of a layer and direction, in LayerWeights order (torch.nn's name prefixes).
WEIGHT_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def weight_slots(all_weights: List[List[str]], flat_names: List[str]) -> List[List[int]]:
    """Per layer and direction (nn.RNNBase's ``_all_weights`` order), the index in
    ``flat_names`` of each WEIGHT_KINDS entry, -1 where the module has none (no bias, no
    projection). Built once per module, it lets `layer_weights` group any list of the weights."""
    index = {name: i for i, name in enumerate(flat_names)}
    slots = []
    for names in all_weights:
        by_kind = {name.rsplit("_l", 1)[0]: index[name] for name in names}
        slots.append([by_kind.get(kind, -1) for kind in WEIGHT_KINDS])
    return slots


def layer_weights(flat: List[Tensor], slots: List[List[int]]) -> List[LayerWeights]:
    """The weights in flat (``_flat_weights_names`` order) grouped per layer and direction by the
    module's `weight_slots`. Scriptable."""
    out: List[LayerWeights] = []
    for s in slots:
        b_ih: Optional[Tensor] = None if s[2] < 0 else flat[s[2]]
        b_hh: Optional[Tensor] = None if s[3] < 0 else flat[s[3]]
        w_hr: Optional[Tensor] = None if s[4] < 0 else flat[s[4]]
        out.append((flat[s[0]], flat[s[1]], b_ih, b_hh, w_hr))
    return out


def lstm_layer(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], w: LayerWeights, lengths: Optional[Tensor],
               reverse: bool, zoneout_h: Optional[Tensor] = None, zoneout_c: Optional[Tensor] = None,
               rec_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer and direction: x [T, B, I], h0 [B, P] / c0 [B, H] or None (zeros), lengths
    int64 [B] (checked) or None, the masks of `regularisers` -> (y [T, B, P], h_n [B, P], c_n [B, H])."""
    w_ih, w_hh, b_ih, b_hh, w_hr = w
    if not torch.jit.is_scripting():
        return functional._lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr, zoneout_h, zoneout_c,
                                      rec_mask)
    P, H = lstm_widths(w_hh)
    h0 = state_or_zeros(h0, x, P)
    c0 = state_or_zeros(c0, x, H)
    save = needs_grad([x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr])
    y, h, c, _ = torch.ops.fastrnn.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save,
                                                zoneout_h=zoneout_h, zoneout_c=zoneout_c, rec_mask=rec_mask)
    return y, h, c


def gru_layer(x: Tensor, h0: Optional[Tensor], w: LayerWeights, lengths: Optional[Tensor],
              reverse: bool, zoneout_h: Optional[Tensor] = None,
              rec_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One GRU layer and direction: x [T, B, I], h0 [B, H] or None (zeros), lengths int64 [B]
    (checked) or None, the masks of `regularisers` -> (y [T, B, H], h_n [B, H])."""
    w_ih, w_hh, b_ih, b_hh, _ = w
    if not torch.jit.is_scripting():
        return functional._gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, zoneout_h, rec_mask)
    h0 = state_or_zeros(h0, x, w_hh.shape[1])
    save = needs_grad([x, h0, w_ih, w_hh, b_ih, b_hh])
    y, h, _ = torch.ops.fastrnn.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save,
                                            zoneout_h=zoneout_h, rec_mask=rec_mask)
    return y, h


# Zoneout and recurrent dropout (docs/DESIGN.md, "Options beyond torch.nn"): masks drawn here, in
# x's dtype, from the device's generator (no host sync; torch.manual_seed reproduces a run).


def keep_weights(p: float, training: bool, shape: List[int], x: Tensor) -> Optional[Tensor]:
    """Zoneout's keep weights for a state of `shape` ([T, B, W] for a layer, [B, W] for a cell
    step): in training torch.bernoulli of p (1: keep the previous value), fresh per step and
    element; in eval the 0-dim p (the expectation); None when p = 0. Scriptable."""
    if p <= 0:
        return None
    if training:
        return torch.bernoulli(x.new_full(shape, p))
    return x.new_full([], p)


def regularisers(x: Tensor, w_hh: Tensor, lstm: bool, training: bool, zoneout: float, zoneout_cell: float,
                 recurrent_dropout: float) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The masks of one layer and direction over x [T, B, I], drawn in this order: zoneout_h
    [T, B, P] (`keep_weights` of zoneout), zoneout_c [T, B, H] (LSTM, of zoneout_cell), rec_mask
    [B, P] (training only: F.dropout of ones, values 0 or 1 / (1 - p), zeros at p = 1, one per
    entry locked across time). Scriptable."""
    T, B = x.shape[0], x.shape[1]
    P = w_hh.shape[1]
    zh = keep_weights(zoneout, training, [T, B, P], x)
    zc = keep_weights(zoneout_cell, training, [T, B, w_hh.shape[0] // 4], x) if lstm else None
    rec: Optional[Tensor] = None
    if recurrent_dropout > 0 and training:
        rec = F.dropout(x.new_ones([B, P]), recurrent_dropout, True)
    return zh, zc, rec


# The cells' steps take their four weights one by one (w_ih [G*H, I], w_hh [G*H, H], b_ih and
# b_hh [G*H] or None): torch.jit.trace cannot pass a None inside a tuple to a scripted function.


def lstm_cell(x: Tensor, h: Optional[Tensor], c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor], zoneout: float = 0.0,
              training: bool = False) -> Tuple[Tensor, Tensor]:
    """One LSTM step: x [B, I], h / c [B, H] or None (zeros) -> (h' [B, H], c' [B, H]); zoneout on
    h' with a fresh mask per call in training (`keep_weights`)."""
    zh = keep_weights(zoneout, training, [x.shape[0], w_hh.shape[1]], x) if zoneout > 0 else None
    if not torch.jit.is_scripting():
        return functional.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, zoneout_h=zh)
    _, h, c = lstm_layer(x.unsqueeze(0), h, c, (w_ih, w_hh, b_ih, b_hh, None), None, False,
                         None if zh is None else (zh if zh.dim() == 0 else zh.unsqueeze(0)))
    return h, c


def gru_cell(x: Tensor, h: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
             b_hh: Optional[Tensor], zoneout: float = 0.0, training: bool = False) -> Tensor:
    """One GRU step: x [B, I], h [B, H] or None (zeros) -> h' [B, H]; zoneout as lstm_cell's."""
    zh = keep_weights(zoneout, training, [x.shape[0], w_hh.shape[1]], x) if zoneout > 0 else None
    if not torch.jit.is_scripting():
        return functional.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, zoneout_h=zh)
    return gru_layer(x.unsqueeze(0), h, (w_ih, w_hh, b_ih, b_hh, None), None, False,
                     None if zh is None else (zh if zh.dim() == 0 else zh.unsqueeze(0)))[1]


def run_stack(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], flat_weights: List[Tensor],
              slots: List[List[int]], lstm: bool, num_directions: int, lengths: Optional[Tensor], dropout: float,
              training: bool, weight_drop: float = 0.0, zoneout: float = 0.0, zoneout_cell: float = 0.0,
              recurrent_dropout: float = 0.0) -> Tuple[Tensor, List[Tensor]]:
    """All layers and directions over x [T, B, I]. flat_weights: the module's weights in
    ``_flat_weights_names`` order and slots its `weight_slots` (a trace cannot pass the grouped
    LayerWeights, which hold None, to a scripted function: they are grouped here); h0 [L*D, B, P]
    and c0 [L*D, B, H] or None (zeros); lengths int64 [B] (checked) or None; weight_drop the
    DropConnect rate on every weight_hh in training (0: off); zoneout, zoneout_cell (LSTM),
    recurrent_dropout the rates of `regularisers` (0: off). Returns (y [T, B, D*P], [h_n] or,
    for the LSTM, [h_n, c_n]) (a list: a trace cannot record a None output)."""
    weights = layer_weights(flat_weights, slots)  # layer by layer, forward direction first
    if weight_drop > 0 and training:
        # weight drop: one mask per layer and direction over W_hh, drawn here, all before the
        # first layer runs, in that order, from the device's generator (no host sync); the op
        # gets the masked copy as its w_hh, so every step and batch entry sees the same mask and
        # autograd takes the gradient through the mask to the parameter. F.dropout scales by
        # 1 / (1 - p) and gives zeros at p = 1.
        for k in range(len(weights)):
            w = weights[k]
            weights[k] = (w[0], F.dropout(w[1], weight_drop, True), w[2], w[3], w[4])
    # zoneout and recurrent dropout: every layer's and direction's masks, drawn after weight
    # drop's and before the first layer runs, layer by layer, forward direction first
    # (`regularisers`); the op saves them for its backward
    regularised = zoneout > 0 or zoneout_cell > 0 or (recurrent_dropout > 0 and training)
    masks: List[Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]] = []
    if regularised:
        for k in range(len(weights)):
            masks.append(regularisers(x, weights[k][1], lstm, training, zoneout, zoneout_cell, recurrent_dropout))
    h_out: List[Tensor] = []
    c_out: List[Tensor] = []
    for layer in range(len(weights) // num_directions):
        if layer > 0 and dropout > 0 and training:
            # nn.LSTM's semantics: dropout on the output of every layer but the last
            x = F.dropout(x, dropout, True)
        ys: List[Tensor] = []
        for direction in range(num_directions):
            k = layer * num_directions + direction
            hk: Optional[Tensor] = None if h0 is None else h0[k]
            zh: Optional[Tensor] = None
            zc: Optional[Tensor] = None
            rec: Optional[Tensor] = None
            if regularised:
                zh, zc, rec = masks[k]
            if lstm:
                ck: Optional[Tensor] = None if c0 is None else c0[k]
                y, h, c = lstm_layer(x, hk, ck, weights[k], lengths, direction == 1, zh, zc, rec)
                c_out.append(c)
            else:
                y, h = gru_layer(x, hk, weights[k], lengths, direction == 1, zh, rec)
            h_out.append(h)
            ys.append(y)
        x = ys[0] if num_directions == 1 else torch.cat(ys, dim=2)
    return x, ([torch.stack(h_out, 0), torch.stack(c_out, 0)] if lstm else [torch.stack(h_out, 0)])


# --------------------------------------------------------------------------------------------
# torch.jit.trace and torch.fx


_scripted: Dict[str, object] = {}


def traceable(fn):
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


def fx_leaf(module: nn.Module, args: tuple, lengths=None):
    """The call recorded as one ``call_module`` node of the torch.fx.symbolic_trace in progress
    (args[0] is its Proxy), as fx records torch.nn's own RNNs and cells: fx keeps a module as
    a leaf by its class's Python module name (torch.nn.*), so it would trace into fastrnn's
    forward, whose shape checks a Proxy cannot pass. The graph runs the module's forward."""
    tracer = args[0].tracer
    kwargs = {} if lengths is None else {"lengths": lengths}
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, kwargs)

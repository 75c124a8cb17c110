"""Fake (meta) kernels, autograd formulas and FLOP counts for the ops registered by fastrnn._C.

Shapes are computed from input shapes alone, the same on every device, so torch.compile can
trace the ops without running them; a fake kernel refuses what the op refuses, with its message. Autograd calls the matching backward op, except when the
backward is itself recorded for differentiation (create_graph=True): see _recorded_backward.
"""
import torch
from torch.utils.flop_counter import register_flop_formula

from ._cells import GRU, LSTM
from ._op_checks import check_backward, check_forward
from .reference import gru_reference, gru_zoneout_reference, lstm_reference, lstm_zoneout_reference

_lib = torch.ops.fastrnn


# --------------------------------------------------------------------------------------------
# fake kernels: the C++ checks (same order, type and message: _op_checks.py), then the output
# shapes from the cell tables (_cells.py).


# The options every op takes after its own arguments, in the schema's order (ops.cpp): the layer
# norm's parameters, then the zoneout and recurrent-dropout masks. None: off. The backward ops
# then take b_ih, b_hh (read only with layer norm, whose backward recomputes the activations).
LSTM_OPTIONS = ("ln_ih", "ln_hh", "ln_c_w", "ln_c_b", "zoneout_h", "zoneout_c", "rec_mask")
GRU_OPTIONS = ("ln_ih", "ln_hh", "zoneout_h", "rec_mask")


def _lstm_options(ln_ih=None, ln_hh=None, ln_c_w=None, ln_c_b=None, zoneout_h=None, zoneout_c=None, rec_mask=None):
    return ln_ih, ln_hh, ln_c_w, ln_c_b, zoneout_h, zoneout_c, rec_mask


def _gru_options(ln_ih=None, ln_hh=None, zoneout_h=None, rec_mask=None):
    # in check_options' order (ln_ih, ln_hh, ln_c_w, ln_c_b, zoneout_h, zoneout_c, rec_mask)
    return ln_ih, ln_hh, None, None, zoneout_h, None, rec_mask


def _backward_options(options_of, names, options, kw):
    """A backward op's trailing arguments, positional or by keyword: (the options in
    check_options' order, b_ih, b_hh)."""
    given = dict(zip((*names, "b_ih", "b_hh"), options), **kw)
    return options_of(**{n: given.get(n) for n in names}), given.get("b_ih"), given.get("b_hh")


@torch.library.register_fake("fastrnn::lstm_forward")
def _lstm_forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save, *options, **kw):
    opts = _lstm_options(*options, **kw)
    T, B, _, H, P = check_forward(LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, *opts)
    ws = x.new_empty((T, B, LSTM.saved_width(H, w_hr is not None, opts[0] is not None))) if save else x.new_empty((0,))
    return x.new_empty((T, B, P)), x.new_empty((B, P)), x.new_empty((B, H)), ws


@torch.library.register_fake("fastrnn::gru_forward")
def _gru_forward_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, *options, **kw):
    opts = _gru_options(*options, **kw)
    T, B, _, H, _ = check_forward(GRU, x, h0, None, w_ih, w_hh, b_ih, b_hh, None, lengths, *opts)
    ws = x.new_empty((T, B, GRU.saved_width(H, layer_norm=opts[0] is not None))) if save else x.new_empty((0,))
    return x.new_empty((T, B, H)), x.new_empty((B, H)), ws


def _bias_grads(x, cell, H, has_bias):
    n = cell.gates * H if has_bias else 0
    return x.new_empty((n,)), x.new_empty((n,))


def _fresh(t):
    # The kernels return every gradient as a new contiguous tensor, whatever the strides of the
    # input it belongs to (a batch_first x arrives transposed): empty_like would copy those.
    return t.new_empty(t.shape)


def _fresh_or_empty(t, x):
    # an optional input's grad: empty when the input is absent
    return x.new_empty((0,)) if t is None else _fresh(t)


@torch.library.register_fake("fastrnn::lstm_backward")
def _lstm_backward_fake(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, y, ws, lengths, reverse, has_bias, *options,
                        **kw):
    opts, b_ih, b_hh = _backward_options(_lstm_options, LSTM_OPTIONS, options, kw)
    H = check_backward(LSTM, dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, y, ws, lengths, *opts, b_ih=b_ih, b_hh=b_hh)[3]
    return (_fresh(x), _fresh(h0), _fresh(c0), _fresh(w_ih), _fresh(w_hh), *_bias_grads(x, LSTM, H, has_bias),
            _fresh_or_empty(w_hr, x), *(_fresh_or_empty(t, x) for t in opts[:4]))


@torch.library.register_fake("fastrnn::gru_backward")
def _gru_backward_fake(dy, dh_n, x, h0, w_ih, w_hh, y, ws, lengths, reverse, has_bias, *options, **kw):
    opts, b_ih, b_hh = _backward_options(_gru_options, GRU_OPTIONS, options, kw)
    H = check_backward(GRU, dy, dh_n, None, x, h0, None, w_ih, w_hh, None, y, ws, lengths, *opts, b_ih=b_ih, b_hh=b_hh)[3]
    return (_fresh(x), _fresh(h0), _fresh(w_ih), _fresh(w_hh), *_bias_grads(x, GRU, H, has_bias),
            *(_fresh_or_empty(t, x) for t in opts[:2]))


# --------------------------------------------------------------------------------------------
# autograd


def _or_zeros(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def _keep_grads_undefined(ctx, ws):
    # ws (the saved activations) is an output only so that backward gets it: it has no gradient.
    # Without this, autograd hands backward a zero tensor of ws's shape ([T, B, W]: as large as
    # ws itself, and zero-filled at every backward); unused output grads arrive as None and the
    # formulas below fill in the few small zeros they need.
    ctx.mark_non_differentiable(ws)
    ctx.set_materialize_grads(False)


def _lstm_setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save, *options = inputs
    y, _, _, ws = output
    _keep_grads_undefined(ctx, ws)
    # the options too: the backward sees exactly the forward's masks
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, ws, lengths, *_lstm_options(*options))
    ctx.reverse = reverse


def _lstm_backward(ctx, dy, dh_n, dc_n, _dws):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, ws, lengths, *options = ctx.saved_tensors
    ln, (zoneout_h, zoneout_c, rec_mask) = options[:4], options[4:]
    layer_norm = ln[0] is not None
    if torch.is_grad_enabled():  # create_graph=True: this backward is differentiated in turn

        def layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, _lengths, _reverse, _save, *ln):
            return lstm_zoneout_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse, w_hr, zoneout_h,
                                          zoneout_c, rec_mask, ln if layer_norm else None)

        return _recorded_backward(ctx, layer, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, None, None, None, *ln),
                                  (dy, dh_n, dc_n))
    has_ih, has_hh = b_ih is not None, b_hh is not None
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, *dln = _lib.lstm_backward(
        _or_zeros(dy, y), _or_zeros(dh_n, h0), _or_zeros(dc_n, c0), x, h0, c0, w_ih, w_hh, w_hr, y, ws,
        lengths, ctx.reverse, has_ih or has_hh, *options, **_biases_if(layer_norm, b_ih, b_hh))
    return (dx, dh0, dc0, dw_ih, dw_hh, db_ih if has_ih else None, db_hh if has_hh else None,
            dw_hr if w_hr is not None else None, None, None, None, *(d if layer_norm else None for d in dln),
            None, None, None)


def _gru_setup(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, *options = inputs
    y, _, ws = output
    _keep_grads_undefined(ctx, ws)
    ln_ih, ln_hh, _, _, zoneout_h, _, rec_mask = _gru_options(*options)
    ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, y, ws, lengths, ln_ih, ln_hh, zoneout_h, rec_mask)
    ctx.reverse = reverse


def _gru_backward(ctx, dy, dh_n, _dws):
    x, h0, w_ih, w_hh, b_ih, b_hh, y, ws, lengths, *options = ctx.saved_tensors
    ln, (zoneout_h, rec_mask) = options[:2], options[2:]
    layer_norm = ln[0] is not None
    if torch.is_grad_enabled():  # see _lstm_backward

        def layer(x, h0, w_ih, w_hh, b_ih, b_hh, _lengths, _reverse, _save, *ln):
            return gru_zoneout_reference(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse, zoneout_h, rec_mask,
                                         ln if layer_norm else None)

        return _recorded_backward(ctx, layer, (x, h0, w_ih, w_hh, b_ih, b_hh, None, None, None, *ln), (dy, dh_n))
    has_ih, has_hh = b_ih is not None, b_hh is not None
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh, *dln = _lib.gru_backward(
        _or_zeros(dy, y), _or_zeros(dh_n, h0), x, h0, w_ih, w_hh, y, ws, lengths, ctx.reverse,
        has_ih or has_hh, *options, **_biases_if(layer_norm, b_ih, b_hh))
    return (dx, dh0, dw_ih, dw_hh, db_ih if has_ih else None, db_hh if has_hh else None,
            None, None, None, *(d if layer_norm else None for d in dln), None, None)


def _biases_if(layer_norm, b_ih, b_hh):
    # the backward ops read the biases only with layer norm (they recompute the activations)
    return {"b_ih": b_ih, "b_hh": b_hh} if layer_norm else {}


def _recorded_backward(ctx, layer, inputs, grads):
    """The backward when autograd records it (create_graph=True: gradient penalties,
    Hessian-vector products, gradgradcheck), where the fused backward, having no derivative of
    its own, cannot serve: recompute the layer from the saved inputs with reference.py's plain
    differentiable PyTorch and differentiate that with create_graph=True. The result is
    differentiable in the inputs and in the incoming grads. It is a Python loop over time, far
    slower than the kernels, and runs only in this case: first-order backward (grad mode off
    inside it, also under torch.compile) takes the fused kernels.

    inputs: the op's inputs in the op's order (None where absent or not a tensor to differentiate),
    which is also the order of its autograd formula's results; grads: the incoming grads of the
    outputs."""
    wrt = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    outs = layer(*inputs)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
    found = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wrt], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    result = [None] * len(ctx.needs_input_grad)
    for i, g in zip(wrt, found):
        result[i] = _or_zeros(g, inputs[i])
    return tuple(result)


def _no_double_backward(name):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"fastrnn::{name} has no derivative. To differentiate an LSTM/GRU twice, differentiate its "
            f"forward with create_graph=True: fastrnn then records a differentiable backward")

    return backward


def _noop_setup(ctx, inputs, output):
    pass


torch.library.register_autograd("fastrnn::lstm_forward", _lstm_backward, setup_context=_lstm_setup)
torch.library.register_autograd("fastrnn::gru_forward", _gru_backward, setup_context=_gru_setup)
torch.library.register_autograd("fastrnn::lstm_backward", _no_double_backward("lstm_backward"),
                                setup_context=_noop_setup)
torch.library.register_autograd("fastrnn::gru_backward", _no_double_backward("gru_backward"),
                                setup_context=_noop_setup)


# --------------------------------------------------------------------------------------------
# FLOP counts, for torch.utils.flop_counter.FlopCounterMode: the GEMM work, counted as torch
# counts an mm (2 * m * n * k), so a fastrnn layer counts what torch.nn's decomposed RNNs count.


def _layer_flops(x_shape, w_ih_shape, w_hh_shape, w_hr_shape) -> int:
    """One layer and direction over x [T, B, I]: the input projection x W_ih^T [G*H, I], the
    recurrent h W_hh^T [G*H, P] and, with a projection, (o * tanh c) W_hr^T [P, H], at every
    step for every entry (with lengths as well: the dense count, which bounds the work done)."""
    T, B, I = x_shape
    gates, hidden_in = w_hh_shape
    flops = 2 * T * B * gates * (w_ih_shape[1] + hidden_in)
    if w_hr_shape is not None:
        flops += 2 * T * B * w_hr_shape[0] * w_hr_shape[1]
    return flops


@register_flop_formula(_lib.lstm_forward)
def _lstm_forward_flops(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, *args, **kwargs) -> int:
    return _layer_flops(x, w_ih, w_hh, w_hr)


@register_flop_formula(_lib.gru_forward)
def _gru_forward_flops(x, h0, w_ih, w_hh, *args, **kwargs) -> int:
    return _layer_flops(x, w_ih, w_hh, None)


# The backward does two GEMMs per forward one: the input grad (dx, dh through W) and the
# weight grad (dW) of each.
@register_flop_formula(_lib.lstm_backward)
def _lstm_backward_flops(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, *args, **kwargs) -> int:
    return 2 * _layer_flops(x, w_ih, w_hh, w_hr)


@register_flop_formula(_lib.gru_backward)
def _gru_backward_flops(dy, dh_n, x, h0, w_ih, w_hh, *args, **kwargs) -> int:
    return 2 * _layer_flops(x, w_ih, w_hh, None)

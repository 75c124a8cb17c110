"""Fake (meta) kernels and autograd formulas for the ops registered by fastrnn._C.

Shapes are computed from input shapes alone, the same on every device, so torch.compile can
trace the ops without running them. Autograd calls the matching backward op; differentiating
that backward again is not supported and says so.
"""
import torch

_lib = torch.ops.fastrnn


# --------------------------------------------------------------------------------------------
# fake kernels


def _check_devices(x, lengths, **tensors):
    # The C++ kernels check devices, but a meta tensor among the inputs routes the call here
    # instead; refuse rather than return uninitialised outputs.
    for name, t in tensors.items():
        if t is not None:
            torch._check(t.device == x.device,
                         lambda: f"fastrnn: expected {name} on device {x.device} (the device of x), got {t.device}")
    if lengths is not None:
        torch._check(lengths.device == x.device or lengths.device.type == "cpu",
                     lambda: f"fastrnn: expected lengths on the CPU or on {x.device}, got {lengths.device}")


@torch.library.register_fake("fastrnn::lstm_forward")
def _lstm_forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save):
    _check_devices(x, lengths, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr)
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]  # hidden state size (projection)
    ws = x.new_empty((T, B, (5 if w_hr is None else 6) * H)) if save else x.new_empty((0,))
    return x.new_empty((T, B, P)), x.new_empty((B, P)), x.new_empty((B, H)), ws


@torch.library.register_fake("fastrnn::gru_forward")
def _gru_forward_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save):
    _check_devices(x, lengths, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    ws = x.new_empty((T, B, 4 * H)) if save else x.new_empty((0,))
    return x.new_empty((T, B, H)), x.new_empty((B, H)), ws


def _bias_grads(x, state, gates, has_bias):
    n = gates * state.shape[1] if has_bias else 0
    return x.new_empty((n,)), x.new_empty((n,))


def _fresh(t):
    # The kernels return every gradient as a new contiguous tensor, whatever the strides of the
    # input it belongs to (a batch_first x arrives transposed): empty_like would copy those.
    return t.new_empty(t.shape)


@torch.library.register_fake("fastrnn::lstm_backward")
def _lstm_backward_fake(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, y, ws, lengths, reverse, has_bias):
    _check_devices(x, lengths, dy=dy, dh_n=dh_n, dc_n=dc_n, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, y=y, ws=ws)
    dw_hr = x.new_empty((0,)) if w_hr is None else _fresh(w_hr)
    return (_fresh(x), _fresh(h0), _fresh(c0), _fresh(w_ih), _fresh(w_hh), *_bias_grads(x, c0, 4, has_bias), dw_hr)


@torch.library.register_fake("fastrnn::gru_backward")
def _gru_backward_fake(dy, dh_n, x, h0, w_ih, w_hh, y, ws, lengths, reverse, has_bias):
    _check_devices(x, lengths, dy=dy, dh_n=dh_n, h0=h0, w_ih=w_ih, w_hh=w_hh, y=y, ws=ws)
    return (_fresh(x), _fresh(h0), _fresh(w_ih), _fresh(w_hh), *_bias_grads(x, h0, 3, has_bias))


# --------------------------------------------------------------------------------------------
# autograd


def _or_zeros(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def _lstm_setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save = inputs
    y, _, _, ws = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, y, ws, lengths)
    ctx.reverse = reverse
    ctx.biases = (b_ih is not None, b_hh is not None)


def _lstm_backward(ctx, dy, dh_n, dc_n, _dws):
    x, h0, c0, w_ih, w_hh, w_hr, y, ws, lengths = ctx.saved_tensors
    has_ih, has_hh = ctx.biases
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = _lib.lstm_backward(
        _or_zeros(dy, y), _or_zeros(dh_n, h0), _or_zeros(dc_n, c0), x, h0, c0, w_ih, w_hh, w_hr, y, ws,
        lengths, ctx.reverse, has_ih or has_hh)
    return (dx, dh0, dc0, dw_ih, dw_hh, db_ih if has_ih else None, db_hh if has_hh else None,
            dw_hr if w_hr is not None else None, None, None, None)


def _gru_setup(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save = inputs
    y, _, ws = output
    ctx.save_for_backward(x, h0, w_ih, w_hh, y, ws, lengths)
    ctx.reverse = reverse
    ctx.biases = (b_ih is not None, b_hh is not None)


def _gru_backward(ctx, dy, dh_n, _dws):
    x, h0, w_ih, w_hh, y, ws, lengths = ctx.saved_tensors
    has_ih, has_hh = ctx.biases
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = _lib.gru_backward(
        _or_zeros(dy, y), _or_zeros(dh_n, h0), x, h0, w_ih, w_hh, y, ws, lengths, ctx.reverse,
        has_ih or has_hh)
    return (dx, dh0, dw_ih, dw_hh, db_ih if has_ih else None, db_hh if has_hh else None,
            None, None, None)


def _no_double_backward(name):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"fastrnn::{name} has no derivative: double backward (e.g. create_graph=True followed "
            f"by a second backward through an LSTM/GRU) is not supported by fastrnn")

    return backward


def _noop_setup(ctx, inputs, output):
    pass


torch.library.register_autograd("fastrnn::lstm_forward", _lstm_backward, setup_context=_lstm_setup)
torch.library.register_autograd("fastrnn::gru_forward", _gru_backward, setup_context=_gru_setup)
torch.library.register_autograd("fastrnn::lstm_backward", _no_double_backward("lstm_backward"),
                                setup_context=_noop_setup)
torch.library.register_autograd("fastrnn::gru_backward", _no_double_backward("gru_backward"),
                                setup_context=_noop_setup)

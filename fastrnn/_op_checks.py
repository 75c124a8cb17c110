"""The ops' argument checks for the fake kernels, in the C++ order and with the C++ messages.

csrc/include/fastrnn/layer_plan.h checks every call before running it (check_layer, the
ForwardPlan / BackwardPlan constructors, check_lengths). Under torch.compile, torch.export or a
meta tensor the fake kernel runs instead, so it checks the same things here, one for one and in
the same order, and raises the same exception type with the same message: a wrong call fails
when traced exactly as it fails when run. The one check left out: length *values* (in [1, T])
are data, which a fake tensor does not have; the kernel checks them when it runs (and CUDA
lengths are checked asynchronously there too). Keep this file and layer_plan.h in step.
"""
import torch

# c10::ScalarType's names, which the C++ messages print (operator<<).
_SCALAR_NAMES = {
    torch.float64: "Double", torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def _dtype(t):
    return _SCALAR_NAMES.get(t.dtype, str(t.dtype))


def _sizes(shape):
    """A shape as c10 prints an IntArrayRef: [4, 3, 2]."""
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _has_shape(t, want):
    return t.dim() == len(want) and all(a == b for a, b in zip(t.shape, want))


def check_same(op, name, t, x):
    torch._check(t.dtype == x.dtype,
                 lambda: f"{op}: expected {name} to have dtype {_dtype(x)} (the dtype of x), got {_dtype(t)}")
    torch._check(t.device == x.device,
                 lambda: f"{op}: expected {name} on device {x.device} (the device of x), got {t.device}")


def check_shape(op, name, t, want):
    torch._check(_has_shape(t, want), lambda: f"{op}: expected {name} of shape {_sizes(want)}, got {_sizes(t.shape)}")


def check_state(op, name, t, x, B, width):
    check_shape(op, name, t, (B, width))
    check_same(op, name, t, x)


def check_layer(op, cell, x, w_ih, w_hh, b_ih, b_hh, w_hr):
    """layer_plan.h check_layer: x [T, B, I], w_ih [G*H, I], w_hh [G*H, P], biases [G*H],
    w_hr [P, H] (P = H without one). Returns (T, B, I, H, P)."""
    G = cell.gates
    torch._check(x.dim() == 3, lambda: f"{op}: expected x of shape [T, B, I] (3-D), got {x.dim()}-D with shape "
                                       f"{_sizes(x.shape)}")
    torch._check(x.is_floating_point(), lambda: f"{op}: expected a floating point x, got {_dtype(x)}")
    torch._check(x.shape[0] >= 1 and x.shape[1] >= 1,
                 lambda: f"{op}: expected T >= 1 and B >= 1, got x of shape {_sizes(x.shape)}")
    state = "H" if w_hr is None else "P"
    torch._check(w_hh.dim() == 2 and w_hh.shape[0] % G == 0 and w_hh.shape[0] >= G,
                 lambda: f"{op}: expected w_hh of shape [{G}*H, {state}], got {_sizes(w_hh.shape)}")
    H = w_hh.shape[0] // G
    P = H
    if w_hr is not None:
        torch._check(w_hr.dim() == 2 and w_hr.shape[1] == H and w_hr.shape[0] >= 1,
                     lambda: f"{op}: expected w_hr of shape [P, H={H}], got {_sizes(w_hr.shape)}")
        P = w_hr.shape[0]
        check_same(op, "w_hr", w_hr, x)
    T, B, I = x.shape
    check_shape(op, "w_hh", w_hh, (G * H, P))
    check_shape(op, "w_ih", w_ih, (G * H, I))
    check_same(op, "w_ih", w_ih, x)
    check_same(op, "w_hh", w_hh, x)
    for name, bias in (("b_ih", b_ih), ("b_hh", b_hh)):
        if bias is not None:
            check_shape(op, name, bias, (G * H,))
            check_same(op, name, bias, x)
    return T, B, I, H, P


def check_lengths(op, lengths, x, B):
    """layer_plan.h check_lengths, less the values (see the module docstring)."""
    if lengths is None:
        return
    torch._check_type(lengths.dtype == torch.int64,
                      lambda: f"{op}: expected lengths of dtype int64, got {_dtype(lengths)}")
    torch._check_value(lengths.dim() == 1 and lengths.shape[0] == B,
                       lambda: f"{op}: expected lengths of shape [{B}] (one per batch entry), got "
                               f"{_sizes(lengths.shape)}")
    torch._check(lengths.device.type == "cpu" or lengths.device == x.device,
                 lambda: f"{op}: expected lengths on the CPU or on the device of x ({x.device}), got {lengths.device}")


def check_layer_norm(op, cell, H, x, ln_ih, ln_hh, ln_c_w, ln_c_b):
    """layer_plan.h check_layer_norm: all of the cell's layer-norm parameters or none, each [N]
    in x's dtype and device. Returns whether they are given."""
    lstm = cell.states == 2
    if ln_ih is None and ln_hh is None and ln_c_w is None and ln_c_b is None:
        return False
    names = "ln_ih, ln_hh, ln_c_w and ln_c_b" if lstm else "ln_ih and ln_hh"
    torch._check(ln_ih is not None and ln_hh is not None and (not lstm or (ln_c_w is not None and ln_c_b is not None)),
                 lambda: f"{op}: expected the layer-norm parameters {names} all given or all None")
    GH = cell.gates * H
    for name, t, n in (("ln_ih", ln_ih, GH), ("ln_hh", ln_hh, GH), ("ln_c_w", ln_c_w, H), ("ln_c_b", ln_c_b, H)):
        if t is not None:
            check_shape(op, name, t, (n,))
            check_same(op, name, t, x)
    return True


def check_regularisers(op, x, T, B, H, P, zoneout_h, zoneout_c, rec_mask):
    """layer_plan.h Regularisers: zoneout keep weights [T, B, P] / [T, B, H] or 0-dim, the
    recurrent-dropout mask [B, P]."""
    for name, z, want in (("zoneout_h", zoneout_h, (T, B, P)), ("zoneout_c", zoneout_c, (T, B, H))):
        if z is not None:
            torch._check(z.dim() == 0 or _has_shape(z, want),
                         lambda: f"{op}: expected {name} of shape {_sizes(want)} or [] (one keep weight for every "
                                 f"position), got {_sizes(z.shape)}")
            check_same(op, name, z, x)
    if rec_mask is not None:
        check_shape(op, "rec_mask", rec_mask, (B, P))
        check_same(op, "rec_mask", rec_mask, x)


def check_options(op, cell, x, T, B, H, P, ln_ih=None, ln_hh=None, ln_c_w=None, ln_c_b=None, zoneout_h=None,
                  zoneout_c=None, rec_mask=None):
    """layer_plan.h LayerPlan::options: the layer-norm parameters, then the zoneout and
    recurrent-dropout masks, then the combination not implemented."""
    ln = check_layer_norm(op, cell, H, x, ln_ih, ln_hh, ln_c_w, ln_c_b)
    check_regularisers(op, x, T, B, H, P, zoneout_h, zoneout_c, rec_mask)
    torch._check_not_implemented(not (ln and zoneout_c is not None),
                                 lambda: f"{op}: layer norm with zoneout_cell is not implemented yet")


def check_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, *options):
    """The ForwardPlan constructor's checks, then the options (check_options: ln_ih, ln_hh,
    ln_c_w, ln_c_b, zoneout_h, zoneout_c, rec_mask, as the schema orders them). Returns
    (T, B, I, H, P)."""
    op = cell.forward_op
    T, B, I, H, P = check_layer(op, cell, x, w_ih, w_hh, b_ih, b_hh, w_hr)
    check_state(op, "h0", h0, x, B, P)
    if c0 is not None:
        check_state(op, "c0", c0, x, B, H)
    check_lengths(op, lengths, x, B)
    check_options(op, cell, x, T, B, H, P, *options)
    return T, B, I, H, P


def check_backward(cell, dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, y, ws, lengths, *options, b_ih=None, b_hh=None):
    """The BackwardPlan constructor's checks, then the options (see check_forward). Returns
    (T, B, I, H, P)."""
    op = cell.backward_op
    T, B, I, H, P = check_layer(op, cell, x, w_ih, w_hh, b_ih, b_hh, w_hr)
    check_state(op, "h0", h0, x, B, P)
    if c0 is not None:
        check_state(op, "c0", c0, x, B, H)
    check_state(op, "dh_n", dh_n, x, B, P)
    if dc_n is not None:
        check_state(op, "dc_n", dc_n, x, B, H)
    check_shape(op, "dy", dy, (T, B, P))
    check_same(op, "dy", dy, x)
    check_shape(op, "y", y, (T, B, P))
    check_same(op, "y", y, x)
    torch._check(ws.numel() != 0, lambda: f"{op}: the forward saved no activations (it ran with save=False, "
                                          f"e.g. under torch.no_grad()), so there is nothing to differentiate")
    ln = bool(options) and options[0] is not None  # ln_ih given: ws holds the raw products too
    check_shape(op, "ws", ws, (T, B, cell.saved_width(H, w_hr is not None, ln)))
    check_same(op, "ws", ws, x)
    check_lengths(op, lengths, x, B)
    check_options(op, cell, x, T, B, H, P, *options)
    return T, B, I, H, P

"""The fake kernels refuse what the ops refuse, with the same exception and message.

Every bad-input case of tests/_bad_input_cases.py (one thing wrong per call) runs twice: eagerly
(the C++ checks of layer_plan.h) and on fake tensors (FakeTensorMode: the fake kernels of
fastrnn/_ops.py, which is what torch.compile and torch.export run while tracing). A subset also
runs under torch.compile(fullgraph=True), where the fake kernel's error surfaces from dynamo.
Valid calls still trace with dynamic shapes.
"""
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fastrnn  # noqa: F401  (registers the ops and their fake kernels)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bad_input_cases as bad  # noqa: E402

CPU = torch.device("cpu")

# Length *values* are data, which fake tensors do not carry: only the kernel can check them
# (fastrnn/_op_checks.py). These cases get a shape- and dtype-valid lengths tensor.
VALUE_CASES = {"lengths_zero", "lengths_T_plus_1", "lengths_negative"}


def _cases():
    out = []
    for kind in ("lstm", "gru"):
        for phase in ("fwd", "bwd"):
            groups = bad.COMMON + (bad.LSTM_ONLY if kind == "lstm" else [])
            groups += bad.FORWARD_ONLY if phase == "fwd" else bad.BACKWARD_ONLY
            groups += bad.LSTM_BACKWARD_ONLY if (kind, phase) == ("lstm", "bwd") else []
            out += [(kind, phase, False, g) for g in groups if g[0] not in VALUE_CASES]
    for phase in ("fwd", "bwd"):
        out += [("lstm", phase, True, g) for g in bad.PROJ]
    return {f"{kind}_{phase}{'_proj' if proj else ''}_{g[0]}": (kind, phase, proj, g) for kind, phase, proj, g in out}


CASES = _cases()


def _args(kind, phase, proj, mutate):
    a = (bad.forward_args if phase == "fwd" else bad.backward_args)(kind, CPU, proj)
    mutate(a, CPU)
    return a


def _call(kind, phase, a):
    return (bad.call_forward if phase == "fwd" else bad.call_backward)(kind, a)


def _raised(fn):
    """(exception type name, first line of the message), or None when fn returns."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (compared by the tests)
        return type(e).__name__, str(e).splitlines()[0]
    return None


def _fake(mode, a):
    return {k: (mode.from_tensor(v) if isinstance(v, torch.Tensor) else v) for k, v in a.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_fake_kernel_raises_what_the_op_raises(name):
    kind, phase, proj, (_, mutate, exc, match) = CASES[name]
    a = _args(kind, phase, proj, mutate)
    eager = _raised(lambda: _call(kind, phase, a))
    mode = FakeTensorMode()
    fa = _fake(mode, a)
    with mode:
        fake = _raised(lambda: _call(kind, phase, fa))
    # The case's own expectation first: where a "device" case moves a tensor to meta (no second
    # real device here), the eager call also runs the fake kernel, so only this pins it down.
    assert fake is not None, f"{name}: the fake kernel accepted the call"
    assert fake[0] in exc and all(m in fake[1] for m in match), f"{name}: {fake}"
    assert fake == eager, f"{name}:\n  eager {eager}\n  fake  {fake}"


# One case per kind of check: rank, dtype, shape, w_hr, lengths type / shape, ws.
COMPILED = ["lstm_fwd_x_rank2", "gru_fwd_h0_dtype", "lstm_fwd_w_hh_rows", "gru_fwd_b_ih_size",
            "lstm_fwd_lengths_int32", "gru_bwd_lengths_2d", "lstm_bwd_ws_shape", "gru_bwd_ws_empty",
            "lstm_bwd_dy_dtype", "lstm_fwd_proj_w_hr_cols"]


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_call_fails_with_the_eager_message(name):
    kind, phase, proj, (_, mutate, exc, match) = CASES[name]
    a = _args(kind, phase, proj, mutate)
    eager = _raised(lambda: _call(kind, phase, a))
    assert eager is not None and eager[0] in exc, f"{name}: eager gave {eager}"
    values = list(a.values())

    def f(*tensors):
        return _call(kind, phase, dict(zip(a, tensors)))

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=False)
    with pytest.raises(Exception) as info:  # dynamo wraps what the fake kernel raised
        compiled(*values)
    assert eager[1] in str(info.value), f"{name}: {info.value!r} lacks the eager message {eager[1]!r}"


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_proj"])
def test_valid_calls_trace_with_dynamic_shapes(kind):
    # The checks on symbolic sizes only add guards that hold: forward and backward (aot_eager
    # traces the backward op through its fake kernel too) match the eager call.
    cell, proj = kind.split("_")[0], kind.endswith("proj")
    a = bad.forward_args(cell, CPU, proj)
    names = [k for k, v in a.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]

    def loss(*tensors):
        b = dict(a)
        b.update(zip(names, tensors))
        out = bad.call_forward(cell, b)
        return out[0].square().sum() + out[1].sum()

    def grads(fn):
        leaves = [a[k].clone().requires_grad_() for k in names]
        return torch.autograd.grad(fn(*leaves), leaves)

    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True, dynamic=True)
    # Same kernels on the same inputs in the same order: identical results.
    for got, want in zip(grads(compiled), grads(loss)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)

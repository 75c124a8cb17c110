"""Bad-input cases for tests/test_bad_inputs.py.

Every case calls one fastrnn op (forward or backward, LSTM or GRU) with exactly one thing wrong
and says which exception it must raise and what the message must name. Run as a script,

    python tests/_bad_input_cases.py cpu [cuda]

it executes every case in this one process and prints one JSON line per case (name, device,
exception type, message; for the non-contiguous cases the largest difference to the contiguous
call), preceded by a {"start": name, "device": ...} line. test_bad_inputs.py runs it in a
subprocess (python -X faulthandler) so that a hard crash (segfault, abort) shows up as missing
lines, i.e. failed tests naming the case that was running and the child's stderr, instead of
killing pytest. `--crash-at NAME` makes case NAME segfault (the test of that reporting).
"""
import json
import sys
import traceback
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch

F64 = torch.float64
T, B, I, H, P = 4, 3, 2, 5, 3  # P: projection size for the w_hr cases
LENGTHS = [2, 4, 1]


@dataclass
class Case:
    name: str
    run: Callable[[torch.device], object]  # raises, or returns a max difference (non-contiguous cases)
    exc: Optional[Tuple[str, ...]]  # accepted exception type names; None: must not raise
    match: List[str] = field(default_factory=list)  # substrings the message must contain


def _ops():
    import fastrnn  # noqa: F401  (imported lazily: test collection only needs the case list)
    return torch.ops.fastrnn


def _gates(kind):
    return 4 if kind == "lstm" else 3


def _other_device(device):
    """A second device: CPU next to CUDA and CUDA next to CPU where a GPU exists; on a CPU-only
    machine "meta" (which routes the call to the fake kernel: see test_bad_inputs.py)."""
    if device.type != "cpu":
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("meta")


def forward_args(kind, device, proj=False):
    """Valid forward arguments (name -> value, in schema order) with lengths and biases."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(device)

    G, Pn = _gates(kind), (P if proj else H)
    a = dict(x=r(T, B, I), h0=r(B, Pn))
    if kind == "lstm":
        a["c0"] = r(B, H)
    a.update(w_ih=r(G * H, I), w_hh=r(G * H, Pn), b_ih=r(G * H), b_hh=r(G * H))
    if kind == "lstm":
        a["w_hr"] = r(P, H) if proj else None
    a.update(lengths=torch.tensor(LENGTHS, dtype=torch.int64), reverse=False, save=True)
    return a


def call_forward(kind, a):
    return getattr(_ops(), f"{kind}_forward")(*a.values())


def backward_args(kind, device, proj=False):
    """Valid backward arguments, from a forward run with save=True."""
    f = forward_args(kind, device, proj)
    out = call_forward(kind, f)
    g = torch.Generator().manual_seed(1)

    def like(t):
        return torch.randn(t.shape, generator=g, dtype=F64).to(device)

    if kind == "lstm":
        y, h_n, c_n, ws = out
        a = dict(dy=like(y), dh_n=like(h_n), dc_n=like(c_n), x=f["x"], h0=f["h0"], c0=f["c0"], w_ih=f["w_ih"],
                 w_hh=f["w_hh"], w_hr=f["w_hr"], y=y, ws=ws)
    else:
        y, h_n, ws = out
        a = dict(dy=like(y), dh_n=like(h_n), x=f["x"], h0=f["h0"], w_ih=f["w_ih"], w_hh=f["w_hh"], y=y, ws=ws)
    a.update(lengths=f["lengths"], reverse=False, has_bias=True)
    return a


def call_backward(kind, a):
    return getattr(_ops(), f"{kind}_backward")(*a.values())


# --------------------------------------------------------------------------------------------
# mutations: each returns a function that edits the argument dict in place


def resized(name, dim, delta):
    def m(a, device):
        shape = list(a[name].shape)
        shape[dim] += delta
        a[name] = torch.randn(shape, dtype=a[name].dtype).to(a[name].device)
    return m


def sliced(name):  # one fewer entry along the last dim
    def m(a, device):
        a[name] = a[name][..., :-1].contiguous()
    return m


def retyped(name, dtype):
    def m(a, device):
        a[name] = a[name].to(dtype)
    return m


def moved(name):
    def m(a, device):
        a[name] = a[name].to(_other_device(device))
    return m


def setto(name, fn):
    def m(a, device):
        a[name] = fn(a[name])
    return m


def _shape_msg(name):
    return [f"expected {name} of shape"]


# (case suffix, mutation, exception names, message substrings, applies to (kind, phase, proj))
COMMON = [
    ("x_rank2", setto("x", lambda x: x[0]), ("RuntimeError",), ["expected x of shape [T, B, I] (3-D)", "2-D"]),
    ("x_rank4", setto("x", lambda x: x.unsqueeze(0)), ("RuntimeError",),
     ["expected x of shape [T, B, I] (3-D)", "4-D"]),
    ("x_int", retyped("x", torch.int64), ("RuntimeError",), ["floating point x", "Long"]),
    ("h0_batch", resized("h0", 0, 1), ("RuntimeError",), _shape_msg("h0")),
    ("h0_hidden", resized("h0", 1, 1), ("RuntimeError",), _shape_msg("h0")),
    ("w_ih_input", resized("w_ih", 1, 1), ("RuntimeError",), _shape_msg("w_ih")),
    ("w_ih_rows", resized("w_ih", 0, -1), ("RuntimeError",), _shape_msg("w_ih")),
    ("w_hh_cols", resized("w_hh", 1, 1), ("RuntimeError",), _shape_msg("w_hh")),
    ("w_hh_rows", resized("w_hh", 0, 1), ("RuntimeError",), _shape_msg("w_hh")),
    ("w_hh_rank1", setto("w_hh", lambda w: w.flatten()), ("RuntimeError",), _shape_msg("w_hh")),
    ("h0_dtype", retyped("h0", torch.float32), ("RuntimeError",), ["expected h0 to have dtype", "Float"]),
    ("w_ih_dtype", retyped("w_ih", torch.float32), ("RuntimeError",), ["expected w_ih to have dtype", "Float"]),
    ("w_hh_dtype", retyped("w_hh", torch.float32), ("RuntimeError",), ["expected w_hh to have dtype", "Float"]),
    ("h0_device", moved("h0"), ("RuntimeError",), ["expected h0 on device"]),
    ("w_hh_device", moved("w_hh"), ("RuntimeError",), ["expected w_hh on device"]),
    ("lengths_too_long", setto("lengths", lambda l: torch.cat([l, l[:1]])), ("ValueError",),
     ["expected lengths of shape [3]"]),
    ("lengths_too_short", setto("lengths", lambda l: l[:-1]), ("ValueError",), ["expected lengths of shape [3]"]),
    ("lengths_zero", setto("lengths", lambda l: torch.tensor([2, 0, 1])), ("ValueError",),
     ["every length in [1, T=4]", "lengths[1] = 0"]),
    ("lengths_T_plus_1", setto("lengths", lambda l: torch.tensor([2, 5, 1])), ("ValueError",),
     ["every length in [1, T=4]", "lengths[1] = 5"]),
    ("lengths_negative", setto("lengths", lambda l: torch.tensor([2, 4, -3])), ("ValueError",),
     ["every length in [1, T=4]", "lengths[2] = -3"]),
    # TORCH_CHECK_TYPE gives TypeError: a wrong lengths dtype is a type error, not a bad value.
    ("lengths_float", setto("lengths", lambda l: l.double()), ("TypeError",), ["expected lengths of dtype int64"]),
    ("lengths_int32", setto("lengths", lambda l: l.int()), ("TypeError",), ["expected lengths of dtype int64"]),
    ("lengths_2d", setto("lengths", lambda l: l.unsqueeze(0)), ("ValueError",), ["expected lengths of shape [3]"]),
]
LSTM_ONLY = [
    ("c0_batch", resized("c0", 0, -1), ("RuntimeError",), _shape_msg("c0")),
    ("c0_hidden", resized("c0", 1, 2), ("RuntimeError",), _shape_msg("c0")),
    ("c0_dtype", retyped("c0", torch.float32), ("RuntimeError",), ["expected c0 to have dtype"]),
    ("c0_device", moved("c0"), ("RuntimeError",), ["expected c0 on device"]),
]
FORWARD_ONLY = [
    ("b_ih_size", resized("b_ih", 0, 1), ("RuntimeError",), _shape_msg("b_ih")),
    ("b_hh_size", resized("b_hh", 0, -1), ("RuntimeError",), _shape_msg("b_hh")),
    ("b_ih_rank2", setto("b_ih", lambda b: b.unsqueeze(0)), ("RuntimeError",), _shape_msg("b_ih")),
    ("b_hh_dtype", retyped("b_hh", torch.float32), ("RuntimeError",), ["expected b_hh to have dtype"]),
    ("b_ih_device", moved("b_ih"), ("RuntimeError",), ["expected b_ih on device"]),
]
BACKWARD_ONLY = [
    ("dy_shape", resized("dy", 2, 1), ("RuntimeError",), _shape_msg("dy")),
    ("dy_dtype", retyped("dy", torch.float32), ("RuntimeError",), ["expected dy to have dtype"]),
    ("dh_n_shape", resized("dh_n", 0, 1), ("RuntimeError",), _shape_msg("dh_n")),
    ("y_shape", resized("y", 0, -1), ("RuntimeError",), _shape_msg("y")),
    ("ws_shape", sliced("ws"), ("RuntimeError",), _shape_msg("ws")),
    ("ws_empty", setto("ws", lambda w: w.new_empty((0,))), ("RuntimeError",), ["save=False"]),
]
LSTM_BACKWARD_ONLY = [
    ("dc_n_shape", resized("dc_n", 1, -1), ("RuntimeError",), _shape_msg("dc_n")),
]
PROJ = [  # LSTM with projection: h0 / w_hh are sized by P, w_hr is [P, H]
    # P is read off w_hr, so a w_hr with too many rows disagrees with w_hh / h0: either may be named.
    ("w_hr_rows", resized("w_hr", 0, 1), ("RuntimeError",), ["expected w_h", "of shape"]),
    ("w_hr_cols", resized("w_hr", 1, -1), ("RuntimeError",), _shape_msg("w_hr")),
    ("w_hr_dtype", retyped("w_hr", torch.float32), ("RuntimeError",), ["expected w_hr to have dtype"]),
    ("proj_h0_unprojected", resized("h0", 1, H - P), ("RuntimeError",), _shape_msg("h0")),
    ("proj_w_hh_unprojected", resized("w_hh", 1, H - P), ("RuntimeError",), ["w_hh"]),
]


def _mutation_case(name, kind, phase, proj, mutate, exc, match):
    def run(device):
        a = (forward_args if phase == "fwd" else backward_args)(kind, device, proj)
        mutate(a, device)
        (call_forward if phase == "fwd" else call_backward)(kind, a)
    return Case(name, run, exc, match)


def _lengths_device_cases(kind, phase):
    """lengths on a device that is neither the CPU nor x's: "meta", which exists on every machine.

    Called normally, a meta tensor among the arguments routes the call to the fake kernel (Meta
    outranks every backend in dispatch), so `_lengths_device_fake` checks the fake kernel's refusal.
    `_lengths_device` calls x's own backend kernel directly (redispatch to its dispatch key), so the
    C++ contract check (layer_plan.h, check_lengths) is what must refuse, on a CPU-only machine too."""
    def run(device, own_kernel):
        a = (forward_args if phase == "fwd" else backward_args)(kind, device)
        a["lengths"] = a["lengths"].to("meta")
        op = getattr(_ops(), f"{kind}_{'forward' if phase == 'fwd' else 'backward'}").default
        if own_kernel:
            key = torch._C.DispatchKey.CUDA if device.type == "cuda" else torch._C.DispatchKey.CPU
            op.redispatch(torch._C.DispatchKeySet(key), *a.values())
        else:
            op(*a.values())

    op_name = f"fastrnn::{kind}_{'forward' if phase == 'fwd' else 'backward'}"
    msg = ["expected lengths on the CPU or on", "got meta"]
    return [Case(f"{kind}_{phase}_lengths_device", lambda d: run(d, True), ("RuntimeError",), [op_name + ": "] + msg),
            Case(f"{kind}_{phase}_lengths_device_fake", lambda d: run(d, False), ("RuntimeError",), msg)]


# ---------------------------------------------------------------------------------------------
# non-contiguous inputs: same results as the contiguous call


def _noncontig(t):
    """Same values, non-contiguous layout (or a stride-2 view for 1-D tensors)."""
    if t.dim() >= 2:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return torch.stack([t, t], 1)[:, 0]


def _max_diff(a, b):
    return max(((x.double() - y.double()).abs().max().item() if x.numel() else 0.0) for x, y in zip(a, b))


def _noncontig_case(kind, phase, proj):
    def run(device):
        a = (forward_args if phase == "fwd" else backward_args)(kind, device, proj)
        b = {k: (_noncontig(v) if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
        assert all(not v.is_contiguous() for v in b.values() if isinstance(v, torch.Tensor)), \
            "test setup: an argument stayed contiguous"
        if phase == "fwd":  # ws is scratch for backward (unwritten at padded steps): compare the rest
            return _max_diff(call_forward(kind, a)[:-1], call_forward(kind, b)[:-1])
        return _max_diff(call_backward(kind, a), call_backward(kind, b))
    suffix = "_proj" if proj else ""
    return Case(f"{kind}_{phase}{suffix}_noncontiguous", run, None)


def _broadcast_state_case(kind):
    """h0 (and c0) given as a stride-0 expansion of one row, as users do with zeros(1, H).expand."""
    def run(device):
        a = forward_args(kind, device)
        b = dict(a)
        for k in ("h0", "c0"):
            if k in a:
                a[k] = a[k][:1].expand(B, -1).contiguous()
                b[k] = a[k][:1].expand(B, -1)
        return _max_diff(call_forward(kind, a)[:-1], call_forward(kind, b)[:-1])
    return Case(f"{kind}_fwd_expanded_state", run, None)


def _functional_list_lengths_case(kind, bad, expect):
    def run(device):
        from fastrnn import functional as Fn
        a = forward_args(kind, device)
        if kind == "lstm":
            Fn.lstm_layer(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], lengths=bad)
        else:
            Fn.gru_layer(a["x"], a["h0"], a["w_ih"], a["w_hh"], lengths=bad)
    return Case(f"{kind}_functional_lengths_{'_'.join(map(str, bad)).replace('-', 'm')}", run, ("ValueError",),
                [expect])


def build_cases():
    cases = []
    for kind in ("lstm", "gru"):
        for phase in ("fwd", "bwd"):
            groups = COMMON + (LSTM_ONLY if kind == "lstm" else [])
            groups += FORWARD_ONLY if phase == "fwd" else BACKWARD_ONLY
            groups += LSTM_BACKWARD_ONLY if (kind, phase) == ("lstm", "bwd") else []
            for suffix, mutate, exc, match in groups:
                cases.append(_mutation_case(f"{kind}_{phase}_{suffix}", kind, phase, False, mutate, exc, match))
            cases += _lengths_device_cases(kind, phase)
            cases.append(_noncontig_case(kind, phase, False))
        cases.append(_broadcast_state_case(kind))
        cases.append(_functional_list_lengths_case(kind, [2, 0, 1], "lengths[1] = 0"))
        cases.append(_functional_list_lengths_case(kind, [2, 4, 9], "lengths[2] = 9"))
    for phase in ("fwd", "bwd"):
        for suffix, mutate, exc, match in PROJ:
            cases.append(_mutation_case(f"lstm_{phase}_{suffix}", "lstm", phase, True, mutate, exc, match))
        cases.append(_noncontig_case("lstm", phase, True))
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


CASES = {c.name: c for c in build_cases()}


def _segfault():
    import ctypes
    ctypes.string_at(0)


def main(devices, crash_at=None):
    for dev in devices:
        device = torch.device(dev)
        for name, case in CASES.items():
            print(json.dumps({"start": name, "device": dev}), flush=True)
            rec = {"name": name, "device": dev, "exc": None, "msg": "", "diff": None}
            try:
                if name == crash_at:
                    _segfault()
                rec["diff"] = case.run(device)
            except Exception as e:  # noqa: BLE001  (recorded and judged by the test)
                rec["exc"] = type(e).__name__
                rec["msg"] = str(e)
                if not isinstance(e, (RuntimeError, ValueError, TypeError)):
                    rec["msg"] += "\n" + traceback.format_exc()
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    crash = args[args.index("--crash-at") + 1] if "--crash-at" in args else None
    if crash is not None:
        del args[args.index("--crash-at"):args.index("--crash-at") + 2]
    main(args or ["cpu"], crash)

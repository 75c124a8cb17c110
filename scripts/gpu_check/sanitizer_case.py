"""Tiny LSTM / GRU forward + backward with variable lengths, small enough to run under
compute-sanitizer (memcheck, racecheck), which slows kernels down by orders of magnitude:

  compute-sanitizer --tool memcheck --error-exitcode 1 python -m scripts.gpu_check.sanitizer_case

Covers both directions, unsorted lengths including 1 and T, odd sizes (not multiples of a warp
or a tile), fp32 and bf16, the multi-layer bidirectional modules and the cells. The reference
is torch.nn on the CPU in float64 (packed sequences) with the same (rounded) weights, so the
device runs little besides fastrnn's own kernels, and a kernel that reads or writes the wrong
place fails here even without a sanitizer. Exits non-zero on any mismatch; runs on CPU too.
"""
import argparse
import sys

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # relative to the reference's magnitude (>= 1)


def _close(name, got, want, tol, failures):
    want = want.detach().double()
    err = (got.detach().cpu().double() - want).abs().max().item() / max(1.0, want.abs().max().item())
    ok = err <= tol
    print(f"  {name:<46} rel max|diff| {err:.2e}  {'ok' if ok else 'MISMATCH (tol %.0e)' % tol}")
    if not ok:
        failures.append(name)


def _ref_module(cls, dtype, *args, **kwargs):
    """A float64 CPU torch.nn module whose weights are exactly representable in `dtype`."""
    return cls(*args, **kwargs).to(dtype).double()


def _leaf(t, device, dtype):
    """The same values as a leaf on the device (rounded to dtype) and as a float64 CPU leaf."""
    t = t.to(dtype)
    return t.to(device).detach().clone().requires_grad_(), t.double().detach().requires_grad_()


def layer_cases(device, dtype, failures):
    import fastrnn.functional as F

    for cell in ("lstm", "gru"):
        for T, B, I, H in ((7, 5, 3, 9), (4, 3, 6, 130)):
            lengths = torch.tensor([T, 2, 1, T - 1, 3][:B], dtype=torch.int64)
            for reverse in (False, True):
                torch.manual_seed(0)
                ref = _ref_module(nn.LSTM if cell == "lstm" else nn.GRU, dtype, I, H, bidirectional=True)
                k = 1 if reverse else 0
                sfx = "_l0_reverse" if reverse else "_l0"
                w = [getattr(ref, n + sfx).detach().to(device, dtype)
                     for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                x, x_r = _leaf(torch.randn(T, B, I), device, dtype)
                h0, h0_r = _leaf(torch.randn(B, H), device, dtype)
                c0, c0_r = _leaf(torch.randn(B, H), device, dtype)
                # The reference: direction k of a bidirectional module over the packed batch.
                hx = torch.zeros(2, B, H, dtype=torch.float64).index_copy(0, torch.tensor([k]), h0_r.unsqueeze(0))
                cx = torch.zeros(2, B, H, dtype=torch.float64).index_copy(0, torch.tensor([k]), c0_r.unsqueeze(0))
                out, st = ref(pack_padded_sequence(x_r, lengths, enforce_sorted=False),
                              (hx, cx) if cell == "lstm" else hx)
                y_r = pad_packed_sequence(out, total_length=T)[0][..., k * H:(k + 1) * H]
                if cell == "lstm":
                    y, h, c = F.lstm_layer(x, h0, c0, *w, lengths=lengths, reverse=reverse)
                    (y.float().sum() + h.float().sum() * 0.5 + c.float().sum() * 0.25).backward()
                    (y_r.sum() + st[0][k].sum() * 0.5 + st[1][k].sum() * 0.25).backward()
                    pairs = [("y", y, y_r), ("h_n", h, st[0][k]), ("c_n", c, st[1][k]), ("dc0", c0.grad, c0_r.grad)]
                else:
                    y, h = F.gru_layer(x, h0, *w, lengths=lengths, reverse=reverse)
                    (y.float().sum() + h.float().sum() * 0.5).backward()
                    (y_r.sum() + st[k].sum() * 0.5).backward()
                    pairs = [("y", y, y_r), ("h_n", h, st[k])]
                pairs += [("dx", x.grad, x_r.grad), ("dh0", h0.grad, h0_r.grad)]
                for n, got, want in pairs:
                    _close(f"{cell} T{T} B{B} I{I} H{H} reverse={int(reverse)} {n}", got, want, TOL[dtype], failures)


def module_cases(device, dtype, failures):
    import fastrnn

    T, B, I, H = 6, 4, 5, 7
    lengths = torch.tensor([6, 1, 4, 3])
    for name in ("LSTM", "GRU"):
        torch.manual_seed(0)
        ref = _ref_module(getattr(nn, name), dtype, I, H, num_layers=2, bidirectional=True)
        mod = getattr(fastrnn, name)(I, H, num_layers=2, bidirectional=True).to(device, dtype)
        mod.load_state_dict(ref.state_dict())
        x, x_r = _leaf(torch.randn(T, B, I), device, dtype)
        y, _ = mod(x, lengths=lengths)
        y.float().sum().backward()
        out, _ = ref(pack_padded_sequence(x_r, lengths, enforce_sorted=False))
        y_r = pad_packed_sequence(out, total_length=T)[0]
        y_r.sum().backward()
        _close(f"{name} 2-layer bidirectional y", y, y_r, TOL[dtype], failures)
        _close(f"{name} 2-layer bidirectional dx", x.grad, x_r.grad, TOL[dtype], failures)
    for name in ("LSTMCell", "GRUCell"):
        torch.manual_seed(0)
        ref = _ref_module(getattr(nn, name), dtype, I, H)
        mod = getattr(fastrnn, name)(I, H).to(device, dtype)
        mod.load_state_dict(ref.state_dict())
        x, x_r = _leaf(torch.randn(B, I), device, dtype)
        got, want = mod(x), ref(x_r)
        got = got[0] if isinstance(got, tuple) else got
        want = want[0] if isinstance(want, tuple) else want
        got.float().sum().backward()
        want.sum().backward()
        _close(f"{name} h", got, want, TOL[dtype], failures)
        _close(f"{name} dx", x.grad, x_r.grad, TOL[dtype], failures)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list from fp32,bf16")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    failures = []
    for d in args.dtypes.split(","):
        print(f"[sanitizer_case] {device} {d}")
        layer_cases(device, DTYPES[d], failures)
        module_cases(device, DTYPES[d], failures)
    if device.type == "cuda":
        torch.cuda.synchronize()  # surface asynchronous kernel errors here, inside the run
    print(f"[sanitizer_case] {'FAILED: ' + ', '.join(failures) if failures else 'all ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""A small persistent case for compute-sanitizer (memcheck, racecheck, synccheck) and a quick
check on a GPU: LSTM and GRU layers with H = 301 (an uneven partition over any GPU's SMs, and
not a multiple of a warp or a tile), odd T >= 3, B = 3, lengths (host and device) and reverse,
fp32 and bf16, each forced onto the persistent forward and backward and compared with the step
loop in the same process (outputs, then the grads of every input); and a T = 1 call of each,
which runs the fused single step forward:

  FASTRNN_RECURRENCE is set here; run as  compute-sanitizer --tool racecheck python -m scripts.gpu_check.persistent_case

Exits non-zero when a call did not run on the persistent path or differs from the step loop by
more than the tolerance below. The sizes are kept small because the sanitizers slow kernels
down by orders of magnitude.
"""
import os
import sys

import torch

import fastrnn
import fastrnn.functional as F

# Tolerances from the mechanism. fp32: the two paths sum the K = 301 products of a gate in
# different orders (and the tensor-core path splits fp32 in 3xTF32, error ~2^-21 per product), so
# a pre-activation may differ by up to K * 2^-24 * sum|w h| <= 301 * 6e-8 * 7 ~ 1.3e-4 (sum|w h| <=
# sum|w| ~ 0.4 sqrt(H) ~ 7 with |w| ~ 0.5/sqrt(H) and |h| < 1); the gates' derivatives are <= 1
# and the maps contract, so outputs stay within 2e-4. bf16 (unit roundoff 2^-8): the step loop
# rounds each recurrent product (|W_hh h| <~ 1.5) to bf16 before the cell math, the persistent
# kernels do not: <~ 6e-3 a step, contracting; that can flip the rounding of a stored value by
# one ulp, at most 2^-6 = 0.016 for |c| < 4: 0.016 + 2 * 6e-3 ~ 0.03, and 5e-2 with headroom.
TOL = {torch.float32: 2e-4, torch.bfloat16: 5e-2}
# The grads: the backward's recurrent products (K = G * H <= 1204) differ between the paths as
# the forward's do, ~1.3e-4 a step in fp32 on the carried grads (contracting, as above), and a
# bf16 grad may round one ulp apart (2^-7 for |g| < 2); the weight grads then sum T * B = 15
# positions of such terms times inputs |x|, |h| <~ 1: fp32 15 * 1.3e-4 ~ 2e-3; bf16
# 15 * 2^-7 ~ 0.12, and 0.15 with headroom.
TOL_GRAD = {torch.float32: 2e-3, torch.bfloat16: 0.15}


def layer(cell, dtype, lengths, reverse, seed, T):
    g = torch.Generator().manual_seed(seed)
    B, I, H = 3, 7, 301
    G = 4 if cell == "lstm" else 3

    def r(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g) * scale).to("cuda", dtype)

    args = [r(T, B, I), r(B, H)] + ([r(B, H)] if cell == "lstm" else [])
    args += [r(G * H, I), r(G * H, H, scale=H ** -0.5), r(G * H), r(G * H)]
    fn = F.lstm_layer if cell == "lstm" else F.gru_layer
    outs = fn(*args, lengths=lengths, reverse=reverse)
    douts = [r(*o.shape) for o in outs]

    def run():
        inputs = [a.detach().requires_grad_() for a in args]
        got = fn(*inputs, lengths=lengths, reverse=reverse)
        return got, torch.autograd.grad(got, inputs, douts)

    return run


def main():
    failures = []
    for dtype in (torch.float32, torch.bfloat16):
        for cell in ("lstm", "gru"):
            cases = [(5, lengths, reverse) for lengths in (None, torch.tensor([5, 1, 3]),
                                                           torch.tensor([3, 5, 1], device="cuda"))
                     for reverse in (False, True)]
            for T, lengths, reverse in cases + [(1, None, False)]:  # T = 1: the fused single step
                run = layer(cell, dtype, lengths, reverse, seed=len(failures), T=T)
                os.environ["FASTRNN_RECURRENCE"] = "step"
                want, want_grads = run()
                os.environ["FASTRNN_RECURRENCE"] = "persistent"
                got, got_grads = run()
                path = fastrnn._C.last_path(f"{cell}_forward")["path"]
                bpath = fastrnn._C.last_path(f"{cell}_backward")["path"]
                err = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, want))
                gerr = max((a.float() - b.float()).abs().max().item() for a, b in zip(got_grads, want_grads))
                name = (f"{cell} {str(dtype)[6:]} T={T} "
                        f"lengths={None if lengths is None else lengths.device.type} reverse={int(reverse)}")
                want_path = "cuda.single_step" if T == 1 else "cuda.persistent"
                ok = (path.startswith(want_path) and bpath == "cuda.persistent_mma" and err <= TOL[dtype]
                      and gerr <= TOL_GRAD[dtype])
                print(f"  {name:<44} {path}/{bpath} max|diff| {err:.2e} grads {gerr:.2e} "
                      f"{'ok' if ok else 'FAILED'}")
                if not ok:
                    failures.append(name)
    torch.cuda.synchronize()
    print("persistent_case:", "FAILED: " + ", ".join(failures) if failures else "all ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m benchmarks.gemm_cpu: the step GEMM of the CPU recurrence, MKL against oneDNN.

For each M x K x N (h [M, K] times W_hh^T [K, N]): torch.mm (MKL, what the step loop's GEMM
calls) against oneDNN through ATen's mkldnn::_reorder_linear_weight (the weight packed once) and
mkldnn::_linear_pointwise (dense input and output), which is how an extension reaches torch's
own oneDNN (its C symbols are not exported). Best of --reps calls, wall time, GFLOP/s =
2 M K N / time, plus each op's time at a 1 x 16 x 16 product (the per-call overhead). Run it under
MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 to see the AVX2 paths on an AVX-512 machine.
No result of this tool is asserted anywhere: it informs docs/DESIGN.md.
"""
import argparse
import os
import sys
import time

import torch

SHAPES = ((6400, 512, 2048), (64, 512, 2048), (32, 256, 1024), (8, 256, 1024))


def best_time(fn, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def pair(M, K, N):
    """(mkl call, onednn call, max abs difference of their results)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) * K ** -0.5  # W_hh: [G*H, H], as the op takes it
    out = torch.empty(M, N)
    wt = w.t()
    packed = torch.ops.mkldnn._reorder_linear_weight(w, M)
    mkl = lambda: torch.mm(h, wt, out=out)  # noqa: E731
    dnn = lambda: torch.ops.mkldnn._linear_pointwise(h, packed, None, "none", [], "")  # noqa: E731
    diff = (mkl().clone() - dnn()).abs().max().item()
    return mkl, dnn, diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {k: os.environ.get(k, "-") for k in ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")}
    print(f"# {args.threads} thread(s), best of {args.reps}, load {os.getloadavg()[0]:.2f}, "
          f"ATen {torch.backends.cpu.get_cpu_capability()}, {env}")
    print("M x K x N            MKL mm GFLOP/s   oneDNN GFLOP/s   oneDNN/MKL time   max |diff|")
    for M, K, N in SHAPES:
        mkl, dnn, diff = pair(M, K, N)
        reps = max(3, args.reps // 10) if M * K * N > 1e9 else args.reps
        t = {"mkl": best_time(mkl, reps), "dnn": best_time(dnn, reps)}
        f = 2.0 * M * K * N
        print(f"{M} x {K} x {N:<10} {f / t['mkl'] / 1e9:14.1f}   {f / t['dnn'] / 1e9:14.1f}   "
              f"{t['dnn'] / t['mkl']:15.3f}   {diff:.1e}", flush=True)
    mkl, dnn, _ = pair(1, 16, 16)
    print(f"per-call time at 1 x 16 x 16: MKL mm {best_time(mkl, 200) * 1e6:.1f} us, "
          f"oneDNN {best_time(dnn, 200) * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

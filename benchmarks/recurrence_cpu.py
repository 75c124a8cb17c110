"""python -m benchmarks.recurrence_cpu: the CPU recurrence alone, persistent vs step loop.

One layer's inference forward at T = 40, I = 4 (so the recurrent product dominates the GEMM
work), fp32, for LSTM and GRU at B x H = 64x512, 32x256, 8x256, 1x256. Both paths run in the same
process (FASTRNN_RECURRENCE is read at every call), interleaved call by call; each figure is the
best of --reps calls: CPU time of the process with one thread (what a shared machine disturbs
least), wall time with more. Prints GFLOP/s = 2 T B G H (I + H) / time and persistent / step,
then the same from the medians (which, unlike the best call, also count the calls that paid
for fresh pages or a descheduled thread).
No result of this tool is asserted anywhere: it informs docs/DESIGN.md's crossover rules.
"""
import argparse
import os
import sys
import time

import torch

SHAPES = ((64, 512), (32, 256), (8, 256), (1, 256))
GATES = {"lstm": 4, "gru": 3}


def layer_call(cell, T, B, I, H):
    import fastrnn

    g = torch.Generator().manual_seed(0)
    G = GATES[cell]
    x = torch.randn(T, B, I, generator=g)
    w_ih = torch.randn(G * H, I, generator=g) * H ** -0.5
    w_hh = torch.randn(G * H, H, generator=g) * H ** -0.5
    b_ih, b_hh = torch.randn(G * H, generator=g), torch.randn(G * H, generator=g)
    if cell == "lstm":
        return lambda: fastrnn.functional.lstm_layer(x, None, None, w_ih, w_hh, b_ih, b_hh)[0]
    return lambda: fastrnn.functional.gru_layer(x, None, w_ih, w_hh, b_ih, b_hh)[0]


def measure(fn, paths, reps, cpu_time):
    """{path: sorted seconds of `reps` calls}, the paths alternating call by call."""
    clock = time.process_time if cpu_time else time.perf_counter
    times = {p: [] for p in paths}
    with torch.no_grad():
        for p in paths:  # warm-up (and first-touch of the buffers)
            os.environ["FASTRNN_RECURRENCE"] = p
            fn()
        for i in range(reps):
            for p in (paths if i % 2 == 0 else paths[::-1]):
                os.environ["FASTRNN_RECURRENCE"] = p
                t0 = clock()
                fn()
                times[p].append(clock() - t0)
    return {p: sorted(t) for p, t in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--T", type=int, default=40)
    ap.add_argument("--I", type=int, default=4)
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--shapes", default=",".join(f"{b}x{h}" for b, h in SHAPES), help="BxH,BxH,...")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import fastrnn  # noqa: F401

    kernel = torch.ops.fastrnn._cpu_persistent_kernel()
    cpu_time = args.threads == 1
    print(f"# {args.threads} thread(s), kernel {kernel}, T={args.T} I={args.I}, best of {args.reps} "
          f"({'CPU' if cpu_time else 'wall'} time), load {os.getloadavg()[0]:.2f}; "
          f"MKL_ENABLE_INSTRUCTIONS={os.environ.get('MKL_ENABLE_INSTRUCTIONS', '-')}")
    print("cell  B    H    step GFLOP/s  persistent GFLOP/s  persistent/step time  (medians)")
    saved = os.environ.get("FASTRNN_RECURRENCE")
    try:
        for cell in args.cells.split(","):
            for shape in args.shapes.split(","):
                B, H = map(int, shape.split("x"))
                fn = layer_call(cell, args.T, B, args.I, H)
                times = measure(fn, ["step", "persistent"], args.reps, cpu_time)
                best = {p: t[0] for p, t in times.items()}
                med = {p: t[len(t) // 2] for p, t in times.items()}
                flops = 2 * args.T * B * GATES[cell] * H * (args.I + H)
                rate = {p: flops / t / 1e9 for p, t in best.items()}
                print(f"{cell:5} {B:<4} {H:<4} {rate['step']:12.1f}  {rate['persistent']:18.1f}  "
                      f"{best['persistent'] / best['step']:20.3f}  ({flops / med['step'] / 1e9:.1f} / "
                      f"{flops / med['persistent'] / 1e9:.1f}, {med['persistent'] / med['step']:.3f})", flush=True)
    finally:
        if saved is None:
            os.environ.pop("FASTRNN_RECURRENCE", None)
        else:
            os.environ["FASTRNN_RECURRENCE"] = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())

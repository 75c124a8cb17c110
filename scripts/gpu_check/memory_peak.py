"""Where the peak GPU memory of a forward+backward goes: records the CUDA caching allocator's
history over one fastrnn (or torch.nn) layer call, finds the moment of the peak and lists the
blocks live then, largest first, with the Python and C++ frames that allocated them.

    python -m scripts.gpu_check.memory_peak [--config fastrnns] [--cell lstm] [--dtype fp32] [--impl fastrnn]

The benchmark suite reports the peak itself (memory/*/peak); this explains it. CUDA only.
"""
import argparse
import sys

import torch

from benchmarks import configs as C

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def _frames(event, n=4):
    frames = [f for f in event.get("frames", []) if "memory_peak.py" not in f.get("filename", "")]
    keep = [f for f in frames if "fastrnn" in f.get("filename", "") or "fastrnn" in f.get("name", "")] or frames
    return " <- ".join(f"{f['name']} ({f['filename'].rsplit('/', 1)[-1]}:{f['line']})" for f in keep[:n])


def live_at_peak(trace):
    """(peak bytes above the start, [(size, event)] live at the peak) from an allocator trace."""
    live, total, peak, at_peak = {}, 0, 0, {}
    for e in trace:
        if e["action"] == "alloc":
            live[e["addr"]] = e
            total += e["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif e["action"] == "free_requested" and e["addr"] in live:
            total -= live.pop(e["addr"])["size"]
    return peak, sorted(((e["size"], e) for e in at_peak.values()), key=lambda p: -p[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="fastrnns", choices=sorted(C.LAYER_CONFIGS))
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--impl", default="fastrnn", choices=["fastrnn", "torch.nn"])
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("memory_peak: needs a CUDA GPU")
    import fastrnn

    cfg, dtype, dev = C.LAYER_CONFIGS[args.config], DTYPES[args.dtype], torch.device("cuda")
    torch.manual_seed(0)
    ref = (torch.nn.LSTM if args.cell == "lstm" else torch.nn.GRU)(cfg.I, cfg.H, num_layers=cfg.layers)
    ref = ref.to(dev, dtype)
    mod = fastrnn.convert(ref) if args.impl == "fastrnn" else ref
    x = torch.randn(cfg.T, cfg.B, cfg.I, device=dev, dtype=dtype, requires_grad=True)
    gy = torch.randn(cfg.T, cfg.B, cfg.H, device=dev, dtype=dtype)
    for _ in range(2):  # warm up: cuBLAS workspaces, cuDNN plans
        mod(x)[0].backward(gy)
    x.grad = None
    for p in mod.parameters():
        p.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=100000, stacks="all")
    mod(x)[0].backward(gy)
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snap["device_traces"][dev.index or 0]
    peak, blocks = live_at_peak(trace)
    print(f"{args.impl} {args.config} {args.cell} {args.dtype}: peak {peak / 2**20:.1f} MiB above "
          f"{base / 2**20:.1f} MiB allocated before (max_memory_allocated - base: "
          f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.1f} MiB)")
    for size, e in blocks[:args.top]:
        print(f"  {size / 2**20:8.2f} MiB  {_frames(e)}")


if __name__ == "__main__":
    main()

"""python -m benchmarks: fastrnn vs torch.nn (cuDNN on GPU, ATen/oneDNN on CPU), side by side in
one process: layer timings (forward, forward+backward), variable lengths, peak/saved memory, a
char-LM training step and char-by-char generation. Writes a table to stdout, and
OUT/fastrnn-bench_<device>_<date>.{json,txt,png}; progress goes to stderr."""
import argparse
import os
import signal
import sys
import time
import traceback

import torch

from . import cases
from . import configs as C
from . import envinfo, report
from .timing import plan_for, progress


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    ap.add_argument("--configs", default=",".join(C.ALL_CONFIGS),
                    help="comma list from %s (default: all)" % ",".join(C.ALL_CONFIGS))
    ap.add_argument("--cells", default="lstm,gru",
                    help="cells for the layer configs: lstm,gru (varlen runs lstm, or gru if only gru is given)")
    ap.add_argument("--dtype", default=None,
                    help="comma list from %s (default: fp32,bf16 on cuda, fp32 on cpu)" % ",".join(cases.DTYPES))
    ap.add_argument("--tf32", action="store_true",
                    help="allow TF32 in both matmul (fastrnn) and cuDNN (nn.LSTM); default: off on both")
    ap.add_argument("--quick", action="store_true",
                    help="reduced run: T=%d (large: T=%d), %d generated chars, few repetitions"
                    % (C.QUICK_T, C.LAYER_CONFIGS["large"].quick_T, C.QUICK_CHARS))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default="bench_out", help="output directory (default: bench_out)")
    ap.add_argument("--corpus", default=None, help="UTF-8 text for the char-LM (default: pydoc_data.topics)")
    args = ap.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in args.configs if c not in C.ALL_CONFIGS]
    if bad:
        ap.error(f"unknown config(s) {bad}; choose from {list(C.ALL_CONFIGS)}")
    args.cells = [c for c in args.cells.split(",") if c]
    if any(c not in ("lstm", "gru") for c in args.cells):
        ap.error("--cells takes lstm and/or gru")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda but no CUDA GPU is visible")
        if args.device.index is None:  # torch.cuda.set_device wants an index
            args.device = torch.device("cuda", torch.cuda.current_device())
    args.dtype = [d for d in (args.dtype or ("fp32,bf16" if args.device.type == "cuda" else "fp32")).split(",") if d]
    if any(d not in cases.DTYPES for d in args.dtype):
        ap.error(f"--dtype takes {list(cases.DTYPES)}")
    return args


def build_jobs(args, plan):
    jobs = []
    for name in args.configs:
        if name in C.LAYER_CONFIGS:
            cfg = C.LAYER_CONFIGS[name]
            jobs += cases.layer_jobs(C.quick(cfg) if args.quick else cfg, args.cells, args.dtype, args.device, plan)
    if "varlen" in args.configs:
        base = C.LAYER_CONFIGS[C.VARLEN_BASE]
        jobs += cases.varlen_jobs(C.quick(base) if args.quick else base, [c for c in args.cells if c == "lstm"] or
                                  args.cells, args.dtype, args.device, plan)
    if "wdrop" in args.configs:
        jobs += cases.wdrop_jobs(C.quick(C.WDROP) if args.quick else C.WDROP, args.dtype, args.device, plan)
    if "zoneout" in args.configs:
        jobs += cases.zoneout_jobs(C.quick(C.ZONEOUT) if args.quick else C.ZONEOUT, args.dtype, args.device, plan)
    if "layernorm" in args.configs:
        jobs += cases.layernorm_jobs(C.quick(C.LAYERNORM) if args.quick else C.LAYERNORM, args.dtype, args.device,
                                     plan)
    if "train" in args.configs:
        jobs += cases.train_jobs(args.dtype, args.device, plan, args.quick, args.corpus)
    if "generate" in args.configs:
        jobs += cases.generate_jobs(args.dtype, args.device, plan, args.quick, args.corpus)
    return jobs


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # `timeout` sends SIGTERM: still write what was measured
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
        envinfo.set_tf32(args.tf32)
    import fastrnn  # noqa: F401  (registers the ops; fail early and clearly)

    plan = plan_for(args.device, args.quick)
    meta = envinfo.collect(args.device)
    if args.device.type == "cpu":  # the ceiling each CPU case's GFLOP/s is set against (report.add_rates)
        meta["gemm_peak"] = {d: envinfo.gemm_peak(cases.DTYPES[d], reps=3 if args.quick else 5) for d in args.dtype}
    meta.update(quick=args.quick, argv=sys.argv[1:], plan=vars(plan), configs=args.configs, cells=args.cells,
                dtypes=args.dtype, complete=False)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "fastrnn-bench_%s_%s" % (envinfo.slug(meta),
                                                           meta["date"].replace(":", "").replace("-", "")))
    doc = {"schema": 1, "meta": meta, "results": []}
    jobs = build_jobs(args, plan)
    progress(f"[benchmarks] {len(jobs)} jobs on {meta['device_name']} ({args.device}), "
             f"{meta['threads']} threads, dtypes {args.dtype}{', quick' if args.quick else ''} -> {stem}.*")
    load = meta.get("loadavg_start")
    if args.device.type == "cpu" and load and load[0] > 0.5:
        progress(f"[benchmarks] warning: load average {load[0]:.1f} at start; CPU timings need a quiet machine")
    t_all = time.perf_counter()
    failed = 0
    try:
        for i, (label, job) in enumerate(jobs, 1):
            progress(f"[{i}/{len(jobs)}] {label} ...")
            t0 = time.perf_counter()
            try:
                recs = job()
            except KeyboardInterrupt:
                raise
            except Exception:  # one broken case must not lose the others; it is reported below
                failed += 1
                err = traceback.format_exc()
                progress(err)
                recs = [{"name": label.replace(" ", "/"), "group": label.split()[0], "error": err}]
            for rec in recs:
                report.add_rates(rec, meta.get("gemm_peak"))
            doc["results"] += recs
            report.write_json(stem + ".json", doc)
            ratios = [f"{k}={v:.3f}" for r in recs for k, v in r.get("ratios", {}).items()]
            progress(f"    {time.perf_counter() - t0:.1f}s  " + ("  ".join(ratios) or "FAILED"))
        doc["meta"]["complete"] = True
    except KeyboardInterrupt as e:
        progress(f"[benchmarks] interrupted ({e}); writing partial results")
        failed += 1
    doc["meta"]["elapsed_s"] = round(time.perf_counter() - t_all, 1)
    doc["meta"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report.write_json(stem + ".json", doc)
    text = report.table(doc["meta"], doc["results"])
    with open(stem + ".txt", "w") as f:
        f.write(text + "\n")
    png = report.write_png(stem + ".png", doc["meta"], doc["results"])
    print(text)
    progress(f"[benchmarks] done in {doc['meta']['elapsed_s']}s: {stem}.json, {stem}.txt"
             + (f", {stem}.png" if png else "") + (f"; {failed} job(s) failed" if failed else ""))
    return 1 if failed else 0

#!/usr/bin/env python3
"""Print a Markdown performance table from a benchmark results JSON (python -m benchmarks).

  scripts/render_perf_table.py                      newest JSON under benchmarks/results/
  scripts/render_perf_table.py RESULT.json          that file
  scripts/render_perf_table.py --device cuda        newest GPU result
  scripts/render_perf_table.py --write README.md    also replace the block between
                                                    <!-- perf-table:start --> and <!-- perf-table:end -->

Every number printed comes from the file; nothing is recomputed or estimated.
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import report  # noqa: E402  (pure Python: json/os, no torch)
from benchmarks.configs import LAYER_CONFIGS  # noqa: E402  (dataclasses only)

START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"


def newest(directory: str, device=None) -> str:
    found = []
    for path in glob.glob(os.path.join(directory, "**", "*.json"), recursive=True):
        try:
            with open(path) as f:
                meta = json.load(f).get("meta", {})
        except (OSError, ValueError, AttributeError):
            continue
        # the table is the layer suite's: a kept run of option cases only (--configs wdrop) is not it
        if not set(meta.get("configs", LAYER_CONFIGS)) & set(LAYER_CONFIGS):
            continue
        if "date" in meta and (device is None or meta.get("device") == device):
            found.append((meta["date"], path))
    if not found:
        sys.exit(f"no benchmark results JSON{' for ' + device if device else ''} under {directory}")
    return max(found)[1]


def markdown(doc: dict, source: str) -> str:
    meta = doc["meta"]
    tf32 = ""
    if meta["device"] == "cuda":
        tf32 = "; TF32 " + ", ".join(f"{k}={v}" for k, v in meta["tf32"].items())
    lines = [
        f"Measured on **{meta['device_name']}** ({meta['device']}, {meta['threads']} CPU threads), "
        f"torch {meta['torch']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}{tf32}; "
        f"commit `{str(meta.get('git_commit'))[:12]}`{' (dirty tree)' if meta.get('git_dirty') else ''}, "
        f"{meta['date']}{', quick run' if meta.get('quick') else ''}"
        f"{'' if meta.get('complete', True) else ', INCOMPLETE run'}. Source: `{source}`.",
        "",
        "Ratio = fastrnn / baseline, both measured in the same process (time, or bytes for memory): "
        "below 1 means fastrnn is faster or smaller. Times are medians, [interquartile range].",
        "",
    ]
    for extra in (report.cpu_text(meta), report.peak_text(meta)):
        if extra:
            lines += [extra + ".", ""]
    lines += [
        "| case | shape | dtype | fastrnn | baseline | baseline value | ratio | GFLOP/s (of peak) | |",
        "|---|---|---|---:|---|---:|---:|---:|---|",
    ]
    for label, shape, dtype, fast, base, base_val, ratio, rates, extra in report.rows(doc["results"]):
        r = "-" if ratio is None else f"{ratio:.3f}"
        lines.append(f"| {label} | {shape} | {dtype} | {fast} | {base} | {base_val} | {r} | {rates} | {extra} |")
    return "\n".join(lines)


def rewrite(path: str, block: str) -> None:
    with open(path) as f:
        text = f.read()
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        sys.exit(f"{path}: markers {START} ... {END} not found (in that order)")
    with open(path, "w") as f:
        f.write(text[:i + len(START)] + "\n" + block + "\n" + text[j:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="?", help="results file (default: the newest under --dir)")
    ap.add_argument("--dir", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--device", choices=["cpu", "cuda"], help="pick the newest result of this device")
    ap.add_argument("--write", metavar="README", help="rewrite the perf-table block of this file")
    args = ap.parse_args(argv)
    path = args.json or newest(args.dir, args.device)
    with open(path) as f:
        doc = json.load(f)
    source = os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else os.path.basename(path)
    block = markdown(doc, source)
    print(block)
    if args.write:
        rewrite(args.write, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

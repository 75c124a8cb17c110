"""Stdout table, JSON file and PNG chart of the ratios."""
import json
import os
from typing import List


def _num(v):
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.4f}"


def fmt_value(v, unit):
    if v is None:
        return "-"
    if unit == "bytes":
        return f"{v / 2**20:.2f} MiB"
    return f"{_num(v)} {unit}"


def _spread(impl):
    ms = impl.get("ms")
    if not ms:
        return ""
    return f" [{_num(ms['q1'])}-{_num(ms['q3'])}]"


def add_rates(rec: dict, peaks) -> None:
    """Each impl's achieved rate: `gflops` = the record's GEMM flops (cases.rnn_gemm_flops: the
    same work counted for every side) / its median time, and `peak_fraction` = that over the
    machine's large-GEMM rate for the record's dtype measured in the same run (meta.gemm_peak,
    CPU runs only). Records without a flop count (memory) are left alone."""
    flops = rec.get("flops")
    if not flops or "error" in rec or rec.get("unit", "").split("/")[0] != "ms":
        return
    peak = (peaks or {}).get(rec["dtype"])
    for impl in rec["impls"].values():
        impl["gflops"] = flops["count"] / (impl["value"] / 1e3) / 1e9
        if peak:
            impl["peak_fraction"] = impl["gflops"] / peak["gflops"]


def rate_text(impl: dict) -> str:
    """'71.2 (64%)': GFLOP/s and the fraction of the machine's GEMM rate, or '' where unknown."""
    if "gflops" not in impl:
        return ""
    frac = impl.get("peak_fraction")
    return _num(impl["gflops"]) + (f" ({100 * frac:.0f}%)" if frac is not None else "")


def shape_text(r: dict) -> str:
    """Compact shape, e.g. T100 B64 I512 H512 L1."""
    s = r.get("shape", {})
    keys = [("T", "T"), ("B", "B"), ("I", "I"), ("emb", "E"), ("H", "H"), ("layers", "L"), ("vocab", "V")]
    return " ".join(f"{short}{s[k]}" for k, short in keys if k in s)


def case_label(r: dict) -> str:
    parts = [r["group"]] + [p for p in (r["config"], r["cell"], r["mode"]) if p != r["group"]]
    return " ".join(parts)


def rows(results: List[dict]):
    """One row per ratio: (label, shape, dtype, fastrnn text, baseline name, baseline text, ratio,
    rates, extra); rates: GFLOP/s (fraction of the machine's GEMM rate) of fastrnn / of the baseline."""
    out = []
    for r in results:
        if "error" in r:
            out.append((r["name"], "", "", "ERROR", "", "", None, "", r["error"].strip().splitlines()[-1][:80]))
            continue
        fast = r["impls"]["fastrnn"]
        label = case_label(r)
        for b in r["baselines"]:
            base = r["impls"][b]
            extra = []
            if "tokens_per_s" in fast:
                extra.append(f"tok/s {fast['tokens_per_s']:.0f} vs {base['tokens_per_s']:.0f}")
            if "host_ms" in fast and "host_ms" in base:  # GPU: time to enqueue the work on the host
                extra.append(f"host {_num(fast['host_ms']['median'])} vs {_num(base['host_ms']['median'])} ms")
            if "lengths_min" in r["shape"]:
                extra.append(f"lengths {r['shape']['lengths_min']}..{r['shape']['lengths_max']}")
            paths = sorted({v["path"] for v in fast.get("paths", {}).values() if v})
            if paths:
                extra.append("ran " + ", ".join(paths))
            rates = f"{rate_text(fast)} / {rate_text(base)}" if "gflops" in fast else ""
            out.append((label, shape_text(r), r["dtype"], fmt_value(fast["value"], r["unit"]) + _spread(fast), b,
                        fmt_value(base["value"], r["unit"]) + _spread(base), r["ratios"][f"fastrnn/{b}"], rates,
                        "; ".join(extra)))
    return out


def header_lines(meta: dict) -> List[str]:
    dev = meta["device_name"]
    lines = [f"fastrnn benchmarks on {meta['device']}: {dev}  ({meta['date']}, commit {str(meta.get('git_commit'))[:12]}"
             + (" dirty" if meta.get("git_dirty") else "") + ")",
             f"torch {meta['torch']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}, CPU {meta['cpu_model']}, "
             f"{meta['threads']} threads" + (", quick run" if meta.get("quick") else "")
             + (", load average %.1f -> %.1f" % (meta["loadavg_start"][0], meta["loadavg_end"][0])
                if meta.get("loadavg_start") and meta.get("loadavg_end") else "")]
    if meta["device"] == "cuda":
        lines.append("TF32: " + ", ".join(f"{k}={v}" for k, v in meta["tf32"].items()))
    cpu = cpu_text(meta)
    if cpu:
        lines.append(cpu)
    lines.append("ratio = fastrnn / baseline (time or bytes; < 1 means fastrnn is faster or smaller); "
                 "times: median [IQR]")
    peak = peak_text(meta)
    if peak:
        lines.append(peak)
    return lines


def peak_text(meta: dict) -> str:
    """What the GFLOP/s column means and the machine's GEMM rate it is a fraction of ('' without)."""
    if not meta.get("gemm_peak"):
        return ""
    return ("GFLOP/s: the case's GEMM flops (recurrent + input products, and the backward's) / median time, "
            "fastrnn / baseline, (%) of the machine's large-GEMM rate measured in the same run: "
            + ", ".join(f"{d} {_num(p['gflops'])} GFLOP/s (torch.mm {p['shape'][0]}x{p['shape'][1]} @ "
                        f"{p['shape'][1]}x{p['shape'][2]}, best of {p['reps']})" for d, p in meta["gemm_peak"].items()))


def cpu_text(meta: dict) -> str:
    """One line on the CPU: vendor, ISA features present, ATen's capability, ISA limits set in the
    environment, and the persistent recurrence's micro-kernel ('' for results without it)."""
    cpu = meta.get("cpu")
    if not cpu:
        return ""
    isa = ",".join(k for k, v in (cpu.get("isa") or {}).items() if v) or "-"
    env = " ".join(f"{k}={v}" for k, v in cpu.get("env", {}).items())
    return (f"CPU vendor {cpu.get('vendor')}, ISA {isa}, ATen {cpu.get('aten_cpu_capability')}, "
            f"persistent micro-kernel {cpu.get('persistent_kernel')}" + (f", env {env}" if env else ""))


def table(meta: dict, results: List[dict]) -> str:
    body = rows(results)
    head = ("case", "shape", "dtype", "fastrnn", "baseline", "baseline value", "ratio", "GFLOP/s (of peak)", "")
    cells = [head] + [row[:6] + ("-" if row[6] is None else f"{row[6]:.3f}",) + row[7:] for row in body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = header_lines(meta) + [""]
    for i, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)  # a reader (or a killed run) never sees half a file


def write_png(path: str, meta: dict, results: List[dict]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    bars = []
    for r in results:
        if "error" in r:
            continue
        for b in r["baselines"]:
            label = f"{case_label(r)} {r['dtype']}"
            if len(r["baselines"]) > 1:
                label += f" vs {b.replace('torch.nn ', '')}"
            bars.append((label, r["ratios"][f"fastrnn/{b}"], r["group"]))
    if not bars:
        return False
    groups = sorted({g for _, _, g in bars})
    palette = plt.get_cmap("tab10")
    color = {g: palette(i % 10) for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.26 * len(bars)))
    y = list(range(len(bars)))[::-1]
    values = [v for _, v, _ in bars]
    # Bars grow from 1 (parity) towards the ratio, on a log axis: 0.5 and 2 look equally far.
    ax.barh(y, [v - 1.0 for v in values], left=1.0, color=[color[g] for _, _, g in bars])
    ax.set_yticks(y, [lab for lab, _, _ in bars], fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    lo, hi = min(values + [1.0]) / 1.3, max(values + [1.0]) * 1.3
    ax.set_xlim(lo, hi)
    ticks = [t for t in (0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 10, 20, 50) if lo <= t <= hi]
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{t:g}" for t in ticks]))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("fastrnn / torch.nn  (time or bytes, log scale; < 1: fastrnn better)")
    for yy, v in zip(y, values):
        ax.text(v, yy, f" {v:.2f} ", va="center", ha="left" if v >= 1 else "right", fontsize=6)
    ax.set_title(f"fastrnn vs torch.nn on {meta['device_name']} ({meta['threads']} threads)\n"
                 f"{meta['date']}, torch {meta['torch']}" + (", quick run" if meta.get("quick") else ""), fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[g]) for g in groups]
    ax.legend(handles, groups, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

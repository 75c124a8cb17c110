"""What a result needs to be interpreted: device, versions, threads, precision settings, commit."""
import datetime
import os
import platform
import re
import subprocess
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# /proc/cpuinfo flags that decide which kernels (fastrnn's, MKL's, oneDNN's) a CPU can run.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# Environment variables that limit the ISA the libraries use, or their threads.
CPU_ENV = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
           "OMP_NUM_THREADS", "MKL_NUM_THREADS", "FASTRNN_RECURRENCE", "FASTRNN_CPU_KERNEL")


def _cpuinfo_fields() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        pass
    return fields


def cpu_info() -> dict:
    """What a CPU timing depends on beyond the model name: vendor, the ISA features the kernels
    use, torch's ATen CPU capability, the ISA / thread limits set in the environment, and which
    micro-kernel fastrnn's persistent CPU recurrence runs in this process."""
    fields = _cpuinfo_fields()
    flags = set(fields.get("flags", "").split())
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    try:
        kernel = torch.ops.fastrnn._cpu_persistent_kernel()
    except (AttributeError, RuntimeError):  # an older build without the op
        kernel = None
    return {
        "model": cpu_model(),
        "vendor": fields.get("vendor_id") or platform.processor() or None,
        "isa": {f: f in flags for f in ISA_FLAGS} if flags else None,
        "aten_cpu_capability": capability,
        "env": {k: os.environ[k] for k in CPU_ENV if k in os.environ},
        "threads": torch.get_num_threads(),
        "logical_cpus": os.cpu_count(),
        "persistent_kernel": kernel,
    }


def gemm_peak(dtype: torch.dtype = torch.float32, reps: int = 5, shape=(6400, 512, 2048)) -> dict:
    """The machine's large-GEMM rate, the ceiling the CPU cases are set against: torch.mm of
    [M, K] @ [K, N] (default: the fastrnns input projection, 6400 x 512 @ 512 x 2048), best of
    `reps` timed calls after one warm-up, in GFLOP/s (2 M K N flops a call)."""
    M, K, N = shape
    g = torch.Generator().manual_seed(0)
    a = torch.randn(M, K, generator=g).to(dtype)
    b = torch.randn(K, N, generator=g).to(dtype)
    out = torch.empty(M, N, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return {"shape": [M, K, N], "dtype": str(dtype).replace("torch.", ""), "reps": reps, "best_ms": best * 1e3,
            "gflops": 2.0 * M * K * N / best / 1e9}


def _git(*args):
    try:
        r = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=20)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _new_tf32_api() -> bool:
    cd = torch.backends.cudnn
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(getattr(cd, "rnn", None),
                                                                             "fp32_precision")


def set_tf32(enabled: bool) -> None:
    """Set TF32 for both matmuls (fastrnn's GEMMs) and cuDNN (nn.LSTM) so that the two sides run
    the same precision; PyTorch's defaults differ (matmul off, cuDNN on). Newer torch refuses to
    mix the legacy allow_tf32 flags with the fp32_precision API, so only one of them is used."""
    mm, cd = torch.backends.cuda.matmul, torch.backends.cudnn
    if _new_tf32_api():
        value = "tf32" if enabled else "ieee"
        mm.fp32_precision = value
        cd.fp32_precision = value
        cd.rnn.fp32_precision = value
        cd.conv.fp32_precision = value
    else:
        mm.allow_tf32 = enabled
        cd.allow_tf32 = enabled


def tf32_state() -> dict:
    mm, cd = torch.backends.cuda.matmul, torch.backends.cudnn
    if _new_tf32_api():
        reads = {"matmul.fp32_precision": lambda: mm.fp32_precision,
                 "cudnn.fp32_precision": lambda: cd.fp32_precision,
                 "cudnn.rnn.fp32_precision": lambda: cd.rnn.fp32_precision}
    else:
        reads = {"matmul.allow_tf32": lambda: mm.allow_tf32, "cudnn.allow_tf32": lambda: cd.allow_tf32}
    state = {}
    for name, read in reads.items():
        try:
            state[name] = read()
        except RuntimeError as e:  # torch refuses some reads after mixed settings
            state[name] = f"unreadable: {e}"[:120]
    return state


def collect(device: torch.device) -> dict:
    import fastrnn

    now = datetime.datetime.now(datetime.timezone.utc)
    info = {
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "fastrnn": getattr(fastrnn, "__version__", None),
        "fastrnn_cuda_build": torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::lstm_forward", "CUDA"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None,
        "tf32": tf32_state(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        info["git_dirty"] = bool(status)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["capability"] = "%d.%d" % (props.major, props.minor)
        info["gpu_memory_bytes"] = props.total_memory
        info["sm_count"] = props.multi_processor_count
    return info


def slug(info: dict) -> str:
    """Short file-name-safe device tag, e.g. cuda-nvidia-h100-80gb-hbm3, cpu-intel-xeon-processor."""
    name = re.sub(r"\((r|tm|c)\)", "", info["device_name"].lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:40].strip("-")
    return f"{info['device']}-{name}" if name else info["device"]

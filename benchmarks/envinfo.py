"""What a result needs to be interpreted: device, versions, threads, precision settings, commit."""
import datetime
import os
import platform
import re
import subprocess

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

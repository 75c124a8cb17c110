"""Small helpers shared by the example scripts (not part of the fastrnn package).

`examples` is a package: the scripts import `examples._common` and `examples.charlm`, with the
repository root on sys.path (they add it when run directly; pytest's `pythonpath` and
`python -m benchmarks` from the root have it).
"""
import contextlib
import statistics
import sys
import time

import torch
from torch import nn

BACKENDS = ("fastrnn", "torch")


def rnn_class(cell: str, backend: str):
    """nn.LSTM / nn.GRU or their fastrnn drop-ins. fastrnn is imported lazily so that the
    torch.nn path runs even where the extension is not built."""
    if backend == "fastrnn":
        import fastrnn
        return {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell]
    if backend == "torch":
        return {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
    raise ValueError(f"unknown rnn backend {backend!r}; expected one of {BACKENDS}")


def pick_device(name=None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, amp: str):
    """Mixed-precision context for --amp {none,bf16,fp16}."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_note(device: torch.device) -> str:
    """The TF32 settings that decide what float32 means on a GPU (cuDNN's RNNs use TF32 by default)."""
    if device.type != "cuda":
        return ""
    return (f", TF32: cuDNN {torch.backends.cudnn.allow_tf32}, matmul "
            f"{torch.backends.cuda.matmul.allow_tf32}")


@contextlib.contextmanager
def no_tf32():
    """Full float32 in cuDNN and cuBLAS, for comparing results rather than speed."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def sync(device: torch.device):
    """Wait for queued GPU work so wall-clock timings measure the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(fns: dict, device: torch.device, repeats: int, warmup: int = 2) -> dict:
    """Median wall-clock seconds of each fn() in `fns` ({name: fn}) over `repeats` runs after
    `warmup` untimed ones. Runs are interleaved (a, b, a, b, ...) so that a burst of load from
    elsewhere on the machine hits every candidate alike instead of one of them."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def detach_state(state):
    """Cut the autograd history of an RNN state (tensor or tuple of tensors) for truncated BPTT."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(s.detach() for s in state)


def state_to(state, device):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.to(device)
    return tuple(s.to(device) for s in state)


class Progress:
    """One progress line rewritten in place with \\r on a terminal; on a pipe or a log file
    (where \\r makes a mess) a plain line every `every` steps instead."""

    def __init__(self, every: int = 50, stream=None):
        self.stream = stream if stream is not None else sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = max(1, every)
        self._open = False  # a \r line is on screen without its newline

    def update(self, step: int, msg: str, force: bool = False):
        if self.tty:
            self.stream.write("\r" + msg.ljust(79))
            self.stream.flush()
            self._open = True
        elif force or step % self.every == 0:
            self.stream.write(msg + "\n")
            self.stream.flush()

    def print(self, msg: str):
        """A permanent line (e.g. validation result) that must not be overwritten."""
        self.close()
        self.stream.write(msg + "\n")
        self.stream.flush()

    def close(self):
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

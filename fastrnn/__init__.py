"""fastrnn: fused LSTM and GRU kernels (CPU + CUDA) behind torch.nn-compatible modules."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  registers torch.ops.fastrnn.*
from . import _ops  # noqa: F401  fake kernels + autograd
from . import functional
from .modules import GRU, LSTM, GRUCell, LSTMCell
from .convert import convert, to_torch
from . import onnx  # noqa: F401  ONNX export: registers the TorchScript exporter's symbolics

__all__ = ["functional", "built_with_cuda", "LSTM", "GRU", "LSTMCell", "GRUCell", "convert", "to_torch"]
__version__ = "0.1.0"


def built_with_cuda() -> bool:
    """Whether this build of fastrnn has CUDA kernels (whether or not a GPU is visible)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::lstm_forward", "CUDA")

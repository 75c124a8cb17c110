"""fastrnn: fused LSTM and GRU kernels (CPU + CUDA) behind torch.nn-compatible modules."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  registers torch.ops.fastrnn.*
from . import _ops  # noqa: F401  fake kernels + autograd
from . import functional

__all__ = ["functional"]
__version__ = "0.1.0"

"""fastrnn: fused LSTM and GRU kernels (CPU + CUDA) behind torch.nn-compatible modules."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  registers torch.ops.fastrnn.*
from . import _ops  # noqa: F401  fake kernels + autograd
from . import functional
from .modules import GRU, LSTM, GRUCell, LSTMCell
from .convert import convert, to_torch
from . import onnx  # noqa: F401  ONNX: symbolics now, the default exporter's translations at its first use

# torch.load(weights_only=True), the default, refuses classes it does not know; allowing these
# lets a whole-module checkpoint (torch.save(model)) of fastrnn modules load. They only store
# their state when unpickled (nn.RNNBase's / nn.Module's __setstate__), running nothing else.
# torch.nn's own classes (nn.Sequential, nn.Linear, nn.LSTM, ...) stay as torch decides.
torch.serialization.add_safe_globals([LSTM, GRU, LSTMCell, GRUCell])

__all__ = ["functional", "built_with_cuda", "LSTM", "GRU", "LSTMCell", "GRUCell", "convert", "to_torch"]
__version__ = "0.1.0"


def built_with_cuda() -> bool:
    """Whether this build of fastrnn has CUDA kernels (whether or not a GPU is visible)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::lstm_forward", "CUDA")

"""Swap torch.nn recurrent modules for fastrnn's (``convert``) and back (``to_torch``).

The new module gets the same configuration and the very same Parameter objects (so an optimizer
built before the swap keeps working and nothing is copied), the same device, dtype, training
mode and hooks. Only exact nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell instances are swapped: a
subclass may override forward or anything else, and swapping it would silently drop that, so it
is left alone with a warning, as are modules on a device or in a dtype the kernels do not support.
fastrnn's own modules (and subclasses of them) are left alone silently by ``convert``, although
fastrnn.LSTMCell / GRUCell are nn.LSTMCell / nn.GRUCell subclasses.
"""
import copy
import warnings
from typing import Dict, Optional

import torch
from torch import nn

from . import modules

__all__ = ["convert", "to_torch"]

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SUPPORTED_DEVICES = ("cpu", "cuda")

_RNN_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
_CELL_ARGS = ("input_size", "hidden_size", "bias")

# (source class, target class, constructor attributes)
_TO_FAST = [(nn.LSTM, modules.LSTM, _RNN_ARGS + ("proj_size",)), (nn.GRU, modules.GRU, _RNN_ARGS),
            (nn.LSTMCell, modules.LSTMCell, _CELL_ARGS), (nn.GRUCell, modules.GRUCell, _CELL_ARGS)]
_TO_TORCH = [(fast, slow, args) for slow, fast, args in _TO_FAST]
_FAST_CLASSES = tuple(fast for _, fast, _ in _TO_FAST)


def _unsupported_reason(module: nn.Module) -> Optional[str]:
    for name, p in module.named_parameters(recurse=False):
        if p.device.type not in _SUPPORTED_DEVICES:
            return f"parameter {name} is on device '{p.device}'; fastrnn runs on {_SUPPORTED_DEVICES}"
        if p.dtype not in _SUPPORTED_DTYPES:
            return f"parameter {name} has dtype {p.dtype}; fastrnn supports {_SUPPORTED_DTYPES}"
    return None


def _swap_one(module: nn.Module, table, path: str, check_support: bool) -> Optional[nn.Module]:
    """The replacement for `module`, or None when it is not one of the source classes (or cannot
    be converted, with a warning)."""
    if table is _TO_FAST and isinstance(module, _FAST_CLASSES):
        return None  # already fastrnn's (its cells are nn.LSTMCell / nn.GRUCell instances too)
    for src, dst, args in table:
        if not isinstance(module, src):
            continue
        where = path or "<root>"
        if type(module) is not src:
            overrides = "overrides forward()" if type(module).forward is not src.forward else "is a subclass"
            warnings.warn(f"fastrnn: left {where} ({type(module).__name__}) unconverted: it {overrides} of "
                          f"{src.__module__}.{src.__qualname__}, which a swap would discard", stacklevel=4)
            return None
        reason = _unsupported_reason(module) if check_support else None
        if reason is not None:
            warnings.warn(f"fastrnn: left {where} ({type(module).__name__}) unconverted: {reason}", stacklevel=4)
            return None
        # build on the meta device: the parameters are replaced by the originals right after
        with warnings.catch_warnings():  # the constructor's dropout warning was given once already
            warnings.simplefilter("ignore")
            new = dst(**{a: getattr(module, a) for a in args}, device="meta")
        own = dict(module.named_parameters(recurse=False))
        new_names = [n for n, _ in new.named_parameters(recurse=False)]
        if sorted(own) != sorted(new_names):
            warnings.warn(f"fastrnn: left {where} ({type(module).__name__}) unconverted: its parameters "
                          f"{sorted(own)} do not match the expected {sorted(new_names)}", stacklevel=4)
            return None
        for name in new_names:
            setattr(new, name, own[name])
        if isinstance(new, nn.RNNBase):
            new._init_flat_weights()  # re-read the weights (torch.nn's: and flatten them for cuDNN)
        new.train(module.training)
        # carry the hooks over: the same dicts, so existing RemovableHandles keep working
        for name, value in vars(module).items():
            if name.startswith("_") and "hooks" in name and isinstance(value, dict) and hasattr(new, name):
                setattr(new, name, value)
        return new
    return None


def _swap_tree(model: nn.Module, table, check_support: bool) -> nn.Module:
    memo: Dict[int, nn.Module] = {}  # a module used in several places stays shared

    def visit(module: nn.Module, path: str) -> nn.Module:
        key = id(module)
        if key in memo:
            return memo[key]
        new = _swap_one(module, table, path, check_support)
        if new is None:
            memo[key] = module
            for name, child in list(module.named_children()):
                replaced = visit(child, f"{path}.{name}" if path else name)
                if replaced is not child:
                    setattr(module, name, replaced)
            return module
        memo[key] = new
        return new

    return visit(model, "")


def convert(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Replace every nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell in `model` (the model itself
    included) by fastrnn's module with the same configuration, parameters (the same objects),
    device, dtype and training mode. Returns the converted model: use the return value, since
    when `model` itself is an nn.LSTM it is a new object. With ``inplace=False`` the model is
    deep-copied first and the original is left untouched."""
    if not inplace:
        model = copy.deepcopy(model)
    return _swap_tree(model, _TO_FAST, check_support=True)


def to_torch(model: nn.Module, inplace: bool = True) -> nn.Module:
    """The reverse of `convert`: fastrnn modules back to torch.nn's, sharing their parameters.
    fastrnn's training-only options are dropped: a layer with ``weight_drop`` or
    ``recurrent_dropout`` becomes the plain nn.LSTM / nn.GRU, whose eval results are the same (they
    mask only in training). A module with ``layer_norm=True`` or zoneout, whose eval results
    torch.nn cannot reproduce, raises ValueError naming the option (before anything is swapped)."""
    for path, module in model.named_modules():
        if not isinstance(module, _FAST_CLASSES):
            continue
        where = f"{path or '<root>'} ({type(module).__name__})"
        if getattr(module, "layer_norm", False):
            raise ValueError(f"fastrnn.to_torch: {where} has layer_norm=True, whose results torch.nn has no "
                             f"equivalent of")
        for option in ("zoneout", "zoneout_cell"):
            if getattr(module, option, 0.0) > 0:
                raise ValueError(f"fastrnn.to_torch: {where} has {option}={getattr(module, option)}, which changes "
                                 f"eval results and torch.nn has no equivalent; set it to 0 first to convert")
    if not inplace:
        model = copy.deepcopy(model)
    return _swap_tree(model, _TO_TORCH, check_support=False)

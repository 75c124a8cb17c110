"""What float32 means on the GPU, pinned for a test.

PyTorch's defaults differ by library: cuBLAS matmuls run full float32
(torch.get_float32_matmul_precision() == "highest", torch.backends.cuda.matmul.allow_tf32 False), but
cuDNN runs float32 RNNs and convolutions in TF32 (torch.backends.cudnn.allow_tf32 True), which rounds
the GEMM inputs to 10 mantissa bits. fastrnn's GEMMs go through ATen (at::mm_out / addmm_ on cuBLAS),
so they follow the matmul setting and never the cuDNN one; nn.LSTM / nn.GRU on the GPU run cuDNN.
With the defaults the two therefore differ by TF32 rounding (1e-4..3e-4 on small layers), which a
float32 comparison against torch.nn must not inherit.

Only the legacy flags are used (both torch versions before and after the fp32_precision API accept
them, and newer torch refuses legacy reads once the two APIs are mixed).
"""
import contextlib

import torch


@contextlib.contextmanager
def tf32(matmul=False, cudnn=False):
    """TF32 on or off for cuBLAS matmuls (what fastrnn uses) and for cuDNN (torch.nn's RNNs on the
    GPU) inside the block; the previous settings after, also on an exception. No effect on the CPU."""
    mm = torch.backends.cuda.matmul
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, getattr(mm, "fp32_precision", None)
    torch.set_float32_matmul_precision("high" if matmul else "highest")  # = matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = cudnn
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]
        if saved[2] is not None:  # newer torch: "none" (inherit) and "ieee" are distinct settings
            mm.fp32_precision = saved[2]


def exact_fp32():
    """Full float32 in both cuBLAS and cuDNN: for comparing float32 results with torch.nn's."""
    return tf32(matmul=False, cudnn=False)

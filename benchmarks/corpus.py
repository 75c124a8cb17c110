"""The char-LM cases' model and text: the demo's own (examples/charlm.py), so that the benchmark
times what `make demo` trains. The default text is CPython's ``pydoc_data.topics`` (the reference
documentation that ships with every Python), so the benchmark needs no download; any UTF-8 text
file can be used instead (``--corpus``)."""
from typing import List, Optional, Tuple

import torch

from examples.charlm import DEFAULT_CORPUS, CharLM, build_vocab, text_hash
from examples.charlm import encode as _encode
from examples.charlm import load_text as _load_text

__all__ = ["CharLM", "DEFAULT_CORPUS", "batches", "encode", "load_text", "text_hash"]


def load_text(path: Optional[str] = None) -> Tuple[str, str]:
    """(text, name): the demo's text loader, and what to call the text in the results."""
    return _load_text(path), path or DEFAULT_CORPUS


def encode(text: str) -> Tuple[torch.Tensor, List[str]]:
    """Character ids (int64) and the vocabulary (sorted characters), as the demo builds them."""
    vocab = build_vocab(text)
    return _encode(text, vocab), vocab


def batches(data: torch.Tensor, T: int, B: int, count: int, seed: int = 0):
    """`count` (input, target) pairs, time-major [T, B], from windows at random offsets."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.arange(T)
    out = []
    for _ in range(count):
        starts = torch.randint(0, data.numel() - T - 1, (B,), generator=g)
        idx = starts.unsqueeze(0) + steps.unsqueeze(1)  # [T, B]
        out.append((data[idx], data[idx + 1]))
    return out

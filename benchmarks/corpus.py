"""The default char-LM corpus: the text of CPython's ``pydoc_data.topics`` (the reference
documentation that ships with every Python), so the benchmark needs no download. Any UTF-8 text
file can be used instead (``--corpus``)."""
from typing import List, Optional, Tuple

import torch

DEFAULT_NAME = "pydoc_data.topics"


def load_text(path: Optional[str] = None) -> Tuple[str, str]:
    """(text, name)."""
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    from pydoc_data import topics

    # Sorted keys: the same text whatever the dict order of this Python build.
    return "\n".join(topics.topics[k] for k in sorted(topics.topics)), DEFAULT_NAME


def encode(text: str) -> Tuple[torch.Tensor, List[str]]:
    """Character ids (int64) and the vocabulary (sorted characters)."""
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    return torch.tensor([index[ch] for ch in text], dtype=torch.int64), vocab


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

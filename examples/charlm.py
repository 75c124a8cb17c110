"""The character-level LM and its default text, in one place: examples/char_lm.py (the demo) trains
this model on this text, and the benchmarks' char-LM cases (benchmarks/cases.py) time the same
model on the same text, so the demo's speed and the benchmark table measure one thing.

Both import it as `examples.charlm` (the repository root on sys.path: the working directory of
`python -m benchmarks`, the scripts' own set-up when run directly), so there is one class object.
"""
import hashlib
from typing import List, Optional

import torch
from torch import nn

from examples._common import rnn_class

# The default text: the documentation topics that ship with CPython, so nothing is downloaded.
DEFAULT_CORPUS = "pydoc_data.topics"


def load_text(path: Optional[str] = None) -> str:
    """The text of `path` (UTF-8), or the DEFAULT_CORPUS topics (sorted by key, so the text is
    the same whatever this Python's dict order) separated by blank lines."""
    if path:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        from pydoc_data.topics import topics
        text = "\n\n".join(topics[k] for k in sorted(topics))
    if len(text) < 100:
        raise ValueError(f"text too short to train on ({len(text)} characters)")
    return text


def text_hash(text: str) -> str:
    """SHA-1 of the UTF-8 text: which text a checkpoint or a benchmark result was made from."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def build_vocab(text: str) -> List[str]:
    """The sorted distinct characters of `text`: character id i is vocab[i]."""
    return sorted(set(text))


def encode(text: str, vocab: List[str]) -> torch.Tensor:
    """[len(text)] int64 character ids."""
    stoi = {c: i for i, c in enumerate(vocab)}
    missing = sorted(set(text) - stoi.keys())
    if missing:
        raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
    return torch.tensor([stoi[c] for c in text], dtype=torch.long)


class CharLM(nn.Module):
    """embedding -> dropout -> LSTM/GRU stack (dropout between layers) -> dropout -> linear over
    the characters, time-major. `rnn` picks the recurrent layers: "fastrnn" or "torch" (the
    parameter names and initialisation are the same, so state_dicts load across); weight_drop,
    zoneout, recurrent_dropout and layer_norm (fastrnn only) are the layers' options of those names.

    forward(x [T, B] int64, state=None) -> (logits [T, B, vocab_size], state): the state is the
    recurrent layer's (h_n, or (h_n, c_n) for an LSTM), each [layers, B, hidden].
    """

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int, cell: str = "lstm",
                 dropout: float = 0.0, rnn: str = "fastrnn", weight_drop: float = 0.0, zoneout: float = 0.0,
                 recurrent_dropout: float = 0.0, layer_norm: bool = False):
        super().__init__()
        # torch.nn's layers take no such arguments: passed only when set
        options = {"weight_drop": weight_drop, "zoneout": zoneout, "recurrent_dropout": recurrent_dropout,
                   "layer_norm": layer_norm}
        extra = {k: v for k, v in options.items() if v}
        for name in extra:
            if rnn != "fastrnn":
                raise ValueError(f"{name} is a fastrnn option; rnn={rnn!r} has none")
        self.embed = nn.Embedding(vocab_size, embed)
        self.drop = nn.Dropout(dropout)
        self.rnn = rnn_class(cell, rnn)(embed, hidden, layers, dropout=dropout if layers > 1 else 0.0, **extra)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x, state=None):
        y, state = self.rnn(self.drop(self.embed(x)), state)
        return self.head(self.drop(y)), state

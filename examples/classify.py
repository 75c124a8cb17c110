"""Variable-length sequence classification with a bidirectional fastrnn.GRU and `lengths=`.

    python examples/classify.py                 # fastrnn.GRU(..., lengths=lengths)
    python examples/classify.py --rnn torch     # nn.GRU over pack_padded_sequence
    python examples/classify.py --no-lengths    # fastrnn, lengths ignored (the classic mistake)
    python examples/classify.py --compare       # all three from the same initial weights

The data is synthetic (generated from --seed): each sequence is random tokens of a random true
length, padded up to --max-len with more random tokens (not zeros, so padding cannot be told
apart from data), and its class is (token[L-1] + token[L-2]) mod --classes, i.e. it depends on
the two tokens at its TRUE end. The model reads the final state of both directions (h_n): with
lengths the forward direction stops at step L-1 and the backward one starts there; a model that
ignores lengths ends in the junk and stays near chance.
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

if __name__ == "__main__":  # run as a script: the repository root holds the `examples` package
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # (and fastrnn, if not installed)

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from examples._common import BACKENDS, pick_device, rnn_class


@dataclass
class Dataset:
    tokens: torch.Tensor  # [N, max_len] int64, padded with random tokens
    lengths: torch.Tensor  # [N] int64, true lengths
    labels: torch.Tensor  # [N] int64


def make_dataset(n: int, vocab: int, min_len: int, max_len: int, classes: int, seed: int) -> Dataset:
    if not 2 <= min_len <= max_len:
        raise ValueError(f"need 2 <= min_len <= max_len, got {min_len}, {max_len}")
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, max_len), generator=g)  # the junk padding is random too
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    last = tokens.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
    before = tokens.gather(1, (lengths - 2).unsqueeze(1)).squeeze(1)
    return Dataset(tokens, lengths, (last + before) % classes)


class Classifier(nn.Module):
    """embedding -> bidirectional GRU -> [h_n forward ; h_n backward] -> linear. Batch-first input."""

    def __init__(self, vocab: int, embed: int, hidden: int, classes: int, backend: str = "fastrnn",
                 use_lengths: bool = True):
        super().__init__()
        self.backend, self.use_lengths = backend, use_lengths
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnn_class("gru", backend)(embed, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if not self.use_lengths:
            _, h_n = self.rnn(x)
        elif self.backend == "fastrnn":
            _, h_n = self.rnn(x, lengths=lengths)  # masked: no packing, no sorting
        else:
            # torch.nn needs a PackedSequence (lengths on the CPU) to stop at each true end
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, h_n = self.rnn(packed)
        # h_n: [2, B, H] = (forward final state, backward final state) of the only layer
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))


@dataclass
class Result:
    name: str
    model: Classifier
    losses: List[float] = field(default_factory=list)  # every training step
    test_acc: List[float] = field(default_factory=list)  # after every epoch
    seconds: float = 0.0  # training time, without evaluation
    init_state: Optional[dict] = None


@torch.no_grad()
def accuracy(model: Classifier, data: Dataset, device, batch_size: int = 512) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(data.labels), batch_size):
        logits = model(data.tokens[i:i + batch_size].to(device), data.lengths[i:i + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == data.labels[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(data.labels)


def run(args, backend: str, use_lengths: bool = True, init_state: Optional[dict] = None, out=None) -> Result:
    """Train one model per `args` and return its per-step losses and per-epoch test accuracy."""
    out = out if out is not None else sys.stdout
    device = pick_device(args.device)
    train_set = make_dataset(args.train_size, args.vocab, args.min_len, args.max_len, args.classes, args.seed)
    test_set = make_dataset(args.test_size, args.vocab, args.min_len, args.max_len, args.classes, args.seed + 1)
    torch.manual_seed(args.seed)
    model = Classifier(args.vocab, args.embed, args.hidden, args.classes, backend, use_lengths).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    name = f"{'fastrnn' if backend == 'fastrnn' else 'torch.nn'} " + (
        ("lengths=" if backend == "fastrnn" else "packed") if use_lengths else "no lengths")
    res = Result(name, model, init_state={k: v.detach().clone() for k, v in model.state_dict().items()})
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    order_gen = torch.Generator().manual_seed(args.seed + 2)  # the same batches for every variant
    n = len(train_set.labels)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=order_gen)
        for i in range(0, n, args.batch_size):
            idx = perm[i:i + args.batch_size]
            logits = model(train_set.tokens[idx].to(device), train_set.lengths[idx].to(device))
            loss = F.cross_entropy(logits, train_set.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            res.losses.append(loss.item())
        res.seconds += time.perf_counter() - t0
        res.test_acc.append(accuracy(model, test_set, device))
        epoch_losses = res.losses[-((n + args.batch_size - 1) // args.batch_size):]
        print(f"[{name}] epoch {epoch + 1}/{args.epochs}: train loss {sum(epoch_losses) / len(epoch_losses):.3f}  "
              f"test accuracy {res.test_acc[-1]:.3f}  ({res.seconds:.1f} s training)", file=out)
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--rnn", choices=BACKENDS, default="fastrnn", help="fastrnn.GRU with lengths=, or nn.GRU with packing")
    a("--no-lengths", action="store_true", help="ignore the true lengths (run over the padding)")
    a("--compare", action="store_true", help="run fastrnn, torch.nn (packed) and fastrnn without lengths")
    a("--vocab", type=int, default=16, help="token vocabulary size")
    a("--classes", type=int, default=4, help="number of classes (chance accuracy is 1/classes)")
    a("--min-len", type=int, default=5, help="shortest true length")
    a("--max-len", type=int, default=40, help="padded length (and longest true length)")
    a("--train-size", type=int, default=3000, help="training sequences")
    a("--test-size", type=int, default=1000, help="test sequences")
    a("--embed", type=int, default=32, help="embedding size")
    a("--hidden", type=int, default=64, help="GRU hidden size per direction")
    a("--batch-size", type=int, default=64, help="batch size")
    a("--lr", type=float, default=1e-2, help="Adam learning rate")
    a("--epochs", type=int, default=3, help="training epochs")
    a("--seed", type=int, default=0, help="seed for data, initial weights and batch order")
    a("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return p


def main(argv=None, out=None):
    out = out if out is not None else sys.stdout
    args = build_parser().parse_args(argv)
    print(f"chance accuracy: {1 / args.classes:.3f}", file=out)
    if not args.compare:
        return [run(args, args.rnn, not args.no_lengths, out=out)]
    fast = run(args, "fastrnn", True, out=out)
    slow = run(args, "torch", True, init_state=fast.init_state, out=out)
    blind = run(args, "fastrnn", False, init_state=fast.init_state, out=out)
    print(f"\n{'model':24} {'test accuracy':>13} {'train s':>8}", file=out)
    for r in (fast, slow, blind):
        print(f"{r.name:24} {r.test_acc[-1]:13.3f} {r.seconds:8.1f}", file=out)
    diff = max(abs(a - b) for a, b in zip(fast.losses, slow.losses))
    print(f"fastrnn lengths= vs torch.nn packed, same initial weights: largest per-step loss difference {diff:.2e}",
          file=out)
    return [fast, slow, blind]


if __name__ == "__main__":
    main()

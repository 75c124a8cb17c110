"""Moving a model written for torch.nn onto fastrnn with one call: fastrnn.convert(model).

    python examples/migrate.py                       # LSTM word-LM shape
    python examples/migrate.py --rnn-type GRU --nlayers 3

The model below has the usual word-level language-model shape (embedding -> dropout -> nn.LSTM
or nn.GRU stack -> dropout -> linear -> log-softmax, hidden state passed in and out). It knows
nothing about fastrnn. The script converts a copy, checks that outputs, final states and
gradients are unchanged (within float tolerance), times forward+backward of both (median of
--repeats runs) and converts back with fastrnn.to_torch.
"""
import argparse
import copy
import os
import sys

if __name__ == "__main__":  # run as a script: the repository root holds the `examples` package
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # (and fastrnn, if not installed)

import torch
import torch.nn.functional as F
from torch import nn

import fastrnn
from examples._common import median_times, no_tf32, pick_device, precision_note


class RNNModel(nn.Module):
    """Word-level LM over torch.nn: encoder, recurrent stack, decoder. Input [T, B] of token ids."""

    def __init__(self, rnn_type: str, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float = 0.5):
        super().__init__()
        if rnn_type not in ("LSTM", "GRU"):
            raise ValueError(f"rnn_type must be 'LSTM' or 'GRU', got {rnn_type!r}")
        self.rnn_type, self.ntoken, self.nhid, self.nlayers = rnn_type, ntoken, nhid, nlayers
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        # small uniform init for the embedding and decoder (the RNN keeps torch.nn's own init)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        logits = self.decoder(self.drop(output))
        return F.log_softmax(logits.view(-1, self.ntoken), dim=1), hidden

    def init_hidden(self, batch_size: int):
        weight = next(self.parameters())
        h = weight.new_zeros(self.nlayers, batch_size, self.nhid)
        return (h, h.clone()) if self.rnn_type == "LSTM" else h


def _flat(hidden):
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


def forward_backward(model: RNNModel, tokens, targets, hidden):
    """One training-style pass: the LM loss and its gradient. Returns (loss, log_probs, hidden)."""
    log_probs, hidden = model(tokens, hidden)
    loss = F.nll_loss(log_probs, targets.view(-1))
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss, log_probs, hidden


def compare(model_a: RNNModel, model_b: RNNModel, tokens, targets, hidden, rtol: float, atol: float):
    """Assert that two models give the same log-probabilities, final state and gradients.
    Returns the largest absolute difference seen."""
    worst = 0.0
    _, out_a, h_a = forward_backward(model_a, tokens, targets, hidden)
    grads_a = {n: p.grad.clone() for n, p in model_a.named_parameters()}
    _, out_b, h_b = forward_backward(model_b, tokens, targets, hidden)
    grads_b = {n: p.grad.clone() for n, p in model_b.named_parameters()}
    pairs = [("log-probabilities", out_a, out_b)]
    pairs += [(f"final state {i}", a, b) for i, (a, b) in enumerate(zip(_flat(h_a), _flat(h_b)))]
    if sorted(grads_a) != sorted(grads_b):
        raise AssertionError(f"parameter names differ: {sorted(grads_a)} vs {sorted(grads_b)}")
    pairs += [(f"grad {n}", grads_a[n], grads_b[n]) for n in grads_a]
    for what, a, b in pairs:
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=lambda m, w=what: f"{w} changed: {m}")
        worst = max(worst, (a - b).abs().max().item())
    return worst


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--rnn-type", choices=["LSTM", "GRU"], default="LSTM", help="recurrent layer type of the model")
    a("--ntoken", type=int, default=10000, help="vocabulary size")
    a("--ninp", type=int, default=200, help="embedding size")
    a("--nhid", type=int, default=200, help="hidden size")
    a("--nlayers", type=int, default=2, help="recurrent layers")
    a("--dropout", type=float, default=0.2, help="dropout (off while outputs are compared)")
    a("--bptt", type=int, default=35, help="sequence length")
    a("--batch-size", type=int, default=20, help="batch size")
    a("--repeats", type=int, default=10, help="timed forward+backward runs per model (median reported)")
    a("--dtype", choices=["float32", "float64"], default="float32", help="parameter dtype")
    a("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    a("--seed", type=int, default=0, help="seed for weights and inputs")
    return p


def main(argv=None, out=None) -> dict:
    out = out if out is not None else sys.stdout
    args = build_parser().parse_args(argv)
    device, dtype = pick_device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    model = RNNModel(args.rnn_type, args.ntoken, args.ninp, args.nhid, args.nlayers, args.dropout)
    model = model.to(device=device, dtype=dtype)

    fast = fastrnn.convert(model, inplace=False)  # a converted copy; `model` stays on torch.nn
    kinds = sorted({type(m).__module__ + "." + type(m).__name__ for m in fast.modules()
                    if isinstance(m, (nn.LSTM, nn.GRU, fastrnn.LSTM, fastrnn.GRU))})
    print(f"converted {type(model.rnn).__name__} -> {kinds}", file=out)
    if not isinstance(fast.rnn, (fastrnn.LSTM, fastrnn.GRU)):
        raise AssertionError(f"convert left the recurrent layer as {type(fast.rnn)}")

    tokens = torch.randint(0, args.ntoken, (args.bptt, args.batch_size), device=device)
    targets = torch.randint(0, args.ntoken, (args.bptt, args.batch_size), device=device)
    hidden = model.init_hidden(args.batch_size)
    # float32 sums over hidden sizes of a few hundred in a different order: ~1e-5 differences
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (1e-9, 1e-11)

    model.eval()
    fast.eval()  # dropout off, so the two passes see identical inputs
    back = fastrnn.to_torch(copy.deepcopy(fast))
    if not isinstance(back.rnn, (nn.LSTM, nn.GRU)) or isinstance(back.rnn, (fastrnn.LSTM, fastrnn.GRU)):
        raise AssertionError(f"to_torch left {type(back.rnn)}")
    # cuDNN refuses an RNN backward in eval mode ("can only be called in training mode"): with it
    # off, torch.nn runs its native RNN on the GPU, the same function, which has a backward there.
    cudnn_enabled = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        with no_tf32():  # full float32 GEMMs on both sides, whatever TF32 settings were made before
            worst = compare(model, fast, tokens, targets, hidden, rtol, atol)
            worst_back = compare(model, back, tokens, targets, hidden, rtol, atol)
    finally:
        torch.backends.cudnn.enabled = cudnn_enabled
    print(f"outputs, final states and gradients unchanged (largest difference {worst:.1e})", file=out)
    print(f"fastrnn.to_torch round trip unchanged too (largest difference {worst_back:.1e})", file=out)

    model.train()
    fast.train()
    timings = median_times({name: (lambda m=m: forward_backward(m, tokens, targets, hidden))
                            for name, m in (("torch.nn", model), ("fastrnn", fast))}, device, args.repeats)
    print(f"forward+backward, {args.rnn_type} {args.nlayers}x{args.nhid}, T={args.bptt} B={args.batch_size}, "
          f"{args.dtype} on {device}{precision_note(device)}, median of {args.repeats} interleaved runs:", file=out)
    for name, t in timings.items():
        print(f"  {name:9} {t * 1e3:9.2f} ms", file=out)
    ratio = timings["torch.nn"] / timings["fastrnn"]
    print(f"  fastrnn speed-up: {ratio:.2f}x (torch.nn time / fastrnn time)", file=out)
    return {"max_diff": worst, "max_diff_back": worst_back, "times": timings, "speedup": ratio}


if __name__ == "__main__":
    main()

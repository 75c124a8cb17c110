"""Character-level language model on fastrnn (or torch.nn, for comparison).

    python examples/char_lm.py --main                      # the demo: train, compare, sample
    python examples/char_lm.py --steps 2000 --ckpt lm.pt   # train (default text: CPython's docs)
    python examples/char_lm.py --steps 4000 --ckpt lm.pt --resume
    python examples/char_lm.py --sample --ckpt lm.pt --prefix "The " --length 500
    python examples/char_lm.py --compare --steps 200       # fastrnn vs torch.nn, same init

Model: embedding -> multi-layer LSTM/GRU (dropout between layers) -> linear, time-major.
Training is stateful truncated BPTT: the training text is cut into `batch_size` contiguous
streams, each batch is the next `seq_len` characters of every stream, and the recurrent state
is carried from one batch to the next (detached), reset at the start of each epoch.
The default text needs no download: the documentation topics that ship with CPython
(`pydoc_data.topics`, ~460 KB). `--data FILE` takes any UTF-8 text (e.g. tinyshakespeare).
"""
import argparse
import copy
import hashlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

if __name__ == "__main__":
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, _HERE)  # `import _common` from any working directory
    sys.path.append(os.path.dirname(_HERE))  # in a source checkout, fastrnn itself when not installed

import torch
import torch.nn.functional as F
from torch import nn

from _common import (BACKENDS, Progress, autocast, detach_state, pick_device, precision_note, rnn_class, state_to,
                     sync)

# Shapes of the --main demo, sized for a 2-core CPU: measured there, the fastrnn run takes ~40 s
# and the whole job (both runs, evaluations, sample) ~75 s.
MAIN_DEFAULTS = dict(cell="lstm", layers=2, hidden=256, embed=64, seq_len=64, batch_size=32,
                     steps=200, eval_every=50, log_every=25, dropout=0.1, lr=3e-3, length=300)

# Arguments that define the model and the training trajectory: a resumed run takes them from the
# checkpoint so that it continues exactly where it stopped.
RESUME_FROM_CKPT = ("cell", "layers", "hidden", "embed", "dropout", "seq_len", "batch_size", "lr",
                    "clip", "amp", "seed")
MODEL_ARGS = ("cell", "layers", "hidden", "embed", "dropout")
WARMUP_STEPS = 5  # steps at the start of each run left out of the tokens/s figure


# ---------------------------------------------------------------------------------------------
# data


def load_text(path: Optional[str] = None) -> str:
    """The text of `path` (UTF-8), or CPython's bundled documentation topics."""
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
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def build_vocab(text: str) -> List[str]:
    return sorted(set(text))


def encode(text: str, vocab: List[str]) -> torch.Tensor:
    stoi = {c: i for i, c in enumerate(vocab)}
    missing = sorted(set(text) - stoi.keys())
    if missing:
        raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
    return torch.tensor([stoi[c] for c in text], dtype=torch.long)


def split(ids: torch.Tensor, val_fraction: float = 0.1) -> Tuple[torch.Tensor, torch.Tensor]:
    n_train = int(len(ids) * (1 - val_fraction))
    return ids[:n_train], ids[n_train:]


def streams(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N] -> [N // B, B]: column b is the b-th contiguous slice of the text (time-major)."""
    n = len(ids) // batch_size
    if n < 2:
        raise ValueError(f"{len(ids)} characters cannot make {batch_size} streams")
    return ids[: n * batch_size].view(batch_size, n).t().contiguous()


# ---------------------------------------------------------------------------------------------
# model


class CharLM(nn.Module):
    """embedding -> LSTM/GRU stack -> linear over the characters. Input [T, B] of ids."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int, cell: str = "lstm",
                 dropout: float = 0.0, rnn: str = "fastrnn"):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.drop = nn.Dropout(dropout)
        self.rnn = rnn_class(cell, rnn)(embed, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x, state=None):
        y, state = self.rnn(self.drop(self.embed(x)), state)
        return self.head(self.drop(y)), state


def make_model(args, vocab_size: int, backend: str) -> CharLM:
    return CharLM(vocab_size, args.embed, args.hidden, args.layers, args.cell, args.dropout, backend)


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class RunResult:
    model: CharLM
    vocab: List[str]
    backend: str
    losses: List[float] = field(default_factory=list)  # training loss of every step run here
    val: List[Tuple[int, float]] = field(default_factory=list)  # (step, validation perplexity)
    tokens_per_s: float = float("nan")  # all timed steps: tokens / training seconds
    interval_rates: List[float] = field(default_factory=list)  # tokens/s of each logging interval
    step: int = 0  # global step reached
    init_state: Optional[dict] = None  # weights before training (fresh runs only)


@torch.no_grad()
def evaluate(model: CharLM, stream: torch.Tensor, seq_len: int, device, amp: str = "none",
             max_batches: int = 0) -> float:
    """Perplexity over a [N, B] stream, carrying the state across chunks like training does."""
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for k, i in enumerate(range(0, stream.shape[0] - 1, seq_len)):
        if max_batches and k >= max_batches:
            break
        t = min(seq_len, stream.shape[0] - 1 - i)
        x, y = stream[i:i + t].to(device), stream[i + 1:i + 1 + t].to(device)
        with autocast(device, amp):
            logits, state = model(x, state)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return math.exp(total / count)


def save_checkpoint(path, model, opt, scaler, vocab, args, step, state, data_hash):
    ckpt = {
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "vocab": vocab, "args": dict(vars(args)), "step": step, "data_hash": data_hash,
        # the carried TBPTT state and the RNG (dropout masks) make a resumed run continue exactly
        "rnn_state": state_to(state, "cpu"),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    tmp = f"{path}.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def train(args, backend: Optional[str] = None, init_state: Optional[dict] = None, text: Optional[str] = None,
          evals: bool = True, out=None) -> RunResult:
    """Train per `args` (see build_parser). `init_state` overrides the initial weights (used to
    start two backends from identical weights); `text` overrides loading args.data."""
    backend = backend or args.rnn
    out = out if out is not None else sys.stdout
    device = pick_device(args.device)
    text = load_text(args.data) if text is None else text
    data_hash = text_hash(text)

    ckpt = None
    if args.resume:
        if not args.ckpt or not os.path.exists(args.ckpt):
            raise FileNotFoundError(f"--resume needs an existing --ckpt (got {args.ckpt!r})")
        ckpt = load_checkpoint(args.ckpt)
        if ckpt["data_hash"] != data_hash:
            raise ValueError("--resume: the text differs from the one the checkpoint was trained on")
        args = copy.copy(args)
        for k in RESUME_FROM_CKPT:
            setattr(args, k, ckpt["args"][k])
        vocab = ckpt["vocab"]
    else:
        vocab = build_vocab(text)

    train_ids, val_ids = split(encode(text, vocab))
    train_stream = streams(train_ids, args.batch_size)
    val_stream = streams(val_ids, min(args.batch_size, max(1, len(val_ids) // (args.seq_len + 1))))
    steps_per_epoch = (train_stream.shape[0] - 1) // args.seq_len
    if steps_per_epoch < 1:
        raise ValueError("text too short for this --batch-size and --seq-len")
    total_steps = args.steps if args.steps is not None else args.epochs * steps_per_epoch

    torch.manual_seed(args.seed)
    model = make_model(args, len(vocab), backend).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    result = RunResult(model=model, vocab=vocab, backend=backend)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    state, step = None, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        step, state = ckpt["step"], state_to(ckpt["rnn_state"], device)
        torch.set_rng_state(ckpt["rng"])
        if ckpt["cuda_rng"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        print(f"resumed from {args.ckpt} at step {step}", file=out)
    else:
        result.init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.manual_seed(args.seed + 1)  # dropout stream: independent of how init consumed the RNG
    result.step = step

    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{backend}] {args.cell.upper()} {args.layers}x{args.hidden}, {n_params / 1e6:.2f}M params, "
          f"vocab {len(vocab)}, {len(train_ids)} train / {len(val_ids)} val chars, "
          f"{steps_per_epoch} steps/epoch, device {device}, amp {args.amp}{precision_note(device)}", file=out)
    progress = Progress(args.log_every, stream=out)
    V, T, B = len(vocab), args.seq_len, args.batch_size
    model.train()
    pending = []  # losses still on the device: reading each step would sync the GPU every step
    train_time, timed_steps = 0.0, 0
    t_mark = step_mark = None
    # the first steps pay one-off costs (allocator and oneDNN/cuBLAS warm-up): not timed
    timing_starts = step + min(WARMUP_STEPS, max(1, total_steps - step - 1))
    while step < total_steps:
        epoch, i = divmod(step, steps_per_epoch)
        if i == 0:
            state = None  # a new pass over the streams starts from a fresh state
        x = train_stream[i * T:(i + 1) * T].to(device, non_blocking=True)
        y = train_stream[i * T + 1:(i + 1) * T + 1].to(device, non_blocking=True)
        with autocast(device, args.amp):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().view(-1, V), y.view(-1))
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if args.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        state = detach_state(state)
        step += 1
        pending.append(loss.detach())
        if t_mark is None and step >= timing_starts:
            sync(device)
            t_mark, step_mark = time.perf_counter(), step

        end_of_epoch = i + 1 == steps_per_epoch
        want_eval = evals and (end_of_epoch or step == total_steps or
                               (args.eval_every and step % args.eval_every == 0))
        want_save = bool(args.ckpt) and (step == total_steps or want_eval or
                                         (args.save_every and step % args.save_every == 0))
        if want_eval or want_save or step % args.log_every == 0 or step == total_steps:
            sync(device)
            if t_mark is not None and step > step_mark:
                dt = time.perf_counter() - t_mark
                train_time += dt
                timed_steps += step - step_mark
                result.interval_rates.append((step - step_mark) * B * T / dt)
            result.losses += torch.stack(pending).float().tolist()
            pending = []
            progress.update(step, f"[{backend}] step {step}/{total_steps} epoch {epoch + 1} "
                                  f"loss {result.losses[-1]:.4f} {_rate(timed_steps * B * T, train_time)} tok/s",
                            force=step == total_steps)
            if want_eval:
                ppl = evaluate(model, val_stream, T, device, args.amp)
                result.val.append((step, ppl))
                progress.print(f"[{backend}] step {step}: validation perplexity {ppl:.3f}")
            if want_save:
                save_checkpoint(args.ckpt, model, opt, scaler, vocab, args, step, state, data_hash)
            if t_mark is not None:
                sync(device)
                t_mark, step_mark = time.perf_counter(), step
    progress.close()
    result.step = step
    result.tokens_per_s = timed_steps * B * T / train_time if timed_steps else float("nan")
    return result


def _rate(tokens, seconds) -> str:
    return f"{tokens / seconds:,.0f}" if tokens and seconds > 0 else "n/a"


# ---------------------------------------------------------------------------------------------
# generation


@torch.no_grad()
def generate(model: CharLM, vocab: List[str], prefix: Optional[str] = None, length: int = 300,
             temperature: float = 0.8, top_k: int = 0, seed: int = 0, device=None) -> str:
    """Warm the state up on `prefix`, then draw `length` characters one step at a time, carrying
    the recurrent state. Draws come from a CPU generator seeded with `seed`, so the output is
    the same on every run (and every device, up to float rounding of the probabilities).
    temperature 0 picks the most likely character; top_k > 0 samples among the k most likely."""
    device = device if device is not None else next(model.parameters()).device
    stoi = {c: i for i, c in enumerate(vocab)}
    if prefix is None or prefix == "":
        prefix = "\n" if "\n" in stoi else vocab[0]
    unknown = sorted(set(prefix) - stoi.keys())
    if unknown:
        raise ValueError(f"prefix has characters outside the vocabulary: {''.join(unknown)!r}")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor([stoi[c] for c in prefix], dtype=torch.long, device=device).unsqueeze(1)  # [T, 1]
    logits, state = model(x)
    out = []
    for _ in range(length):
        last = logits[-1, 0].float().cpu()
        if temperature <= 0:
            idx = int(last.argmax())
        else:
            last = last / temperature
            if 0 < top_k < last.numel():
                kth = torch.topk(last, top_k).values[-1]
                last = last.masked_fill(last < kth, float("-inf"))
            idx = int(torch.multinomial(torch.softmax(last, 0), 1, generator=gen))
        out.append(vocab[idx])
        logits, state = model(torch.tensor([[idx]], device=device), state)
    model.train(was_training)
    return prefix + "".join(out)


def load_for_sampling(path: str, backend: str = "fastrnn", device=None) -> Tuple[CharLM, List[str]]:
    ckpt = load_checkpoint(path)
    args = argparse.Namespace(**{k: ckpt["args"][k] for k in MODEL_ARGS})
    model = make_model(args, len(ckpt["vocab"]), backend)
    model.load_state_dict(ckpt["model"])
    return model.to(pick_device(device)), ckpt["vocab"]


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Train, resume, compare, sample.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--main", action="store_true",
      help="the demo job: train a 2-layer LSTM with fastrnn on the bundled text (validation perplexity "
           "every --eval-every steps), train the same steps with torch.nn, print both speeds, then a sample; "
           f"its defaults: {MAIN_DEFAULTS} (flags given explicitly still win)")
    a("--data", default=None, help="UTF-8 text file to train on (default: CPython's pydoc_data.topics text)")
    a("--rnn", choices=BACKENDS, default="fastrnn", help="recurrent layer implementation")
    a("--compare", action="store_true",
      help="train with fastrnn, then with torch.nn from the same initial weights and seed; print tokens/s of both")
    a("--cell", choices=["lstm", "gru"], default="lstm", help="recurrent cell")
    a("--layers", type=int, default=2, help="stacked recurrent layers")
    a("--hidden", type=int, default=256, help="hidden size")
    a("--embed", type=int, default=64, help="character embedding size")
    a("--seq-len", type=int, default=64, help="truncated BPTT length (characters per batch and stream)")
    a("--batch-size", type=int, default=32, help="parallel text streams")
    a("--lr", type=float, default=2e-3, help="Adam learning rate")
    a("--clip", type=float, default=1.0, help="gradient-norm clipping threshold (0: off)")
    a("--steps", type=int, default=None, help="total optimizer steps (overrides --epochs)")
    a("--epochs", type=int, default=1, help="passes over the training text when --steps is not given")
    a("--eval-every", type=int, default=0,
      help="also compute validation perplexity every N steps (always: after each epoch and at the end)")
    a("--log-every", type=int, default=50, help="progress line every N steps when stdout is not a terminal")
    a("--save-every", type=int, default=0, help="also checkpoint every N steps (always: at evals and the end)")
    a("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    a("--amp", choices=["none", "bf16", "fp16"], default="none",
      help="autocast precision (fp16 is for CUDA: torch.nn's CPU LSTM cannot run it under autocast)")
    a("--seed", type=int, default=1234, help="seed for initial weights, dropout and sampling")
    a("--dropout", type=float, default=0.1, help="dropout on embeddings, between layers and before the head")
    a("--ckpt", default=None, help="checkpoint file to write while training / read for --resume and --sample")
    a("--resume", action="store_true", help="continue training from --ckpt exactly where it stopped")
    a("--sample", action="store_true", help="generate text from --ckpt instead of training")
    a("--length", type=int, default=300, help="characters to generate")
    a("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    a("--top-k", type=int, default=0, help="sample among the k most likely characters (0: all)")
    a("--prefix", default=None, help="text to warm the state up on before sampling (default: a newline)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.main:  # --main swaps in its own defaults; flags given explicitly still win
        parser.set_defaults(**MAIN_DEFAULTS)
        args = parser.parse_args(argv)
    if args.resume and (args.main or args.compare or args.sample):
        parser.error("--resume continues one training run; it does not combine with --main, --compare or --sample")
    return args


def _report_speed(r_fast: RunResult, r_torch: RunResult, device, out):
    print(f"\nspeed over {len(r_fast.losses)} training steps ({device}; the first {WARMUP_STEPS} steps of each "
          f"run are not timed; evaluation excluded):", file=out)
    print(f"  {'':9} {'tokens/s':>12} {'median of intervals':>20}", file=out)
    med = {}
    for name, r in (("fastrnn", r_fast), ("torch.nn", r_torch)):
        med[name] = statistics.median(r.interval_rates) if r.interval_rates else float("nan")
        print(f"  {name:9} {r.tokens_per_s:12,.0f} {med[name]:20,.0f}", file=out)
    ratio = r_fast.tokens_per_s / r_torch.tokens_per_s
    print(f"  fastrnn / torch.nn = {ratio:.2f}x ({'faster' if ratio >= 1 else 'slower'}); "
          f"median of intervals: {med['fastrnn'] / med['torch.nn']:.2f}x", file=out)
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        # the runs are sequential: other work on the machine can favour either one
        print(f"  (1-minute load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)", file=out)
    n = min(len(r_fast.losses), len(r_torch.losses))
    diff = max(abs(a - b) for a, b in zip(r_fast.losses[:n], r_torch.losses[:n]))
    print(f"  same initial weights and seed: largest per-step loss difference {diff:.2e}", file=out)


def main(argv=None, out=None):
    out = out if out is not None else sys.stdout
    args = parse_args(argv)
    if args.sample:
        if not args.ckpt:
            raise SystemExit("--sample needs --ckpt")
        model, vocab = load_for_sampling(args.ckpt, args.rnn, args.device)
        print(generate(model, vocab, args.prefix, args.length, args.temperature, args.top_k, args.seed), file=out)
        return None
    if args.main or args.compare:
        device = pick_device(args.device)
        t0 = time.perf_counter()
        r_fast = train(args, "fastrnn", out=out)
        # same weights, same dropout stream; no checkpoint and only the final evaluation
        torch_args = copy.copy(args)
        torch_args.ckpt, torch_args.resume, torch_args.eval_every = None, False, 0
        print(file=out)
        r_torch = train(torch_args, "torch", init_state=r_fast.init_state, out=out)
        _report_speed(r_fast, r_torch, device, out)
        if args.main:
            print("\nvalidation perplexity (fastrnn): "
                  + ", ".join(f"step {s}: {p:.2f}" for s, p in r_fast.val), file=out)
            print(f"validation perplexity at step {r_torch.val[-1][0]} (torch.nn): {r_torch.val[-1][1]:.2f}", file=out)
            text = generate(r_fast.model, r_fast.vocab, args.prefix, args.length, args.temperature, args.top_k,
                            args.seed)
            print(f"\nsample from the fastrnn model (temperature {args.temperature}, seed {args.seed}):\n"
                  f"{'-' * 72}\n{text}\n{'-' * 72}", file=out)
            print(f"total time {time.perf_counter() - t0:.0f} s", file=out)
        return r_fast, r_torch
    return train(args, out=out)


if __name__ == "__main__":
    main()

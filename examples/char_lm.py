"""Character-level language model on fastrnn (or torch.nn, for comparison).

    python examples/char_lm.py --main                      # the demo: train, compare, sample
    python examples/char_lm.py --steps 2000 --ckpt lm.pt   # train (default text: CPython's docs)
    python examples/char_lm.py --steps 4000 --ckpt lm.pt --resume
    python examples/char_lm.py --sample --ckpt lm.pt --prefix "The " --length 500
    python examples/char_lm.py --compare --steps 200       # fastrnn vs torch.nn, same init

Model (examples/charlm.py, also what the benchmarks' char-LM cases time): embedding ->
multi-layer LSTM/GRU (dropout between layers) -> linear, time-major.
Training is stateful truncated BPTT: the training text is cut into `batch_size` contiguous
streams, each batch is the next `seq_len` characters of every stream, and the recurrent state
is carried from one batch to the next (detached), reset at the start of each epoch.
The default text needs no download: the documentation topics that ship with CPython
(`pydoc_data.topics`, ~460 KB). `--data FILE` takes any UTF-8 text (e.g. tinyshakespeare).
"""
import argparse
import contextlib
import copy
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

if __name__ == "__main__":  # run as a script: the repository root holds the `examples` package
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # (and fastrnn, if not installed)

import torch
import torch.nn.functional as F
from torch import nn

from examples._common import BACKENDS, Progress, autocast, detach_state, pick_device, precision_note, state_to, sync
from examples.charlm import CharLM, build_vocab, encode, load_text, text_hash  # noqa: F401  (shared with the benchmarks)

# Shapes of the --main demo, sized for a 2-core CPU. The whole job (both runs, evaluations, sample)
# measured on one: 163 s while its load average fell from 5 to 1.5 (~30k tokens/s per side once
# quiet), 29 min at a load average of 8-12.
MAIN_DEFAULTS = dict(cell="lstm", layers=2, hidden=256, embed=64, seq_len=64, batch_size=32,
                     steps=200, eval_every=50, log_every=25, dropout=0.1, lr=3e-3, length=300)

# Arguments that define the model and the training trajectory: a resumed run takes them from the
# checkpoint so that it continues exactly where it stopped.
RESUME_FROM_CKPT = ("cell", "layers", "hidden", "embed", "dropout", "weight_drop", "zoneout", "recurrent_dropout",
                    "layer_norm", "seq_len", "batch_size", "lr", "clip", "amp", "seed")
MODEL_ARGS = ("cell", "layers", "hidden", "embed", "dropout", "weight_drop", "zoneout", "recurrent_dropout",
              "layer_norm")
# arguments newer than some checkpoints: their value in a checkpoint that predates them
ARGS_ADDED_LATER = {"weight_drop": 0.0, "zoneout": 0.0, "recurrent_dropout": 0.0, "layer_norm": False}
# fastrnn's options among them: (argument, flag)
FASTRNN_OPTIONS = (("weight_drop", "--weight-drop"), ("zoneout", "--zoneout"),
                   ("recurrent_dropout", "--recurrent-dropout"), ("layer_norm", "--layer-norm"))
WARMUP_STEPS = 5  # steps at the start of each run left out of the tokens/s figure


# ---------------------------------------------------------------------------------------------
# data (loading the text: charlm.load_text)


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
# model (charlm.CharLM)


def make_model(args, vocab_size: int, backend: str) -> CharLM:
    return CharLM(vocab_size, args.embed, args.hidden, args.layers, args.cell, args.dropout, backend,
                  weight_drop=args.weight_drop, zoneout=args.zoneout, recurrent_dropout=args.recurrent_dropout,
                  layer_norm=args.layer_norm)


def _ckpt_arg(ckpt, k: str):
    return ckpt["args"][k] if k in ckpt["args"] else ARGS_ADDED_LATER[k]


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class RunResult:
    model: CharLM
    vocab: List[str]
    backend: str
    tokens_per_step: int  # batch_size * seq_len
    losses: List[float] = field(default_factory=list)  # training loss of every step run here
    val: List[Tuple[int, float]] = field(default_factory=list)  # (step, validation perplexity)
    step_rates: List[float] = field(default_factory=list)  # tokens/s of each timed optimizer step
    step: int = 0  # global step reached
    init_state: Optional[dict] = None  # weights before training (fresh runs only)

    @property
    def tokens_per_s(self) -> float:
        """Median tokens/s over the timed steps (nan when no step was timed)."""
        return statistics.median(self.step_rates) if self.step_rates else float("nan")


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


class RngStreams:
    """A run's own copy of the global random streams (the CPU's, and the GPU's when it trains
    there), swapped in around each of its steps: two runs interleaved step by step then draw
    exactly the dropout masks each would draw alone, and a checkpoint saves the run's stream."""

    def __init__(self, device: torch.device):
        self.device = device if device.type == "cuda" else None
        self.state = self._get()

    def _get(self):
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device else None

    def _set(self, state):
        torch.set_rng_state(state[0])
        if self.device:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextlib.contextmanager
    def active(self):
        outside = self._get()
        self._set(self.state)
        try:
            yield
        finally:
            self.state = self._get()
            self._set(outside)


class Trainer:
    """One training run per `args` (see build_parser), advanced one optimizer step at a time by
    advance(), so that two runs can be interleaved step by step; finish() returns its RunResult.
    `init_state` overrides the initial weights (two backends from identical weights); `text`
    overrides loading args.data; `progress`: a Progress shared by several runs, whose driver then
    writes the progress lines (this run still writes its validation results through it)."""

    def __init__(self, args, backend: Optional[str] = None, init_state: Optional[dict] = None,
                 text: Optional[str] = None, evals: bool = True, out=None, progress: Optional[Progress] = None):
        self.backend = backend or args.rnn
        out = out if out is not None else sys.stdout
        self.device = device = pick_device(args.device)
        text = load_text(args.data) if text is None else text
        self.data_hash = text_hash(text)

        ckpt = None
        if args.resume:
            if not args.ckpt or not os.path.exists(args.ckpt):
                raise FileNotFoundError(f"--resume needs an existing --ckpt (got {args.ckpt!r})")
            ckpt = load_checkpoint(args.ckpt)
            if ckpt["data_hash"] != self.data_hash:
                raise ValueError("--resume: the text differs from the one the checkpoint was trained on")
            args = copy.copy(args)
            for k in RESUME_FROM_CKPT:
                setattr(args, k, _ckpt_arg(ckpt, k))
            vocab = ckpt["vocab"]
        else:
            vocab = build_vocab(text)
        self.args, self.evals = args, evals

        train_ids, val_ids = split(encode(text, vocab))
        self.train_stream = streams(train_ids, args.batch_size)
        self.val_stream = streams(val_ids, min(args.batch_size, max(1, len(val_ids) // (args.seq_len + 1))))
        self.steps_per_epoch = (self.train_stream.shape[0] - 1) // args.seq_len
        if self.steps_per_epoch < 1:
            raise ValueError("text too short for this --batch-size and --seq-len")
        self.total_steps = args.steps if args.steps is not None else args.epochs * self.steps_per_epoch

        torch.manual_seed(args.seed)
        self.model = model = make_model(args, len(vocab), self.backend).to(device)
        if init_state is not None:
            model.load_state_dict(init_state)
        self.result = RunResult(model=model, vocab=vocab, backend=self.backend,
                                tokens_per_step=args.batch_size * args.seq_len)
        self.opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        self.scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
        self.state, self.step = None, 0
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            if self.scaler is not None and ckpt["scaler"] is not None:
                self.scaler.load_state_dict(ckpt["scaler"])
            self.step, self.state = ckpt["step"], state_to(ckpt["rnn_state"], device)
            torch.set_rng_state(ckpt["rng"])
            if ckpt["cuda_rng"] is not None and device.type == "cuda":
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            print(f"resumed from {args.ckpt} at step {self.step}", file=out)
        else:
            self.result.init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            torch.manual_seed(args.seed + 1)  # dropout stream: independent of how init consumed the RNG
        self.rng = RngStreams(device)
        self.result.step = self.step

        n_params = sum(p.numel() for p in model.parameters())
        print(f"[{self.backend}] {args.cell.upper()} {args.layers}x{args.hidden}, {n_params / 1e6:.2f}M params, "
              f"vocab {len(vocab)}, {len(train_ids)} train / {len(val_ids)} val chars, "
              f"{self.steps_per_epoch} steps/epoch, device {device}, amp {args.amp}{precision_note(device)}", file=out)
        self.own_progress = progress is None
        self.progress = Progress(args.log_every, stream=out) if progress is None else progress
        self.pending = []  # losses still on the device: reading each step would sync the GPU every step
        # the first steps pay one-off costs (allocator and oneDNN/cuBLAS warm-up): not timed
        self.timing_starts = self.step + min(WARMUP_STEPS, max(1, self.total_steps - self.step - 1))
        model.train()

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def advance(self):
        """One optimizer step, timed on its own (the device synchronised before and after), then
        what is due after it: flushing the losses and the progress line every --log-every
        steps, an evaluation, a checkpoint."""
        with self.rng.active():
            epoch, i = divmod(self.step, self.steps_per_epoch)
            sync(self.device)
            t0 = time.perf_counter()
            self._optimizer_step(i)
            sync(self.device)
            seconds = time.perf_counter() - t0
            self.step += 1
            if self.step > self.timing_starts:
                self.result.step_rates.append(self.result.tokens_per_step / seconds)
            self._after_step(epoch, end_of_epoch=i + 1 == self.steps_per_epoch)

    def _optimizer_step(self, i: int):
        """Batch i of the epoch: forward, loss, backward, clipping, Adam. No host sync."""
        args, model, opt, scaler, device = self.args, self.model, self.opt, self.scaler, self.device
        T, V = args.seq_len, len(self.result.vocab)
        if i == 0:
            self.state = None  # a new pass over the streams starts from a fresh state
        x = self.train_stream[i * T:(i + 1) * T].to(device, non_blocking=True)
        y = self.train_stream[i * T + 1:(i + 1) * T + 1].to(device, non_blocking=True)
        with autocast(device, args.amp):
            logits, state = model(x, self.state)
        # the loss in float32 at least (autocast's bf16/fp16 logits), float64 when the model is
        loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)).view(-1, V), y.view(-1))
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
        self.state = detach_state(state)
        self.pending.append(loss.detach())

    def _after_step(self, epoch: int, end_of_epoch: bool):
        args, step, total = self.args, self.step, self.total_steps
        want_eval = self.evals and (end_of_epoch or step == total or (args.eval_every and step % args.eval_every == 0))
        want_save = bool(args.ckpt) and (step == total or want_eval or
                                         (args.save_every and step % args.save_every == 0))
        if not (want_eval or want_save or step % args.log_every == 0 or step == total):
            return
        self.result.losses += torch.stack(self.pending).float().tolist()
        self.pending = []
        if self.own_progress:
            self.progress.update(step, f"[{self.backend}] step {step}/{total} epoch {epoch + 1} "
                                       f"loss {self.result.losses[-1]:.4f} {_rate(self.result)} tok/s",
                                 force=step == total)
        if want_eval:
            ppl = evaluate(self.model, self.val_stream, args.seq_len, self.device, args.amp)
            self.result.val.append((step, ppl))
            self.progress.print(f"[{self.backend}] step {step}: validation perplexity {ppl:.3f}")
        if want_save:
            save_checkpoint(args.ckpt, self.model, self.opt, self.scaler, self.result.vocab, args, step, self.state,
                            self.data_hash)

    def finish(self) -> RunResult:
        if self.own_progress:
            self.progress.close()
        self.result.step = self.step
        return self.result


def train(args, backend: Optional[str] = None, init_state: Optional[dict] = None, text: Optional[str] = None,
          evals: bool = True, out=None) -> RunResult:
    """Train per `args` (see build_parser) to args.steps (or args.epochs); see Trainer."""
    trainer = Trainer(args, backend, init_state, text, evals, out)
    while not trainer.done:
        trainer.advance()
    return trainer.finish()


def train_side_by_side(args, out) -> Tuple[RunResult, RunResult]:
    """fastrnn and torch.nn from the same initial weights and dropout stream, one optimizer step
    of each in turn (fastrnn, torch.nn, fastrnn, torch.nn, ...), so that load from elsewhere on
    the machine slows both alike. Only the fastrnn run evaluates every --eval-every steps and
    writes --ckpt; both evaluate at the end."""
    progress = Progress(args.log_every, stream=out)
    fast = Trainer(args, "fastrnn", out=out, progress=progress)
    torch_args = copy.copy(args)
    torch_args.ckpt, torch_args.resume, torch_args.eval_every = None, False, 0
    slow = Trainer(torch_args, "torch", init_state=fast.result.init_state, out=out, progress=progress)
    while not fast.done:
        fast.advance()
        slow.advance()
        step = fast.step
        if step % args.log_every == 0 or fast.done:  # both runs flushed their losses at this step
            progress.update(step, f"step {step}/{fast.total_steps} loss fastrnn {fast.result.losses[-1]:.4f} "
                                  f"torch.nn {slow.result.losses[-1]:.4f} | tok/s fastrnn {_rate(fast.result)} "
                                  f"torch.nn {_rate(slow.result)}", force=fast.done)
    progress.close()
    return fast.finish(), slow.finish()


def _rate(r: RunResult) -> str:
    return f"{r.tokens_per_s:,.0f}" if r.step_rates else "n/a"


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
    args = argparse.Namespace(**{k: _ckpt_arg(ckpt, k) for k in MODEL_ARGS})
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
           "every --eval-every steps) and the same model with torch.nn, one step of each in turn, print both "
           "speeds, then a sample; "
           f"its defaults: {MAIN_DEFAULTS} (flags given explicitly still win)")
    a("--data", default=None, help="UTF-8 text file to train on (default: CPython's pydoc_data.topics text)")
    a("--rnn", choices=BACKENDS, default="fastrnn", help="recurrent layer implementation")
    a("--compare", action="store_true",
      help="train with fastrnn and with torch.nn from the same initial weights and seed, one step of each in "
           "turn; print tokens/s of both")
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
    a("--weight-drop", type=float, default=0.0,
      help="fastrnn only: DropConnect rate on the recurrent weights (weight_hh) in training, AWD-LSTM's weight "
           "drop: one mask per layer and forward call (0: off)")
    a("--zoneout", type=float, default=0.0,
      help="fastrnn only: zoneout rate on the hidden state in training: each element keeps its previous value "
           "with this probability, a fresh draw every step (0: off)")
    a("--recurrent-dropout", type=float, default=0.0,
      help="fastrnn only: variational dropout on h_{t-1} where it enters the recurrent product in training, one "
           "mask per layer, sequence and forward call (0: off)")
    a("--layer-norm", action="store_true",
      help="fastrnn only: layer-normalised gates (and, for the LSTM, output cell state) in every layer")
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
    for name, flag in FASTRNN_OPTIONS:
        value = getattr(args, name)
        if not 0 <= value <= 1:  # (layer_norm: a bool, always in range)
            parser.error(f"{flag} must be in [0, 1], got {value}")
        if value and (args.rnn != "fastrnn" or args.main or args.compare):
            parser.error(f"{flag} is a fastrnn option: torch.nn's layers have none, so it does not combine with "
                         "--rnn torch, --compare or --main")
    return args


def _report_speed(r_fast: RunResult, r_torch: RunResult, device, out):
    """What was measured, each side's median tokens/s with its spread, and the ratio of the medians."""
    n = min(len(r_fast.step_rates), len(r_torch.step_rates))
    print(f"\nspeed on {device}: training tokens/s of single optimizer steps ({r_fast.tokens_per_step} tokens each),\n"
          f"  {n} steps of each, interleaved (fastrnn, torch.nn, fastrnn, ...), after {WARMUP_STEPS} untimed ones; "
          f"evaluation excluded", file=out)
    if not n:
        print("  (no step was timed: give more --steps)", file=out)
        return
    print(f"  {'':9} {'median':>10}  {'[q1 - q3]':>19}  {'[min - max]':>19}", file=out)
    for name, r in (("fastrnn", r_fast), ("torch.nn", r_torch)):
        rates = sorted(r.step_rates)
        q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else rates * 3
        print(f"  {name:9} {r.tokens_per_s:10,.0f}  {f'[{q1:,.0f} - {q3:,.0f}]':>19}  "
              f"{f'[{rates[0]:,.0f} - {rates[-1]:,.0f}]':>19}", file=out)
    ratio = r_fast.tokens_per_s / r_torch.tokens_per_s
    print(f"  fastrnn / torch.nn = {ratio:.3g}x (ratio of the medians: fastrnn {'faster' if ratio >= 1 else 'slower'})",
          file=out)
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        print(f"  (1-minute load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)", file=out)
    m = min(len(r_fast.losses), len(r_torch.losses))
    diff = max(abs(a - b) for a, b in zip(r_fast.losses[:m], r_torch.losses[:m]))
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
        r_fast, r_torch = train_side_by_side(args, out)
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

"""The example scripts run end to end with tiny sizes on the CPU and produce real outcomes:
the LM learns, checkpoints resume exactly, sampling is deterministic, fastrnn and torch.nn
trajectories agree step for step, lengths matter for classification, convert keeps outputs."""
import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastrnn

from _subprocess import ROOT, describe  # (tests/: on sys.path under pytest, from conftest.py)
from examples import char_lm, classify, migrate
from examples._common import Progress, no_tf32

EXAMPLES = os.path.join(ROOT, "examples")

# a tiny LM: a few seconds per run on two cores
TINY_LM = ["--hidden", "32", "--embed", "16", "--layers", "2", "--seq-len", "32", "--batch-size", "16",
           "--lr", "1e-2", "--log-every", "1000", "--device", "cpu"]


def lm_args(*extra):
    return char_lm.parse_args(TINY_LM + [str(e) for e in extra])


def quiet():
    return io.StringIO()


@pytest.fixture(scope="module")
def small_text():
    # 12 KB of the bundled text: 10800 training chars = 16 streams x 675 -> 21 steps per epoch
    return char_lm.load_text()[:12000]


def test_char_lm_learns_on_bundled_text():
    args = lm_args("--steps", 60, "--eval-every", 30, "--dropout", 0)
    r = char_lm.train(args, "fastrnn", evals=True, out=quiet())
    assert len(r.losses) == 60 and r.step == 60
    vocab_size = len(r.vocab)
    assert vocab_size > 60  # the docs use far more than letters
    # starts near uniform (log V), ends well below it
    assert abs(r.losses[0] - torch.log(torch.tensor(float(vocab_size))).item()) < 0.3
    assert sum(r.losses[-5:]) / 5 < r.losses[0] - 1.0
    steps = [s for s, _ in r.val]
    ppls = [p for _, p in r.val]
    assert steps == [30, 60]
    assert ppls[1] < ppls[0] < vocab_size
    assert r.tokens_per_s > 0


def test_char_lm_resume_continues_exactly(tmp_path, small_text):
    # dropout on, and the run crosses an epoch boundary (state reset + evaluation) after resuming
    common = ["--dropout", 0.2, "--eval-every", 5]
    ckpt = str(tmp_path / "lm.pt")
    first = char_lm.train(lm_args("--steps", 12, "--ckpt", ckpt, *common), text=small_text, out=quiet())
    out = quiet()
    # --lr on the command line is overridden by the checkpoint's: the trajectory must not change
    second = char_lm.train(lm_args("--steps", 26, "--ckpt", ckpt, "--resume", "--lr", 0.5, *common),
                           text=small_text, out=out)
    assert "resumed from" in out.getvalue() and second.step == 26
    whole = char_lm.train(lm_args("--steps", 26, *common), text=small_text, out=quiet())

    assert first.losses + second.losses == whole.losses  # bit-identical trajectory
    # evaluations (every 5 steps, at the epoch end 21 and at the end) agree; the first run also
    # evaluated at its own end, step 12
    assert first.val == [v for v in whole.val if v[0] < 12] + [first.val[-1]] and first.val[-1][0] == 12
    assert second.val == [v for v in whole.val if v[0] > 12] and [s for s, _ in second.val] == [15, 20, 21, 25, 26]
    a, b = second.model.state_dict(), whole.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ck = char_lm.load_checkpoint(ckpt)
    assert ck["step"] == 26 and ck["vocab"] == whole.vocab


def test_char_lm_resume_refuses_other_text(tmp_path, small_text):
    ckpt = str(tmp_path / "lm.pt")
    char_lm.train(lm_args("--steps", 2, "--ckpt", ckpt), text=small_text, out=quiet())
    with pytest.raises(ValueError, match="text differs"):
        char_lm.train(lm_args("--steps", 4, "--ckpt", ckpt, "--resume"), text=small_text[:-1], out=quiet())


def test_char_lm_sampling(tmp_path, small_text):
    ckpt = str(tmp_path / "lm.pt")
    char_lm.train(lm_args("--steps", 15, "--ckpt", ckpt), text=small_text, out=quiet())
    model, vocab = char_lm.load_for_sampling(ckpt, "fastrnn", "cpu")
    assert vocab == char_lm.build_vocab(small_text)

    s1 = char_lm.generate(model, vocab, "The ", 80, temperature=1.0, seed=7)
    s2 = char_lm.generate(model, vocab, "The ", 80, temperature=1.0, seed=7)
    s3 = char_lm.generate(model, vocab, "The ", 80, temperature=1.0, seed=8)
    assert s1 == s2 and s1 != s3
    assert s1.startswith("The ") and len(s1) == 4 + 80
    assert set(s1) <= set(vocab) and set(s3) <= set(vocab)
    # top-k=1 keeps only the most likely character: the same as greedy decoding
    greedy = char_lm.generate(model, vocab, "The ", 40, temperature=0.0, seed=1)
    assert char_lm.generate(model, vocab, "The ", 40, temperature=1.0, top_k=1, seed=2) == greedy
    with pytest.raises(ValueError, match="outside the vocabulary"):
        char_lm.generate(model, vocab, "\u2603", 5)

    # the command line, as a script from another directory (path set-up, checkpoint loading)
    cmd = [sys.executable, "-X", "faulthandler", os.path.join(EXAMPLES, "char_lm.py"), "--sample", "--ckpt", ckpt,
           "--prefix", "The ", "--length", "80", "--temperature", "1.0", "--seed", "7", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)  # a hang guard only
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == s1 + "\n"


@contextlib.contextmanager
def default_dtype(dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_lm_fastrnn_matches_torch_step_for_step(cell, small_text, device):
    # same initial weights and seed. On the CPU with dropout on: both stacks draw the same masks
    # (cuDNN draws its inter-layer masks from its own generator, so no dropout there)
    dropout = 0.2 if device.type == "cpu" else 0.0
    args = lm_args("--steps", 10, "--cell", cell, "--dropout", dropout, "--device", device)
    # Adam divides each gradient by its running RMS (plus eps = 1e-8), so a weight whose gradient is
    # mostly cancellation moves by up to lr * (rounding of its gradient) / eps per step: in float32,
    # where fastrnn (MKL) and torch.nn (oneDNN, or cuDNN) sum in different orders, a few weights of
    # thousands end up ~2e-5 (CPU, depends on the BLAS and ISA) or ~3e-5 (H200) apart after 10 steps.
    # On the CPU the comparison runs in float64 instead: sums of n <= ~1e3 terms of gradient
    # contributions <= 1 differ by <= n * 2^-53 ~ 1e-13, i.e. <= lr * 1e-13 / eps = 1e-7 per step, and
    # <= 1e-6 over 10 steps: atol 1e-5 holds whatever the BLAS and ISA.
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    with no_tf32(), default_dtype(dtype):
        fast = char_lm.train(args, "fastrnn", text=small_text, out=quiet())
        slow = char_lm.train(args, "torch", init_state=fast.init_state, text=small_text, out=quiet())
    assert isinstance(fast.model.rnn, fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)
    assert type(slow.model.rnn) is (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)
    assert fast.model.rnn.weight_hh_l0.dtype == slow.model.rnn.weight_hh_l0.dtype == dtype
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(slow.losses), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.val[-1][1], slow.val[-1][1], rtol=1e-4, atol=0)
    # GPU (float32, no TF32): cuDNN and fastrnn's cuBLAS GEMMs sum in different orders; measured
    # ~3e-5 on an H200, 2e-4 leaves room for other GPUs' orders (Adam's amplification above).
    atol = 1e-5 if device.type == "cpu" else 2e-4
    for k, v in fast.model.state_dict().items():
        torch.testing.assert_close(v, slow.model.state_dict()[k], rtol=1e-4, atol=atol)


class _LSTMAutocastByHand(nn.LSTM):
    """nn.LSTM doing by hand what CPU bf16 autocast does to it: parameters, input and state cast to
    bf16 inside the graph (the float32 parameters stay the optimizer's), the layer run in bf16.
    Under autocast itself torch.nn's LSTM needs oneDNN's bf16 LSTM primitive, which a CPU without
    AVX-512 lacks ("could not create a primitive descriptor"); with bf16 parameters it runs anywhere."""

    def forward(self, x, hx=None):
        if not torch.is_autocast_enabled("cpu"):
            return super().forward(x, hx)
        dt = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            params = {k: p.to(dt) for k, p in self.named_parameters()}
            hx = None if hx is None else tuple(h.to(dt) for h in hx)
            return torch.func.functional_call(self, params, (x.to(dt), hx))


def test_char_lm_bf16_autocast(small_text, monkeypatch):
    args = lm_args("--steps", 4, "--amp", "bf16", "--dropout", 0)
    fast = char_lm.train(args, "fastrnn", text=small_text, evals=False, out=quiet())

    def torch_model(args, vocab_size, backend):
        model = char_lm.CharLM(vocab_size, args.embed, args.hidden, args.layers, args.cell, args.dropout, backend)
        model.rnn = _LSTMAutocastByHand(args.embed, args.hidden, args.layers)
        return model

    monkeypatch.setattr(char_lm, "make_model", torch_model)
    slow = char_lm.train(args, "torch", init_state=fast.init_state, text=small_text, evals=False, out=quiet())
    assert isinstance(slow.model.rnn, nn.LSTM) and not isinstance(slow.model.rnn, fastrnn.LSTM)
    assert all(torch.isfinite(torch.tensor(fast.losses)))
    # Both run the LSTM and the head in bf16 (unit roundoff u = 2^-8) from the same float32 weights,
    # rounding the same values in different orders. Logits (|z| <= ~2 on this near-uniform model) that
    # differ by two roundings (2u|z| <= 1.6e-2 / 2) move the cross entropy by at most 2 max|dz| =
    # 1.6e-2: atol 2e-2. (Measured ~2e-4. fp32 and bf16 runs differ by only ~6e-4 on this tiny model,
    # so the dtypes are asserted directly below.)
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(slow.losses), rtol=0, atol=2e-2)
    x = torch.randn(3, 2, args.embed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for model in (fast.model, slow.model):
            y, (h, c) = model.rnn(x)
            assert y.dtype == h.dtype == c.dtype == torch.bfloat16, type(model.rnn)


def _speed_rows(text):
    """{name: (median, q1, q3, min, max)} as the speed report prints them (integers)."""
    rows = {}
    for name in ("fastrnn", "torch.nn"):
        m = re.search(rf"^  {re.escape(name)} +([\d,]+) +\[([\d,]+) - ([\d,]+)\] +\[([\d,]+) - ([\d,]+)\]$", text,
                      re.MULTILINE)
        assert m, (name, text)
        rows[name] = tuple(int(g.replace(",", "")) for g in m.groups())
    return rows


def test_char_lm_main_job_runs(small_text, tmp_path):
    # what the printout must say and that its numbers agree with each other; never a speed
    data = tmp_path / "text.txt"
    data.write_text(small_text, encoding="utf-8")
    out = quiet()
    fast, slow = char_lm.main(["--main", "--data", str(data), "--steps", "12", "--eval-every", "4", "--hidden", "16",
                               "--embed", "8", "--batch-size", "8", "--length", "50", "--device", "cpu"], out=out)
    text = out.getvalue()
    assert fast.backend == "fastrnn" and slow.backend == "torch"
    assert len(fast.losses) == len(slow.losses) == 12
    assert [s for s, _ in fast.val] == [4, 8, 12] and [s for s, _ in slow.val] == [12]
    # interleaved runs draw their own dropout streams: the same trajectory as one run alone
    alone = char_lm.train(char_lm.parse_args(["--main", "--data", str(data), "--steps", "12", "--hidden", "16",
                                              "--embed", "8", "--batch-size", "8", "--device", "cpu"]),
                          "torch", init_state=fast.init_state, evals=False, out=quiet())
    assert slow.losses == alone.losses

    # every step after the untimed warm-up ones is timed, the same number on both sides
    n = 12 - char_lm.WARMUP_STEPS
    assert len(fast.step_rates) == len(slow.step_rates) == n
    assert ("speed on cpu: training tokens/s of single optimizer steps (512 tokens each),\n"
            f"  {n} steps of each, interleaved (fastrnn, torch.nn, fastrnn, ...), after {char_lm.WARMUP_STEPS} "
            "untimed ones" in text)
    rows = _speed_rows(text)
    for name, r in (("fastrnn", fast), ("torch.nn", slow)):
        med, q1, q3, lo, hi = rows[name]
        assert lo <= q1 <= med <= q3 <= hi, (name, rows[name])
        assert med == int(f"{r.tokens_per_s:.0f}")  # the printed median is the run's
        assert lo == int(f"{min(r.step_rates):.0f}") and hi == int(f"{max(r.step_rates):.0f}")
    ratio = fast.tokens_per_s / slow.tokens_per_s
    line = f"fastrnn / torch.nn = {ratio:.3g}x (ratio of the medians: fastrnn {'faster' if ratio >= 1 else 'slower'})"
    assert line in text
    # ... and the ratio printed (3 significant digits) fits the medians printed (to the unit)
    printed = float(line.split("= ")[1].split("x")[0])
    (mf, *_), (mt, *_) = rows["fastrnn"], rows["torch.nn"]
    assert (mf - 0.5) / (mt + 0.5) * (1 - 5e-3) <= printed <= (mf + 0.5) / (mt - 0.5) * (1 + 5e-3)
    assert "largest per-step loss difference" in text

    sample = text.split("-" * 72 + "\n")[1][:-1]  # between the rules, less the print's newline
    assert len(sample) == 1 + 50 and set(sample) <= set(fast.vocab)  # default prefix "\n" + 50 chars


TINY_CLS = ["--train-size", "1024", "--test-size", "256", "--hidden", "24", "--embed", "16", "--epochs", "5",
            "--max-len", "16", "--min-len", "3", "--vocab", "8", "--lr", "2e-2"]


def test_classify_needs_lengths(device):
    data = classify.make_dataset(64, 8, 3, 16, 4, seed=0)
    assert data.tokens.shape == (64, 16) and int(data.lengths.min()) >= 3 and int(data.lengths.max()) <= 16
    # padding is random junk (not zeros) and the label is read at the true end
    assert (data.tokens[data.lengths < 14][:, -3:] != 0).any()
    ends = data.tokens.gather(1, (data.lengths - 1)[:, None])[:, 0]
    befores = data.tokens.gather(1, (data.lengths - 2)[:, None])[:, 0]
    assert torch.equal(data.labels, (ends + befores) % 4)

    with no_tf32():
        fast, slow, blind = classify.main(TINY_CLS + ["--compare", "--device", str(device)], out=quiet())
    assert fast.test_acc[-1] >= 0.9  # chance is 0.25
    # nn.GRU over pack_padded_sequence follows the same trajectory from the same weights
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(slow.losses), rtol=1e-4, atol=1e-5)
    assert slow.test_acc == pytest.approx(fast.test_acc, abs=1 / 256 + 1e-9)
    # reading past the true end (into the junk) stays near chance
    assert blind.test_acc[-1] < 0.45
    assert fast.test_acc[-1] - blind.test_acc[-1] > 0.4


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_migrate_keeps_outputs(rnn_type, device):
    out = quiet()
    res = migrate.main(["--rnn-type", rnn_type, "--ntoken", "50", "--ninp", "12", "--nhid", "16", "--nlayers", "2",
                        "--bptt", "7", "--batch-size", "3", "--repeats", "2", "--device", str(device)], out=out)
    assert res["max_diff"] < 1e-5
    # to_torch gives back the very same computation (on the GPU, atomics in the embedding backward
    # may reorder sums)
    assert res["max_diff_back"] <= (0.0 if device.type == "cpu" else 1e-6)
    assert set(res["times"]) == {"torch.nn", "fastrnn"} and all(t > 0 for t in res["times"].values())
    assert f"converted {rnn_type} -> ['fastrnn.modules.{rnn_type}']" in out.getvalue()


def test_migrate_compare_detects_a_change():
    # the check in migrate.py is real: a perturbed weight is reported
    torch.manual_seed(0)
    a = migrate.RNNModel("LSTM", 20, 8, 8, 1, 0.0).eval()
    b = fastrnn.convert(a, inplace=False).eval()
    with torch.no_grad():
        b.rnn.weight_hh_l0[0, 0] += 0.1
    tokens = torch.randint(0, 20, (5, 2))
    with pytest.raises(AssertionError, match="changed"):
        migrate.compare(a, b, tokens, tokens, a.init_hidden(2), 1e-4, 1e-5)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_rewrites_in_place_on_a_terminal_only():
    tty = _Terminal()
    p = Progress(every=10, stream=tty)
    for step in range(1, 4):
        p.update(step, f"step {step}")
    p.print("validation")
    text = tty.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 2  # one line closed, then the permanent one
    assert text.endswith("validation\n") and "\rstep 3" in text

    pipe = io.StringIO()
    p = Progress(every=2, stream=pipe)
    for step in range(1, 6):
        p.update(step, f"step {step}", force=step == 5)
    assert pipe.getvalue() == "step 2\nstep 4\nstep 5\n"

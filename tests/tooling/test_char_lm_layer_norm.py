"""examples/char_lm.py --layer-norm: the option reaches the model, checkpoints keep it, and the
parser refuses it where it cannot apply."""
import io

import pytest
import torch

from examples import char_lm

TINY_LM = ["--hidden", "16", "--embed", "8", "--layers", "2", "--seq-len", "16", "--batch-size", "8",
           "--log-every", "1000", "--device", "cpu", "--dropout", "0"]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_lm_layer_norm_option(cell, tmp_path):
    text = char_lm.load_text()[:4000]
    common = TINY_LM + ["--cell", cell, "--steps", "6"]
    r = char_lm.train(char_lm.parse_args(common + ["--layer-norm", "--ckpt", str(tmp_path / "a.pt")]), text=text,
                      evals=False, out=io.StringIO())
    assert r.model.rnn.layer_norm and "weight_ln_hh_l1" in dict(r.model.rnn.named_parameters())
    assert r.losses[-1] < r.losses[0]  # it trains
    plain = char_lm.train(char_lm.parse_args(common), text=text, evals=False, out=io.StringIO())
    assert r.losses[0] != plain.losses[0]  # the norms change the function
    # the checkpoint keeps the option (resume and sampling rebuild the same model); one written
    # before the option existed reads as off
    model, _ = char_lm.load_for_sampling(str(tmp_path / "a.pt"), "fastrnn", "cpu")
    assert model.rnn.layer_norm
    ckpt = torch.load(tmp_path / "a.pt", weights_only=False)
    del ckpt["args"]["layer_norm"]
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if "_ln_" not in k}
    torch.save(ckpt, tmp_path / "old.pt")
    assert not char_lm.load_for_sampling(str(tmp_path / "old.pt"), "fastrnn", "cpu")[0].rnn.layer_norm


@pytest.mark.parametrize("extra", [["--layer-norm", "--rnn", "torch"], ["--layer-norm", "--compare"]],
                         ids=["torch", "compare"])
def test_char_lm_layer_norm_refusals(extra, capsys):
    with pytest.raises(SystemExit):
        char_lm.parse_args(TINY_LM + extra)
    assert "--layer-norm" in capsys.readouterr().err

"""examples/char_lm.py --zoneout / --recurrent-dropout: the options reach the model, checkpoints keep
them, and the parser refuses them where they cannot apply."""
import io

import pytest
import torch

from examples import char_lm

TINY_LM = ["--hidden", "16", "--embed", "8", "--layers", "2", "--seq-len", "16", "--batch-size", "8",
           "--log-every", "1000", "--device", "cpu", "--dropout", "0"]


@pytest.mark.parametrize("flag,attr", [("--zoneout", "zoneout"), ("--recurrent-dropout", "recurrent_dropout")])
def test_char_lm_regulariser_option(flag, attr, tmp_path):
    text = char_lm.load_text()[:4000]
    args = char_lm.parse_args(TINY_LM + ["--steps", "4", flag, "0.3", "--ckpt", str(tmp_path / "a.pt")])
    r = char_lm.train(args, text=text, evals=False, out=io.StringIO())
    assert getattr(r.model.rnn, attr) == 0.3 and r.model.training
    plain = char_lm.train(char_lm.parse_args(TINY_LM + ["--steps", "4"]), text=text, evals=False, out=io.StringIO())
    # same seed and data: the first step's loss is the same forward but for the masks
    assert r.losses[0] != plain.losses[0]
    model, _ = char_lm.load_for_sampling(str(tmp_path / "a.pt"), "fastrnn", "cpu")
    assert getattr(model.rnn, attr) == 0.3
    ckpt = torch.load(tmp_path / "a.pt", weights_only=False)
    del ckpt["args"][attr]  # written before the option existed: off
    torch.save(ckpt, tmp_path / "old.pt")
    assert getattr(char_lm.load_for_sampling(str(tmp_path / "old.pt"), "fastrnn", "cpu")[0].rnn, attr) == 0.0


@pytest.mark.parametrize("flag", ["--zoneout", "--recurrent-dropout"])
@pytest.mark.parametrize("extra", [["1.5"], ["0.2", "--rnn", "torch"], ["0.2", "--compare"]],
                         ids=["range", "torch", "compare"])
def test_char_lm_regulariser_refusals(flag, extra, capsys):
    with pytest.raises(SystemExit):
        char_lm.parse_args(TINY_LM + [flag] + extra)
    assert flag in capsys.readouterr().err

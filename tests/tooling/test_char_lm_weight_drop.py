"""examples/char_lm.py --weight-drop: the option reaches the model, checkpoints keep it, and the
parser refuses it where it cannot apply."""
import io

import pytest
import torch

from examples import char_lm

# --------------------------------------------------------------------------------------------
# examples/char_lm.py --weight-drop


TINY_LM = ["--hidden", "16", "--embed", "8", "--layers", "2", "--seq-len", "16", "--batch-size", "8",
           "--log-every", "1000", "--device", "cpu", "--dropout", "0"]


def test_char_lm_weight_drop_option(tmp_path):
    text = char_lm.load_text()[:4000]
    args = char_lm.parse_args(TINY_LM + ["--steps", "6", "--weight-drop", "0.5", "--ckpt", str(tmp_path / "a.pt")])
    r = char_lm.train(args, text=text, evals=False, out=io.StringIO())
    assert r.model.rnn.weight_drop == 0.5 and r.model.training
    plain = char_lm.train(char_lm.parse_args(TINY_LM + ["--steps", "6"]), text=text, evals=False, out=io.StringIO())
    # same seed and data: the first step's loss is the same forward but for the masks
    assert r.losses[0] != plain.losses[0]
    # the checkpoint keeps the rate (resume and sampling rebuild the same model); one written
    # before the option existed reads as off
    model, _ = char_lm.load_for_sampling(str(tmp_path / "a.pt"), "fastrnn", "cpu")
    assert model.rnn.weight_drop == 0.5
    ckpt = torch.load(tmp_path / "a.pt", weights_only=False)
    del ckpt["args"]["weight_drop"]
    torch.save(ckpt, tmp_path / "old.pt")
    assert char_lm.load_for_sampling(str(tmp_path / "old.pt"), "fastrnn", "cpu")[0].rnn.weight_drop == 0.0


@pytest.mark.parametrize("extra", [["--weight-drop", "1.5"], ["--weight-drop", "0.2", "--rnn", "torch"],
                                   ["--weight-drop", "0.2", "--compare"]], ids=["range", "torch", "compare"])
def test_char_lm_weight_drop_refusals(extra, capsys):
    with pytest.raises(SystemExit):
        char_lm.parse_args(TINY_LM + extra)
    assert "--weight-drop" in capsys.readouterr().err

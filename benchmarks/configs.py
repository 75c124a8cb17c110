"""Benchmark configurations, named as in docs/DESIGN.md ("Benchmarks")."""
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LayerConfig:
    name: str
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    note: str = ""
    quick_T: int = 10  # sequence length under --quick


    def shape(self):
        return {"T": self.T, "B": self.B, "I": self.I, "H": self.H, "layers": self.layers}


LAYER_CONFIGS = {
    # PyTorch's own benchmarks/fastrnns default shape.
    "fastrnns": LayerConfig("fastrnns", T=100, B=64, I=512, H=512),
    # Karpathy's char-rnn: the layer input is the output of a 512-wide embedding.
    "charrnn": LayerConfig("charrnn", T=100, B=50, I=512, H=512, layers=2,
                           note="2 layers; input = embedding output, dim 512"),
    "small": LayerConfig("small", T=100, B=8, I=256, H=256),
    # 8x the work per step of fastrnns: --quick runs it on a shorter sequence.
    "large": LayerConfig("large", T=256, B=128, I=1024, H=1024, quick_T=4),
}

# varlen: the fastrnns shape, lengths uniform in [VARLEN_MIN_FRAC * T, T] (30..100 at T=100).
VARLEN_BASE = "fastrnns"
VARLEN_MIN_FRAC = 0.3
VARLEN_SEED = 1234

# weight drop (DropConnect on W_hh), fwd+bwd: issue 19's CPU shape, AWD-LSTM's rate.
WDROP = LayerConfig("wdrop", T=100, B=32, I=256, H=256, note="weight_drop=0.5 on weight_hh_l0")
WDROP_P = 0.5

# zoneout + recurrent dropout, fwd+bwd and inference: issue 19's CPU shape; rates of the zoneout
# paper's LSTM runs (0.1 on h and c) and a common recurrent-dropout rate.
ZONEOUT = LayerConfig("zoneout", T=100, B=32, I=256, H=256,
                      note="zoneout=zoneout_cell=0.1, recurrent_dropout=0.25")
ZONEOUT_P = 0.1
RECDROP_P = 0.25
# layer norm (fastrnn's layer_norm=True), fwd+bwd and inference: issue 19's CPU shape.
LAYERNORM = LayerConfig("layernorm", T=100, B=32, I=256, H=256, note="layer_norm=True")

# Char-LM training step and generation (Karpathy's char-rnn sizes).
CHARLM = {"B": 50, "T": 100, "emb": 512, "H": 512, "layers": 2, "clip": 5.0, "lr": 2e-3}
GENERATE = {"chars": 200, "emb": 512, "H": 512, "layers": 2, "temperature": 1.0}

OTHER_CONFIGS = ("varlen", "wdrop", "zoneout", "layernorm", "train", "generate")
ALL_CONFIGS = tuple(LAYER_CONFIGS) + OTHER_CONFIGS

QUICK_T = 10  # train step under --quick
QUICK_CHARS = 20  # generated characters under --quick


def quick(cfg: LayerConfig) -> LayerConfig:
    return replace(cfg, T=min(cfg.T, cfg.quick_T))

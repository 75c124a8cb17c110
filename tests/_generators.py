"""Case generators shared by test modules (test modules never import each other)."""
import itertools
import random

import torch


def pairwise_cases(factors, valid, seed=0):
    """Greedy all-pairs over `factors` ({name: [values]}), keeping only cases where `valid(case)`:
    repeatedly add the candidate covering most still-uncovered value pairs.

    Pairwise-complete by construction: `uncovered` starts as every pair of factor values that
    some valid case holds, each round removes at least one (the fallback takes a case covering
    some of what is left), and the loop ends only when none is left."""
    names = list(factors)
    full = [dict(zip(names, values)) for values in itertools.product(*factors.values())]
    full = [c for c in full if valid(c)]

    def pairs(case):
        return {(a, repr(case[a]), b, repr(case[b])) for a, b in itertools.combinations(names, 2)}

    uncovered = set().union(*(pairs(c) for c in full))
    rng = random.Random(seed)
    chosen = []
    while uncovered:
        pool = rng.sample(full, min(400, len(full)))
        best = max(pool, key=lambda c: len(pairs(c) & uncovered))
        gain = pairs(best) & uncovered
        if not gain:  # the sample missed what is left: take a case that covers some of it
            best = next(c for c in full if pairs(c) & uncovered)
            gain = pairs(best) & uncovered
        uncovered -= gain
        chosen.append(best)
    return chosen


def make_lengths(spec, T, B):
    """int64 lengths [B]: None, "full" (all T), "mixed" (unsorted, one entry of length 1, one of
    length T when B > 2) or an explicit list."""
    if spec is None:
        return None
    if spec == "full":
        return torch.full((B,), T, dtype=torch.int64)
    if spec == "mixed":
        lens = [(T - 1 - 3 * b) % T + 1 for b in range(B)]  # starts at T, then wraps: unsorted
        lens[1 % B] = 1
        if B > 2:
            lens[2] = T
        return torch.tensor(lens, dtype=torch.int64)
    return torch.tensor(spec, dtype=torch.int64)


def layer_tensors(kind, T, B, I, H, dtype, device="cpu", seed=0):
    """One layer's operands (x, h0, c0 or None, w_ih, w_hh, b_ih, b_hh) for the persistent-kernel
    tests, drawn in float64 from a seeded generator and cast: entries ~N(0, 0.25) and W_hh scaled
    by 1/sqrt(H), so pre-activations are of order one whatever H is."""
    g = torch.Generator().manual_seed(seed)
    G = 4 if kind == "lstm" else 3

    def r(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    t = {"x": r(T, B, I), "h0": r(B, H), "w_ih": r(G * H, I), "w_hh": r(G * H, H, scale=H ** -0.5),
         "b_ih": r(G * H), "b_hh": r(G * H)}
    t["c0"] = r(B, H) if kind == "lstm" else None
    return t


# The option tests' modules (weight drop, zoneout / recurrent dropout, layer norm): one small size,
# and configurations covering lengths, bidirectional, 2 layers, batch_first, proj_size,
# bias=False and unbatched input. "lengths" / "unbatched" are for option_inputs, the rest
# constructor arguments.
OPTION_DIMS = (6, 3, 4, 5, 3)  # T, B, I, H, P (P: proj_size where a configuration projects)
OPTION_LENGTHS = [4, 6, 2]
_T, _B, _I, _H, _P = OPTION_DIMS
OPTION_CONFIGS = [
    ("LSTM", dict()),
    ("LSTM", dict(num_layers=2, bidirectional=True, lengths=True)),
    ("LSTM", dict(proj_size=_P, batch_first=True, lengths=True)),
    ("LSTM", dict(num_layers=2, bias=False, proj_size=_P, bidirectional=True)),
    ("LSTM", dict(unbatched=True, num_layers=2)),
    ("GRU", dict()),
    ("GRU", dict(num_layers=2, bidirectional=True, lengths=True, batch_first=True)),
    ("GRU", dict(bias=False, unbatched=True, bidirectional=True)),
]


def config_id(config):
    """A readable pytest id for an OPTION_CONFIGS entry."""
    mode, opts = config
    return "-".join([mode.lower()] + [k if v is True else f"{k}{v}" for k, v in opts.items()])


def option_inputs(mode, opts, device, dtype=torch.float64, state_scale=1.0):
    """x, hx (torch.nn's form: (h0, c0) for an LSTM) and lengths (or None) for an OPTION_CONFIGS
    entry, drawn in float64 from a fixed seed and cast to dtype; the states scaled by state_scale."""
    g = torch.Generator().manual_seed(1)
    D = 2 if opts.get("bidirectional") else 1
    L = opts.get("num_layers", 1) * D
    Pw = opts.get("proj_size", 0) or _H
    unbatched = opts.get("unbatched")
    shape = (_T, _I) if unbatched else ((_B, _T, _I) if opts.get("batch_first") else (_T, _B, _I))
    batch = () if unbatched else (_B,)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)
    h0 = (state_scale * torch.randn(L, *batch, Pw, generator=g, dtype=torch.float64)).to(device, dtype)
    c0 = (state_scale * torch.randn(L, *batch, _H, generator=g, dtype=torch.float64)).to(device, dtype)
    hx = (h0, c0) if mode == "LSTM" else h0
    lengths = torch.tensor(OPTION_LENGTHS) if opts.get("lengths") else None
    return x, hx, lengths

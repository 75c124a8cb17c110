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

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

"""Timing: CUDA events (+ synchronize) on GPU, time.perf_counter on CPU; warm-up, then several
interleaved rounds so that slow drift of a shared machine hits every implementation alike."""
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch


@dataclass
class Plan:
    warmup: int
    min_reps: int
    max_reps: int
    budget_s: float  # keep adding rounds (up to max_reps) until this much time has been spent


def plan_for(device: torch.device, quick: bool) -> Plan:
    if quick:
        return Plan(warmup=1, min_reps=3, max_reps=5, budget_s=0.5)
    if device.type == "cuda":
        return Plan(warmup=5, min_reps=20, max_reps=300, budget_s=1.0)
    return Plan(warmup=1, min_reps=5, max_reps=30, budget_s=8.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device):
    """(device time in ms, host time in ms) of one call. On GPU the host time is the time
    to enqueue the work (launch + dispatch overhead), the device time spans the events."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        t1 = time.perf_counter()
        end.synchronize()
        return start.elapsed_time(end), (t1 - t0) * 1e3
    t0 = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t0) * 1e3
    return ms, ms


def summarize(samples: List[float]) -> Dict[str, float]:
    s = sorted(samples)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "q1": q1, "q3": q3,
            "mean": statistics.fmean(s), "n": len(s)}


def compare(fns: Dict[str, Callable[[], object]], device: torch.device, plan: Plan, warm_rounds: int = 0):
    """Time every fn of `fns` in alternating order. Returns {name: {"ms": stats}}, plus "host_ms"
    (enqueue time) on GPU. `warm_rounds`: calls of each fn the caller already made (they count
    as warm-up)."""
    for _ in range(max(0, plan.warmup - warm_rounds)):
        for fn in fns.values():
            fn()
        sync(device)
    names = list(fns)
    dev = {n: [] for n in names}
    host = {n: [] for n in names}
    t_start = time.perf_counter()
    rounds = 0
    while rounds < plan.min_reps or (rounds < plan.max_reps and time.perf_counter() - t_start < plan.budget_s):
        for n in (names if rounds % 2 == 0 else names[::-1]):
            d, h = time_call(fns[n], device)
            dev[n].append(d)
            host[n].append(h)
        rounds += 1
    if device.type != "cuda":  # on the CPU, host time is the time
        return {n: {"ms": summarize(dev[n])} for n in names}
    return {n: {"ms": summarize(dev[n]), "host_ms": summarize(host[n])} for n in names}


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

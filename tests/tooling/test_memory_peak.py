"""scripts/gpu_check/memory_peak.py (a GPU-check helper): the peak and the blocks live at it, from an allocator trace."""
from scripts.gpu_check.memory_peak import live_at_peak


def _ev(action, addr, size):
    return {"action": action, "addr": addr, "size": size, "frames": []}


def test_live_at_peak_finds_the_peak_and_its_blocks():
    trace = [_ev("alloc", 1, 100), _ev("alloc", 2, 50), _ev("free_requested", 1, 100),
             _ev("free_completed", 1, 100), _ev("alloc", 3, 120), _ev("alloc", 4, 10),
             _ev("free_requested", 3, 120), _ev("alloc", 5, 5)]
    peak, blocks = live_at_peak(trace)
    assert peak == 180  # blocks 2, 3 and 4
    assert [size for size, _ in blocks] == [120, 50, 10]
    assert [e["addr"] for _, e in blocks] == [3, 2, 4]


def test_live_at_peak_of_an_empty_trace():
    assert live_at_peak([]) == (0, [])

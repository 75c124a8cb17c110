"""The rule that keeps CPU and CUDA test runs comparable (checked on every collection by
tests/conftest.py, asserted by tests/test_suite_layout.py)."""
import re

import pytest

CUDA_TWIN_PROBLEMS = pytest.StashKey()  # what the collection hook found, for the test
COLLECTED_FILES = pytest.StashKey()  # the test files it saw (resolved paths), before any deselection
# set in a child collection by tests/test_suite_layout.py: the hook writes what it found there as JSON
REPORT_ENV = "FASTRNN_TEST_LAYOUT_REPORT"


def cuda_twin_problems(items):
    """items: (nodeid, has the cuda marker, the `device` parameter or None) per collected test.
    A test parametrized on device="cuda" must carry the cuda marker and have a CPU twin whose id
    differs only in that parameter; a test not on `device` but with "cuda" in its id, or taking
    cuda_device, must carry the marker. Returns one line per violation."""
    ids = {nodeid for nodeid, _, _ in items}
    problems = []
    for nodeid, marked, dev in items:
        cuda_like = dev == "cuda" or re.search(r"[\[-]cuda[-\]]", nodeid)
        if cuda_like and not marked:
            problems.append(f"{nodeid}: runs on CUDA but is not marked `cuda` (pytest -m cuda misses it)")
        if dev == "cuda":
            twin = re.sub(r"(?<=[\[-])cuda(?=[-\]])", "cpu", nodeid, count=1)
            if twin not in ids:
                problems.append(f"{nodeid}: no CPU twin {twin}")
    return problems

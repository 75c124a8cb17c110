"""Bad inputs give a clear exception naming the problem, never a crash or a silent wrong answer;
non-contiguous inputs give the same results as contiguous ones.

The cases live in tests/_bad_input_cases.py and all run in ONE subprocess per session (module
fixture), which prints a JSON line per case. A hard crash (segfault, abort) in a kernel therefore
fails the cases it cut off instead of killing pytest, each failure naming the case that was running,
the signal, and the child's stderr (python -X faulthandler: the Python traceback of the crash).
"""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input_cases import CASES  # noqa: E402
from _subprocess import describe, run_python  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "_bad_input_cases.py"


class CaseRun:
    """One run of the case script: its records by (name, device), the case it started last, the process."""

    def __init__(self, devices, extra_args=()):
        self.proc = run_python([SCRIPT, *extra_args, *devices], timeout=600)
        self.results, self.started = {}, None
        for line in self.proc.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if "start" in rec:
                    self.started = (rec["start"], rec["device"])
                else:
                    self.results[(rec["name"], rec["device"])] = rec

    def missing(self, name, device):
        """The assertion message for a case that reported nothing."""
        running = self.started is not None and self.started not in self.results
        where = f"while running case {self.started[0]} on {self.started[1]}" if running else "before it"
        return f"case {name} on {device} reported nothing: the case subprocess died {where}; {describe(self.proc)}"


@pytest.fixture(scope="module")
def case_results():
    return CaseRun(["cpu"] + (["cuda"] if torch.cuda.is_available() else []))


def test_a_crashing_case_fails_with_the_crash_and_stderr():
    names = list(CASES)
    run = CaseRun(["cpu"], ["--crash-at", names[1]])
    assert (names[0], "cpu") in run.results and (names[1], "cpu") not in run.results
    msg = run.missing(names[2], "cpu")
    assert f"died while running case {names[1]} on cpu" in msg, msg
    assert "killed by SIGSEGV (exit code -11)" in msg, msg
    assert "Fatal Python error: Segmentation fault" in msg and "_bad_input_cases.py" in msg, msg


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(case_results, device, name):
    run = case_results
    rec = run.results.get((name, device.type))
    assert rec is not None, run.missing(name, device)
    case = CASES[name]
    if device.type == "cpu" and name.endswith("_device") and not name.endswith(("_h0_device", "_lengths_device")) \
            and not torch.cuda.is_available():
        # On a CPU-only machine the only second device is "meta", and mixing in a meta tensor
        # routes the call to the fake (Meta) kernel whatever argument it is; the h0 case per op
        # exercises that path (the fake kernels check devices). The other device cases need CUDA.
        # (The lengths cases put lengths on "meta" everywhere and call x's own kernel directly.)
        pytest.skip("device mismatch beyond h0 and lengths is checked with CUDA tensors (no second real device here)")
    if case.exc is None:  # must run, and match the contiguous call
        assert rec["exc"] is None, f"{name} raised {rec['exc']}: {rec['msg']}"
        assert rec["diff"] is not None and rec["diff"] <= 1e-12, \
            f"{name}: results differ from the contiguous call by {rec['diff']}"
        return
    # Without a GPU, cpu-*_h0_device passes h0 on "meta" next to CPU tensors: the dispatcher then
    # runs the fake (Meta) kernel, which must refuse rather than return uninitialised tensors.
    assert rec["exc"] is not None, f"{name}: no exception raised (expected {' or '.join(case.exc)})"
    assert rec["exc"] in case.exc, f"{name}: raised {rec['exc']} (expected {' or '.join(case.exc)}): {rec['msg']}"
    missing = [m for m in case.match if m not in rec["msg"]]
    assert not missing, f"{name}: message lacks {missing}: {rec['msg']!r}"

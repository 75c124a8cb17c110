"""Bad inputs give a clear exception naming the problem, never a crash or a silent wrong answer;
non-contiguous inputs give the same results as contiguous ones.

The cases live in tests/_bad_input_cases.py and all run in ONE subprocess per session (module
fixture), which prints a JSON line per case. A hard crash (segfault, abort) in a kernel therefore
fails the cases it cut off instead of killing pytest.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input_cases import CASES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "_bad_input_cases.py"


@pytest.fixture(scope="module")
def case_results():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, str(SCRIPT), *devices], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            results[(rec["name"], rec["device"])] = rec
    return results, proc


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(case_results, device, name):
    results, proc = case_results
    rec = results.get((name, device.type))
    assert rec is not None, (
        f"case {name} on {device} reported nothing: the case subprocess died before it "
        f"(exit code {proc.returncode}, a negative code is a signal: crash).\nstderr tail:\n{proc.stderr[-3000:]}")
    case = CASES[name]
    if name.endswith("_lengths_device") and device.type == "cuda":
        pytest.skip("CPU lengths are valid next to CUDA x; a wrong lengths device would need a second GPU")
    if device.type == "cpu" and name.endswith("_device") and not name.endswith("_h0_device") \
            and not torch.cuda.is_available():
        # On a CPU-only machine the only second device is "meta", and mixing in a meta tensor
        # routes the call to the fake (Meta) kernel whatever argument it is; the h0 case per op
        # exercises that path (the fake kernels check devices). The other device cases need CUDA.
        pytest.skip("device mismatch beyond h0 is checked with CUDA tensors (no second real device here)")
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

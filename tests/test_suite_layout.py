"""The suite's own conventions: every CUDA test is selected by `pytest -m cuda` and has a CPU twin
of the same name, so a GPU run reports the very tests a CPU run does."""
import json
import os
from pathlib import Path

from _cuda_twins import COLLECTED_FILES, CUDA_TWIN_PROBLEMS, REPORT_ENV, cuda_twin_problems
from _subprocess import describe, run_python

HERE = Path(__file__).resolve().parent


def _every_test_file():
    return {str(p.resolve()) for p in [*HERE.glob("test_*.py"), *(HERE / "tooling").glob("test_*.py")]}


def test_every_cuda_test_is_marked_and_has_a_cpu_twin(request, tmp_path):
    every = _every_test_file()
    if every <= set(request.config.stash[COLLECTED_FILES]):  # this session collected the whole suite
        problems = request.config.stash[CUDA_TWIN_PROBLEMS]
    else:  # run alone or on part of the suite: the whole of it is collected in a child
        report = tmp_path / "layout.json"
        proc = run_python(["-m", "pytest", "tests", "tests/tooling", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          env=dict(os.environ, **{REPORT_ENV: str(report)}), timeout=600)  # a hang guard only
        assert proc.returncode == 0 and report.exists(), describe(proc)
        found = json.loads(report.read_text())
        assert every <= set(found["files"]), sorted(every - set(found["files"]))
        problems = found["problems"]
    assert not problems, "\n".join(problems)


def test_twin_rule_reports_what_it_should():
    ok = [("t.py::a[cpu-x]", False, "cpu"), ("t.py::a[cuda-x]", True, "cuda"), ("t.py::c", True, None)]
    assert cuda_twin_problems(ok) == []
    bad = [("t.py::a[cuda-x]", True, "cuda"),  # no CPU twin
           ("t.py::b[cpu]", False, "cpu"), ("t.py::b[cuda]", False, "cuda"),  # twin, but unmarked
           ("t.py::gpu_only[fp32-cuda]", False, None)]  # "cuda" in its id, not on `device`, unmarked
    problems = cuda_twin_problems(bad)
    assert len(problems) == 3, problems
    assert "t.py::a[cuda-x]: no CPU twin t.py::a[cpu-x]" in problems
    assert sum("not marked `cuda`" in p for p in problems) == 2

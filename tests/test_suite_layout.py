"""The suite's own conventions: every CUDA test is selected by `pytest -m cuda` and has a CPU twin
of the same name, so a GPU run reports the very tests a CPU run does."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cuda_twins import CUDA_TWIN_PROBLEMS, cuda_twin_problems  # noqa: E402


def test_every_cuda_test_is_marked_and_has_a_cpu_twin(request):
    # collected tests only: run with the whole suite, this covers all of it
    problems = request.config.stash[CUDA_TWIN_PROBLEMS]
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

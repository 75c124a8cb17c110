"""scripts/toolchain_check.py: passes with this machine's compiler, and with a compiler whose
extensions crash on any C++ exception it fails, naming the compiler and the fix; scripts/gpu_check.sh
runs it first and stops there."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from _subprocess import ROOT, describe, run_python  # (tests/: on sys.path under pytest, from conftest.py)

CHECK = ROOT / "scripts" / "toolchain_check.py"
FIX = "CXX=/usr/bin/g++ CC=/usr/bin/gcc"


def test_passes_with_this_compiler():
    # the build is cached in the temp dir (one per compiler and torch version): fast after the first run
    proc = run_python([CHECK], timeout=600)
    assert proc.returncode == 0, describe(proc)
    assert "toolchain check: ok" in proc.stdout and "--version" in proc.stdout


@pytest.fixture(scope="module")
def crashing_cxx():
    """A real toolchain defect: the system g++, but linking without the .eh_frame_hdr index the
    unwinder uses to find an extension's frames, so a C++ exception thrown there finds no handler
    and std::terminate aborts the process (how the bad machine failed, up to the signal). It lives
    at a fixed temp path so that its probe build is cached across sessions like the real one."""
    d = Path(tempfile.gettempdir()) / "fastrnn-toolchain-check-tests"
    d.mkdir(exist_ok=True)
    cxx = d / "crashing-g++"
    script = '#!/bin/sh\nexec g++ "$@" -Wl,--no-eh-frame-hdr\n'
    if not cxx.exists() or cxx.read_text() != script:
        tmp = d / f"crashing-g++.{os.getpid()}"
        tmp.write_text(script)
        tmp.chmod(0o755)
        os.replace(tmp, cxx)  # atomic: a parallel session never sees half a script
    return cxx, dict(os.environ, CXX=str(cxx), FASTRNN_TOOLCHAIN_CACHE=str(d / "cache"))


def _assert_names_compiler_and_fix(text, cxx):
    assert f"CXX={cxx}" in text and f"{cxx} --version: g++" in text, text
    assert FIX in text and "python scripts/toolchain_check.py" in text, text


def test_fails_with_a_compiler_whose_extensions_crash_on_exceptions(crashing_cxx):
    cxx, env = crashing_cxx
    proc = run_python([CHECK], env=env, timeout=600)
    assert proc.returncode == 1, describe(proc)
    assert "toolchain check FAILED" in proc.stderr and "killed the process with SIG" in proc.stderr, proc.stderr
    assert "instead of raising a Python RuntimeError" in proc.stderr
    _assert_names_compiler_and_fix(proc.stderr, cxx)
    assert "Fatal Python error" in proc.stderr  # the child's faulthandler traceback is passed on


def test_fails_when_the_compiler_cannot_build(tmp_path):
    env = dict(os.environ, CXX="/bin/false", FASTRNN_TOOLCHAIN_CACHE=str(tmp_path))
    proc = run_python([CHECK], env=env, timeout=300)
    assert proc.returncode == 1, describe(proc)
    assert "could not be built" in proc.stderr, proc.stderr
    assert "CXX=/bin/false" in proc.stderr and FIX in proc.stderr


def test_gpu_check_stops_after_a_failed_toolchain_check(crashing_cxx, tmp_path):
    """Before nvidia-smi, the build or any test: only the toolchain step runs, the summary keeps its
    format and says what was not run, the exit code is non-zero, the message reaches the terminal."""
    cxx, env = crashing_cxx
    env = dict(env, PYTHON=sys.executable, GPU_CHECK_BUDGET_S="300")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, describe(proc)
    rows = (out / "summary.tsv").read_text().splitlines()
    assert rows[0] == "step\trc\tseconds\tlog" and [r.split("\t")[:2] for r in rows[1:]] == [["toolchain", "1"]]
    summary = (out / "summary.md").read_text()
    assert "| toolchain | 1 |" in summary and "FAILED: toolchain" in summary and "not run:" in summary
    assert sorted(p.name for p in out.iterdir()) == ["summary.md", "summary.tsv", "toolchain.log", "versions.txt"]
    _assert_names_compiler_and_fix(proc.stderr, cxx)
    assert f"CXX: {cxx}" in (out / "versions.txt").read_text()

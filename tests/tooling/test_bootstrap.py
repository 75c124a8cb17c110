"""scripts/bootstrap.sh's progress output, on stand-in commands (the real stages install torch and
compile the extension: minutes). Sourcing the script defines its functions and runs nothing."""
import os
import shutil
import subprocess

import pytest

from _subprocess import ROOT  # (tests/: on sys.path under pytest, from conftest.py)

BOOTSTRAP = os.path.join(ROOT, "scripts", "bootstrap.sh")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def bash(script, cwd, options=""):
    """Run `script` after sourcing bootstrap.sh (with `set` `options`); heartbeat after 1 s."""
    env = dict(os.environ, BOOTSTRAP_HEARTBEAT_S="1")
    return subprocess.run(["bash", "-c", f'. "{BOOTSTRAP}"; {options}\n{script}'], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# pip-like output: two lines worth showing, two not, a line that waits for its end, no final newline
FAKE_PIP = r"""
echo 'Collecting torch>=2.5 (from -r requirements-dev.txt (line 1))'
echo '  Downloading torch-2.14.1-cp311-none-manylinux_2_28_x86_64.whl (900.1 MB)'
echo '  Downloading tiny-1.0-py3-none-any.whl (12 kB)'
echo "WARNING: Location 'file:///nowhere' is ignored"
sleep 3
printf 'Installing collected packages: tiny, '
sleep 2
printf 'torch\nSuccessfully installed tiny-1.0 torch-2.14.1\n'
printf 'the end'
"""


def test_stage_shows_a_line_per_package_heartbeats_and_its_time(tmp_path):
    (tmp_path / "fake_pip.sh").write_text(FAKE_PIP)
    proc = bash("stage pip 'installing things' show_pip_line bash fake_pip.sh; echo rc=$?", tmp_path)
    assert proc.returncode == 0 and proc.stdout == "rc=0\n", proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "[bootstrap] installing things ..."
    assert lines[1:3] == ["[bootstrap]   Collecting torch>=2.5 (from -r requirements-dev.txt (line 1))",
                          "[bootstrap]   Downloading torch-2.14.1-cp311-none-manylinux_2_28_x86_64.whl (900.1 MB)"]
    assert "tiny-1.0-py3" not in proc.stderr and "WARNING" not in proc.stderr
    # the 3 s and 2 s without output are each at least one 1 s heartbeat
    beats = [i for i, line in enumerate(lines) if line.startswith("[bootstrap]   still installing things (")]
    assert beats and beats[0] == 3
    i = lines.index("[bootstrap]   Installing collected packages: tiny, torch")  # one line, not cut at the pause
    assert beats[-1] < i and lines[i + 1] == "[bootstrap]   Successfully installed tiny-1.0 torch-2.14.1"
    assert lines[-1].startswith("[bootstrap] installing things: done in ") and lines[-1].endswith(" s")
    assert int(lines[-1].split("done in ")[1][:-2]) >= 4  # it slept 5 s (whole seconds counted)
    # the log has everything, the last line too
    log = (tmp_path / "build" / "bootstrap" / "pip.log").read_text()
    assert log.splitlines() == ["Collecting torch>=2.5 (from -r requirements-dev.txt (line 1))",
                                "  Downloading torch-2.14.1-cp311-none-manylinux_2_28_x86_64.whl (900.1 MB)",
                                "  Downloading tiny-1.0-py3-none-any.whl (12 kB)",
                                "WARNING: Location 'file:///nowhere' is ignored",
                                "Installing collected packages: tiny, torch",
                                "Successfully installed tiny-1.0 torch-2.14.1",
                                "the end"] and log.endswith("the end\n")


@pytest.mark.parametrize("options", ["", "set -euo pipefail"])
def test_failed_stage_returns_its_exit_code_and_shows_the_log(tmp_path, options):
    proc = bash("stage bad 'doomed step' show_nothing bash -c 'echo first; echo second; exit 3'; echo rc=$?",
                tmp_path, options)
    # under errexit the failure ends the script (as in bootstrap.sh itself) with the same code
    if options:
        assert proc.returncode == 3 and proc.stdout == ""
    else:
        assert proc.returncode == 0 and proc.stdout == "rc=3\n"
    assert "[bootstrap] doomed step FAILED (exit code 3) after " in proc.stderr
    assert proc.stderr.endswith("build/bootstrap/bad.log:\nfirst\nsecond\n")


def test_build_lines_shortened(tmp_path):
    root = os.path.realpath(tmp_path)  # what bash has in $PWD
    cases = {
        f"[1/4] c++ -MMD -MF {root}/build/t/csrc/ops.o.d -pthread -O3 -c {root}/csrc/ops.cpp "
        f"-o {root}/build/t/ops.o -O3": "[1/4] csrc/ops.cpp",
        f"[3/4] /usr/local/cuda/bin/nvcc --generate-dependencies-with-compile --dependency-output x.d -c "
        f"{root}/csrc/cuda/lstm.cu -o {root}/build/lstm.o --expt-relaxed-constexpr": "[3/4] csrc/cuda/lstm.cu",
        "x86_64-linux-gnu-g++ -shared -Wl,-O1 build/a.o -L/x -o build/lib/fastrnn/_C.cpython-311-x86_64-linux-gnu.so "
        "-fopenmp": "linking _C.cpython-311-x86_64-linux-gnu.so",
        "fastrnn: CPU-only build": "fastrnn: CPU-only build",
        "csrc/ops.cpp:12:3: error: expected ';' before 'x'": "csrc/ops.cpp:12:3: error: expected ';' before 'x'",
        "running build_ext": "",
        "Successfully installed fastrnn-0.1.0": "Successfully installed fastrnn-0.1.0",
    }
    script = "".join(f"show_build_line {_quote(line)}; echo '|'\n" for line in cases)
    proc = bash(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("|\n")[:-1] == [f"{v}\n" if v else "" for v in cases.values()]


def _quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def test_bootstrap_script_parses():
    assert subprocess.run(["bash", "-n", BOOTSTRAP]).returncode == 0

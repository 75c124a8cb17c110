"""Running Python in a child process from a test, so that a crash (segfault, abort) in native code
fails that test with everything needed to see why, instead of killing pytest or failing silently."""
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(args, env=None, **kw):
    """`python -X faulthandler ARGS` from the repository root, with the repository on PYTHONPATH;
    stdout and stderr captured as text. faulthandler makes a crashing child print its Python
    traceback to stderr (otherwise a segfault leaves stderr empty)."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [full_env.get("PYTHONPATH")] if p])
    kw.setdefault("cwd", ROOT)
    return subprocess.run([sys.executable, "-X", "faulthandler", *map(str, args)], env=full_env,
                          capture_output=True, text=True, **kw)


def exit_status(returncode):
    """'exit code 1', or 'killed by SIGSEGV (exit code -11)' for a child that died of a signal."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name} (exit code {returncode})"
    return f"exit code {returncode}"


def describe(proc, tail=3000):
    """The child's exit status and the tail of its stderr, for an assertion message."""
    err = proc.stderr or ""
    body = err[-tail:] if err.strip() else "(empty)"
    return f"{exit_status(proc.returncode)}; stderr (last {tail} chars):\n{body}"

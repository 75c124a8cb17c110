#!/usr/bin/env python3
"""Can this machine's C++ compiler build a PyTorch extension whose C++ exceptions reach Python?

fastrnn reports every bad input by throwing a C++ exception (TORCH_CHECK) that PyTorch turns into a
Python RuntimeError / ValueError. Some toolchains build extensions in which *any* C++ exception kills
the process instead (seen with a wrapper compiler, CXX=/opt/gcc/bin/g++, whose runtime libraries do not
match the ones PyTorch was built with): every bad-input test then dies with SIGSEGV. This check builds
a 5-line op that only raises, calls it in a child process and says which compiler to blame and how to
fix it, in seconds (the build is cached):

    python scripts/toolchain_check.py            # exit code 0: fine; 1: this compiler is unusable

It builds with the compiler PyTorch's extension builder uses: $CXX (which setup.py's build uses too
when it is set), or `c++` when CXX is unset. scripts/gpu_check.sh (make gpu-check) runs it before
anything else.

Options: --build-dir DIR (default: $FASTRNN_TOOLCHAIN_CACHE or <tmp>/fastrnn-toolchain-check,
one subdirectory per compiler and torch version), --timeout S.
"""
import argparse
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

PROBE_MESSAGE = "fastrnn toolchain probe: this C++ exception must reach Python"
LIBRARY = "fastrnn_toolchain_probe"
# What a TORCH_CHECK in fastrnn does, in the smallest op: the exception has to unwind through the
# dispatcher (libtorch) into torch's Python bindings.
PROBE_SOURCE = f"""\
#include <ATen/core/Tensor.h>
#include <torch/library.h>

static at::Tensor must_raise(const at::Tensor& x) {{
  TORCH_CHECK(false, "{PROBE_MESSAGE}");
  return x;
}}

TORCH_LIBRARY({LIBRARY}, m) {{ m.def("must_raise(Tensor x) -> Tensor", &must_raise); }}
"""
FIX = "CXX=/usr/bin/g++ CC=/usr/bin/gcc"
BUILT, RAISED = "TOOLCHAIN-PROBE-BUILT", "TOOLCHAIN-PROBE-RAISED"


def compiler():
    """(the value of $CXX or None, the command PyTorch's extension builder runs)."""
    cxx = os.environ.get("CXX")
    return cxx, (cxx or "c++")


def compiler_version(cmd):
    try:
        proc = subprocess.run(shlex.split(cmd) + ["--version"], capture_output=True, text=True, timeout=30)
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        return lines[0] if lines else f"(no output, exit code {proc.returncode})"
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot run it: {e}"


def compiler_description():
    cxx, cmd = compiler()
    exe = shutil.which(shlex.split(cmd)[0]) if cmd.strip() else None
    real = os.path.realpath(exe) if exe else None
    where = f"{exe}" + (f" -> {real}" if real and real != exe else "") if exe else "not found on PATH"
    cc = os.environ.get("CC")
    return (f"  CXX={cxx if cxx is not None else '(unset: torch uses c++)'}  CC={cc if cc is not None else '(unset)'}\n"
            f"  {cmd}: {where}\n"
            f"  {cmd} --version: {compiler_version(cmd)}")


def default_build_dir():
    import torch  # the cache key: a different torch or compiler is a different probe

    _, cmd = compiler()
    key = "\n".join([PROBE_SOURCE, cmd, compiler_version(cmd), torch.__version__, sys.version])
    base = os.environ.get("FASTRNN_TOOLCHAIN_CACHE") or os.path.join(tempfile.gettempdir(), "fastrnn-toolchain-check")
    return os.path.join(base, hashlib.sha256(key.encode()).hexdigest()[:16])


def probe(build_dir):
    """The child: build the op (torch's JIT extension builder, ninja), then call it."""
    import torch
    from torch.utils import cpp_extension

    os.makedirs(build_dir, exist_ok=True)
    src = os.path.join(build_dir, "probe.cpp")
    with open(src, "a+") as f:  # rewritten only when it differs: ninja then keeps the cached build
        f.seek(0)
        if f.read() != PROBE_SOURCE:
            f.seek(0)
            f.truncate()
            f.write(PROBE_SOURCE)
    try:
        cpp_extension.load(name=LIBRARY, sources=[src], build_directory=build_dir, is_python_module=False,
                           extra_cflags=["-O0"], verbose=False)
    except Exception as e:  # noqa: BLE001  (the compiler's own output is in the message)
        print(f"building the probe failed: {type(e).__name__}: {str(e)[-4000:]}", file=sys.stderr)
        return 1
    print(BUILT, flush=True)
    try:
        torch.ops.fastrnn_toolchain_probe.must_raise(torch.zeros(1))
    except RuntimeError as e:
        if PROBE_MESSAGE in str(e):
            print(RAISED, flush=True)
            return 0
        print(f"the op raised an unexpected message: {e}", file=sys.stderr)
        return 1
    print("the op returned instead of raising", file=sys.stderr)
    return 1


def signal_name(returncode):
    if returncode is not None and returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return None


def check(build_dir, timeout):
    """Runs the probe in a child process. Returns (ok, report)."""
    cmd = [sys.executable, "-X", "faulthandler", os.path.abspath(__file__), "--probe", "--build-dir", build_dir]
    env = dict(os.environ)  # torch's builder runs `ninja`: a venv's own one is next to its python
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, (f"toolchain check: building and calling the probe took over {timeout}s (build dir "
                       f"{build_dir}).\nCompiler:\n{compiler_description()}")
    out = proc.stdout + proc.stderr
    built, raised = BUILT in proc.stdout, RAISED in proc.stdout
    if proc.returncode == 0 and raised:
        return True, ("toolchain check: ok, a C++ exception thrown in a PyTorch extension reaches Python.\n"
                      f"Compiler:\n{compiler_description()}")
    sig = signal_name(proc.returncode)
    tail = "\n".join("    " + line for line in out.strip().splitlines()[-25:])
    if built:
        what = (f"the probe extension was built, but calling its op, which only throws a C++ exception, "
                f"{'killed the process with ' + sig if sig else f'failed (exit code {proc.returncode})'} "
                f"instead of raising a Python RuntimeError. Extensions built with this compiler (fastrnn "
                f"included) crash on every error they report.")
    else:
        what = (f"the probe extension could not be built "
                f"({'the build died with ' + sig if sig else f'exit code {proc.returncode}'}).")
    return False, (f"toolchain check FAILED: {what}\n"
                   f"Compiler:\n{compiler_description()}\n"
                   f"Fix: build with a compiler whose C++ runtime matches PyTorch's, e.g. the system one:\n"
                   f"    {FIX} python setup.py build_ext --inplace      (or {FIX} make gpu-check)\n"
                   f"then rerun: python scripts/toolchain_check.py\n"
                   f"Probe output (build dir {build_dir}):\n{tail}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", default=None, help="where the probe is built and cached")
    ap.add_argument("--timeout", type=float, default=300, help="seconds for building and calling the probe")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # the child
    args = ap.parse_args(argv)
    build_dir = args.build_dir or default_build_dir()
    if args.probe:
        return probe(build_dir)
    ok, report = check(build_dir, args.timeout)
    print(report, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Build fastrnn._C: a CUDA build whenever torch has CUDA and a toolkit is found (GPU or not),
CPU-only otherwise.

Environment knobs:
  FASTRNN_CUDA=0|1        force CPU-only / require CUDA (fails loudly when impossible)
  TORCH_CUDA_ARCH_LIST    target GPUs, e.g. "9.0"; default with no GPU visible: "8.0;9.0+PTX"
  MAX_JOBS                parallel compile jobs (nvcc on torch headers needs GBs per job)
  CUDA_HOME               toolkit root (the directory whose lib64 holds libcudart)
  CXX, CC                 the host compilers. Some (e.g. a wrapper g++ with its own runtime
                          libraries) build extensions that crash on any C++ exception, i.e. on
                          every error fastrnn reports: `python scripts/toolchain_check.py` says
                          in seconds whether yours does (fix: CXX=/usr/bin/g++ CC=/usr/bin/gcc).
"""
import glob
import os
import shutil
import sys

from setuptools import setup

DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit_root(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and bool(
        glob.glob(os.path.join(path, "lib*", "libcudart.so*"))
        or glob.glob(os.path.join(path, "targets", "*", "lib", "libcudart.so*")))


def find_cuda_home():
    """The toolkit root. `nvcc` on PATH may be a wrapper script outside it (as on our CI
    machines), so follow symlinks and wrapper scripts instead of taking its parent dir."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit_root(os.environ.get(var)):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        try:  # a wrapper script: look for an absolute nvcc path inside it
            with open(real, "rb") as f:
                head = f.read(4096)
            if head.startswith(b"#!"):
                for word in head.decode(errors="ignore").split():
                    word = word.strip("'\"")
                    if word.startswith("/") and word.endswith("/bin/nvcc"):
                        candidates.append(os.path.dirname(os.path.dirname(word)))
        except OSError:
            pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    return next((c for c in candidates if _is_toolkit_root(c)), None)


want = os.environ.get("FASTRNN_CUDA", "").strip()
if want not in ("", "0", "1"):
    sys.exit(f"FASTRNN_CUDA must be 0, 1 or unset, got {want!r}")
cuda_home = find_cuda_home() if want != "0" else None
if cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

use_cuda = want != "0" and torch.version.cuda is not None and cuda_home is not None
if want == "1" and not use_cuda:
    why = ("this torch has no CUDA (torch.version.cuda is None)" if torch.version.cuda is None
           else "no CUDA toolkit found (set CUDA_HOME to the directory holding bin/nvcc and lib64/libcudart.so)")
    sys.exit(f"FASTRNN_CUDA=1 but a CUDA build is impossible: {why}")

sources = ["csrc/ops.cpp", "csrc/cpu/ops_cpu.cpp", "csrc/cpu/persistent_emulation.cpp",
           "csrc/cpu/persistent_mma_emulation.cpp", "csrc/cpu/persistent_cpu.cpp",
           "csrc/cpu/single_step_emulation.cpp"]
cxx_flags = ["-O3", "-Wno-psabi"]  # the C++ standard is torch's choice (C++20 for torch >= 2.13)
nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
include_dirs = [os.path.join(ROOT, "csrc", "include")]
link_flags = []
# ATen's parallel_for is header code that runs serially unless the including file is built with
# OpenMP. torch ships libgomp.so.1, so linking it here reuses the runtime torch already loaded.
if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")

if use_cuda:
    sources += ["csrc/cuda/ops_cuda.cpp", "csrc/cuda/recurrence.cpp"] + sorted(glob.glob("csrc/cuda/*.cu"))
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    # Some toolkits lack headers torch's CUDA headers include (cusparse.h, cublas_v2.h); the
    # nvidia wheels torch depends on ship them. Searched after the toolkit's own include dir.
    if not os.path.isfile(os.path.join(cuda_home, "include", "cusparse.h")):
        import site
        roots = site.getsitepackages() + [site.getusersitepackages()]
        for inc in sorted({p for r in roots for p in glob.glob(os.path.join(r, "nvidia", "*", "include"))}):
            if os.path.isfile(os.path.join(inc, "cusparse.h")):
                cxx_flags += ["-idirafter", inc]
                nvcc_flags += ["-Xcompiler", f"-idirafter{inc}"]
                break
    ext = CUDAExtension("fastrnn._C", sources, include_dirs=include_dirs, extra_link_args=link_flags,
                        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags})
else:
    ext = CppExtension("fastrnn._C", sources, include_dirs=include_dirs, extra_link_args=link_flags,
                       extra_compile_args={"cxx": cxx_flags})

print(f"fastrnn: {'CUDA build (CUDA_HOME=' + cuda_home + ', TORCH_CUDA_ARCH_LIST=' + os.environ.get('TORCH_CUDA_ARCH_LIST', '') + ')' if use_cuda else 'CPU-only build'}",
      file=sys.stderr)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension})

"""Build entrgi and its compiled op (entrgi_core._C) from source.

CPU kernels are always built. CUDA kernels are built whenever the CUDA toolkit is there
(torch.version.cuda and CUDA_HOME), with or without a visible GPU, so that CI compile-checks them.
Switches: ENTRGI_SKIP_CUDA=1, ENTRGI_FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST (default "8.0;9.0" when
no GPU is visible), MAX_JOBS, DEBUG=1. Install with `pip install --no-build-isolation -e .`
so the extension is built against the torch already in the environment.
"""
import os
import re
from pathlib import Path

from setuptools import setup

# the version is written once, in entrgi_core/__init__.py (pyproject.toml reads it from there too)
VERSION = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "entrgi_core" / "__init__.py").read_text(),
                    re.M).group(1)


def cuda_decision(torch, cuda_home):
    if os.environ.get("ENTRGI_SKIP_CUDA") == "1":
        return False, "ENTRGI_SKIP_CUDA=1"
    if os.environ.get("ENTRGI_FORCE_CUDA") == "1":
        if cuda_home is None:
            raise RuntimeError("ENTRGI_FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
        return True, "ENTRGI_FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if cuda_home is None:
        return False, "no CUDA toolkit found (CUDA_HOME unset, no nvcc)"
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}) and toolkit at {cuda_home}"


def extensions():
    if not os.environ.get("CUDA_HOME") and Path("/usr/local/cuda/bin/nvcc").exists():
        os.environ["CUDA_HOME"] = "/usr/local/cuda"  # not the directory of a wrapper script on PATH
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    debug = os.environ.get("DEBUG") == "1"
    with_cuda, why = cuda_decision(torch, CUDA_HOME)
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fopenmp: at::parallel_for is inline OpenMP code, serial unless the extension enables it.
    # -fno-trapping-math: lets GCC if-convert the row loops' selects (relax_cpu.cpp), without which
    # every clone of them runs scalar; it changes no value (no reassociation, same rounding), only
    # whether a floating-point exception flag may be raised by a lane whose result is dropped.
    cxx = opt + ["-fopenmp", "-fno-trapping-math", f'-DENTRGI_VERSION="{VERSION}"']
    link = ["-fopenmp"]
    sources = ["csrc/relax.cpp", "csrc/relax_cpu.cpp"]
    if not with_cuda:
        print(f"[entrgi] building CPU kernels only: {why}")
        return [CppExtension("entrgi_core._C", sources, extra_compile_args={"cxx": cxx},
                             extra_link_args=link)]
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
    print(f"[entrgi] building CPU + CUDA kernels for arch {archs}: {why}")
    defs = ["-DENTRGI_WITH_CUDA", f'-DENTRGI_CUDA_ARCHS="{archs}"']
    nvcc = opt + ["-lineinfo"] + defs
    return [CUDAExtension("entrgi_core._C", sources + ["csrc/cuda/relax_cuda.cu"],
                          include_dirs=pip_cuda_includes(CUDA_HOME),
                          extra_compile_args={"cxx": cxx + defs, "nvcc": nvcc},
                          extra_link_args=link)]


def pip_cuda_includes(cuda_home):
    """Headers of the CUDA libraries torch links (cuBLAS, cuSPARSE, ...) when the toolkit lacks them:
    a CUDA build of torch from pip brings them in the `nvidia` wheels."""
    if (Path(cuda_home) / "include" / "cusparse.h").exists():
        return []
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted({str(h.parent) for r in roots for h in r.glob("*/include/cusparse.h")})


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


# Metadata, dependencies and packages are in pyproject.toml; this file adds the compiled op.
setup(ext_modules=extensions(), cmdclass={"build_ext": build_ext_class()})

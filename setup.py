"""Builds the compiled backend gan_fast._C (metadata lives in pyproject.toml).

    pip install --no-build-isolation -e .        # reuses the installed torch
    python setup.py build_ext --inplace           # same, in place

* Always: the CPU kernels (csrc/*.cpp + csrc/cpu/*.cpp), OpenMP-parallel
  through at::parallel_for (torch's CPU wheels use the OpenMP backend; the
  extension must be compiled with -fopenmp or parallel_for runs serially).
* With a CUDA build of torch and a CUDA toolkit (CUDA_HOME): also
  csrc/cuda/*.cu and csrc/cuda/*.cpp, compiled with -DWITH_CUDA.
* GAN_FAST_NO_EXT=1: no extension at all (pure-Python install; the reference
  and Triton backends still work).
* GAN_FAST_NO_AVX2=1: leave out the AVX2 build of the CPU kernels.
* GAN_FAST_CUDA_ARCH: nvcc -gencode flags override, e.g. "80;90" (default 80;90
  plus compute_90 PTX).

A failing compile fails the install: nothing here catches build errors.
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel_glob(pattern):
    # setuptools wants source paths relative to setup.py
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cpu_sources():
    cpu = _rel_glob("csrc/cpu/*.cpp")
    # ISA-specific builds last: the linker keeps the first copy of shared inline
    # functions, which must be the portable one.
    portable = [s for s in cpu if not s.endswith("_avx2.cpp")]
    special = [s for s in cpu if s.endswith("_avx2.cpp")]
    top = _rel_glob("csrc/*.cpp")  # bindings.cpp (the op schemas) and the eager autograd ops
    return top + portable + special


def _extensions():
    if os.environ.get("GAN_FAST_NO_EXT", "0") == "1":
        print("gan_fast: GAN_FAST_NO_EXT=1, building without the compiled extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as e:
        raise RuntimeError(
            "building gan_fast._C needs torch installed first; install it, then "
            "`pip install --no-build-isolation .` (or set GAN_FAST_NO_EXT=1 for a "
            "pure-Python install)") from e

    cxx = ["-O3", "-ffp-contract=off"]  # no FMA contraction: z = x*scale + shift like the reference
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if os.environ.get("GAN_FAST_NO_AVX2", "0") == "1":
        cxx.append("-DGAN_FAST_NO_AVX2")

    sources = _cpu_sources()
    cuda_sources = _rel_glob("csrc/cuda/*.cu") + _rel_glob("csrc/cuda/*.cpp")
    want_cuda = torch.version.cuda is not None
    if want_cuda and CUDA_HOME is None:
        print("gan_fast: torch has CUDA but no CUDA toolkit was found (CUDA_HOME); "
              "building the CPU kernels only", file=sys.stderr)
    elif want_cuda and not cuda_sources:
        print("gan_fast: no csrc/cuda sources; building the CPU kernels only", file=sys.stderr)

    if want_cuda and CUDA_HOME is not None and cuda_sources:
        archs = os.environ.get("GAN_FAST_CUDA_ARCH", "80;90").replace(",", ";").split(";")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
        last = [a for a in archs if a][-1]
        gencode.append(f"-gencode=arch=compute_{last},code=compute_{last}")  # PTX for newer GPUs
        # nvcc has no --use_fast_math=false: spell out the IEEE-exact defaults instead
        nvcc = ["-O3", "--ftz=false", "--prec-div=true", "--prec-sqrt=true", *gencode]
        ext = CUDAExtension(
            "gan_fast._C",
            sources + cuda_sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx + ["-DWITH_CUDA"], "nvcc": nvcc + ["-DWITH_CUDA"]},
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "gan_fast._C",
            sources,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

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
* Sources and flags come from gan_fast/_build_flags.py, shared with the JIT build
  of the CUDA kernels (gan_fast/_cuda_jit.py), which is the fallback when this
  build has no CUDA kernels; csrc/cuda is shipped in the package as
  gan_fast/_csrc/cuda for it.

A failing compile fails the install: nothing here catches build errors.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_build_flags():
    # By path: importing the gan_fast package would import torch-heavy modules.
    path = os.path.join(ROOT, "gan_fast", "_build_flags.py")
    spec = importlib.util.spec_from_file_location("gan_fast_build_flags", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flags = _load_build_flags()


def _rel(paths):
    # setuptools wants source paths relative to setup.py
    return [os.path.relpath(p, ROOT) for p in paths]


class BuildPyWithCudaSources(build_py):
    """Also ships csrc/cuda (as gan_fast/_csrc/cuda) for the CUDA JIT build (gan_fast._cuda_jit)."""

    def run(self):
        super().run()
        dst = os.path.join(self.build_lib, "gan_fast", "_csrc", "cuda")
        self.mkpath(dst)
        for src in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*"))):
            if os.path.isfile(src):
                self.copy_file(src, os.path.join(dst, os.path.basename(src)))


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

    csrc = os.path.join(ROOT, "csrc")
    sources = _rel(flags.cpu_sources(csrc))
    cuda_sources = _rel(flags.cuda_sources(csrc))
    want_cuda = torch.version.cuda is not None
    if want_cuda and CUDA_HOME is None:
        print("gan_fast: torch has CUDA but no CUDA toolkit was found (CUDA_HOME); "
              "building the CPU kernels only", file=sys.stderr)
    elif want_cuda and not cuda_sources:
        print("gan_fast: no csrc/cuda sources; building the CPU kernels only", file=sys.stderr)

    if want_cuda and CUDA_HOME is not None and cuda_sources:
        ext = CUDAExtension(
            "gan_fast._C",
            sources + cuda_sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": flags.cxx_flags(cuda=True), "nvcc": flags.nvcc_flags()},
            extra_link_args=flags.link_flags(),
        )
    else:
        ext = CppExtension(
            "gan_fast._C",
            sources,
            extra_compile_args={"cxx": flags.cxx_flags(cuda=False)},
            extra_link_args=flags.link_flags(),
        )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass={**cmdclass, "build_py": BuildPyWithCudaSources})

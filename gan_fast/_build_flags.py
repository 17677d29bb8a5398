"""Sources and compiler flags of the compiled backend, in one place.

Used by setup.py (which builds gan_fast._C) and by gan_fast._cuda_jit (which
JIT-builds the CUDA kernels when gan_fast._C has none), so the two builds cannot
drift apart. Standard library only: setup.py loads this file by path, without
importing the gan_fast package (whose __init__ imports torch).

Environment (read when the flags are asked for):
* GAN_FAST_NO_AVX2=1: leave out the AVX2 build of the CPU kernels.
* GAN_FAST_CUDA_ARCH: the GPU architectures nvcc compiles for, e.g. "80;90"
  (the default), one cubin each, plus PTX of the last one for newer GPUs.
"""
from __future__ import annotations

import glob
import os
import sys

DEFAULT_CUDA_ARCH = "80;90"


def cpu_sources(csrc: str) -> list[str]:
    """The C++ sources of the CPU part under `csrc`: csrc/*.cpp (bindings.cpp defines the op
    schemas; the eager autograd ops), then csrc/cpu/*.cpp."""
    cpu = sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    # ISA-specific builds last: the linker keeps the first copy of shared inline
    # functions, which must be the portable one.
    portable = [s for s in cpu if not s.endswith("_avx2.cpp")]
    special = [s for s in cpu if s.endswith("_avx2.cpp")]
    return sorted(glob.glob(os.path.join(csrc, "*.cpp"))) + portable + special


def cuda_sources(csrc: str) -> list[str]:
    """The sources of the CUDA part under `csrc`: csrc/cuda/*.cu, then csrc/cuda/*.cpp."""
    return (sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
            + sorted(glob.glob(os.path.join(csrc, "cuda", "*.cpp"))))


def cxx_flags(cuda: bool) -> list[str]:
    """Host compiler flags; `cuda`: for a build that includes the CUDA part."""
    # No FMA contraction: z = (x - mean) * scale + bias as a separate subtract, multiply
    # and add, rounded exactly as gan_fast.reference rounds it (bn_act_impl.h: Numerics).
    flags = ["-O3", "-ffp-contract=off"]
    if sys.platform.startswith("linux"):
        flags.append("-fopenmp")
    if os.environ.get("GAN_FAST_NO_AVX2", "0") == "1":
        flags.append("-DGAN_FAST_NO_AVX2")
    if cuda:
        flags.append("-DWITH_CUDA")
    return flags


def link_flags() -> list[str]:
    """Linker flags (OpenMP: torch's CPU parallel_for runs serially without it)."""
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def nvcc_flags() -> list[str]:
    """nvcc flags: IEEE-exact math and the -gencode list of GAN_FAST_CUDA_ARCH."""
    spec = os.environ.get("GAN_FAST_CUDA_ARCH") or DEFAULT_CUDA_ARCH
    archs = [a for a in spec.replace(",", ";").split(";") if a]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")  # PTX for newer GPUs
    # nvcc has no --use_fast_math=false: spell out the IEEE-exact defaults instead
    return ["-O3", "--ftz=false", "--prec-div=true", "--prec-sqrt=true", *gencode, "-DWITH_CUDA"]

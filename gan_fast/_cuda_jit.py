"""JIT build of the CUDA kernels: the fallback when gan_fast._C has none.

setup.py compiles the CUDA kernels into gan_fast._C when the torch it builds
against has CUDA and a CUDA toolkit is found. When the installed gan_fast._C was
built without them (a CPU-only build or wheel) but the torch running now has CUDA
and sees a GPU, and a CUDA toolkit (nvcc) and ninja are found, the first question
about the ``cuda`` backend (``backends.why_unavailable("cuda", "cuda")``: the first
gan_fast op on CUDA tensors, or ``gan-fast info``) compiles csrc/cuda/*.cu and
csrc/cuda/bindings_cuda.cpp with ``torch.utils.cpp_extension.load`` (ninja, the
flags of setup.py from gan_fast._build_flags) and loads the library with
``torch.ops.load_library``. The library only registers CUDA kernels
(``TORCH_LIBRARY_IMPL(gan_fast_C, CUDA, m)``) for the ops that gan_fast._C
defines, so gan_fast._C must be importable: the CPU part is never JIT-built.

The first build takes minutes and logs one line saying so; later processes reuse
it (ninja recompiles only what changed). The outcome is decided once per process:
a build that cannot run or fails is logged once with the reason (the compiler's
error, a missing nvcc or ninja, ...), is not retried in that process, and is the
reason ``why_unavailable("cuda", "cuda")`` gives from then on, so
``GAN_FAST_BACKEND=cuda`` raises BackendUnavailable naming it and ``auto`` moves
on to triton or the reference.

Sources: gan_fast/_csrc/cuda in an installed package (setup.py ships a copy
there), else csrc/cuda of the source checkout that gan_fast is imported from.

Environment:
* GAN_FAST_JIT=0: never JIT-build; the cuda backend then needs a gan_fast._C
  built with CUDA kernels.
* TORCH_EXTENSIONS_DIR: root of the build directory (default
  $XDG_CACHE_HOME/gan_fast, else ~/.cache/gan_fast); the build goes into
  <root>/gan_fast_cuda-py<version>-torch<version>.
* GAN_FAST_CUDA_ARCH, GAN_FAST_NO_AVX2: as for setup.py. MAX_JOBS: parallel
  compile jobs (read by torch).
* GAN_FAST_TEST_HIDE_EXT_CUDA=1: a test hook, not a setting. gan_fast treats
  gan_fast._C as built without CUDA kernels, so that tests/test_cuda_jit.py can
  JIT-build on a GPU machine whose gan_fast._C has them (the JIT kernels then
  override them, and torch warns about that).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import threading

import torch

from gan_fast import _build_flags

log = logging.getLogger("gan_fast")

NAME = "gan_fast_cuda"
_PKG = os.path.dirname(os.path.abspath(__file__))
# gan_fast/_csrc in an installed package (setup.py ships csrc/cuda there), csrc/ in a source checkout
_CSRC_DIRS = (os.path.join(_PKG, "_csrc"), os.path.join(os.path.dirname(_PKG), "csrc"))
_lock = threading.Lock()
_outcome: tuple[str | None, str | None] | None = None  # (library path, reason), once decided


def ext_device_types(ext) -> list[str]:
    """``ext.compiled_device_types()``, less "cuda" under the test hook GAN_FAST_TEST_HIDE_EXT_CUDA=1."""
    types = list(ext.compiled_device_types())
    if os.environ.get("GAN_FAST_TEST_HIDE_EXT_CUDA") == "1":
        types = [t for t in types if t != "cuda"]
    return types


def library() -> str | None:
    """The path of the JIT-built library once it is loaded in this process, else None."""
    return _outcome[0] if _outcome is not None else None


def sources_dir() -> str | None:
    """The csrc directory to build from (holding cuda/bindings_cuda.cpp), or None if there is none."""
    for csrc in _CSRC_DIRS:
        if os.path.isfile(os.path.join(csrc, "cuda", "bindings_cuda.cpp")):
            return csrc
    return None


def build_dir() -> str:
    """Where the JIT build goes; one directory per Python and torch version."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")), "gan_fast")
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    return os.path.join(root, f"{NAME}-py{py}-torch{torch.__version__}")


def ensure() -> str | None:
    """Make the JIT-built CUDA kernels available: None once they are loaded, else why they are not
    (a clause that follows "gan_fast._C has no CUDA kernels, and ...").

    Call only when gan_fast._C is imported and has no CUDA kernels. Builds at most
    once per process; the outcome (and its one log line) is cached.
    """
    global _outcome
    with _lock:
        if _outcome is None:
            _outcome = _build_and_load()
        return _outcome[1]


def _build_and_load() -> tuple[str | None, str | None]:
    reason, level = _cannot_build()
    if reason is not None:
        log.log(level, "gan_fast: gan_fast._C has no CUDA kernels, and %s", reason)
        return None, reason
    from torch.utils import cpp_extension

    csrc = sources_dir()
    directory = build_dir()
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, NAME + ".so")):
        log.info("gan_fast: loading the JIT-built CUDA kernels from %s (recompiling what changed)", directory)
    else:
        log.warning("gan_fast: gan_fast._C has no CUDA kernels: compiling them now (JIT build, "
                    "takes a few minutes, once) in %s", directory)
    try:
        path = cpp_extension.load(
            name=NAME,
            sources=_build_flags.cuda_sources(csrc),
            extra_cflags=_build_flags.cxx_flags(cuda=True),
            extra_cuda_cflags=_build_flags.nvcc_flags(),
            extra_ldflags=_build_flags.link_flags(),
            build_directory=directory,
            with_cuda=True,
            is_python_module=False,  # torch.ops.load_library: registers the kernels, no Python module
            verbose=False,
        )
    except Exception as e:  # compiler/linker errors (RuntimeError), a library that does not load (OSError)
        output = str(e).strip()
        reason = f"their JIT build failed: {_error_line(output)} (build directory {directory})"
        tail = "\n".join(output.splitlines()[-25:])
        log.warning("gan_fast: gan_fast._C has no CUDA kernels, and %s; the cuda backend is off in this "
                    "process. Last lines of the build output:\n%s", reason, tail)
        return None, reason
    log.info("gan_fast: loaded the JIT-built CUDA kernels from %s", path)
    return path, None


def _cannot_build() -> tuple[str | None, int]:
    """(why a JIT build cannot run here, log level), or (None, 0) if it can."""
    def no(why, level=logging.WARNING):
        return f"they cannot be JIT-built: {why}", level

    if os.environ.get("GAN_FAST_JIT", "1") == "0":
        return "their JIT build is off (GAN_FAST_JIT=0)", logging.INFO
    if torch.version.cuda is None:
        return no(f"torch {torch.__version__} was built without CUDA", logging.INFO)
    if not torch.cuda.is_available():
        return no("torch sees no CUDA device", logging.INFO)
    if sources_dir() is None:
        tried = " and ".join(os.path.join(d, "cuda") for d in _CSRC_DIRS)
        return no(f"their sources are not part of this installation (looked in {tried}); "
                  "reinstall gan_fast, or run it from a source checkout")
    from torch.utils import cpp_extension  # imports setuptools: only once the cheap checks pass

    home = cpp_extension.CUDA_HOME
    if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return no(f"no CUDA toolkit found (CUDA_HOME={home}; set CUDA_HOME or put nvcc on PATH)")
    if not _ninja_found():
        return no("ninja not found (pip install ninja)")
    return None, 0


def _ninja_found() -> bool:
    if shutil.which("ninja"):
        return True
    try:  # the pip package's binary is off PATH when its virtual environment is not activated
        import ninja
    except ImportError:
        return False
    if os.path.isfile(os.path.join(ninja.BIN_DIR, "ninja")):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        return True
    return False


def _error_line(output: str) -> str:
    """The first line of a build's output that names an error, else its last line (shortened)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    # compiler errors, and the linker's (which come before collect2's "error: ld returned 1")
    pattern = re.compile(r"\berror\b|undefined reference|undefined symbol|cannot find -l", re.IGNORECASE)
    errors = [ln for ln in lines if pattern.search(ln) and not ln.startswith("Error building extension")]
    line = (errors or lines or ["no output"])[0 if errors else -1]
    return line if len(line) <= 300 else line[:297] + "..."

"""Which backend runs an op: ``auto | triton | cuda | cpu | reference``.

The choice comes from ``gan_fast.use_backend(name)`` (a context manager),
``gan_fast.set_backend(name)``, or the ``GAN_FAST_BACKEND`` environment variable,
in that order; the default is ``auto``.

``auto`` picks, per device: CPU tensors -> the C++ CPU extension, else the
reference. CUDA tensors -> whichever of the CUDA extension and Triton is faster
for that op and input (shape, dtype, layout): both are timed once, the first time
such an input is seen, and the choice is cached (``choices()`` lists them); with
only one of the two available, that one; else the reference. For the fused
conv -> BatchNorm -> activation block (``gan_fast.ops.conv_block``) ``auto`` on CUDA
likewise times the Triton fused conv against the stock conv + the separate bn_act op,
once per block configuration, and caches the choice the same way.
A backend that ``auto`` passes over is named once in the log with the reason.
A backend that is asked for by name and cannot run raises ``BackendUnavailable``:
gan_fast never falls back silently from an explicit choice.

The ``cpu`` and ``cuda`` backends run the compiled extension gan_fast._C. When it
was built without CUDA kernels, the first question about the ``cuda`` backend
JIT-builds them (``gan_fast._cuda_jit``; GAN_FAST_JIT=0 turns that off); a build
that cannot run or fails is the reason ``why_unavailable`` gives.

Every backend implements the kernel contract documented in ``gan_fast.reference``.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time

import torch

from gan_fast import _cuda_jit

log = logging.getLogger("gan_fast")

NAMES = ("auto", "triton", "cuda", "cpu", "reference")
_state = threading.local()
_default = None
_logged: set = set()


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name but cannot run here."""


def _check_name(name):
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    return name


# Bumped whenever the requested backend may change (set_backend, use_backend): modules
# that cache their per-device decision compare it instead of re-resolving every call.
generation = 0


def _bump():
    global generation
    generation += 1


def set_backend(name: str | None) -> None:
    """Set the process-wide backend (``None`` returns to GAN_FAST_BACKEND / auto)."""
    global _default
    _default = None if name is None else _check_name(name)
    _bump()


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run gan_fast ops inside the block on backend `name`."""
    _check_name(name)
    prev = getattr(_state, "name", None)
    _state.name = name
    _bump()
    try:
        yield
    finally:
        _state.name = prev
        _bump()


def requested() -> str:
    """The backend name currently asked for (before resolving ``auto``)."""
    name = getattr(_state, "name", None) or _default or os.environ.get("GAN_FAST_BACKEND") or "auto"
    return _check_name(name)


# --------------------------------------------------------------------- availability
def _extension():
    """The compiled extension module, or the reason it cannot be loaded."""
    try:
        return importlib.import_module("gan_fast._C"), None
    except ImportError as e:  # not built, or built against another torch
        return None, f"compiled extension gan_fast._C not importable ({e})"


def extension_has(device_type: str) -> bool:
    """Whether compiled kernels for `device_type` are loaded: in gan_fast._C, or (cuda) JIT-built.

    Never starts a JIT build; ``why_unavailable("cuda", "cuda")`` does.
    """
    ext, _ = _extension()
    if ext is None:
        return False
    jit = device_type == "cuda" and _cuda_jit.library() is not None
    return jit or device_type in _cuda_jit.ext_device_types(ext)


def cuda_kernels_origin() -> str:
    """Where the cuda backend's kernels come from: gan_fast._C, a JIT build, or why neither.

    May start the JIT build (gan_fast._cuda_jit), like any question about the cuda backend.
    """
    ext, _ = _extension()
    if ext is not None and "cuda" in _cuda_jit.ext_device_types(ext):
        return "built into gan_fast._C (setup.py)"
    reason = why_unavailable("cuda", "cuda")
    if reason is None:
        return f"JIT-built (gan_fast._cuda_jit): {_cuda_jit.library()}"
    return f"none: {reason}"


def why_unavailable(name: str, device_type: str, dtype: torch.dtype | None = None) -> str | None:
    """None if backend `name` can run ops on `device_type` tensors (of `dtype`), else the reason."""
    if name == "reference":
        return None
    if dtype == torch.float64 and (name == "triton" or device_type == "cuda"):
        return f"the {name} backend has no float64 kernels on {device_type}"
    if name in ("cpu", "cuda"):
        if device_type != name:
            return f"the {name} backend runs {name} tensors, got {device_type} tensors"
        ext, err = _extension()
        if ext is None:
            if name == "cuda":  # the JIT build is no way out: it adds kernels to the ops _C defines
                return f"{err}; the JIT build of the CUDA kernels needs it"
            return err
        if name in _cuda_jit.ext_device_types(ext):
            return None
        if name == "cuda":
            reason = _cuda_jit.ensure()  # the JIT fallback; decided once per process
            return None if reason is None else f"gan_fast._C has no CUDA kernels, and {reason}"
        return f"gan_fast._C was built without {name} kernels"
    if name == "triton":
        try:
            importlib.import_module("triton")
        except ImportError:
            return "triton is not installed"
        if device_type == "cuda":
            return None
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return f"triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU), got {device_type}"
    raise ValueError(name)


def _module_for(name: str):
    if name == "reference":
        return importlib.import_module("gan_fast.reference")
    if name in ("cpu", "cuda"):
        return importlib.import_module("gan_fast.kernels.cpp")
    return importlib.import_module("gan_fast.kernels.triton")


def _auto_order(device_type: str):
    if device_type == "cuda":
        return ("cuda", "triton", "reference")
    if device_type == "cpu":
        return ("cpu", "reference")
    return ("reference",)  # meta, mps, xpu...: plain PyTorch ops, as stock would run


def resolve_name(device_type: str, dtype: torch.dtype | None = None) -> str:
    """The concrete backend name that runs ops on `device_type` tensors (of `dtype`) now."""
    name = requested()
    if name != "auto":
        reason = why_unavailable(name, device_type, dtype)
        if reason is not None:
            raise BackendUnavailable(f"gan_fast backend {name!r} was requested but cannot run: {reason}")
        return name
    for cand in _auto_order(device_type):
        reason = why_unavailable(cand, device_type, dtype)
        if reason is None:
            return cand
        key = (cand, device_type, dtype)
        if key not in _logged:
            _logged.add(key)
            log.warning("gan_fast: backend %r skipped for %s tensors: %s", cand, device_type, reason)
    raise AssertionError("unreachable: the reference backend always runs")


_choices: dict = {}
_resolved: dict = {}


def choices() -> dict:
    """The cached per-input choices of ``auto``: {(op, key): backend name}."""
    return dict(_choices)


def _median_seconds(fn, device_type: str, reps: int = 5) -> float:
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    fn()  # warm-up: compiles Triton kernels, fills allocator caches
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def timed_choice(op: str, key, runs: dict, device_type: str) -> str:
    """Time each of ``runs`` ({name: fn}, fn() runs `op` one way) once; cache and return the
    fastest name under (op, key) in ``choices()``. A cached choice is returned untimed."""
    k = (op, key)
    if k not in _choices:
        times = {name: _median_seconds(fn, device_type) for name, fn in runs.items()}
        _choices[k] = min(times, key=times.get)
        log.info("gan_fast: auto chose %s for %s %s (%s)", _choices[k], op, key,
                 ", ".join(f"{c} {t * 1e6:.1f} us" for c, t in times.items()))
    return _choices[k]


def measured_choice(op: str, key, candidates, bench, device_type: str) -> str:
    """Time ``bench(backend_module)`` for each candidate once; cache and return the fastest."""
    runs = {c: (lambda c=c: bench(_module_for(c))) for c in candidates}
    return timed_choice(op, key, runs, device_type)


def resolve(tensor: torch.Tensor, op: str | None = None, bench=None):
    """The module implementing the kernel contract for `tensor`'s device.

    op/bench: under ``auto`` on CUDA with several fast backends available,
    ``bench(module)`` runs the op once on a candidate backend and the fastest is kept.
    """
    device_type = tensor.device.type
    name = requested()
    if name == "auto" and device_type == "cuda" and bench is not None:
        fast = [c for c in ("cuda", "triton") if why_unavailable(c, device_type, tensor.dtype) is None]
        if len(fast) > 1:
            key = (tuple(tensor.shape), str(tensor.dtype), tensor.is_contiguous())
            return _module_for(measured_choice(op, key, fast, bench, device_type))
    key = (name, device_type, tensor.dtype)
    module = _resolved.get(key)
    if module is None:  # availability does not change within a process: resolve once
        module = _resolved[key] = _module_for(resolve_name(device_type, tensor.dtype))
    return module


def report() -> dict:
    """{backend: None if available else reason} for the CPU and (if present) CUDA devices."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {(n, d): why_unavailable(n, d) for d in devices for n in NAMES[1:]}

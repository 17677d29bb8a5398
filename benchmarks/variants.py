"""What is compared: stock eager, torch.compile (three modes), each gan_fast backend.

A variant name is one of

* ``eager``                     stock PyTorch layers and losses, eager;
* ``compile``                   ``torch.compile`` of the stock code, default mode;
* ``compile-max-autotune``      ... mode="max-autotune";
* ``compile-reduce-overhead``   ... mode="reduce-overhead" (CUDA graphs; GPU only);
* ``gan_fast:<backend>``        gan_fast's fused layers/loss on backend
                                cpu | cuda | triton | reference, or ``auto`` (what users
                                get by default: on CUDA the cuda backend, with the Triton
                                fused conv where auto timed it faster; CUDA only, on CPU
                                auto is the cpu backend);
* ``gan_fast:<backend>+compile`` the same under torch.compile (default mode); not
                                in the default set, ask for it with ``--variants``.

``unavailable(name, device, opts)`` says why a variant cannot run (or is skipped by
an option) on this machine; the runner records that reason instead of crashing.
Every torch.compile is ``dynamic=False`` (static shapes, as in training) and is
compiled once per case, outside the timed region.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from typing import Callable, Optional

import torch

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
COMPILE_MODES = {"compile": "default", "compile-max-autotune": "max-autotune",
                 "compile-reduce-overhead": "reduce-overhead"}


class Unavailable(Exception):
    """This case cannot run with this variant here (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    fused: bool                    # gan_fast layers/loss (else stock PyTorch)
    backend: Optional[str]         # gan_fast backend, for fused variants
    compile_mode: Optional[str]    # None (eager) or a torch.compile mode

    @property
    def is_compiled(self) -> bool:
        return self.compile_mode is not None

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.compile_mode == "reduce-overhead"

    def wrap(self, fn: Callable) -> Callable:
        """`fn` itself, or torch.compile(fn) in this variant's mode."""
        if self.compile_mode is None:
            return fn
        mode = None if self.compile_mode == "default" else self.compile_mode
        return torch.compile(fn, mode=mode, dynamic=False)

    def pre_iter(self) -> Optional[Callable[[], None]]:
        """Called before each iteration (CUDA graph trees want a step marker)."""
        if self.uses_cuda_graphs and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            return torch.compiler.cudagraph_mark_step_begin
        return None

    @contextlib.contextmanager
    def active(self):
        """While measuring: the gan_fast backend is set process-wide (covers backward too)."""
        if not self.fused:
            yield
            return
        from gan_fast import backends
        backends.set_backend(self.backend)
        try:
            yield
        finally:
            backends.set_backend(None)


def parse(name: str) -> Variant:
    if name == "eager":
        return Variant(name, False, None, None)
    if name in COMPILE_MODES:
        return Variant(name, False, None, COMPILE_MODES[name])
    if name.startswith("gan_fast:"):
        rest = name[len("gan_fast:"):]
        backend, _, comp = rest.partition("+")
        if backend in BACKENDS and comp in ("", "compile"):
            return Variant(name, True, backend, "default" if comp else None)
    raise ValueError(f"unknown variant {name!r}; known: eager, {', '.join(COMPILE_MODES)}, "
                     f"gan_fast:<{'|'.join(BACKENDS)}>[+compile]")


def default_names(device: str) -> list[str]:
    """Every comparison that exists (the ones that cannot run here are reported as such)."""
    return (["eager", "compile", "compile-max-autotune", "compile-reduce-overhead"]
            + [f"gan_fast:{b}" for b in BACKENDS])


def _compile_problem(device: str) -> Optional[str]:
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device == "cpu":
        cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
        if not cxx:
            return "torch.compile on CPU needs a C++ compiler (none found on PATH)"
    if device == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch.compile on CUDA needs triton (not installed)"
    return None


def unavailable(v: Variant, device: str, opts) -> Optional[tuple[str, str]]:
    """None if `v` runs on `device`; else (status, reason), status 'n/a' or 'skipped'."""
    if v.is_compiled:
        why = _compile_problem(device)
        if why:
            return "n/a", why
        if v.uses_cuda_graphs and device != "cuda":
            return "n/a", "CUDA graphs need a CUDA device"
        if v.compile_mode == "max-autotune" and device == "cpu" and not getattr(opts, "cpu_max_autotune", False):
            return "skipped", ("on CPU max-autotune only re-tunes GEMM/conv templates and multiplies "
                               "compile time past the 10-minute budget (--cpu-max-autotune runs it)")
    if v.fused:
        if v.backend == "auto" and device == "cpu":
            return "n/a", "on CPU tensors auto runs the cpu backend: the gan_fast:cpu rows"
        if v.backend == "auto":
            return None
        if v.backend == "triton" and device == "cpu":
            return "n/a", ("Triton runs on CPU only under TRITON_INTERPRET=1, a correctness tool, "
                           "not a performance backend")
        if v.backend == "reference" and not getattr(opts, "with_reference", False):
            return "skipped", ("the reference backend is the pure-PyTorch test oracle, not a "
                               "performance backend (--with-reference times it)")
        try:
            from gan_fast import backends
        except Exception as e:  # noqa: BLE001
            return "n/a", f"gan_fast not importable: {type(e).__name__}: {e}"
        why = backends.why_unavailable(v.backend, device)
        if why:
            return "n/a", why
    return None


def compile_reset() -> None:
    """Forget compiled graphs between cases (bounded memory; no recompile limit is hit)."""
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass

"""Shared test set-up.

TRITON_INTERPRET must be set before any triton kernel is defined, so it is set
here, before gan_fast is imported: on a CPU-only machine the Triton kernels then
run on CPU tensors. On a CUDA machine the variable is left unset and every
backend test also runs on CUDA tensors.
"""
import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from gan_fast import backends  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params():
    """(backend, device) pairs to test: every backend on every device, skipped
    with its reason where it cannot run (e.g. no GPU, extension not built)."""
    params = []
    for device in ["cpu", "cuda"]:
        for name in ("reference", "cpu", "cuda", "triton"):
            if name in ("cpu", "cuda") and name != device:
                continue
            if device == "cuda" and not torch.cuda.is_available():
                marks = pytest.mark.skip(reason="no CUDA GPU on this machine")
            else:
                reason = backends.why_unavailable(name, device)
                if reason and name == "cpu" and os.environ.get("GAN_FAST_NO_EXT") != "1":
                    # The CPU extension must build wherever the tests run: missing is a failure.
                    marks = ()
                else:
                    marks = pytest.mark.skip(reason=reason) if reason else ()
            params.append(pytest.param((name, device), id=f"{name}-{device}", marks=marks))
    return params


@pytest.fixture(params=backend_params())
def backend(request):
    """Yields (backend name, device) with that backend forced for the test's duration."""
    name, device = request.param
    with backends.use_backend(name):
        yield name, device


@pytest.fixture
def no_tf32():
    """fp32 convolutions without TF32 on CUDA, for comparisons at fp32 tolerances."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(autouse=True, scope="session")
def _fast_triton_interpreter():
    """The Triton interpreter checks every int32 add/mul for overflow, which doubles
    its run time; gan_fast's launchers already refuse tensors whose offsets could
    overflow int32 (numel >= 2**31), so the check is switched off for the tests."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    try:
        import triton.runtime.interpreter as interp
    except ImportError:
        yield
        return
    builder = getattr(interp, "interpreter_builder", None)
    old = getattr(builder, "options", None)
    if not dataclasses.is_dataclass(old) or not hasattr(old, "sanitize_overflow"):
        yield
        return
    builder.options = dataclasses.replace(old, sanitize_overflow=False)
    yield
    builder.options = old


def pytest_report_header(config):
    lines = []
    for (name, device), reason in backends.report().items():
        lines.append(f"gan_fast backend {name}/{device}: {'available' if reason is None else reason}")
    return lines

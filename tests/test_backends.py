"""Backend selection: names, environment variable, context manager, auto's choice."""
import os

import pytest
import torch

import gan_fast
from gan_fast import backends


def test_requested_precedence(monkeypatch):
    monkeypatch.setenv("GAN_FAST_BACKEND", "reference")
    assert backends.requested() == "reference"
    gan_fast.set_backend("cpu")
    try:
        assert backends.requested() == "cpu"
        with gan_fast.use_backend("triton"):
            assert backends.requested() == "triton"
        assert backends.requested() == "cpu"
    finally:
        gan_fast.set_backend(None)


def test_auto_prefers_the_extension_on_cpu():
    with gan_fast.use_backend("auto"):
        name = backends.resolve_name("cpu")
    expected = "cpu" if backends.why_unavailable("cpu", "cpu") is None else "reference"
    assert name == expected


@pytest.mark.skipif(os.environ.get("GAN_FAST_NO_EXT") == "1", reason="GAN_FAST_NO_EXT=1: pure-Python install")
def test_extension_is_built():
    """The C++ CPU extension must be present wherever the test suite runs."""
    assert backends.why_unavailable("cpu", "cpu") is None
    from gan_fast import _C
    assert "cpu" in _C.compiled_device_types()


def test_report_lists_every_backend():
    rep = backends.report()
    assert ("reference", "cpu") in rep and rep[("reference", "cpu")] is None
    assert ("cuda", "cpu") in rep and "cuda" in rep[("cuda", "cpu")]


def test_measured_choice_times_each_candidate_once_and_caches(monkeypatch):
    calls = []
    fake_modules = {"cuda": "slow-module", "triton": "fast-module"}
    monkeypatch.setattr(backends, "_module_for", lambda name: fake_modules[name])

    def bench(module):
        calls.append(module)
        if module == "slow-module":
            sum(range(20000))  # measurably slower

    key = ((4, 3, 8, 8), "torch.float32", True)
    assert backends.measured_choice("op_x", key, ["cuda", "triton"], bench, "cpu") == "triton"
    n = len(calls)
    assert n == 12  # one warm-up and five timed runs each
    assert backends.measured_choice("op_x", key, ["cuda", "triton"], bench, "cpu") == "triton"
    assert len(calls) == n
    assert backends.choices()[("op_x", key)] == "triton"


def test_float64_on_gpu_backends_is_refused_with_a_reason():
    assert "float64" in backends.why_unavailable("triton", "cpu", torch.float64)
    assert "float64" in backends.why_unavailable("cuda", "cuda", torch.float64)
    with gan_fast.use_backend("auto"):
        assert backends.resolve_name("cuda", torch.float64) == "reference"

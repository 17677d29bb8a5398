"""The JIT fallback for the CUDA kernels (gan_fast._cuda_jit).

The decision logic runs on any machine, with torch's CUDA state, the toolkit and
``torch.utils.cpp_extension.load`` faked. test_jit_build_on_gpu really builds and
runs the kernels, in a subprocess with its own build directory; it needs a GPU.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

import gan_fast
from gan_fast import _build_flags, _cuda_jit, backends

ROOT = Path(__file__).resolve().parents[1]


class FakeExt:
    """Stands in for gan_fast._C: only compiled_device_types() is asked for."""

    def __init__(self, *types):
        self.types = list(types)

    def compiled_device_types(self):
        return self.types


@pytest.fixture
def jit(monkeypatch, tmp_path):
    """A fresh JIT state on a machine that could build: CUDA torch with a GPU, a
    toolkit, ninja, and a gan_fast._C without CUDA kernels. Yields the calls to load()."""
    monkeypatch.setattr(_cuda_jit, "_outcome", None)
    monkeypatch.setattr(backends, "_logged", set())
    monkeypatch.setattr(backends, "_extension", lambda: (FakeExt("cpu"), None))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    (tmp_path / "cuda" / "bin").mkdir(parents=True)
    (tmp_path / "cuda" / "bin" / "nvcc").write_text("")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path / "cuda"))
    monkeypatch.setattr(_cuda_jit, "_ninja_found", lambda: True)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.delenv("GAN_FAST_JIT", raising=False)
    monkeypatch.delenv("GAN_FAST_TEST_HIDE_EXT_CUDA", raising=False)
    calls = []

    def fake_load(**kwargs):
        calls.append(kwargs)
        return os.path.join(kwargs["build_directory"], kwargs["name"] + ".so")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    return calls


def _jit_logs(caplog):
    return [r for r in caplog.records if r.name == "gan_fast" and "CUDA kernels" in r.getMessage()]


def test_success_loads_once_with_the_setup_py_flags(jit, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="gan_fast")
    assert not backends.extension_has("cuda")  # asking extension_has never builds
    assert jit == []
    assert backends.why_unavailable("cuda", "cuda") is None
    assert backends.why_unavailable("cuda", "cuda") is None
    assert len(jit) == 1
    call = jit[0]
    assert call["is_python_module"] is False and call["with_cuda"] is True
    assert call["build_directory"].startswith(str(tmp_path / "ext"))
    assert call["extra_cflags"] == _build_flags.cxx_flags(cuda=True)
    assert call["extra_cuda_cflags"] == _build_flags.nvcc_flags()
    assert call["extra_ldflags"] == _build_flags.link_flags()
    names = sorted(os.path.basename(s) for s in call["sources"])
    assert "bindings_cuda.cpp" in names and "bn_act.cu" in names and "gan_loss.cu" in names
    assert "bindings.cpp" not in names  # the schemas stay in gan_fast._C: TORCH_LIBRARY only once
    assert backends.extension_has("cuda")
    assert _cuda_jit.library() == os.path.join(call["build_directory"], "gan_fast_cuda.so")
    assert backends.cuda_kernels_origin().startswith("JIT-built")
    compiling = [r for r in _jit_logs(caplog) if "compiling" in r.getMessage()]
    assert len(compiling) == 1 and compiling[0].levelno == logging.WARNING
    with gan_fast.use_backend("cuda"):
        assert backends.resolve_name("cuda") == "cuda"


def test_failed_build_is_logged_once_and_becomes_the_reason(jit, monkeypatch, caplog):
    calls = []

    def failing_load(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("Error building extension 'gan_fast_cuda': [1/3] nvcc ... -Werror ...\n"
                           "FAILED: bn_act.cuda.o\n"
                           'bn_act.cu(12): error: identifier "oops" is undefined\n'
                           "1 error detected in the compilation of \"bn_act.cu\".\n"
                           "ninja: build stopped: subcommand failed.")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    caplog.set_level(logging.INFO, logger="gan_fast")
    reason = backends.why_unavailable("cuda", "cuda")
    assert 'bn_act.cu(12): error: identifier "oops" is undefined' in reason
    assert "JIT build failed" in reason
    for _ in range(3):  # cached for the process: no retry storm
        assert backends.why_unavailable("cuda", "cuda") == reason
    assert len(calls) == 1
    failed = [r for r in _jit_logs(caplog) if "JIT build failed" in r.getMessage()]
    assert len(failed) == 1 and "ninja: build stopped" in failed[0].getMessage()
    assert not backends.extension_has("cuda")
    assert backends.cuda_kernels_origin() == f"none: {reason}"

    with gan_fast.use_backend("cuda"):
        with pytest.raises(gan_fast.BackendUnavailable, match="oops"):
            backends.resolve_name("cuda")
    with gan_fast.use_backend("auto"):
        assert backends.resolve_name("cuda") in ("triton", "reference")
    assert len(calls) == 1


def test_load_error_of_the_built_library_is_a_reason(jit, monkeypatch):
    def bad_library(**kwargs):
        raise OSError("gan_fast_cuda.so: undefined symbol: _ZN3c104cuda9SomethingEv")

    monkeypatch.setattr(cpp_extension, "load", bad_library)
    assert "undefined symbol" in backends.why_unavailable("cuda", "cuda")


def test_wheel_with_cuda_kernels_needs_no_jit(jit, monkeypatch):
    monkeypatch.setattr(backends, "_extension", lambda: (FakeExt("cpu", "cuda"), None))
    assert backends.why_unavailable("cuda", "cuda") is None
    assert backends.extension_has("cuda")
    assert backends.cuda_kernels_origin() == "built into gan_fast._C (setup.py)"
    assert jit == [] and _cuda_jit.library() is None


def test_test_hook_hides_the_wheels_cuda_kernels(jit, monkeypatch):
    monkeypatch.setattr(backends, "_extension", lambda: (FakeExt("cpu", "cuda"), None))
    monkeypatch.setenv("GAN_FAST_TEST_HIDE_EXT_CUDA", "1")
    assert backends.why_unavailable("cuda", "cuda") is None
    assert len(jit) == 1


def test_jit_off(jit, monkeypatch):
    monkeypatch.setenv("GAN_FAST_JIT", "0")
    reason = backends.why_unavailable("cuda", "cuda")
    assert "GAN_FAST_JIT=0" in reason and "no CUDA kernels" in reason
    assert jit == []
    with gan_fast.use_backend("cuda"):
        with pytest.raises(gan_fast.BackendUnavailable, match="GAN_FAST_JIT=0"):
            backends.resolve_name("cuda")


@pytest.mark.parametrize("missing, expect", [
    ("torch_cuda", "built without CUDA"),
    ("device", "no CUDA device"),
    ("sources", "sources are not part of this installation"),
    ("toolkit", "no CUDA toolkit found"),
    ("ninja", "ninja not found"),
])
def test_what_a_build_needs(jit, monkeypatch, tmp_path, missing, expect):
    if missing == "torch_cuda":
        monkeypatch.setattr(torch.version, "cuda", None)
    elif missing == "device":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    elif missing == "sources":
        monkeypatch.setattr(_cuda_jit, "_CSRC_DIRS", (str(tmp_path / "nowhere"),))
    elif missing == "toolkit":
        monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    else:
        monkeypatch.setattr(_cuda_jit, "_ninja_found", lambda: False)
    reason = backends.why_unavailable("cuda", "cuda")
    assert expect in reason
    assert jit == []
    assert backends.why_unavailable("cuda", "cuda") == reason


def test_no_extension_at_all_is_reported_not_built(jit, monkeypatch):
    """Without gan_fast._C (GAN_FAST_NO_EXT=1 install) there are no op schemas to add CUDA kernels to."""
    monkeypatch.setattr(backends, "_extension", lambda: (None, "compiled extension gan_fast._C not importable (x)"))
    reason = backends.why_unavailable("cuda", "cuda")
    assert "gan_fast._C not importable" in reason and "JIT build" in reason
    assert jit == [] and _cuda_jit._outcome is None


def test_sources_are_found_in_this_checkout():
    csrc = _cuda_jit.sources_dir()
    assert csrc is not None
    assert set(_build_flags.cuda_sources(csrc)) == {
        str(p) for p in Path(csrc, "cuda").iterdir() if p.suffix in (".cu", ".cpp")}


def test_cuda_bindings_only_add_kernels():
    """The JIT library is loaded next to gan_fast._C: it must not define the library
    (TORCH_LIBRARY) or a Python module a second time."""
    source = (ROOT / "csrc" / "cuda" / "bindings_cuda.cpp").read_text()
    text = re.sub(r"//.*", "", source)  # code only: the comments may name what is not there
    assert "TORCH_LIBRARY_IMPL(gan_fast_C, CUDA, m)" in text
    assert "TORCH_LIBRARY(" not in text and "TORCH_LIBRARY_FRAGMENT(" not in text
    assert "PYBIND11_MODULE" not in text


def test_build_flags_import_no_torch():
    """setup.py loads gan_fast/_build_flags.py by path before torch is known to be there."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("f", {str(ROOT / "gan_fast" / "_build_flags.py")!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        assert m.nvcc_flags() and m.cpu_sources("csrc")
        assert "torch" not in sys.modules and "gan_fast" not in sys.modules, sorted(sys.modules)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("output, line", [
    ("Error building extension 'x': [1/2] c++ -Werror a.cpp\nFAILED: a.o\na.cpp:3:1: error: boom\n"
     "ninja: build stopped: subcommand failed.", "a.cpp:3:1: error: boom"),
    ("Error building extension 'x': [3/3] c++ -shared ...\nFAILED: x.so\n"
     "/usr/bin/ld: cannot find -lc10_cuda: No such file or directory\n"
     "collect2: error: ld returned 1 exit status", "/usr/bin/ld: cannot find -lc10_cuda: No such file or directory"),
    ("something odd\nlast words", "last words"),
    ("", "no output"),
])
def test_error_line_picks_the_first_error(output, line):
    assert _cuda_jit._error_line(output) == line


def test_info_names_where_the_cuda_kernels_come_from(capsys, monkeypatch):
    from gan_fast import cli

    monkeypatch.setattr(_cuda_jit, "_outcome", _cuda_jit._outcome)  # whatever info decides stays in this test

    assert cli.info() == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("CUDA kernels: ")]
    assert len(line) == 1
    assert line[0].split(": ", 1)[1].startswith(("built into gan_fast._C", "JIT-built", "none: "))


_GPU_SCRIPT = """
import os, torch
import gan_fast
from gan_fast import _C, _cuda_jit, backends, reference

assert "cuda" not in _cuda_jit.ext_device_types(_C)  # the test hook hides the wheel's CUDA kernels
why = backends.why_unavailable("cuda", "cuda")
assert why is None, why
lib = _cuda_jit.library()
assert lib and lib.startswith(os.environ["TORCH_EXTENSIONS_DIR"]) and lib in torch.ops.loaded_libraries, lib
assert backends.cuda_kernels_origin().startswith("JIT-built")

x = torch.randn(4, 6, 5, 3, device="cuda").to(memory_format=torch.channels_last)
w, b = torch.rand(6, device="cuda") + 0.5, torch.randn(6, device="cuda")
got = torch.ops.gan_fast_C.bn_act_train_fwd(x, w, b, 1e-5, 0.2)
want = reference.bn_act_train_fwd(x, w, b, 1e-5, 0.2)
for g, r in zip(got, want):
    torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
fake = torch.randn(37, device="cuda")
with gan_fast.use_backend("cuda"):
    loss = gan_fast.functional.g_loss(fake.clone().requires_grad_(), "hinge")
torch.testing.assert_close(loss, reference.gan_loss("hinge", None, fake, "g"), atol=1e-5, rtol=1e-5)
print("JIT OK", lib)
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_jit_build_on_gpu(tmp_path):
    """Builds the CUDA kernels with the JIT fallback from scratch and runs them (a few minutes)."""
    env = dict(os.environ,
               TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),  # a fresh build, nothing cached
               GAN_FAST_TEST_HIDE_EXT_CUDA="1",
               GAN_FAST_JIT="1",
               PYTHONPATH=os.pathsep.join([str(Path(gan_fast.__file__).parents[1]),
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("GAN_FAST_BACKEND", None)
    if "GAN_FAST_CUDA_ARCH" not in env:  # this GPU's architecture only: half the compile time
        env["GAN_FAST_CUDA_ARCH"] = "%d%d" % torch.cuda.get_device_capability()
    res = subprocess.run([sys.executable, "-c", _GPU_SCRIPT], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "JIT OK" in res.stdout
    assert "compiling them now" in res.stderr  # the one log line of a first build

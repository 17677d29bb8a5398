"""The portable (at::vec DEFAULT) build of the CPU kernels.

The extension carries the CPU kernels twice, portable and AVX2, and picks AVX2 at run
time where the CPU has it, so on most machines the rest of the suite tests only the
AVX2 copy. GAN_FAST_CPU_ISA=default forces the portable copy: this runs the CPU
backend's bn_act and gan_loss tests again in a subprocess with it set.
"""
import os
import subprocess
import sys

import pytest

import gan_fast
from gan_fast import backends

TESTS = os.path.dirname(os.path.abspath(__file__))
# the gan_fast under test, whether installed or imported from a checkout
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gan_fast.__file__)))


def _isa(env):
    code = "import gan_fast._C as c; print(c.cpu_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_portable_cpu_kernels():
    reason = backends.why_unavailable("cpu", "cpu")
    assert reason is None, reason  # the suite runs on a built extension
    path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, GAN_FAST_CPU_ISA="default", PYTHONPATH=path)
    assert _isa(env) == "default"
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           os.path.join(TESTS, "test_bn_act.py"), os.path.join(TESTS, "test_gan_loss.py"),
           "-k", "cpu-cpu or test_cpu_work_splits"]
    done = subprocess.run(cmd, env=env, cwd=TESTS, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"portable CPU kernels failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
    assert " passed" in done.stdout

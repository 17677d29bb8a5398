"""The CUDA sources compile (nvcc, no GPU needed): runs .ci/check_cuda.sh.

Checks csrc/cuda/*.cu for sm_80 and sm_90a with warnings as errors, and
csrc/cuda/bindings_cuda.cpp for syntax against the installed torch headers.
Takes a minute or two on a small CPU machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "check_cuda.sh"


def _nvcc():
    env = os.environ.get("NVCC")
    if env and (shutil.which(env) or os.access(env, os.X_OK)):
        return env
    if shutil.which("nvcc"):
        return shutil.which("nvcc")
    if os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
        return "/usr/local/cuda/bin/nvcc"
    return None


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not installed")
def test_cuda_sources_compile():
    env = dict(os.environ, PYTHON=sys.executable)  # torch headers of the interpreter running pytest
    res = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1200)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f".ci/check_cuda.sh failed:\n{out}"
    assert "SKIP: nvcc not found" not in out
    for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        assert f"ok    csrc/cuda/{cu.name}" in out, out

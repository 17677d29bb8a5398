"""gan-fast aot: the ahead-of-time compile check of the Triton kernels (no GPU needed).

Runs gan_fast.aot in a subprocess: the test session sets TRITON_INTERPRET=1 (conftest),
under which the kernel modules hold the interpreter's configs; aot needs the GPU ones.
The whole matrix runs in CI as its own step (.ci/run); here: coverage of the capture,
the one shared-memory/register rule, and a few real compiles for sm_80 and sm_90a.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _py(code, timeout=300):
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=ENV, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_capture_reaches_every_kernel_and_the_rule_prunes_per_target():
    out = _py("""
        from gan_fast import aot
        from gan_fast.kernels.triton import _targets, conv_fwd
        layers = [l for l in aot.dcgan_layers() if l.name in ("G1", "G2", "D2")]
        assert [l.name for l in aot.dcgan_layers()] == ["G1", "G2", "G3", "G4", "D2", "D3", "D4"]
        for cap in (80, 90):
            jobs = aot.jobs_for(cap, aot.capture(cap, layers=layers, dtypes=("fp32", "bf16"),
                                                  formats=("cl", "nchw")))
            assert aot.not_launched(jobs) == [], aot.not_launched(jobs)
            gemm = [j for j in jobs if j["name"] == "_conv_gemm_kernel"]
            # every config compiled is one the run-time rule keeps for this target
            assert all(j["smem_est"] <= _targets.SMEM_LIMIT[cap] for j in gemm)
            assert all(j["constexprs"] for j in gemm)
            # fp32 is TF32 on the GPU (the library's default), never the interpreter's upcast
            precs = {v for j in gemm for v in j["constexprs"].values() if v in ("tf32", "ieee")}
            assert precs == {"tf32", "ieee"}, precs   # ieee: bf16 operands
        big = conv_fwd.GEMM_CONFIGS[0]   # 128x128x64, 3 stages
        assert not _targets.fits(big, 80, 4, 4) and _targets.fits(big, 90, 2, 2)
        print("ok")
    """)
    assert "ok" in out


def test_compiles_for_sm80_and_sm90a_and_reports_resources():
    res = subprocess.run([sys.executable, "-m", "gan_fast.aot", "--layers", "G2", "--subset", "ci",
                          "--kernels", "_gan_loss_kernel,_welford_combine_kernel", "--limit", "4",
                          "--jobs", "2"], env=ENV, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    rows = [ln for ln in out.splitlines() if ln.startswith("| sm_")]
    assert rows and all(ln.rstrip().endswith("| ok |") for ln in rows), out
    assert {ln.split("|")[1].strip() for ln in rows} <= {"sm_80", "sm_90a"}
    assert "PASS" in out


def test_gemm_uses_tensor_cores_on_both_targets():
    out = _py("""
        from gan_fast import aot
        layers = [l for l in aot.dcgan_layers() if l.name == "D2"]
        for cap, want in ((80, "mma"), (90, "wgmma")):
            jobs = [j for j in aot.jobs_for(cap, aot.capture(cap, layers=layers, dtypes=("bf16",),
                                                              formats=("cl",), losses=False))
                    if j["name"] == "_conv_gemm_kernel"]
            row = aot.compile_job(min(jobs, key=lambda j: j["smem_est"]))
            assert row["error"] is None and row["mma"] == want, row
            assert aot.problems(row) == [], aot.problems(row)
        print("ok")
    """)
    assert "ok" in out

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
        wide = conv_fwd.GEMM_CONFIGS[1]   # 128x128x32, 8 warps, 4 stages
        assert not _targets.fits(wide, 80, 4, 4) and _targets.fits(wide, 90, 2, 2)
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
    """Also: the InstanceNorm block's GEMM (per-image statistics, PER_IMAGE; its NCHW eval
    output) and the norm-free block's (bias + activation) are captured, and the largest
    per-image statistics GEMM compiles with tensor cores and no spill."""
    out = _py("""
        from gan_fast import aot
        layers = [l for l in aot.dcgan_layers() if l.name == "D2"]
        for cap, want in ((80, "mma"), (90, "wgmma")):
            jobs = [j for j in aot.jobs_for(cap, aot.capture(cap, layers=layers, dtypes=("bf16",),
                                                              formats=("cl",), losses=False))
                    if j["name"] == "_conv_gemm_kernel"]
            labels = {l.split()[-1] for j in jobs for l in j["labels"]}
            assert {"in-train", "in-eval", "act"} <= labels, labels
            per_image = [j for j in jobs if "PER_IMAGE=True" in aot._spec(j)]
            assert per_image and all("EPILOGUE=1" in aot._spec(j) for j in per_image)
            for job in (min(jobs, key=lambda j: j["smem_est"]),
                        max(per_image, key=lambda j: j["smem_est"])):
                row = aot.compile_job(job)
                assert row["error"] is None and row["mma"] == want, row
                assert aot.problems(row) == [], aot.problems(row)
        print("ok")
    """)
    assert "ok" in out


def test_rule_for_gemms_with_an_operand_rebuilt_from_grad_out_and_y():
    """dgrad/wgrad rebuild dy from (grad_out, y) in registers: at most 3 stages; a strided
    (not channels-contiguous) rebuilt operand costs more registers; when nothing fits, the
    fallback keeps whole warp groups on sm_90 (wgmma), not a 2-warp tile."""
    out = _py("""
        import torch
        from gan_fast.kernels.triton import _targets, conv_bwd, conv_fwd
        cfg = conv_fwd._cfg
        assert not _targets.fits(cfg(128, 64, 32, 8, 4), 80, 2, 2, a_tiles=2)
        assert _targets.fits(cfg(128, 64, 32, 8, 3), 80, 2, 2, a_tiles=2)
        assert _targets.fits(cfg(128, 64, 32, 8, 4), 80, 2, 2)          # forward: no limit
        assert _targets.fits(cfg(64, 64, 32, 4, 3), 80, 2, b_tiles=2)
        assert not _targets.fits(cfg(64, 64, 32, 4, 3), 80, 2, b_tiles=2, strided=True)
        assert _targets.fits(cfg(128, 64, 32, 8, 3), 80, 2, b_tiles=2, strided=True)
        assert not _targets.fits(cfg(128, 64, 32, 8, 3), 80, 4, 4, a_tiles=2)   # fp32 dgrad: 4 warps
        assert _targets.fits(cfg(64, 64, 32, 4, 3), 90, 4, 4, a_tiles=2)
        # every (dtype, layout) of both kernels keeps a config on both targets (the dgrad's
        # pruning says strided only for 2-byte dtypes: fp32 elements go by cp.async)
        cases = [(conv_fwd.GEMM_CONFIGS, dict(a_tiles=2), 2, True)]
        cases += [(confs, kw, nbytes, False) for nbytes in (2, 4)
                  for confs, kw in ((conv_fwd.GEMM_CONFIGS, dict(a_tiles=2)),
                                    (conv_bwd.WGRAD_CONFIGS, dict(b_tiles=2)))]
        cases += [(conv_bwd.WGRAD_CONFIGS, dict(b_tiles=2), nbytes, True) for nbytes in (2, 4)]
        for cap in (80, 90):
            for confs, kw, nbytes, strided in cases:
                kept = [c for c in confs if _targets.fits(c, cap, nbytes, nbytes, strided=strided, **kw)]
                assert kept, (cap, nbytes, strided, kw)
        with _targets.target(90):
            kept = _targets.prune_to_target([cfg(64, 32, 32, 2, 4), cfg(128, 128, 64, 8, 3)],
                                            torch.device("cpu"), 4, a_tiles=2)
        assert [c.num_warps for c in kept] == [8], kept
        print("ok")
    """)
    assert "ok" in out


"""Compile every Triton kernel ahead of time for sm_80 and sm_90a, without a GPU.

    gan-fast aot [--targets sm_80,sm_90a] [--subset ci] [--jobs 2] [--out FILE.md]
    python -m gan_fast.aot ...

What is compiled is not a hand-written list: the library's own host launchers
(``gan_fast.kernels.triton.conv``, ``bn_act``, ``gan_loss``) are called on CPU tensors
of the DCGAN block shapes (read off ``gan_fast.train.models``; each layer also as an
InstanceNorm block, per-image statistics in the epilogue, and as a norm-free block,
bias + activation in the epilogue) while
``kernels.triton._targets.target(cap)`` makes them decide as on that GPU and every
``kernel[grid](...)`` launch is recorded instead of run. Each recorded launch is
specialised by Triton's own binder for the target (dtypes, int specialisation,
alignment), expanded over the autotune configs that the run-time pruning keeps for
the target (the same ``_targets.fits`` rule), de-duplicated, and compiled by
``triton.compile`` (ptxas of the Triton wheel) in a process pool. ``cuobjdump``
reads registers, spill (local) bytes and shared memory from each cubin; the PTX
says whether the GEMMs use tensor cores (mma.sync on sm_80, wgmma on sm_90a).

Exit status 1 on a compile error, a spill in a convolution GEMM, a GEMM without
tensor cores, shared memory above the target's limit, or a config the rule keeps
whose real shared memory exceeds the rule's estimate (the rule would be unsound).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import subprocess
import sys
import time

from .capture import (BATCH, DTYPES, FORMATS, GEMMS, TARGETS, Launch, Layer, capture,  # noqa: F401
                      dcgan_layers, jobs_for, not_launched)
from .compile import _dtype, _spec, compile_job, problems, summary, table  # noqa: F401


CI_LAYERS = ("G1", "G2", "D2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gan-fast aot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list of sm_80,sm_90a")
    ap.add_argument("--subset", choices=["full", "ci"], default="full",
                    help="ci: bf16 and fp32, channels_last only (the fast path), the layers "
                         f"{','.join(CI_LAYERS)} (ConvTranspose from 1x1, ConvTranspose stride 2, "
                         "Conv stride 2: every kernel, mode and config; a few minutes on 2 cores); "
                         "full: every layer, dtype and memory format")
    ap.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    ap.add_argument("--kernels", help="only kernels whose name contains one of these (comma list)")
    ap.add_argument("--limit", type=int, default=0, help="compile at most this many (0 = all)")
    ap.add_argument("--layers", help="only these DCGAN layers (comma list, e.g. G1,G2,D2)")
    ap.add_argument("--verbose", action="store_true", help="a progress line per compile")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    if "gan_fast.kernels.triton.conv_fwd" in sys.modules and \
            sys.modules["gan_fast.kernels.triton.conv_fwd"].INTERPRET:
        print("gan-fast aot: TRITON_INTERPRET=1 was set when the kernels were imported", file=sys.stderr)
        return 2
    dtypes, formats = (DTYPES, FORMATS) if args.subset == "full" else (("fp32", "bf16"), ("cl",))
    t0 = time.perf_counter()
    jobs = []
    for t in args.targets.split(","):
        cap = TARGETS[t.strip()]
        layers = dcgan_layers()
        if args.subset == "ci":
            layers = [L for L in layers if L.name in CI_LAYERS]
        if args.layers:
            layers = [L for L in layers if L.name in args.layers.split(",")]
        jobs += jobs_for(cap, capture(cap, layers=layers, dtypes=dtypes, formats=formats))
    missing = not_launched(jobs)
    if missing and not (args.kernels or args.layers):
        print(f"gan-fast aot: FAIL: kernels never launched by the captured host code: {missing}")
        return 1
    if args.kernels:
        want = args.kernels.split(",")
        jobs = [j for j in jobs if any(w in j["name"] for w in want)]
    if args.limit:
        jobs = jobs[:args.limit]
    print(f"gan-fast aot: {len(jobs)} unique compiles ({args.subset}: {', '.join(dtypes)}; "
          f"{', '.join(formats)}) on {args.jobs} processes", flush=True)
    # most expensive first, so the pool's tail is short
    jobs.sort(key=lambda j: (j["name"] not in GEMMS, -(j["smem_est"] or 0)))
    rows = []
    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        for i, row in enumerate(pool.map(compile_job, jobs, chunksize=1)):
            rows.append(row)
            p = problems(row)
            if p or args.verbose:   # progress: problems as they come
                print(f"[{i + 1}/{len(jobs)}] {row['name']} sm_{row['cap']} {row['config']} "
                      f"{row.get('regs')} regs: {'; '.join(p) or 'ok'} ({'; '.join(row['labels'][:2])})",
                      flush=True)
    rows.sort(key=lambda r: (r["cap"], r["name"], _dtype(r), _spec(r), r["config"]))
    wall = time.perf_counter() - t0
    text = table(rows)
    summ = summary(rows, wall)
    print(text)
    print("\n".join(summ))
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# gan-fast aot: Triton kernels compiled for {args.targets} without a GPU\n\n")
            f.write(f"Command: `gan-fast aot --subset {args.subset} --targets {args.targets}`; "
                    f"{_versions()}.\n\n")
            f.write("\n".join(f"- {s}" for s in summ) + "\n\n" + text + "\n")
    return 1 if any(problems(r) for r in rows) else 0


def _versions():
    import torch
    import triton
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "?"
    return (f"triton {triton.__version__}, torch {torch.__version__}, git {git}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}")


if __name__ == "__main__":
    sys.exit(main())

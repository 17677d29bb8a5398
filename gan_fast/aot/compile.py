"""Compile one job with Triton for a target; read registers, spills, shared memory, tensor cores; judge and print."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
import subprocess
import tempfile
import time

from .capture import GEMMS, TARGETS, _base

_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _cuobjdump():
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_job(job):
    """Compile one job; returns the job with regs, spill, shared, tensor cores, time."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = _base(getattr(importlib.import_module(job["module"]), job["name"]))
    row = dict(job)
    t0 = time.perf_counter()
    try:
        src = ASTSource(fn=fn, signature=job["signature"], constexprs=job["constexprs"],
                        attrs=job["attrs"])
        k = triton.compile(src, target=GPUTarget("cuda", job["cap"], 32), options=job["options"])
    except Exception as e:  # noqa: BLE001 - reported as a row, exit status 1
        row.update(error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}",
                   seconds=time.perf_counter() - t0)
        return row
    row["seconds"] = time.perf_counter() - t0
    ptx = k.asm["ptx"]
    row["mma"] = ("wgmma" if "wgmma.mma_async" in ptx else
                  "mma" if re.search(r"\bmma\.sync", ptx) else "-")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        res = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name],
                             capture_output=True, text=True)
    m = _RES.search(res.stdout)
    regs, stack, static_smem, local = (int(v) for v in m.groups()) if m else (-1, -1, 0, -1)
    row.update(regs=regs, stack=stack, spill=local, shared=int(k.metadata.shared) + static_smem,
               error=None)
    return row


# ------------------------------------------------------------------ judging, output
def problems(row):
    from gan_fast.kernels.triton import _targets
    out = []
    if row.get("error"):
        return ["compile error: " + row["error"]]
    gemm = row["name"] in GEMMS
    limit = _targets.smem_limit(row["cap"])
    if row["shared"] > limit:
        out.append(f"shared {row['shared']} B > {limit} B")
    if gemm and (row["spill"] > 0 or row["stack"] > 0):
        out.append(f"spills ({row['spill']} B local, {row['stack']} B stack)")
    if gemm and row["mma"] == "-":
        out.append("GEMM without tensor cores")
    elif gemm and row["cap"] >= 90 and row["mma"] != "wgmma":
        out.append("GEMM without wgmma on sm_90a")
    if gemm and row["smem_est"] is not None and row["shared"] > row["smem_est"]:
        out.append(f"shared {row['shared']} B > the rule's estimate {row['smem_est']} B")
    return out


def _spec(row):
    """The constexprs (tile sizes aside: they are the config column), as NAME=value."""
    parts = [(_pname(row, k), v) for k, v in sorted(row["constexprs"].items())]
    return " ".join(f"{n}={v}" for n, v in parts if n not in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))


def _pname(row, path):
    fn = _base(getattr(importlib.import_module(row["module"]), row["name"]))
    return fn.arg_names[path[0]] if isinstance(path, tuple) else str(path)


def _dtype(row):
    first_ptr = next((v for v in row["signature"].values() if v.startswith("*")), "-")
    return first_ptr[1:]


def table(rows):
    lines = ["| target | kernel | dtype | specialisation | config | regs | spill B | shared B "
             "| tensor cores | compile s | used by | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = problems(r)
        used = "; ".join(r["labels"][:3]) + (f"; +{len(r['labels']) - 3}" if len(r["labels"]) > 3 else "")
        tgt = {v: k for k, v in TARGETS.items()}.get(r["cap"], r["cap"])
        if r.get("error"):
            lines.append(f"| {tgt} | {r['name']} | {_dtype(r)} | {_spec(r)} | {r['config']} "
                         f"| - | - | - | - | {r['seconds']:.1f} | {used} | FAIL: {'; '.join(p)} |")
            continue
        mma = r["mma"] if r["name"] in GEMMS or r["mma"] != "-" else "n/a"
        lines.append(f"| {tgt} | {r['name']} | {_dtype(r)} | {_spec(r)} | {r['config']} | {r['regs']} "
                     f"| {r['spill']} | {r['shared']} | {mma} | {r['seconds']:.1f} | {used} "
                     f"| {'FAIL: ' + '; '.join(p) if p else 'ok'} |")
    return "\n".join(lines)


def summary(rows, wall):
    from collections import Counter
    lines = []
    for cap in sorted({r["cap"] for r in rows}):
        rs = [r for r in rows if r["cap"] == cap and not r.get("error")]
        tgt = {v: k for k, v in TARGETS.items()}.get(cap, cap)
        kern = Counter(r["name"] for r in rows if r["cap"] == cap)
        if rs:
            worst = max(rs, key=lambda r: r["regs"])
            gem = [r for r in rs if r["name"] in GEMMS]
            lines.append(
                f"{tgt}: {sum(kern.values())} compiles of {len(kern)} kernels "
                f"({', '.join(f'{k} {v}' for k, v in sorted(kern.items()))}); max regs {worst['regs']} "
                f"({worst['name']} {worst['config']}); max shared {max(r['shared'] for r in rs)} B; "
                f"GEMMs with spills {sum(r['spill'] > 0 or r['stack'] > 0 for r in gem)}/{len(gem)}; "
                f"GEMMs with {'wgmma' if cap >= 90 else 'mma'} "
                f"{sum(r['mma'] != '-' for r in gem)}/{len(gem)}")
    bad = [r for r in rows if problems(r)]
    lines.append(f"{len(rows)} compiles in {wall:.0f} s wall "
                 f"({sum(r['seconds'] for r in rows):.0f} s of compile time); "
                 f"{len(bad)} with problems -> {'FAIL' if bad else 'PASS'}")
    return lines

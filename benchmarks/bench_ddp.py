"""A 2-process DistributedDataParallel DCGAN step on CPU (gloo), stock vs fused, with plain
and synchronised BatchNorm (issue 15). Standalone (not one of benchmarks.common.OPS):

    python -m benchmarks.bench_ddp [--steps 20] [--batch 32] [--size 32] [--width 32]

The step is the trainer's: G makes the fakes, D's step on real and detached fakes (DDP),
G's step through D (unwrapped, G's gradients only), SGD. One thread per process; the
median step time of rank 0 after warm-up. Stock nn.SyncBatchNorm cannot run here (it
refuses CPU tensors, and DDP refuses CPU modules holding one): that row says so.
Writes benchmarks/results/ddp-cpu-<date>-<commit>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from benchmarks.common import gan_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = [("stock", False), ("stock", True), ("fused", False), ("fused", True)]


def _models(layers, sync, a):
    import gan_fast
    from gan_fast.train.models import build_models
    g, d = build_models(64, a.width, a.width, 3, a.size, seed=0)
    if sync:
        g, d = (nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in (g, d))
    if layers == "fused":
        gan_fast.fuse(g, verbose=False)
        gan_fast.fuse(d, verbose=False)
    return g, d


def _worker(rank, world, port, a, queue):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gan_fast.nn import GANLoss
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=300))
    results = {}
    per = a.batch // world
    for layers, sync in VARIANTS:
        name = f"{layers}, {'SyncBatchNorm' if sync else 'BatchNorm2d'}"
        try:
            g, d = _models(layers, sync, a)
            gd, dd = DDP(g), DDP(d)
        except (ValueError, RuntimeError) as e:
            results[name] = {"status": "unavailable", "why": str(e).splitlines()[0]}
            continue
        opt_g, opt_d = (torch.optim.SGD(m.parameters(), lr=1e-3) for m in (g, d))
        loss_d, loss_g = GANLoss("bce", "d"), GANLoss("bce", "g")
        z = torch.randn(per, 64, 1, 1)
        real = torch.randn(per, 3, a.size, a.size)
        times = []
        for i in range(a.warmup + a.steps):
            dist.barrier()
            t0 = time.perf_counter()
            gan_step(gd, dd, z, real, opt_g, opt_d, loss_d, loss_g, d_for_g=d)
            times.append(time.perf_counter() - t0)
        t = times[a.warmup:]
        results[name] = {"status": "ok", "median_ms": round(1e3 * statistics.median(t), 2),
                         "min_ms": round(1e3 * min(t), 2)}
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="global batch (split over 2 ranks)")
    p.add_argument("--size", type=int, default=32, choices=(32, 64))
    p.add_argument("--width", type=int, default=32)
    a = p.parse_args(argv)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(2, port, a, queue), nprocs=2, join=True)
    results = queue.get()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    record = {"bench": "ddp", "processes": 2, "backend": "gloo", "device": "cpu",
              "threads_per_process": 1, "torch": torch.__version__, "commit": commit,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "args": vars(a),
              "results": results,
              "date": datetime.datetime.now().isoformat(timespec="seconds")}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(ROOT, "benchmarks", "results", f"ddp-cpu-{stamp}-{commit}")
    with open(path + ".json", "w") as f:
        json.dump(record, f, indent=2)
    lines = [f"# DDP step, 2 processes (gloo, CPU, 1 thread each), DCGAN {a.size}x{a.size} "
             f"width {a.width}, global batch {a.batch}, {a.steps} steps (commit {commit})", "",
             "| layers, BatchNorm | median ms/step | min ms/step |", "|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['median_ms']} | {r['min_ms']} |" if r["status"] == "ok"
                     else f"| {name} | unavailable: {r['why']} | |")
    with open(path + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {path}.json, .md")


if __name__ == "__main__":
    main()

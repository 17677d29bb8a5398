"""Run a function in N gloo processes (torch.multiprocessing spawn), with a free port and
a time limit; a failure in any rank fails the test with that rank's traceback.
TRITON_INTERPRET (set by conftest on CPU-only machines) reaches the children through
os.environ."""
from __future__ import annotations

import datetime
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world, port, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, timeout: float = 600.0) -> None:
    """fn(rank, world, *args) in `world` spawned processes of one gloo process group."""
    ctx = mp.spawn(_entry, args=(fn, world, free_port(), args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:  # the processes this call started
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{fn.__name__} in {world} processes took over {timeout:.0f} s")


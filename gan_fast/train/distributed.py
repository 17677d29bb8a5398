"""The trainer under torchrun: ``torchrun --nproc_per_node N -m gan_fast.train ...``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 the trainer joins a
process group (gloo on CPU, nccl on CUDA; each process on cuda:LOCAL_RANK), wraps G and D
in DistributedDataParallel, and shards the data: ``--batch-size`` is the global batch,
every rank draws the same global batch of indices and noise (the same BatchOrder and
generators as one process) and keeps its own contiguous part of it, a distributed sampler
that resumes exactly. ``--sync-bn`` converts the BatchNorms to nn.SyncBatchNorm before
``gan_fast.fuse`` (fused and synchronised: statistics of the global batch, as one process
would compute them). Rank 0 alone writes samples, metrics, checkpoints and the summary;
the logged losses are averaged over the ranks. A checkpoint resumes with the same world
size it was written with.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    own_group: bool = False  # whether the trainer created the process group
    solo: object = None      # a process group of this rank alone (local statistics)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    def part(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (dim 0)."""
        if not self.enabled:
            return t
        n = t.shape[0] // self.world
        return t[self.rank * n:(self.rank + 1) * n]

    def mean(self, vals):
        """Tensors averaged over the ranks (one all_reduce)."""
        if not self.enabled:
            return vals
        import torch.distributed as dist
        t = torch.stack([v.float() for v in vals])
        dist.all_reduce(t)
        return tuple(t / self.world)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.own_group:
            import torch.distributed as dist
            dist.destroy_process_group()
            self.own_group = False


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Joins torchrun's process group when WORLD_SIZE > 1; returns it and this process's
    device (cuda:LOCAL_RANK on CUDA)."""
    world = world_from_env()
    if world <= 1:
        return Dist(), device
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=10))
    solos = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
    return Dist(rank, world, local, own, solos[rank]), device


def local_copy(module: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """A copy of `module` whose synchronised BatchNorms use this rank's batch alone, for
    what rank 0 runs by itself (sample grids, the final evaluation): a synchronised
    forward there would wait forever for the other ranks."""
    import copy
    m = copy.deepcopy(module)
    if d.enabled:
        for sub in m.modules():
            if hasattr(sub, "process_group") and isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                sub.process_group = d.solo
    return m


def check(cfg, world: Optional[int] = None) -> None:
    """ValueErrors for settings that cannot run in `world` processes."""
    world = world_from_env() if world is None else world
    if world <= 1:
        return
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size is the global batch: {cfg.batch_size} does not split "
                         f"evenly over {world} processes")
    if cfg.cuda_graphs:
        raise ValueError("--cuda-graphs does not run under torchrun (one process only)")


def wrap(module: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """`module` in DistributedDataParallel when distributed, else itself."""
    if not d.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


def check_resume(saved_world: int, d: Dist) -> None:
    if saved_world != d.world:
        raise ValueError(f"--resume: the checkpoint was written by {saved_world} process(es), "
                         f"this run has {d.world}; resume with the same world size")

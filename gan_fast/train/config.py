"""The trainer's settings (:class:`TrainConfig`) and the checks that refuse settings that
cannot work, before anything is loaded (each a ``ValueError`` with one line of text)."""
from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from gan_fast.reference import LOSS_KINDS

MODELS = ("dcgan", "pix2pix", "vae")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Settings that define the model, the data and the optimisation: a resume must keep them.
ARCH_KEYS = ("data", "data_dir", "channels", "mixed_sizes", "synthetic_n", "image_size", "nz",
             "ngf", "ndf", "batch_size", "lr_g", "lr_d", "beta1", "beta2", "loss",
             "label_smoothing", "clip_d", "seed", "data_seed", "model", "task", "l1_weight",
             "kl_weight")

# What --model pix2pix|vae changes in the defaults below (the command line applies them;
# a run of a few minutes on 2 CPU cores each, docs/training.md).
MODEL_DEFAULTS = {
    "dcgan": {},
    "pix2pix": {"task": "inpaint", "ngf": 16, "ndf": 16, "steps": 1500, "out": "runs/pix2pix"},
    "vae": {"nz": 16, "steps": 3000, "lr_g": 1e-3, "lr_d": 1e-3, "beta1": 0.9,
            "out": "runs/vae"},
}


@dataclass
class TrainConfig:
    model: str = "dcgan"
    task: Optional[str] = None  # pix2pix: inpaint | denoise
    # data
    data: str = "mnist"
    data_dir: Optional[str] = None
    channels: Optional[int] = None
    mixed_sizes: str = "error"
    synthetic_n: int = 4096
    # model
    image_size: int = 32
    nz: int = 64
    ngf: int = 32
    ndf: int = 32
    # optimisation
    batch_size: int = 32
    steps: int = 2000
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    loss: str = "bce"
    label_smoothing: float = 0.0
    clip_d: Optional[float] = None
    l1_weight: float = 100.0  # pix2pix: G loss = GAN loss + l1_weight * L1
    kl_weight: float = 1.0  # vae: loss = reconstruction + kl_weight * KL
    seed: int = 0
    data_seed: Optional[int] = None
    # how it runs
    layers: str = "fused"
    loss_impl: str = "fused"
    backend: str = "auto"
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    sync_bn: bool = False
    device: str = "auto"
    threads: Optional[int] = None
    # output
    out: str = "runs/dcgan"
    log_every: int = 20
    sample_every: int = 200
    checkpoint_every: int = 500
    eval_samples: int = 2000
    eval: bool = True
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Adam computes lr / (1 - beta1^t) in the parameters' dtype: far beyond any useful rate,
# and below float32's overflow for any beta1 up to 1 - 1e-20.
MAX_LR = 1e6


def default_cpu_threads() -> int:
    """Half the logical cores, at least 1 (1 on the 2-core machines this project targets).

    Measured on a shared 2-core machine: with torch's default of 2 threads, a DCGAN step
    ran 8x slower than with 1 as soon as another process used a core (OpenMP threads
    wait on each other); with 1 it degrades gracefully. Pass --threads to override.
    """
    return max(1, (os.cpu_count() or 2) // 2)


def seed_everything(seed: int) -> None:
    """Seeds Python's random, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; a ValueError for a name torch does not know
    or a CUDA device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {name}: not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def validate(cfg: TrainConfig) -> None:
    """Raises ValueError for settings that cannot work, before anything is loaded."""
    _validate_model(cfg)
    if cfg.loss not in LOSS_KINDS:
        raise ValueError(f"--loss must be one of {', '.join(LOSS_KINDS)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}")
    if cfg.layers not in ("stock", "fused"):
        raise ValueError("--layers must be stock or fused")
    if cfg.loss_impl not in ("stock", "fused"):
        raise ValueError("--loss-impl must be stock or fused")
    if cfg.image_size not in (32, 64):
        raise ValueError(f"--image-size must be 32 or 64, got {cfg.image_size}")
    zero_ok = ("steps", "sample_every", "checkpoint_every")
    for name in ("steps", "batch_size", "nz", "ngf", "ndf", "log_every") + zero_ok[1:]:
        v, low = getattr(cfg, name), 0 if name in zero_ok else 1
        if v < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if cfg.batch_size < 2:
        raise ValueError("--batch-size must be >= 2 (BatchNorm needs more than one image)")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.label_smoothing and cfg.loss != "bce":
        raise ValueError("--label-smoothing applies to --loss bce only")
    if cfg.clip_d is not None and not cfg.clip_d > 0:
        raise ValueError(f"--clip-d must be > 0, got {cfg.clip_d}")
    for name in ("lr_g", "lr_d"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and 0 < v <= MAX_LR):
            raise ValueError(f"--{name.replace('_', '-')} must be a number in (0, {MAX_LR:g}], "
                             f"got {v}")
    for name in ("beta1", "beta2"):
        v = getattr(cfg, name)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {v}")
    if cfg.eval_samples < 0:
        raise ValueError("--eval-samples must be >= 0")
    dev = resolve_device(cfg.device)
    if cfg.cuda_graphs:
        if dev.type != "cuda":
            raise ValueError("--cuda-graphs needs a CUDA device (--device cuda)")
        if cfg.dtype == "fp16":
            raise ValueError("--cuda-graphs does not support --dtype fp16 (its loss scaler "
                             "synchronises with the CPU); use bf16")
        if cfg.compile:
            raise ValueError("use either --compile or --cuda-graphs, not both")
    if cfg.data == "folder" and not cfg.data_dir:
        raise ValueError("--data folder needs --data-dir DIR")
    if cfg.resume and cfg.overwrite:
        raise ValueError("use either --resume or --overwrite, not both")
    if cfg.backend != "auto":
        from gan_fast import backends
        reason = backends.why_unavailable(cfg.backend, dev.type)
        if reason is not None:
            raise ValueError(f"--backend {cfg.backend} cannot run here: {reason}")


def _validate_model(cfg: TrainConfig) -> None:
    """The checks of --model and the settings that belong to one model."""
    from gan_fast.train.data import TASKS
    if cfg.model not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {cfg.model!r}")
    if cfg.model == "pix2pix" and cfg.task not in TASKS:
        raise ValueError(f"--model pix2pix needs --task {'|'.join(TASKS)}, got {cfg.task!r}")
    if cfg.model != "pix2pix" and cfg.task is not None:
        raise ValueError("--task applies to --model pix2pix only")
    for name in ("l1_weight", "kl_weight"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, "
                             f"got {v}")
    if cfg.model == "dcgan":
        return
    if cfg.model == "vae" and (cfg.loss != "bce" or cfg.label_smoothing or cfg.clip_d):
        raise ValueError("--loss, --label-smoothing and --clip-d apply to the GANs "
                         "(--model dcgan|pix2pix), not to --model vae")
    unsupported = [opt for opt, on in (("--cuda-graphs", cfg.cuda_graphs),
                                       ("--sync-bn", cfg.sync_bn),
                                       ("torchrun", int(os.environ.get("WORLD_SIZE", "1")) > 1))
                   if on]
    if unsupported:
        raise ValueError(f"{unsupported[0]} is implemented for --model dcgan only")

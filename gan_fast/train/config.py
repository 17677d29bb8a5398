"""The trainer's settings (:class:`TrainConfig`) and the checks that refuse settings that
cannot work, before anything is loaded (each a ``ValueError`` with one line of text)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

LOSS_KINDS = ("bce", "hinge", "lsgan", "wgan")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Settings that define the model, the data and the optimisation: a resume must keep them.
ARCH_KEYS = ("data", "data_dir", "channels", "mixed_sizes", "synthetic_n", "image_size", "nz",
             "ngf", "ndf", "batch_size", "lr_g", "lr_d", "beta1", "beta2", "loss",
             "label_smoothing", "clip_d", "seed", "data_seed")


@dataclass
class TrainConfig:
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


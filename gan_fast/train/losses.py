"""The four GAN losses in plain PyTorch (``--loss-impl stock``), and the choice between
them and gan_fast's fused ``GANLoss`` (``--loss-impl fused``)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from gan_fast.train.config import LOSS_KINDS


def stock_gan_loss(kind: str, side: str, label_smoothing: float = 0.0) -> Callable:
    """The four GAN losses in plain PyTorch (the baseline that gan_fast's fused loss
    replaces); same definitions as gan_fast.nn.GANLoss with reduction='mean'."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss must be one of {LOSS_KINDS}, got {kind!r}")

    def real_term(x):  # wants x classified as real
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(
                x, torch.full_like(x, 1.0 - label_smoothing))
        if kind == "hinge":
            return F.relu(1.0 - x).mean()
        if kind == "lsgan":
            return ((x - 1.0) ** 2).mean()
        return -x.mean()

    def fake_term(x):  # D on fakes
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(x, torch.zeros_like(x))
        if kind == "hinge":
            return F.relu(1.0 + x).mean()
        if kind == "lsgan":
            return (x ** 2).mean()
        return x.mean()

    if side == "d":
        return lambda real, fake: real_term(real) + fake_term(fake)
    if kind in ("hinge", "wgan"):
        return lambda fake: -fake.mean()
    if kind == "bce":
        return lambda fake: F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    return real_term


def make_losses(cfg):
    """(D criterion, G criterion) for cfg.loss, in plain PyTorch or gan_fast's GANLoss."""
    if cfg.loss_impl == "stock":
        return (stock_gan_loss(cfg.loss, "d", cfg.label_smoothing),
                stock_gan_loss(cfg.loss, "g"))
    import gan_fast.nn
    return (gan_fast.nn.GANLoss(cfg.loss, "d", label_smoothing=cfg.label_smoothing),
            gan_fast.nn.GANLoss(cfg.loss, "g"))


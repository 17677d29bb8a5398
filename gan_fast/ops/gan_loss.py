"""Custom op for the fused GAN loss (``gan_fast::gan_loss``).

The forward computes the loss *and* d(loss)/d(logits) in one kernel; autograd saves
only that gradient, and the backward scales it by the incoming gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gan_fast import backends


@torch.library.custom_op("gan_fast::gan_loss", mutates_args=())
def gan_loss(real: Optional[Tensor], fake: Tensor, kind: str, side: str, reduction: str,
             label_smoothing: float) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (loss 0-dim, grad_real (empty for side 'g'), grad_fake)."""
    fake = fake.contiguous()
    real = None if real is None else real.contiguous()
    run = lambda be: be.gan_loss_fwd(real, fake, kind, side, reduction, label_smoothing)  # noqa: E731
    loss, grad_real, grad_fake = run(backends.resolve(fake, "gan_loss", run))
    if grad_real is None:
        grad_real = fake.new_empty((0,))
    return loss, grad_real, grad_fake


@gan_loss.register_fake
def _(real, fake, kind, side, reduction, label_smoothing):
    grad_real = fake.new_empty((0,)) if real is None else torch.empty_like(real, memory_format=torch.contiguous_format)
    return fake.new_empty(()), grad_real, torch.empty_like(fake, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    _, grad_real, grad_fake = output
    ctx.has_real = inputs[0] is not None
    ctx.save_for_backward(grad_real, grad_fake)
    ctx.mark_non_differentiable(grad_real, grad_fake)


def _backward(ctx, grad_loss, _g1, _g2):
    grad_real, grad_fake = ctx.saved_tensors
    scale = grad_loss.to(grad_fake.dtype)
    return (grad_real * scale if ctx.has_real else None), grad_fake * scale, None, None, None, None


gan_loss.register_autograd(_backward, setup_context=_setup)


class _GanLossEager(torch.autograd.Function):
    """The same computation without the custom-op layer, for eager mode: the loss is
    launch-bound, and torch.library's Python dispatch costs several times the kernel."""

    @staticmethod
    def forward(ctx, real, fake, kind, side, reduction, label_smoothing):
        fake = fake.contiguous()
        real = None if real is None else real.contiguous()
        run = lambda be: be.gan_loss_fwd(real, fake, kind, side, reduction, label_smoothing)  # noqa: E731
        loss, grad_real, grad_fake = run(backends.resolve(fake, "gan_loss", run))
        ctx.has_real = real is not None
        ctx.save_for_backward(grad_real, grad_fake)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_real, grad_fake = ctx.saved_tensors
        scale = grad_loss.to(grad_fake.dtype)
        return (grad_real * scale if ctx.has_real else None), grad_fake * scale, None, None, None, None


def loss(real: Optional[Tensor], fake: Tensor, kind: str, side: str, reduction: str,
         label_smoothing: float) -> Tensor:
    """The differentiable loss: the custom op under torch.compile, a plain
    autograd.Function (same backend kernels) in eager mode."""
    if torch.compiler.is_compiling():
        return gan_loss(real, fake, kind, side, reduction, label_smoothing)[0]
    return _GanLossEager.apply(real, fake, kind, side, reduction, label_smoothing)

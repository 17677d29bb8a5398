"""Drop-in modules.

``Conv2dBNAct`` and ``ConvTranspose2dBNAct`` are ``nn.Sequential`` containers of the
three stock layers they replace (conv, ``BatchNorm2d``, ``ReLU``/``LeakyReLU``), so
their ``state_dict`` is exactly that of ``nn.Sequential(conv, bn, act)`` and
checkpoints move both ways; only ``forward`` differs: it runs the fused op.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gan_fast import functional, ops
from gan_fast.ops.conv_block import fused_block

__all__ = ["Conv2dBNAct", "ConvTranspose2dBNAct", "GANLoss", "bn_act_from_module"]


def activation_slope(act: nn.Module) -> float:
    """The LeakyReLU slope equivalent to `act` (ReLU -> 0.0)."""
    if isinstance(act, nn.ReLU):
        return 0.0
    if isinstance(act, nn.LeakyReLU):
        return float(act.negative_slope)
    raise TypeError(f"activation must be nn.ReLU or nn.LeakyReLU, got {type(act).__name__}")


def bn_act_from_module(y: Tensor, bn: nn.BatchNorm2d, negative_slope: float) -> Tensor:
    """act(bn(y)) with `bn`'s parameters, buffers and mode, as BatchNorm2d.forward does."""
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        momentum = bn.momentum  # None means cumulative average, handled in functional.bn_act
    else:
        momentum = 0.0 if bn.momentum is None else bn.momentum
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return functional.bn_act(
        y,
        bn.running_mean if track else None,
        bn.running_var if track else None,
        bn.weight, bn.bias, training, momentum, bn.eps, negative_slope,
        bn.num_batches_tracked if (bn.training and bn.track_running_stats) else None)


def _make_act(negative_slope: float, inplace: bool) -> nn.Module:
    return nn.ReLU(inplace) if negative_slope == 0.0 else nn.LeakyReLU(negative_slope, inplace)


class _ConvBNAct(nn.Sequential):
    """Shared forward of the fused blocks: conv, then the fused BatchNorm+activation."""

    @property
    def conv(self):
        return self[0]

    @property
    def bn(self):
        return self[1]

    @property
    def negative_slope(self) -> float:
        return activation_slope(self[2])

    def forward(self, x: Tensor) -> Tensor:
        out = fused_block(x, self[0], self[1], self.negative_slope)  # None: not applicable
        return out if out is not None else bn_act_from_module(self[0](x), self[1], self.negative_slope)

    def to_stock(self) -> nn.Sequential:
        """The same layers as a plain nn.Sequential (shares parameters)."""
        return nn.Sequential(self[0], self[1], self[2])

    @classmethod
    def from_modules(cls, conv, bn, act):
        """Wrap existing stock layers (shares their parameters and buffers)."""
        block = cls.__new__(cls)
        nn.Sequential.__init__(block, conv, bn, act)
        activation_slope(act)
        return block


class Conv2dBNAct(_ConvBNAct):
    """Conv2d -> BatchNorm2d -> LeakyReLU(negative_slope) (ReLU when 0), fused.

    Arguments are nn.Conv2d's, then nn.BatchNorm2d's (eps, momentum, affine,
    track_running_stats), then negative_slope (default 0.2, the DCGAN
    discriminator's) and inplace (kept for the stock activation module).
    Input (N, C_in, H, W) -> output (N, C_out, H', W'), float32/float16/bfloat16.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, negative_slope=0.2, inplace=False, device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                      bias, padding_mode, **kw),
            nn.BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats, **kw),
            _make_act(negative_slope, inplace))


class ConvTranspose2dBNAct(_ConvBNAct):
    """ConvTranspose2d -> BatchNorm2d -> ReLU (or LeakyReLU(negative_slope)), fused.

    Arguments are nn.ConvTranspose2d's, then nn.BatchNorm2d's, then
    negative_slope (default 0.0: ReLU, the DCGAN generator's) and inplace.
    Input (N, C_in, H, W) -> output (N, C_out, H', W'), float32/float16/bfloat16.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 negative_slope=0.0, inplace=False, device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
                               output_padding, groups, bias, dilation, padding_mode, **kw),
            nn.BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats, **kw),
            _make_act(negative_slope, inplace))


class GANLoss(nn.Module):
    """A GAN loss with its gradient computed in the same fused kernel.

    GANLoss(kind='bce'|'hinge'|'lsgan'|'wgan', side='d'|'g', reduction='mean'|'sum',
    label_smoothing=0.0). side 'd': ``loss(real_logits, fake_logits)``; side 'g':
    ``loss(fake_logits)``. Logits of any shape; returns a 0-dim tensor (float32 under
    torch.autocast, like the stock losses).

    The arguments are validated and made canonical once, here ('nonsaturating' is
    stored as 'bce'; read-only afterwards); the kernel is resolved once per device,
    dtype and requested backend (``gan_fast.ops.gan_loss.EagerLoss``), so a call costs
    the host no more than ``F.binary_cross_entropy_with_logits``.
    """

    def __init__(self, kind: str = "bce", side: str = "d", reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__()
        self._loss = ops.gan_loss.EagerLoss(*functional.loss_args(kind, side, reduction, label_smoothing))

    kind = property(lambda self: self._loss.args[0], doc="canonical loss kind")
    side = property(lambda self: self._loss.args[1], doc="'d' or 'g'")
    reduction = property(lambda self: self._loss.args[2], doc="'mean' or 'sum'")
    label_smoothing = property(lambda self: self._loss.args[3], doc="float in [0, 1)")

    def forward(self, *logits: Tensor) -> Tensor:
        side = self._loss.args[1]
        if len(logits) != (2 if side == "d" else 1):
            what = "(real_logits, fake_logits)" if side == "d" else "(fake_logits)"
            raise TypeError(f"GANLoss(side={side!r}) takes {what}, got {len(logits)} tensors")
        real, fake = logits if side == "d" else (None, logits[0])
        real, fake = functional.loss_inputs(real, fake, side)
        return self._loss(real, fake)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, side={self.side!r}, reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"

"""Drop-in modules.

``Conv2dBNAct`` and ``ConvTranspose2dBNAct`` are ``nn.Sequential`` containers of the
three stock layers they replace (conv, ``BatchNorm2d``, ``ReLU``/``LeakyReLU``), so
their ``state_dict`` is exactly that of ``nn.Sequential(conv, bn, act)`` and
checkpoints move both ways; only ``forward`` differs: it runs the fused op.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_hooks

from gan_fast import functional, ops
from gan_fast.ops.block import block_forward, bn_mode, paths

__all__ = ["Conv2dBNAct", "ConvTranspose2dBNAct", "GANLoss", "bn_act_from_module"]


def activation_slope(act: nn.Module) -> float:
    """The LeakyReLU slope equivalent to `act` (ReLU -> 0.0)."""
    if isinstance(act, nn.ReLU):
        return 0.0
    if isinstance(act, nn.LeakyReLU):
        return float(act.negative_slope)
    raise TypeError(f"activation must be nn.ReLU or nn.LeakyReLU, got {type(act).__name__}")


class _NotScriptable:
    """A gan_fast module: TorchScript cannot compile its forward (Python dispatch to custom
    and C++ ops). ``torch.jit.script`` calls ``__prepare_scriptable__`` on every module of
    the tree before it compiles anything, so it stops here with an error that says so
    rather than deep inside the compiler. torch.compile and torch.export trace gan_fast's
    ops and are not affected, nor is torch.jit.trace (see gan_fast.fuse's docstring)."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"TorchScript (torch.jit.script) is not supported by gan_fast fused modules (this "
            f"model holds a {type(self).__name__}). Use torch.compile or torch.export, which "
            "support gan_fast's ops, or script the stock layers: gan_fast.unfuse(model) undoes "
            "gan_fast.fuse, and a gan_fast.nn block's to_stock() returns its stock layers")


def bn_act_from_module(y: Tensor, bn: nn.BatchNorm2d, negative_slope: float) -> Tensor:
    """act(bn(y)) with `bn`'s parameters, buffers and mode, as BatchNorm2d.forward does
    (never synchronised: gan_fast.ops.sync_bn_act.bn_act is SyncBatchNorm's)."""
    batch_stats, running_mean, running_var, num_batches_tracked, momentum = bn_mode(bn)
    return functional.bn_act(y, running_mean, running_var, bn.weight, bn.bias, batch_stats,
                             momentum, bn.eps, negative_slope, num_batches_tracked)


def _hooked(conv: nn.Module, bn: nn.Module, act: nn.Module) -> bool:
    """Whether a block's layers carry hooks (forward or backward, or global module hooks):
    then the block runs them one by one, so each hook sees what it would in stock."""
    g = _module_hooks
    return bool(conv._forward_hooks or conv._forward_pre_hooks or conv._backward_hooks
                or conv._backward_pre_hooks or bn._forward_hooks or bn._forward_pre_hooks
                or bn._backward_hooks or bn._backward_pre_hooks or act._forward_hooks
                or act._forward_pre_hooks or act._backward_hooks or act._backward_pre_hooks
                or g._global_forward_hooks or g._global_forward_pre_hooks
                or g._global_backward_hooks or g._global_backward_pre_hooks)


def _make_bn(num_features, eps, momentum, affine, track_running_stats, sync, process_group,
             kw) -> nn.Module:
    if sync:
        return nn.SyncBatchNorm(num_features, eps, momentum, affine, track_running_stats,
                                process_group, **kw)
    if process_group is not None:
        raise ValueError("process_group is for sync=True (a synchronised BatchNorm)")
    return nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats, **kw)


def _make_act(negative_slope: float, inplace: bool) -> nn.Module:
    return nn.ReLU(inplace) if negative_slope == 0.0 else nn.LeakyReLU(negative_slope, inplace)


class _ConvBNAct(_NotScriptable, nn.Sequential):
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
        conv, bn, act = self._modules.values()
        if _hooked(conv, bn, act):  # hooks see what the stock layers would show them
            return act(bn(conv(x)))
        slope = act.negative_slope if type(act) is nn.LeakyReLU else activation_slope(act)
        return block_forward(paths(self), x, conv, bn, slope)

    # A layer replaced in place (e.g. by nn.SyncBatchNorm.convert_sync_batchnorm, which
    # calls add_module for every child) makes block_forward choose its kernels afresh.
    def add_module(self, name, module):
        super().add_module(name, module)
        paths(self).clear()

    def __setitem__(self, idx, module):
        super().__setitem__(idx, module)
        paths(self).clear()

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
    sync=True makes the BatchNorm an nn.SyncBatchNorm (statistics over `process_group`,
    default the whole world, while training in an initialised process group; CPU/gloo
    included), as ``nn.SyncBatchNorm.convert_sync_batchnorm`` would.
    Input (N, C_in, H, W) -> output (N, C_out, H', W'), float32/float16/bfloat16.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, negative_slope=0.2, inplace=False, device=None, dtype=None,
                 sync=False, process_group=None):
        kw = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                      bias, padding_mode, **kw),
            _make_bn(out_channels, eps, momentum, affine, track_running_stats, sync,
                     process_group, kw),
            _make_act(negative_slope, inplace))


class ConvTranspose2dBNAct(_ConvBNAct):
    """ConvTranspose2d -> BatchNorm2d -> ReLU (or LeakyReLU(negative_slope)), fused.

    Arguments are nn.ConvTranspose2d's, then nn.BatchNorm2d's, then
    negative_slope (default 0.0: ReLU, the DCGAN generator's) and inplace; sync and
    process_group as for Conv2dBNAct.
    Input (N, C_in, H, W) -> output (N, C_out, H', W'), float32/float16/bfloat16.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 negative_slope=0.0, inplace=False, device=None, dtype=None, sync=False,
                 process_group=None):
        kw = {"device": device, "dtype": dtype}
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
                               output_padding, groups, bias, dilation, padding_mode, **kw),
            _make_bn(out_channels, eps, momentum, affine, track_running_stats, sync,
                     process_group, kw),
            _make_act(negative_slope, inplace))


class GANLoss(_NotScriptable, nn.Module):
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

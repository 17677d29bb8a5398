"""The module classes ``gan_fast.fuse`` gives a fused chain's existing module objects.

``fuse`` changes the classes of the stock modules of a conv -> norm -> activation chain
(norm: BatchNorm2d, SyncBatchNorm, InstanceNorm2d or none), never their parameters:

* the conv becomes ``FusedConv2d`` / ``FusedConvTranspose2d`` (subclasses of the
  stock conv) whose forward runs conv + fused norm+activation (``ops.block`` with a
  BatchNorm, ``ops.chain`` with an InstanceNorm2d or no norm);
* the BatchNorm becomes ``AbsorbedBatchNorm2d`` / ``AbsorbedSyncBatchNorm`` (a
  BatchNorm2d / SyncBatchNorm whose forward is the identity: its parameters and buffers
  stay where they were). A SyncBatchNorm chain's statistics are reduced over its process
  group (``gan_fast.ops.sync_bn_act``). ``nn.SyncBatchNorm.convert_sync_batchnorm`` on a
  fused model yields synchronised fused blocks (see ``_AbsorbedBN``), never a BatchNorm
  applied twice; an InstanceNorm2d becomes ``AbsorbedInstanceNorm2d`` the same way;
* the activation module is replaced by ``AbsorbedActivation`` (an ``nn.Identity``; the
  activation holds no state).

Hooks registered on these modules would see fused values, so registering one raises a
RuntimeError; ``torch.jit.script`` raises too (``gan_fast.nn._NotScriptable``).
"""
from __future__ import annotations

import sys

from torch import nn

from gan_fast.nn import _NotScriptable, bn_act_from_module
from gan_fast.ops.block import block_forward, is_sync, paths as _paths
from gan_fast.ops.chain import after_stock_conv, chain_forward

__all__ = ["FusedConv2d", "FusedConvTranspose2d", "AbsorbedBatchNorm2d", "AbsorbedSyncBatchNorm",
           "AbsorbedInstanceNorm2d", "AbsorbedActivation"]


class _RefusesHooks(_NotScriptable):
    """A module whose forward ``fuse`` changed: a hook on it would not see what the stock
    layer computes there, so registering one raises (the check costs nothing per call)."""

    def _absorbed(self) -> str:
        raise NotImplementedError

    def _refuse_hook(self, *args, **kwargs):
        raise RuntimeError(
            f"gan_fast.fuse {self._absorbed()}, so a hook here would not see what the stock layer "
            "computes; register hooks before fuse (the chain is then left alone) or call "
            "gan_fast.unfuse(model) first")

    register_forward_hook = register_forward_pre_hook = _refuse_hook
    register_full_backward_hook = register_full_backward_pre_hook = register_backward_hook = _refuse_hook


class _Absorbed(_RefusesHooks):
    """A module the fused conv before it computed: calling it returns its input. Called
    directly, without nn.Module.__call__'s hook machinery (about 2 us a call, twice per
    fused block in an nn.Sequential): hooks on it are refused, and a global module hook
    would only see the fused value pass through."""

    def __call__(self, x, *args, **kwargs):
        return x

    def forward(self, x, *args, **kwargs):
        return x


class _FusedConvMixin(_RefusesHooks):
    """The fused conv's state (not submodules, so state_dict keys stay stock's):
    ``_gan_fast_norm`` the absorbed norm module or None, ``_gan_fast_slope`` the absorbed
    activation's slope (1: none absorbed), ``_gan_fast_act_slot`` where it stood."""

    def _norm_act(self, y):
        """The absorbed norm + activation on the stock conv's output y."""
        norm, slope = self._gan_fast_norm, self._gan_fast_slope
        if norm is None or type(norm) is AbsorbedInstanceNorm2d:
            return after_stock_conv(y, norm, slope)
        if is_sync(norm):
            from gan_fast.ops import sync_bn_act
            return sync_bn_act.bn_act(y, norm, slope)
        return bn_act_from_module(y, norm, slope)

    def _absorbed(self):
        norm = self._gan_fast_norm
        what = " and ".join(w for w in (STOCK_NORM[type(norm)].__name__ if norm is not None else "",
                                        "activation" if self._gan_fast_act_slot else "") if w)
        return f"fused the {what} after this {STOCK_CLASS[type(self)].__name__} into it"


class FusedConv2d(_FusedConvMixin, nn.Conv2d):
    """An nn.Conv2d whose forward also applies its absorbed norm + activation."""

    def forward(self, x):
        norm = self._gan_fast_norm
        if type(norm) in _BLOCK_NORMS:
            return block_forward(_paths(self), x, self, norm, self._gan_fast_slope)
        return chain_forward(_paths(self), x, self, norm, self._gan_fast_slope)


class FusedConvTranspose2d(_FusedConvMixin, nn.ConvTranspose2d):
    """An nn.ConvTranspose2d whose forward also applies its absorbed norm + activation."""

    def forward(self, x, output_size=None):
        norm = self._gan_fast_norm
        if output_size is None:  # else an output_padding chosen per call: stock conv, the rest
            if type(norm) in _BLOCK_NORMS:
                return block_forward(_paths(self), x, self, norm, self._gan_fast_slope)
            return chain_forward(_paths(self), x, self, norm, self._gan_fast_slope)
        return self._norm_act(nn.ConvTranspose2d.forward(self, x, output_size))


class _AbsorbedBN(_Absorbed):
    """A BatchNorm computed by the fused conv before it: forward is the identity.

    nn.SyncBatchNorm.convert_sync_batchnorm(model) replaces every BatchNorm, this one
    included, by a new SyncBatchNorm sharing its parameters and buffers, and never calls
    a method of ours. It does read ``hasattr(module, "qconfig")`` on the module it
    replaces, after building the new one: that read, when it comes from
    convert_sync_batchnorm, makes the new module absorbed too and points the fused conv
    at it, so the converted model synchronises its fused blocks and applies each
    BatchNorm once. If the conversion cannot be followed (a torch whose
    convert_sync_batchnorm differs), it raises instead of leaving a double BatchNorm."""

    def forward(self, x):
        return x

    def _absorbed(self):
        return f"absorbed this {STOCK_NORM[type(self)].__name__} into the conv before it"

    @property
    def qconfig(self):
        if "_gan_fast_qconfig" in self.__dict__:
            return self.__dict__["_gan_fast_qconfig"]
        _follow_conversion(self, sys._getframe(1))
        raise AttributeError(f"'{type(self).__name__}' object has no attribute 'qconfig'")

    @qconfig.setter
    def qconfig(self, value):
        self.__dict__["_gan_fast_qconfig"] = value


def _follow_conversion(old, frame) -> None:
    """If `frame` is nn.SyncBatchNorm.convert_sync_batchnorm replacing the absorbed `old`,
    absorb its replacement into the same fused conv (see _AbsorbedBN)."""
    if frame is None or frame.f_code is not nn.SyncBatchNorm.convert_sync_batchnorm.__func__.__code__:
        return
    new, conv = frame.f_locals.get("module_output"), old.__dict__.get("_gan_fast_conv")
    if type(new) is not nn.SyncBatchNorm or conv is None or conv._gan_fast_norm is not old:
        raise RuntimeError(
            "gan_fast: nn.SyncBatchNorm.convert_sync_batchnorm on a model fused by "
            "gan_fast.fuse could not be followed with this torch version (the fused conv would "
            "apply its BatchNorm a second time); convert before fusing: "
            "gan_fast.fuse(nn.SyncBatchNorm.convert_sync_batchnorm(gan_fast.unfuse(model)))")
    new.__class__ = AbsorbedSyncBatchNorm
    object.__setattr__(new, "_gan_fast_conv", conv)
    object.__setattr__(conv, "_gan_fast_norm", new)
    _paths(conv).clear()


class AbsorbedBatchNorm2d(_AbsorbedBN, nn.BatchNorm2d):
    """A BatchNorm2d computed by the fused conv before it: forward is the identity."""


class AbsorbedSyncBatchNorm(_AbsorbedBN, nn.BatchNorm2d):
    """An nn.SyncBatchNorm computed (synchronised over its ``process_group``) by the fused
    conv before it: forward is the identity. Deliberately not an nn.SyncBatchNorm
    subclass: DistributedDataParallel refuses CPU modules holding one, and this module
    never computes stock SyncBatchNorm's forward (unfuse restores the nn.SyncBatchNorm)."""
    _gan_fast_sync = True


class AbsorbedInstanceNorm2d(_Absorbed, nn.InstanceNorm2d):
    """An InstanceNorm2d computed by the fused conv before it: forward is the identity."""

    def _absorbed(self):
        return "absorbed this InstanceNorm2d into the conv before it"


class AbsorbedActivation(_Absorbed, nn.Identity):
    """Stands where an activation absorbed by the fused conv before it was: the identity."""

    def __init__(self, stock: str):
        super().__init__()
        self.stock = stock  # the replaced module's repr, e.g. "ReLU(inplace=True)"

    def _absorbed(self):
        return f"absorbed the {self.stock} here into the conv before it"

    def extra_repr(self):
        return f"absorbed {self.stock}"


# stock class -> the class fuse gives it, and back; the activations fuse absorbs
FUSED_CLASS = {nn.Conv2d: FusedConv2d, nn.ConvTranspose2d: FusedConvTranspose2d}
STOCK_CLASS = {v: k for k, v in FUSED_CLASS.items()}
ABSORBED_NORM = {nn.BatchNorm2d: AbsorbedBatchNorm2d, nn.SyncBatchNorm: AbsorbedSyncBatchNorm,
                 nn.InstanceNorm2d: AbsorbedInstanceNorm2d}
STOCK_NORM = {v: k for k, v in ABSORBED_NORM.items()}
STOCK_NORM.update({k: k for k in ABSORBED_NORM})
ACTS = (nn.ReLU, nn.LeakyReLU)
# the absorbed norms whose whole block (conv included) is one fused op (ops/block.py)
_BLOCK_NORMS = (AbsorbedBatchNorm2d, AbsorbedSyncBatchNorm)

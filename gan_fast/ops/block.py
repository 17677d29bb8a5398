"""How a fused conv -> BatchNorm2d -> activation block runs: one decision, one call.

``block_forward(cache, x, conv, bn, negative_slope)`` is what the drop-in modules
(``gan_fast.nn``) and ``gan_fast.fuse``'s fused convs call. The way to run is decided
once per (device, dtype, requested backend) and kept in `cache` (a dict owned by the
module; a module whose layers are replaced clears it, and ``forget(model)`` clears every
block's, e.g. after changing GAN_FAST_BACKEND or GAN_FAST_FUSED_CONV mid-process). The
choice depends on nothing else that can change between calls:

* ``cpu`` / ``cuda`` backend: one C++ op, ``gan_fast_C::conv_bn_act_eager``: the stock
  ATen convolution, the fused BatchNorm+activation with the running-statistics update,
  one C++ autograd node (csrc/conv_bn_act_autograd.cpp). Under ``auto`` on CUDA the
  Triton fused convolution is used instead where it was timed faster (conv_block.py);
* ``triton`` backend: the fused Triton convolution (``conv_block.fused_block``);
* otherwise (``reference``, or a conv the fused op does not cover: padding_mode other
  than 'zeros', string padding, autocast): the stock conv module, then the fused
  BatchNorm+activation op (``functional.bn_act``);
* an ``nn.SyncBatchNorm`` block (chosen once, like the rest): while it synchronises,
  the stock conv then ``ops.sync_bn_act`` (statistics over the process group); else one
  of the paths above. Ordinary blocks pay nothing for this.

Under torch.compile the custom ops of ``conv_block`` / ``bn_act`` are traced instead.
Module state that users change between calls (train/eval, momentum, eps, parameters,
buffers) is read on every call; only the choice of kernels is cached.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_fast import _checks, _formats, backends

def state(module: nn.Module, name: str):
    """``module.<name>`` for a parameter or buffer, read from the module's own dicts as
    nn.Module.__getattr__ does, without its Python cost (about 1 us a read, several per
    block call); anything else (a parametrization's property, a plain attribute) the
    normal way."""
    d = module.__dict__
    params = d.get("_parameters")
    if params is not None and name in params:
        return params[name]
    buffers = d.get("_buffers")
    if buffers is not None and name in buffers:
        return buffers[name]
    return getattr(module, name)


def cpp_takes(x: Tensor, conv) -> bool:
    """Whether the C++ block ops (conv_bn_act_eager, conv_in_act_eager, conv_act_eager) take
    this x and conv as they are: a 4-D x, zero padding given as numbers; else the stock
    modules run (with their own errors)."""
    return x.dim() == 4 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def conv_geometry(conv):
    """(stride, padding, output_padding, dilation) of `conv` as the C++ ops take them: as
    set by the constructor (tuples), or an int assigned later (stock's F.conv2d takes it)
    made a pair."""
    g = conv.stride, conv.padding, conv.output_padding, conv.dilation
    if type(g[0]) is tuple and type(g[1]) is tuple and type(g[2]) is tuple and type(g[3]) is tuple:
        return g
    return tuple(v if isinstance(v, (tuple, list)) else (v, v) for v in g)


def bn_mode(bn: nn.BatchNorm2d):
    """BatchNorm2d.forward's rule, the one definition of it in gan_fast:
    (batch_stats, running_mean, running_var, num_batches_tracked, momentum), where the
    running tensors are what the call reads (eval) or updates (training; None: no
    update) and momentum None means a cumulative average."""
    training, momentum = bn.training, bn.momentum
    if momentum is not None and type(momentum) is not float:
        momentum = _checks.momentum(momentum)
    running_mean, running_var = state(bn, "running_mean"), state(bn, "running_var")
    batch_stats = training or (running_mean is None and running_var is None)
    if training and bn.track_running_stats:
        nbt = state(bn, "num_batches_tracked")
        momentum = momentum if nbt is not None else (momentum or 0.0)
        return batch_stats, running_mean, running_var, nbt, momentum
    if batch_stats:  # no running statistics to update
        return True, None, None, None, 0.0
    return False, running_mean, running_var, None, 0.0


def is_sync(bn) -> bool:
    """Whether `bn` is a synchronised BatchNorm: an nn.SyncBatchNorm, or fuse's absorbed
    one (``gan_fast.fuse.AbsorbedSyncBatchNorm``)."""
    return isinstance(bn, nn.SyncBatchNorm) or getattr(type(bn), "_gan_fast_sync", False)


class _Paths(dict):
    """A module's cache of block_forward's choices; copies and pickles as empty (the
    choices hold closures, and a copy may run elsewhere)."""

    def __reduce__(self):
        return (_Paths, ())


def paths(module: nn.Module) -> dict:
    """`module`'s cache of block_forward's choices (created empty on first use)."""
    cache = module.__dict__.get("_gan_fast_paths")
    if cache is None:
        cache = module.__dict__["_gan_fast_paths"] = _Paths()
    return cache


def forget(module: nn.Module) -> None:
    """Drop the cached choice of kernels of `module`'s blocks (the next call decides again)."""
    for m in module.modules():
        cache = m.__dict__.get("_gan_fast_paths")
        if cache:
            cache.clear()


def _cpp_op():
    from gan_fast.kernels.cpp import eager_entry  # (loads gan_fast._C)
    return eager_entry("conv_bn_act_eager")


def _choose(x: Tensor, conv, bn):
    """The function that runs this block for tensors like x under the current backend."""
    from gan_fast.ops import conv_block
    if x.dtype not in _formats.DTYPES or bn.num_features != conv.out_channels:
        return _unfused  # the stock conv / BatchNorm raise their own errors
    device_type = x.device.type
    name = backends.resolve_name(device_type, x.dtype)
    run = _cpp(_cpp_op(), device_type) if name in ("cpu", "cuda") else _unfused
    mode = conv_block.fused_conv_mode(device_type)  # decided here, once
    if mode != "off":
        run = _with_fused_conv(run, mode)
    return _synced(run) if is_sync(bn) else run


def block_forward(cache: dict, x: Tensor, conv, bn, negative_slope: float) -> Tensor:
    """act(bn(conv(x))) with BatchNorm2d's semantics (running statistics updated in place
    in training). x: (N, C_in, H, W) -> (N, C_out, H', W'), NCHW or channels_last."""
    if torch.compiler.is_compiling():
        from gan_fast.ops.conv_block import fused_block
        if is_sync(bn):
            return _synced(_unfused)(x, conv, bn, negative_slope)
        out = fused_block(x, conv, bn, negative_slope)
        return out if out is not None else _unfused(x, conv, bn, negative_slope)
    key = (x.device, x.dtype, backends.generation) if isinstance(x, Tensor) else None
    run = cache.get(key)
    if run is None:
        if key is None or x.dim() != 4:
            return _unfused(x, conv, bn, negative_slope)  # the stock modules' errors
        run = cache[key] = _choose(x, conv, bn)
    return run(x, conv, bn, negative_slope)


def _stock_conv(x, conv):
    """The stock convolution (the class's own forward, never a fused subclass's)."""
    if isinstance(conv, nn.Module):
        return (nn.ConvTranspose2d.forward if conv.transposed else nn.Conv2d.forward)(conv, x)
    if conv.transposed:  # F.conv*, not torch.convolution: autocast casts these as stock
        return F.conv_transpose2d(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                  conv.output_padding, conv.groups, conv.dilation)
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                    conv.groups)


def _unfused(x, conv, bn, negative_slope):
    """The stock convolution, then the fused BatchNorm+activation op."""
    from gan_fast.nn import bn_act_from_module
    return bn_act_from_module(_stock_conv(x, conv), bn, negative_slope)


def _synced(otherwise):
    """For an nn.SyncBatchNorm block: where stock SyncBatchNorm synchronises (training in
    an initialised process group of more than one process), the stock convolution then
    the synchronised BatchNorm+activation (gan_fast.ops.sync_bn_act); else `otherwise`,
    the block's ordinary path (stock falls back to plain BatchNorm there too)."""
    from gan_fast.ops import sync_bn_act

    def run(x, conv, bn, negative_slope):
        group = sync_bn_act.group_of(bn)
        if group is None:
            return otherwise(x, conv, bn, negative_slope)
        return sync_bn_act.apply(_stock_conv(x, conv), bn, negative_slope, group)
    return run


class ConvSpec:
    """What block_forward reads of a conv module, for the functional API's tensors
    (stride, padding, output_padding, dilation: pairs of ints)."""
    padding_mode = "zeros"
    _forward_hooks = _forward_pre_hooks = {}

    def __init__(self, weight, bias, stride, padding, output_padding, dilation, groups,
                 transposed):
        self.weight, self.bias, self.groups, self.transposed = weight, bias, groups, transposed
        self.stride, self.padding = stride, padding
        self.output_padding, self.dilation = output_padding, dilation
        shape = weight.shape
        self.in_channels = shape[0] if transposed else shape[1] * groups
        self.out_channels = shape[1] * groups if transposed else shape[0]


class BatchNormSpec:
    """What bn_mode and block_forward read of a BatchNorm2d, for the functional API:
    training means batch statistics, with the running ones (if given) updated."""
    _forward_hooks = _forward_pre_hooks = {}

    def __init__(self, running_mean, running_var, weight, bias, training, momentum, eps,
                 num_batches_tracked, num_features):
        self.running_mean, self.running_var = running_mean, running_var
        self.weight, self.bias, self.training = weight, bias, training
        self.momentum, self.eps, self.num_batches_tracked = momentum, eps, num_batches_tracked
        self.track_running_stats = running_mean is not None
        self.num_features = num_features


def _cpp(op, device_type: str):
    def run(x, conv, bn, negative_slope):
        if not cpp_takes(x, conv) or torch.is_autocast_enabled(device_type):
            return _unfused(x, conv, bn, negative_slope)  # (and the stock modules' errors)
        batch_stats, running_mean, running_var, nbt, momentum = bn_mode(bn)
        return op(x, state(conv, "weight"), state(conv, "bias"), state(bn, "weight"), state(bn, "bias"),
                  running_mean, running_var, nbt, *conv_geometry(conv), conv.groups,
                  conv.transposed, batch_stats, momentum, bn.eps, negative_slope)
    return run


def _with_fused_conv(otherwise, mode: str):
    """The Triton fused conv where it applies and (mode 'measure': auto's timing per block
    configuration) is chosen, else `otherwise`."""
    from gan_fast.ops.conv_block import fused_block
    decisions = {}  # auto's measured choices for this block's calls

    def run(x, conv, bn, negative_slope):
        out = fused_block(x, conv, bn, negative_slope, mode=mode, decisions=decisions)
        return out if out is not None else otherwise(x, conv, bn, negative_slope)
    return run

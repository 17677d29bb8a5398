"""How a fused conv -> InstanceNorm2d | no norm -> activation chain runs: one decision, one call.

``chain_forward(cache, x, conv, norm, negative_slope)`` is what ``gan_fast.fuse``'s fused
convs call when their norm is an InstanceNorm2d or missing (BatchNorm blocks:
``ops.block``). The way to run is decided once per (device, dtype, backend generation)
and kept in the module's `cache`, as ``block_forward`` does:

* the Triton fused conv where it applies and is chosen (``conv_block.fused_norm_act``:
  always on ``triton``, timed under ``auto`` on CUDA);
* ``cpu`` / ``cuda`` backend: one C++ op (csrc/conv_chain.cpp), the stock ATen convolution
  then InstanceNorm + activation on the fused bn_act ops (``conv_in_act_eager``) or the
  activation in place (``conv_act_eager``): one crossing from Python;
* otherwise (``reference``; or what those ops do not take: padding_mode other than
  'zeros', string padding, an unbatched input; with an InstanceNorm also autocast, an empty
  input, an eps or momentum that is not a positive float): the stock conv module, then
  ``in_act.from_module`` / ``conv_act.stock``, which also give stock's errors.

Under torch.compile the fused conv's custom ops or the Python composition are traced.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gan_fast import backends
from gan_fast.ops import conv_act, in_act
from gan_fast.ops.block import _stock_conv, conv_geometry, cpp_takes, state


def after_stock_conv(y: Tensor, norm, negative_slope: float) -> Tensor:
    """The InstanceNorm2d `norm` (or none) + activation in Python on y, the stock conv's
    fresh output (every backend, every input; with no norm the activation overwrites y)."""
    if norm is None:
        return conv_act.stock(y, None, negative_slope)
    return in_act.from_module(y, norm, negative_slope)


def stock_then_norm_act(x: Tensor, conv, norm, negative_slope: float) -> Tensor:
    """The stock conv, then ``after_stock_conv``."""
    return after_stock_conv(_stock_conv(x, conv), norm, negative_slope)


def chain_forward(cache: dict, x: Tensor, conv, norm, negative_slope: float) -> Tensor:
    """act(norm(conv(x))) with InstanceNorm2d's semantics (running statistics, if tracked,
    updated in place in training) or no norm (None). x: (N, C_in, H, W) (or unbatched
    (C_in, H, W)) -> (N, C_out, H', W'); with an InstanceNorm, NCHW-contiguous as stock."""
    if torch.compiler.is_compiling():
        return _with_fused_conv(stock_then_norm_act)(x, conv, norm, negative_slope)
    # (its own keys: a conv re-fused into a BatchNorm block uses the same cache)
    key = ("chain", x.device, x.dtype, backends.generation) if isinstance(x, Tensor) else None
    run = cache.get(key)
    if run is None:
        if key is None:
            return stock_then_norm_act(x, conv, norm, negative_slope)  # stock's errors
        run = cache[key] = _choose(x, norm)
    return run(x, conv, norm, negative_slope)


def _choose(x: Tensor, norm):
    """The function that runs this chain for tensors like x under the current backend."""
    from gan_fast.ops.conv_block import fused_conv_mode
    device_type = x.device.type
    run = stock_then_norm_act
    if backends.resolve_name(device_type, x.dtype) in ("cpu", "cuda"):
        from gan_fast.kernels.cpp import eager_entry  # (loads gan_fast._C)
        run = _cpp_act(eager_entry("conv_act_eager")) if norm is None else \
            _cpp_in(eager_entry("conv_in_act_eager"), device_type)
    if fused_conv_mode(device_type) != "off":
        run = _with_fused_conv(run)
    return run


def _cpp_act(op):
    # (under autocast the op's at::conv2d casts as the stock conv's does, and the activation
    # runs on what it gives, as in stock)
    def run(x, conv, norm, negative_slope):
        if not cpp_takes(x, conv):
            return stock_then_norm_act(x, conv, norm, negative_slope)
        return op(x, state(conv, "weight"), state(conv, "bias"), *conv_geometry(conv),
                  conv.groups, conv.transposed, negative_slope)
    return run


def _cpp_in(op, device_type: str):
    def run(x, conv, norm, negative_slope):
        use_input_stats, momentum = in_act.module_mode(norm)
        eps = norm.eps
        running_mean = state(norm, "running_mean")
        if (not cpp_takes(x, conv) or x.numel() == 0
                or not in_act.takes_as_is(use_input_stats, momentum, eps, running_mean)
                or torch.is_autocast_enabled(device_type)):
            return stock_then_norm_act(x, conv, norm, negative_slope)
        return op(x, state(conv, "weight"), state(conv, "bias"), state(norm, "weight"),
                  state(norm, "bias"), running_mean, state(norm, "running_var"),
                  *conv_geometry(conv), conv.groups, conv.transposed, use_input_stats, momentum,
                  eps, negative_slope)
    return run


def _with_fused_conv(otherwise):
    """The Triton fused conv where it applies and is chosen, else `otherwise`."""
    from gan_fast.ops.block import paths
    from gan_fast.ops.conv_block import fused_norm_act

    def run(x, conv, norm, negative_slope):
        out = fused_norm_act(paths(conv), x, conv, norm, negative_slope)
        return out if out is not None else otherwise(x, conv, norm, negative_slope)
    return run

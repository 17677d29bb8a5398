"""Custom op for the norm-free fused block conv (Conv2d | ConvTranspose2d) + bias ->
LeakyReLU / ReLU (``gan_fast::conv_act``), on the Triton backend only.

``conv_act(x, conv_weight, conv_bias, transposed, stride, padding, output_padding, slope)
-> out``: one Triton kernel, the activation in the convolution's epilogue (Triton
``conv_act``). Autograd saves x, the weight and the activated output only (no
pre-activation tensor): for slope >= 0 the activation's derivative is read off out's
sign, ``out > 0 ? 1 : slope``, which is PyTorch's ``y > 0 ? 1 : slope`` (y > 0 exactly
when out > 0); the backward is then ``aten.convolution_backward``. A negative slope is
left to the stock layers (``applies``).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_fast._layout import dense as _dense
from gan_fast.ops.conv_bn_act import _fake_conv_out, _triton, eager_function
from gan_fast.ops.double_backward import _grads


def _fwd(x, conv_weight, conv_bias, transposed, stride, padding, output_padding,
         negative_slope):
    tconv, _ = _triton(x)
    return tconv.conv_act(_dense(x), conv_weight, conv_bias, negative_slope, stride, padding,
                          output_padding, transposed)


@torch.library.custom_op("gan_fast::conv_act", mutates_args=())
def conv_act(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], transposed: bool,
             stride: List[int], padding: List[int], output_padding: List[int],
             negative_slope: float) -> Tensor:
    return _fwd(x, conv_weight, conv_bias, transposed, stride, padding, output_padding,
                negative_slope)


@conv_act.register_fake
def _(x, conv_weight, conv_bias, transposed, stride, padding, output_padding, negative_slope):
    return _fake_conv_out(x, conv_weight, transposed, stride, padding, output_padding)


def _setup(ctx, inputs, output):
    x, w, b, transposed, stride, padding, output_padding, negative_slope = inputs
    ctx.save_for_backward(x, w, b, output)
    ctx.transposed, ctx.stride, ctx.padding = transposed, stride, padding
    ctx.output_padding, ctx.negative_slope = output_padding, negative_slope


def _backward(ctx, grad_out):
    x, w, b, out = ctx.saved_tensors
    need = ctx.needs_input_grad
    if torch.is_grad_enabled():  # create_graph=True: differentiable, from the stock ops
        with torch.enable_grad():
            y = torch.convolution(x, w, b, ctx.stride, ctx.padding, [1, 1], ctx.transposed,
                                  ctx.output_padding, 1)
            act = F.leaky_relu(y, ctx.negative_slope)
            return (*_grads(act, grad_out, [x, w, b], need[:3]), *(None,) * 5)
    slope = ctx.negative_slope
    # leaky_relu's backward (grad * slope), or relu's (threshold_backward: 0) for slope 0
    gy = torch.where(out > 0, grad_out, grad_out * slope if slope != 0.0 else 0.0)
    gx, gw, gb = torch.ops.aten.convolution_backward(
        gy, x, w, [out.shape[1]] if b is not None else None, ctx.stride, ctx.padding, [1, 1],
        ctx.transposed, ctx.output_padding, 1, [need[0], need[1], b is not None and need[2]])
    return (gx if need[0] else None, gw if need[1] else None,
            gb if b is not None and need[2] else None, None, None, None, None, None)


conv_act.register_autograd(_backward, setup_context=_setup)


Eager = eager_function("Eager", _fwd, _setup, _backward)


# ------------------------------------------------------------------ conv_block's hooks
def applies(negative_slope: float) -> bool:
    """The saved output determines the derivative only for a slope >= 0."""
    return negative_slope >= 0.0


def run_fused(x: Tensor, conv, norm, negative_slope: float, geometry) -> Tensor:
    """act(conv(x) + bias) through the fused op (`norm` is None)."""
    run = conv_act if torch.compiler.is_compiling() else Eager.apply
    return run(x, conv.weight, conv.bias, *geometry, negative_slope)


def stock(y: Tensor, norm, negative_slope: float) -> Tensor:
    """What runs after the stock conv when the fused conv does not (fuse's _norm_act)."""
    return F.leaky_relu(y, negative_slope, inplace=True)

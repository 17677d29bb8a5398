"""Custom op for the norm-free fused block conv (Conv2d | ConvTranspose2d) + bias ->
LeakyReLU / ReLU (``gan_fast::conv_act``), on the Triton backend only.

``conv_act(x, conv_weight, conv_bias, transposed, stride, padding, output_padding, slope)
-> out``: one Triton kernel, the activation in the convolution's epilogue (Triton
``conv_act``). Autograd saves x, the weight and the activated output only (no
pre-activation tensor): for slope >= 0 the activation's derivative is read off out's
sign, ``out > 0 ? 1 : slope``, which is PyTorch's ``y > 0 ? 1 : slope`` (y > 0 exactly
when out > 0). The backward, ``gan_fast::conv_act_backward`` (Triton
``act_conv_backward``), rebuilds dy = grad * that inside the dgrad and wgrad GEMMs'
operand loads (never written) and sums it for the bias. A negative slope is left to
the stock layers (``applies``).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_fast._formats import memory_format
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


def _backward_kernels(grad_out, x, conv_weight, out, transposed, stride, padding,
                      negative_slope, has_bias, needs_input_grad):
    """Triton act_conv_backward: dy = out > 0 ? grad : grad*slope rebuilt inside the dgrad
    and wgrad GEMMs (None for what is not computed)."""
    tconv, _ = _triton(x)
    out = _dense(out)
    return tconv.act_conv_backward(grad_out.contiguous(memory_format=memory_format(out)),
                                   _dense(x), conv_weight, out, negative_slope, stride, padding,
                                   transposed, has_bias, needs_input_grad)


@torch.library.custom_op("gan_fast::conv_act_backward", mutates_args=())
def conv_act_backward(grad_out: Tensor, x: Tensor, conv_weight: Tensor, out: Tensor,
                      transposed: bool, stride: List[int], padding: List[int],
                      negative_slope: float, has_bias: bool, needs_input_grad: bool
                      ) -> tuple[Tensor, Tensor, Tensor]:
    gx, gw, gb = _backward_kernels(grad_out, x, conv_weight, out, transposed, stride, padding,
                                   negative_slope, has_bias, needs_input_grad)
    # outputs must not alias each other: views of the kernels' workspaces are copied
    own = lambda t: x.new_empty((0,)) if t is None else (t.clone() if t._base is not None else t)  # noqa: E731
    return own(gx), own(gw), own(gb)


@conv_act_backward.register_fake
def _(grad_out, x, conv_weight, out, transposed, stride, padding, negative_slope, has_bias,
      needs_input_grad):
    x = _dense(x)
    gx = (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x))
          if needs_input_grad else x.new_empty((0,)))
    gb = x.new_empty((out.shape[1],) if has_bias else (0,), dtype=conv_weight.dtype)
    return gx, torch.empty_like(conv_weight, memory_format=torch.contiguous_format), gb


def _backward(ctx, grad_out, kernels=None):
    """`kernels`: conv_act_backward (the custom op, traced under torch.compile) or, from the
    eager Function, _backward_kernels directly."""
    x, w, b, out = ctx.saved_tensors
    need = ctx.needs_input_grad
    if torch.is_grad_enabled():  # create_graph=True: differentiable, from the stock ops
        with torch.enable_grad():
            y = torch.convolution(x, w, b, ctx.stride, ctx.padding, [1, 1], ctx.transposed,
                                  ctx.output_padding, 1)
            act = F.leaky_relu(y, ctx.negative_slope)
            return (*_grads(act, grad_out, [x, w, b], need[:3]), *(None,) * 5)
    gx, gw, gb = (kernels or conv_act_backward)(
        grad_out, x, w, out, ctx.transposed, ctx.stride, ctx.padding, ctx.negative_slope,
        b is not None, need[0])
    return (gx if need[0] else None, gw if need[1] else None,
            gb if b is not None and need[2] else None, None, None, None, None, None)


conv_act.register_autograd(_backward, setup_context=_setup)


Eager = eager_function("Eager", _fwd, _setup, _backward, kernels=_backward_kernels)


# ------------------------------------------------------------------ conv_block's hooks
def applies(negative_slope: float) -> bool:
    """The saved output determines the derivative only for a slope >= 0."""
    return negative_slope >= 0.0


def run_fused(x: Tensor, conv, norm, negative_slope: float, geometry) -> Tensor:
    """act(conv(x) + bias) through the fused op (`norm` is None)."""
    run = conv_act if torch.compiler.is_compiling() else Eager.apply
    return run(x, conv.weight, conv.bias, *geometry, negative_slope)


def stock(y: Tensor, norm, negative_slope: float) -> Tensor:
    """What runs after the stock conv when the fused conv does not (fuse's _norm_act): the
    activation in place on the conv's fresh output (a negative slope cannot be in place)."""
    if negative_slope == 0.0:
        return F.relu_(y)
    return F.leaky_relu(y, negative_slope, inplace=negative_slope >= 0.0)

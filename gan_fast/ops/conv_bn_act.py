"""Custom ops for the fused block conv (Conv2d | ConvTranspose2d) -> BatchNorm2d -> LeakyReLU
(``gan_fast::conv_bn_act_*``), on the Triton backend only.

* ``conv_bn_act_train(x, conv_weight, conv_bias, bn_weight, bn_bias, transposed, stride,
  padding, output_padding, eps, slope) -> (out, y, mean, var)``: the conv writes y and the
  per-channel batch statistics in its epilogue (Triton ``conv*_stats``), then one
  elementwise pass applies BN + activation. y (the saved pre-BN conv output) and
  mean / biased var (fp32 (C_out,)) are non-differentiable outputs; mean/var feed the
  running statistics. Autograd saves x, the conv weight, y and the statistics (never the
  activation output) and calls ``conv_bn_act_backward``.
* ``conv_bn_act_backward(...) -> (grad_x, grad_w, grad_conv_bias, grad_bn_w, grad_bn_b)``:
  Triton ``bn_act_conv_backward``: one reduction over (grad_out, y), then dgrad and
  wgrad GEMMs that rebuild dL/dy in their operand loads. Gradients that are not
  wanted (or whose input was None) come back as empty (0,) tensors.
* ``conv_bn_act_eval(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
  running_var, transposed, stride, padding, output_padding, eps, slope) -> out``: BN
  folded into the conv, activation in the epilogue: one Triton kernel. Its backward
  recomputes y with the stock convolution and uses ``gan_fast::bn_act_backward`` and
  ``aten.convolution_backward`` (correct first; not the fast path).

The modules reach these ops through ``gan_fast.ops.conv_block.fused_block``, which
also decides (``auto``: by timing) whether the fused conv runs at all.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from gan_fast import backends
from gan_fast._formats import after_conv, conv_memory_format, memory_format
from gan_fast._layout import conv_out_hw as _out_hw, dense as _dense
from gan_fast.ops import double_backward


# ----------------------------------------------------------------------------- helpers
def _c_out(w_shape, transposed):
    return w_shape[1] if transposed else w_shape[0]


def _fake_conv_out(x, conv_weight, transposed, stride, padding, output_padding, block=False):
    """The conv output y as the Triton kernels allocate it (stock's layout, gan_fast._formats);
    `block`: the block's output instead (BN + activation of y)."""
    x = _dense(x)
    oh, ow = _out_hw(x.shape, conv_weight.shape, transposed, stride, padding, output_padding)
    shape = (x.shape[0], _c_out(conv_weight.shape, transposed), oh, ow)
    fmt = conv_memory_format(x, conv_weight)
    return torch.empty(shape, dtype=x.dtype, device=x.device,
                       memory_format=after_conv(shape, fmt) if block else fmt)


def _triton(x: Tensor):
    reason = backends.why_unavailable("triton", x.device.type)
    if reason is not None:
        raise backends.BackendUnavailable(f"gan_fast fused conv needs the triton backend: {reason}")
    from gan_fast.kernels.triton import bn_act as tbn
    from gan_fast.kernels.triton import conv as tconv
    return tconv, tbn


def _empty(x: Tensor) -> Tensor:
    return x.new_empty((0,))


# ------------------------------------------------------------------------ training ops
def _train_fwd(x, conv_weight, conv_bias, bn_weight, bn_bias, transposed, stride, padding,
               output_padding, eps, negative_slope):
    """The kernels of conv_bn_act_train (the custom op and the eager Function)."""
    tconv, tbn = _triton(x)
    x = _dense(x)
    if transposed:
        y, mean, var = tconv.conv_transpose2d_stats(x, conv_weight, conv_bias, stride, padding,
                                                    output_padding)
    else:
        y, mean, var = tconv.conv2d_stats(x, conv_weight, conv_bias, stride, padding)
    out = tbn.bn_act_eval_fwd(y, bn_weight, bn_bias, mean, var, eps, negative_slope)
    return out, y, mean, var


@torch.library.custom_op("gan_fast::conv_bn_act_train", mutates_args=())
def conv_bn_act_train(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                      bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], transposed: bool,
                      stride: List[int], padding: List[int], output_padding: List[int],
                      eps: float, negative_slope: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _train_fwd(x, conv_weight, conv_bias, bn_weight, bn_bias, transposed, stride,
                      padding, output_padding, eps, negative_slope)


@conv_bn_act_train.register_fake
def _(x, conv_weight, conv_bias, bn_weight, bn_bias, transposed, stride, padding,
      output_padding, eps, negative_slope):
    y = _fake_conv_out(x, conv_weight, transposed, stride, padding, output_padding)
    c = y.shape[1]
    stat = lambda: x.new_empty((c,), dtype=torch.float32)  # noqa: E731
    return torch.empty_like(y, memory_format=memory_format(y)), y, stat(), stat()


def _backward_kernels(grad_out, x, conv_weight, y, mean, var, bn_weight, bn_bias, transposed,
                      stride, padding, eps, negative_slope, has_conv_bias, needs_input_grad):
    """The kernels of conv_bn_act_backward: (grad_x, grad_w, grad_conv_bias, grad_bn_w,
    grad_bn_b), None where not computed (the eager Function takes them as they are)."""
    tconv, _ = _triton(x)
    x, y = _dense(x), _dense(y)
    grad_out = grad_out.contiguous(memory_format=memory_format(y))  # the output's layout
    return tconv.bn_act_conv_backward(
        grad_out, x, conv_weight, y, mean, var, bn_weight, bn_bias, eps, negative_slope,
        stride, padding, transposed=transposed, has_conv_bias=has_conv_bias,
        needs_input_grad=needs_input_grad)


@torch.library.custom_op("gan_fast::conv_bn_act_backward", mutates_args=())
def conv_bn_act_backward(grad_out: Tensor, x: Tensor, conv_weight: Tensor, y: Tensor,
                         mean: Tensor, var: Tensor, bn_weight: Optional[Tensor],
                         bn_bias: Optional[Tensor], transposed: bool, stride: List[int],
                         padding: List[int], eps: float, negative_slope: float,
                         has_conv_bias: bool, needs_input_grad: bool
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    gx, gw, gb, gbw, gbb = _backward_kernels(
        grad_out, x, conv_weight, y, mean, var, bn_weight, bn_bias, transposed, stride, padding,
        eps, negative_slope, has_conv_bias, needs_input_grad)
    # The kernels may return views of one workspace (e.g. rows of a (3, C) buffer);
    # custom-op outputs must not alias each other: such views are copied (O(C) or O(weight)).
    own = lambda t: _empty(x) if t is None else (t.clone() if t._base is not None else t)  # noqa: E731
    return own(gx), own(gw), own(gb), own(gbw), own(gbb)


@conv_bn_act_backward.register_fake
def _(grad_out, x, conv_weight, y, mean, var, bn_weight, bn_bias, transposed, stride, padding,
      eps, negative_slope, has_conv_bias, needs_input_grad):
    x = _dense(x)
    gx = (torch.empty(x.shape, dtype=x.dtype, device=x.device,
                      memory_format=memory_format(x)) if needs_input_grad else _empty(x))
    gw = torch.empty(conv_weight.shape, dtype=conv_weight.dtype, device=conv_weight.device)
    c = y.shape[1]
    gb = x.new_empty((c,), dtype=conv_weight.dtype) if has_conv_bias else _empty(x)
    if bn_weight is None:
        return gx, gw, gb, _empty(x), _empty(x)
    return gx, gw, gb, torch.empty_like(bn_weight), torch.empty_like(bn_bias)


def _setup_train(ctx, inputs, output):
    (x, conv_weight, conv_bias, bn_weight, bn_bias, transposed, stride, padding,
     output_padding, eps, negative_slope) = inputs
    _, y, mean, var = output
    ctx.save_for_backward(x, conv_weight, y, mean, var, bn_weight, bn_bias, conv_bias)
    ctx.has_conv_bias = conv_bias is not None
    ctx.transposed, ctx.stride, ctx.padding = transposed, stride, padding
    ctx.output_padding = output_padding
    ctx.eps, ctx.negative_slope = eps, negative_slope
    ctx.mark_non_differentiable(y, mean, var)


def _graph_backward(ctx, grad_out, x, w, b, bn_w, bn_b, mean, var, batch_stats):
    """The backward under create_graph=True: differentiable (gan_fast.ops.double_backward)."""
    return tuple(double_backward.conv_bn_act_grads(
        grad_out, x, w, b, bn_w, bn_b, mean, var, ctx.stride, ctx.padding, ctx.output_padding,
        [1, 1], 1, ctx.transposed, batch_stats, ctx.eps, ctx.negative_slope,
        ctx.needs_input_grad[:5]))


def _backward_train(ctx, grad_out, _grad_y, _grad_mean, _grad_var, kernels=None):
    """The training backward; `kernels`: conv_bn_act_backward (the custom op, traced under
    torch.compile) or, from the eager Function, _backward_kernels directly."""
    x, conv_weight, y, mean, var, bn_weight, bn_bias, conv_bias = ctx.saved_tensors
    if torch.is_grad_enabled():
        return (*_graph_backward(ctx, grad_out, x, conv_weight, conv_bias, bn_weight, bn_bias,
                                 mean, var, True), None, None, None, None, None, None)
    need = ctx.needs_input_grad
    gx, gw, gb, gbw, gbb = (kernels or conv_bn_act_backward)(
        grad_out, x, conv_weight, y, mean, var, bn_weight, bn_bias, ctx.transposed, ctx.stride,
        ctx.padding, ctx.eps, ctx.negative_slope, ctx.has_conv_bias, need[0])
    affine = bn_weight is not None
    return (gx if need[0] else None, gw if need[1] else None,
            gb if ctx.has_conv_bias and need[2] else None,
            gbw if affine and need[3] else None, gbb if affine and need[4] else None,
            None, None, None, None, None, None)


conv_bn_act_train.register_autograd(_backward_train, setup_context=_setup_train)


def eager_function(name: str, forward, setup_context, backward, **backward_kwargs):
    """Eager mode: a custom op's kernels (`forward`), `setup_context` and `backward` in one
    autograd.Function, without torch.library's Python dispatch (tens of microseconds a call
    at DCGAN sizes); `backward_kwargs` go to `backward` (the kernels to call directly)."""
    def fwd(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    def bwd(ctx, *grads):
        return backward(ctx, *grads, **backward_kwargs)
    return type(name, (torch.autograd.Function,),
                {"forward": staticmethod(fwd), "backward": staticmethod(bwd)})


TrainEager = eager_function("TrainEager", _train_fwd, _setup_train, _backward_train,
                            kernels=_backward_kernels)


# ---------------------------------------------------------------------------- eval op
@torch.library.custom_op("gan_fast::conv_bn_act_eval", mutates_args=())
def conv_bn_act_eval(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                     bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                     running_mean: Tensor, running_var: Tensor, transposed: bool,
                     stride: List[int], padding: List[int], output_padding: List[int],
                     eps: float, negative_slope: float) -> Tensor:
    tconv, _ = _triton(x)
    x = _dense(x)
    if transposed:
        return tconv.conv_transpose2d_bn_act_eval(
            x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, eps,
            negative_slope, stride, padding, output_padding)
    return tconv.conv2d_bn_act_eval(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                                    running_var, eps, negative_slope, stride, padding)


@conv_bn_act_eval.register_fake
def _(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, transposed,
      stride, padding, output_padding, eps, negative_slope):
    return _fake_conv_out(x, conv_weight, transposed, stride, padding, output_padding,
                          block=True)


def _setup_eval(ctx, inputs, output):
    (x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, transposed,
     stride, padding, output_padding, eps, negative_slope) = inputs
    ctx.save_for_backward(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var)
    ctx.transposed, ctx.stride, ctx.padding = transposed, stride, padding
    ctx.output_padding, ctx.eps, ctx.negative_slope = output_padding, eps, negative_slope


def _backward_eval(ctx, grad_out):
    """Recompute y = conv(x) (stock), BN+activation backward with the running statistics
    as constants (gan_fast::bn_act_backward), then the stock convolution backward."""
    x, w, b, bn_w, bn_b, running_mean, running_var = ctx.saved_tensors
    if torch.is_grad_enabled():
        return (*_graph_backward(ctx, grad_out, x, w, b, bn_w, bn_b, running_mean, running_var,
                                 False), None, None, None, None, None, None, None, None)
    need = ctx.needs_input_grad
    dilation = [1, 1]
    y = torch.ops.aten.convolution(x, w, b, ctx.stride, ctx.padding, dilation, ctx.transposed,
                                   ctx.output_padding, 1)
    gy, gbw, gbb = torch.ops.gan_fast.bn_act_backward(
        grad_out, y, bn_w, bn_b, running_mean, running_var, ctx.eps, ctx.negative_slope, False)
    gx = gw = gb = None
    if need[0] or need[1] or need[2]:
        gx, gw, gb = torch.ops.aten.convolution_backward(
            gy, x, w, [w.shape[1] if ctx.transposed else w.shape[0]] if b is not None else None,
            ctx.stride, ctx.padding, dilation, ctx.transposed, ctx.output_padding, 1,
            [need[0], need[1], b is not None and need[2]])
    affine = bn_w is not None
    return (gx if need[0] else None, gw if need[1] else None,
            gb if b is not None and need[2] else None,
            gbw if affine and need[3] else None, gbb if affine and need[4] else None,
            None, None, None, None, None, None, None, None)


conv_bn_act_eval.register_autograd(_backward_eval, setup_context=_setup_eval)

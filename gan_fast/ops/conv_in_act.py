"""Custom ops for the fused block conv (Conv2d | ConvTranspose2d) -> InstanceNorm2d ->
LeakyReLU (``gan_fast::conv_in_act_*``), on the Triton backend only.

* ``conv_in_act_train(x, conv_weight, conv_bias, in_weight, in_bias, transposed, stride,
  padding, output_padding, eps, slope) -> (out, y, mean, var)``: the conv writes y
  (NCHW-contiguous) and the per-(image, channel) statistics in its epilogue (Triton
  ``conv_in_stats``), then the bn_act apply kernel normalises the (1, N*C, OH, OW) view
  of y (out is that view's shape: the caller views it as (N, C, OH, OW)) with them and the affine parameters repeated N times (what stock
  ``at::instance_norm`` does). y and mean / biased var (fp32 (N*C_out,)) are
  non-differentiable outputs; mean/var feed the running statistics. Autograd saves x,
  the conv weight, y and the statistics; its backward is ``gan_fast::bn_act_backward``
  on the same view (batch statistics), then ``aten.convolution_backward``.
* ``conv_in_act_eval(...)``: InstanceNorm with running statistics (eval mode and
  track_running_stats) is BatchNorm's eval map: folded into the conv with the activation
  in the epilogue, one Triton kernel (``conv_bn_act_eval``'s, output NCHW as stock's);
  its backward is conv_bn_act_eval's.

``run_fused`` is what ``gan_fast.ops.conv_block`` runs once it has chosen the fused conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_fast._layout import dense as _dense
from gan_fast.ops import bn_act as ops_bn_act
from gan_fast.ops.bn_act import update_running_stats
from gan_fast.ops.conv_bn_act import (_backward_eval, _fake_conv_out, _setup_eval, _setup_train,
                                      _triton, eager_function)
from gan_fast.ops.double_backward import _grads
from gan_fast.ops.in_act import _affine, from_module as stock, module_mode  # noqa: F401  (stock:
#                                 what runs after the stock conv when the fused conv does not)


def _planes(t: Tensor, shape) -> Tensor:
    """(N, C, H, W) -> the (1, N*C, H, W) view instance norm works on (t made NCHW first)."""
    n, c, h, w = shape
    return t.contiguous().view(1, n * c, h, w)


def _train_fwd(x, conv_weight, conv_bias, in_weight, in_bias, transposed, stride, padding,
               output_padding, eps, negative_slope):
    """The kernels of conv_in_act_train (the custom op and the eager Function)."""
    tconv, tbn = _triton(x)
    y, mean, var = tconv.conv_in_stats(_dense(x), conv_weight, conv_bias, stride, padding,
                                       output_padding, transposed)
    w_n, b_n = _affine(in_weight, in_bias, y.shape[0])
    out = tbn.bn_act_eval_fwd(_planes(y, y.shape), w_n, b_n, mean, var, eps, negative_slope)
    return out, y, mean, var


_ARGS = ("Tensor x, Tensor conv_weight, Tensor? conv_bias, Tensor? in_weight, Tensor? in_bias, "
         "{}bool transposed, int[] stride, int[] padding, int[] output_padding, float eps, "
         "float negative_slope")
conv_in_act_train = torch.library.custom_op(
    "gan_fast::conv_in_act_train", _train_fwd, mutates_args=(),
    schema=f"({_ARGS.format('')}) -> (Tensor, Tensor, Tensor, Tensor)")


@conv_in_act_train.register_fake
def _(x, conv_weight, conv_bias, in_weight, in_bias, transposed, stride, padding,
      output_padding, eps, negative_slope):
    y = _fake_conv_out(x, conv_weight, transposed, stride, padding, output_padding).contiguous()
    stat = lambda: x.new_empty((y.shape[0] * y.shape[1],), dtype=torch.float32)  # noqa: E731
    return y.new_empty((1, y.shape[0] * y.shape[1], *y.shape[2:])), y, stat(), stat()


def _backward_train(ctx, grad_out, _grad_y, _grad_mean, _grad_var, run_bn_backward=None):
    """bn_act's backward on the planes view (per-(n, c) batch statistics), then the stock
    convolution backward; `run_bn_backward`: the custom op (torch.compile) by default, the
    backend call from the eager Function."""
    x, w, y, mean, var, in_w, in_b, conv_b = ctx.saved_tensors
    need = ctx.needs_input_grad
    if torch.is_grad_enabled():  # create_graph=True: differentiable, from the stock ops
        with torch.enable_grad():
            y = torch.convolution(x, w, conv_b, ctx.stride, ctx.padding, [1, 1], ctx.transposed,
                                  ctx.output_padding, 1)
            out = F.leaky_relu(F.instance_norm(y, None, None, in_w, in_b, True, 0.0, ctx.eps),
                               ctx.negative_slope)
            return (*_grads(out, grad_out.view(out.shape), [x, w, conv_b, in_w, in_b], need[:5]),
                    *(None,) * 6)
    n, c = y.shape[:2]
    f32 = lambda t: None if t is None else t.float()  # noqa: E731  (per-plane grads in fp32,
    w_n, b_n = _affine(f32(in_w), f32(in_b), n)        # summed over N, rounded once)
    gy, gw_n, gb_n = (run_bn_backward or torch.ops.gan_fast.bn_act_backward)(
        _planes(grad_out, y.shape), _planes(y, y.shape), w_n, b_n, mean, var, ctx.eps,
        ctx.negative_slope, True)
    gx = gw = gb = None
    if need[0] or need[1] or need[2]:
        gx, gw, gb = torch.ops.aten.convolution_backward(
            gy.view(y.shape), x, w, [c] if conv_b is not None else None, ctx.stride,
            ctx.padding, [1, 1], ctx.transposed, ctx.output_padding, 1,
            [need[0], need[1], conv_b is not None and need[2]])
    affine = in_w is not None
    return (gx if need[0] else None, gw if need[1] else None,
            gb if conv_b is not None and need[2] else None,
            gw_n.view(n, c).sum(0).to(in_w.dtype) if affine and need[3] else None,
            gb_n.view(n, c).sum(0).to(in_b.dtype) if affine and need[4] else None,
            None, None, None, None, None, None)


conv_in_act_train.register_autograd(_backward_train, setup_context=_setup_train)


TrainEager = eager_function("TrainEager", _train_fwd, _setup_train, _backward_train,
                            run_bn_backward=ops_bn_act._run_backward)


def _eval_fwd(x, conv_weight, conv_bias, in_weight, in_bias, running_mean, running_var,
              transposed, stride, padding, output_padding, eps, negative_slope):
    tconv, _ = _triton(x)
    return tconv._conv_bn_act_eval(_dense(x), conv_weight, conv_bias, in_weight, in_bias,
                                   running_mean, running_var, eps, negative_slope, stride,
                                   padding, output_padding, transposed, nchw=True)


conv_in_act_eval = torch.library.custom_op(
    "gan_fast::conv_in_act_eval", _eval_fwd, mutates_args=(),
    schema=f"({_ARGS.format('Tensor running_mean, Tensor running_var, ')}) -> Tensor")


@conv_in_act_eval.register_fake
def _(x, conv_weight, conv_bias, in_weight, in_bias, running_mean, running_var, transposed,
      stride, padding, output_padding, eps, negative_slope):
    return _fake_conv_out(x, conv_weight, transposed, stride, padding, output_padding).contiguous()


conv_in_act_eval.register_autograd(_backward_eval, setup_context=_setup_eval)


# ------------------------------------------------------------------ conv_block's hooks
@torch.no_grad()
def update_in_running_stats(running_mean, running_var, mean, var, momentum, hw):
    """InstanceNorm's update, as stock's: each plane's update of the repeated running
    statistics (BatchNorm's rule, hw values a plane), then their average over the batch."""
    n = mean.numel() // running_mean.numel()
    mean_n, var_n = running_mean.repeat(n), running_var.repeat(n)
    update_running_stats(mean_n, var_n, None, mean, var, momentum, hw)
    running_mean.copy_(mean_n.view(n, -1).mean(0))
    running_var.copy_(var_n.view(n, -1).mean(0))


def run_fused(x: Tensor, conv, norm, negative_slope: float, geometry) -> Tensor:
    """act(InstanceNorm2d(conv(x))) through the fused ops, the module's mode honoured
    (running statistics updated in place in training when tracked)."""
    w, b = conv.weight, conv.bias
    use_input_stats, momentum = module_mode(norm)
    if use_input_stats:
        train = conv_in_act_train if torch.compiler.is_compiling() else TrainEager.apply
        planes, y, mean, var = train(x, w, b, norm.weight, norm.bias, *geometry, norm.eps,
                                     negative_slope)
        if norm.running_mean is not None:
            update_in_running_stats(norm.running_mean, norm.running_var, mean, var,
                                    float(momentum), y.shape[2] * y.shape[3])
        return planes.view(y.shape)
    return conv_in_act_eval(x, w, b, norm.weight, norm.bias, norm.running_mean,
                            norm.running_var, *geometry, norm.eps, negative_slope)


def private_norm(cfg, device, gen):
    """An InstanceNorm2d for auto's timing of configuration `cfg` (private tensors)."""
    norm = nn.InstanceNorm2d(cfg.weight_shape[1] if cfg.transposed else cfg.weight_shape[0],
                             affine=cfg.affine, track_running_stats=True, device=device,
                             dtype=getattr(torch, cfg.bn_dtype.split(".")[-1]))
    with torch.no_grad():
        norm.running_var.uniform_(0.5, 1.5, generator=gen)
    return norm.train(cfg.batch_stats)

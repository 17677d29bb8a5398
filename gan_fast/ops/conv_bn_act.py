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

``fused_block(x, conv, bn, negative_slope)`` is the entry point of the modules: it
applies BatchNorm2d's mode semantics (as ``gan_fast.nn.bn_act_from_module``) around these
ops, or returns None when the fused conv does not apply or is not chosen (then the
caller runs the stock conv and ``bn_act`` separately). It runs the fused conv when it
applies (below) and:

* the backend (``GAN_FAST_BACKEND`` / ``use_backend``) resolves to ``triton`` for x's
  device: always, untimed; or
* it is ``auto``, x is a CUDA tensor and the triton backend is available: with
  ``GAN_FAST_FUSED_CONV=1`` always; else when it was measured faster for this block
  configuration. The first call with a configuration (device, transposed, x's shape,
  dtype and memory format, the conv weight's shape, conv bias, stride, padding,
  output_padding, affine and the BN parameter dtype, batch vs running statistics,
  whether x / the parameters need gradients, TF32 for fp32) times forward (+ backward when gradients
  are needed) of the fused conv against the stock conv + ``bn_act``, on private random
  tensors (the user's tensors, module state and RNG are not touched; one warm-up, then
  the median of 5 runs); the winner is cached in ``backends.choices()`` under
  ``("conv_bn_act", config)`` and logged. If the fused conv fails there (e.g. a Triton
  compile error) the reason is logged once as a warning and the stock way is kept.
  CPU tensors under ``auto`` never use the fused conv (the cpu backend has none);
* ``GAN_FAST_FUSED_CONV=0`` switches the fused conv off everywhere.

The decision is taken when the module is called; under torch.compile when it is traced,
as a constant (the timing runs eagerly at trace time; a dynamic x shape is specialized
when ``auto`` times it, so each shape gets its own graph); changing the backend
afterwards needs a re-trace, e.g. ``torch._dynamo.reset()``. The fused conv applies when:

* the conv: groups=1, dilation=1, padding_mode='zeros', numeric padding, no forward
  hooks on the conv or the BatchNorm (e.g. spectral_norm), out_channels ==
  bn.num_features, x's channels == in_channels (else the stock conv raises its error);
* the input: 4-D, non-empty, fp32/fp16/bf16, the conv weight (and bias) of the same
  dtype and device, BN parameters fp32 or x's dtype, autocast off (under autocast the
  stock conv decides the compute dtype: the caller falls back).
"""
from __future__ import annotations

import contextlib
import logging
import operator
import os
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from gan_fast import backends
from gan_fast.ops import bn_act as ops_bn_act
from gan_fast.ops.bn_act import update_running_stats

log = logging.getLogger("gan_fast")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_MAX = 2 ** 31 - 1


# ----------------------------------------------------------------------------- helpers
def _dense(x: Tensor) -> Tensor:
    """x as contiguous NCHW or channels_last."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _conv_memory_format(x: Tensor):
    """The memory format the Triton conv kernels give their outputs for input x (the rule
    of gan_fast.kernels.triton.conv._memory_format, repeated here so the fake
    implementations need no triton import)."""
    if x.is_contiguous(memory_format=torch.channels_last) and (
            not x.is_contiguous() or x.stride() != x.contiguous().stride()):
        return torch.channels_last
    return torch.contiguous_format


def _out_hw(x_shape, w_shape, transposed, stride, padding, output_padding):
    h, w = x_shape[2], x_shape[3]
    kh, kw = w_shape[2], w_shape[3]
    (sh, sw), (ph, pw), (oph, opw) = stride, padding, output_padding
    if transposed:
        return (h - 1) * sh - 2 * ph + kh + oph, (w - 1) * sw - 2 * pw + kw + opw
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _c_out(w_shape, transposed):
    return w_shape[1] if transposed else w_shape[0]


def _fake_conv_out(x, conv_weight, transposed, stride, padding, output_padding):
    x = _dense(x)
    oh, ow = _out_hw(x.shape, conv_weight.shape, transposed, stride, padding, output_padding)
    return torch.empty((x.shape[0], _c_out(conv_weight.shape, transposed), oh, ow),
                       dtype=x.dtype, device=x.device, memory_format=_conv_memory_format(x))


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
@torch.library.custom_op("gan_fast::conv_bn_act_train", mutates_args=())
def conv_bn_act_train(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                      bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], transposed: bool,
                      stride: List[int], padding: List[int], output_padding: List[int],
                      eps: float, negative_slope: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    tconv, tbn = _triton(x)
    x = _dense(x)
    if transposed:
        y, mean, var = tconv.conv_transpose2d_stats(x, conv_weight, conv_bias, stride, padding,
                                                    output_padding)
    else:
        y, mean, var = tconv.conv2d_stats(x, conv_weight, conv_bias, stride, padding)
    out = tbn.bn_act_eval_fwd(y, bn_weight, bn_bias, mean, var, eps, negative_slope)
    return out, y, mean, var


@conv_bn_act_train.register_fake
def _(x, conv_weight, conv_bias, bn_weight, bn_bias, transposed, stride, padding,
      output_padding, eps, negative_slope):
    y = _fake_conv_out(x, conv_weight, transposed, stride, padding, output_padding)
    c = y.shape[1]
    stat = lambda: x.new_empty((c,), dtype=torch.float32)  # noqa: E731
    return torch.empty_like(y), y, stat(), stat()


@torch.library.custom_op("gan_fast::conv_bn_act_backward", mutates_args=())
def conv_bn_act_backward(grad_out: Tensor, x: Tensor, conv_weight: Tensor, y: Tensor,
                         mean: Tensor, var: Tensor, bn_weight: Optional[Tensor],
                         bn_bias: Optional[Tensor], transposed: bool, stride: List[int],
                         padding: List[int], eps: float, negative_slope: float,
                         has_conv_bias: bool, needs_input_grad: bool
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    tconv, _ = _triton(x)
    x, y = _dense(x), _dense(y)
    grad_out = grad_out.contiguous(memory_format=_conv_memory_format(y))
    gx, gw, gb, gbw, gbb = tconv.bn_act_conv_backward(
        grad_out, x, conv_weight, y, mean, var, bn_weight, bn_bias, eps, negative_slope,
        stride, padding, transposed=transposed, has_conv_bias=has_conv_bias,
        needs_input_grad=needs_input_grad)
    # The kernels may return views of one workspace (e.g. rows of a (3, C) buffer);
    # custom-op outputs must not alias each other: such views are copied (O(C) or O(weight)).
    own = lambda t: _empty(x) if t is None else (t.clone() if t._base is not None else t)  # noqa: E731
    return own(gx), own(gw), own(gb), own(gbw), own(gbb)


@conv_bn_act_backward.register_fake
def _(grad_out, x, conv_weight, y, mean, var, bn_weight, bn_bias, transposed, stride, padding,
      eps, negative_slope, has_conv_bias, needs_input_grad):
    x = _dense(x)
    gx = (torch.empty(x.shape, dtype=x.dtype, device=x.device,
                      memory_format=_conv_memory_format(x)) if needs_input_grad else _empty(x))
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
    ctx.save_for_backward(x, conv_weight, y, mean, var, bn_weight, bn_bias)
    ctx.has_conv_bias = conv_bias is not None
    ctx.transposed, ctx.stride, ctx.padding = transposed, stride, padding
    ctx.eps, ctx.negative_slope = eps, negative_slope
    ctx.mark_non_differentiable(y, mean, var)


def _backward_train(ctx, grad_out, _grad_y, _grad_mean, _grad_var):
    x, conv_weight, y, mean, var, bn_weight, bn_bias = ctx.saved_tensors
    need = ctx.needs_input_grad
    gx, gw, gb, gbw, gbb = conv_bn_act_backward(
        grad_out, x, conv_weight, y, mean, var, bn_weight, bn_bias, ctx.transposed, ctx.stride,
        ctx.padding, ctx.eps, ctx.negative_slope, ctx.has_conv_bias, need[0])
    affine = bn_weight is not None
    return (gx if need[0] else None, gw if need[1] else None,
            gb if ctx.has_conv_bias and need[2] else None,
            gbw if affine and need[3] else None, gbb if affine and need[4] else None,
            None, None, None, None, None, None)


conv_bn_act_train.register_autograd(_backward_train, setup_context=_setup_train)


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
    return _fake_conv_out(x, conv_weight, transposed, stride, padding, output_padding)


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


# ------------------------------------------------------------------- auto's choice
_OP = "conv_bn_act"
_MEASURE_SLOPE = 0.2  # the slope is a kernel argument, not a compile-time constant


class _Config(NamedTuple):
    """A block configuration as ``auto`` keys its measured choice: everything that changes
    the kernels that run (built by _config_key from static Python values; tf32 added when
    timing)."""
    device: str
    transposed: bool
    x_shape: tuple
    dtype: str
    channels_last: bool
    weight_shape: tuple
    conv_bias: bool
    stride: tuple
    padding: tuple
    output_padding: tuple
    affine: bool
    bn_dtype: str
    batch_stats: bool
    grad_x: bool
    grad_params: bool
    tf32: bool  # fp32 on CUDA: cudnn.allow_tf32 (both ways follow it)


def _measures_on(device_type: str) -> bool:
    """Whether ``auto`` considers the fused conv for `device_type` tensors (times it, or
    uses it when GAN_FAST_FUSED_CONV=1): CUDA only, the cpu backend has no fused conv.
    (Tests patch this to time it on CPU tensors under TRITON_INTERPRET=1.)"""
    return device_type == "cuda"


@torch._dynamo.assume_constant_result
def _fused_conv_mode(device_type: str) -> str:
    """'on', 'off' or 'measure' (auto decides per configuration) for `device_type` tensors
    now. A constant for torch.compile: the backend machinery is plain Python."""
    flag = os.environ.get("GAN_FAST_FUSED_CONV")
    if flag == "0":
        return "off"
    if backends.requested() != "auto":
        return "on" if backends.resolve_name(device_type) == "triton" else "off"
    if not _measures_on(device_type) or backends.why_unavailable("triton", device_type) is not None:
        return "off"
    return "on" if flag == "1" else "measure"


def _config_key(x: Tensor, conv, bn, geometry, batch_stats: bool) -> tuple:
    """The _Config of this call as a plain tuple of ints, strings and bools, static under
    torch.compile, so it can be the argument of an assume_constant_result function
    (operator.index makes dynamo specialize a dynamic size: one graph per shape)."""
    transposed, stride, padding, output_padding = geometry
    params = [t for t in (conv.weight, conv.bias, bn.weight, bn.bias) if t is not None]
    grad = torch.is_grad_enabled()
    bn_t = bn.weight if bn.weight is not None else bn.running_mean
    size = lambda t: tuple(operator.index(d) for d in t.shape)  # noqa: E731
    return (str(x.device), transposed, size(x), str(x.dtype),
            not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last),
            size(conv.weight), conv.bias is not None, tuple(stride),
            tuple(padding), tuple(output_padding), bn.weight is not None,
            str(x.dtype if bn_t is None else bn_t.dtype), batch_stats,
            grad and x.requires_grad, grad and any(p.requires_grad for p in params))


def _tf32(cfg: _Config) -> bool:
    """Whether fp32 convolutions of `cfg` may use TF32 now (cuDNN's and the Triton conv's rule)."""
    return (torch.device(cfg.device).type == "cuda" and cfg.dtype == str(torch.float32)
            and bool(torch.backends.cudnn.allow_tf32))


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.split(".")[-1])


def _private_block(cfg: _Config):
    """(x, conv, bn) of configuration `cfg` on fresh tensors drawn from a private generator
    (the user's tensors, modules and global RNG are not touched)."""
    dev, dtype = torch.device(cfg.device), _dtype(cfg.dtype)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    a, b, kernel = cfg.weight_shape[0], cfg.weight_shape[1], cfg.weight_shape[2:]
    if cfg.transposed:
        conv = skip_init(nn.ConvTranspose2d, a, b, kernel, cfg.stride, cfg.padding,
                         cfg.output_padding, bias=cfg.conv_bias, device=dev, dtype=dtype)
    else:
        conv = skip_init(nn.Conv2d, b, a, kernel, cfg.stride, cfg.padding, bias=cfg.conv_bias,
                         device=dev, dtype=dtype)
    bn = skip_init(nn.BatchNorm2d, conv.out_channels, affine=cfg.affine, device=dev,
                   dtype=_dtype(cfg.bn_dtype))
    with torch.no_grad():
        for t in (*conv.parameters(), *bn.parameters(), bn.running_mean):
            t.normal_(0.0, 0.1, generator=gen)
        if cfg.affine:
            bn.weight.add_(1.0)
        bn.running_var.uniform_(0.5, 1.5, generator=gen)
        bn.num_batches_tracked.zero_()
    for p in (*conv.parameters(), *bn.parameters()):
        p.requires_grad_(cfg.grad_params)
    bn.train(cfg.batch_stats)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = torch.randn(cfg.x_shape, generator=gen, device=dev, dtype=dtype)
    return x.contiguous(memory_format=fmt).requires_grad_(cfg.grad_x), conv, bn, gen


def _stock_block(x: Tensor, conv, bn, negative_slope: float) -> Tensor:
    """What the callers of fused_block run when it returns None (gan_fast.nn /
    gan_fast.fuse: the stock conv, then functional.bn_act as bn_act_from_module calls it)."""
    y = conv(x)
    training, momentum, running_mean, running_var, num_batches_tracked = _bn_mode(bn)
    if training or running_mean is None:
        if not training:
            running_mean = running_var = num_batches_tracked = None
        return ops_bn_act.train_update(y, bn.weight, bn.bias, bn.eps, negative_slope, running_mean,
                                       running_var, num_batches_tracked, momentum)
    return ops_bn_act.eval_mode(y, bn.weight, bn.bias, running_mean, running_var, bn.eps,
                                negative_slope)


def _timed_runs(cfg: _Config) -> dict:
    """{'fused': fn, 'unfused': fn}: one forward (and, if cfg wants gradients, backward)
    of the block on private tensors, each way."""
    x, conv, bn, gen = _private_block(cfg)
    geometry = (cfg.transposed, list(cfg.stride), list(cfg.padding), list(cfg.output_padding))
    oh, ow = _out_hw(cfg.x_shape, cfg.weight_shape, *geometry)
    backward = cfg.grad_x or cfg.grad_params
    grad_out = torch.randn((cfg.x_shape[0], conv.out_channels, oh, ow), generator=gen,
                           device=x.device, dtype=x.dtype)
    grad_out = grad_out.contiguous(memory_format=_conv_memory_format(x))

    def run(block):
        with torch.set_grad_enabled(backward):
            out = block()
        if backward:
            out.backward(grad_out)

    fused = lambda: _run_fused(x, conv, bn, _MEASURE_SLOPE, geometry)  # noqa: E731
    unfused = lambda: _stock_block(x, conv, bn, _MEASURE_SLOPE)  # noqa: E731
    return {"fused": lambda: run(fused), "unfused": lambda: run(unfused)}


@torch._dynamo.assume_constant_result
def _fused_is_faster(key: tuple) -> bool:
    """auto's choice for the block configuration `key` (a _Config as a plain tuple): both
    ways timed once on private tensors, the winner cached in ``backends.choices()``. When
    the timing fails (e.g. a Triton compile error) the reason is logged once and the
    unfused way is kept. Runs eagerly, also while torch.compile traces (a constant there)."""
    cfg = _Config(*key, tf32=False)
    cfg = cfg._replace(tf32=_tf32(cfg))
    k = (_OP, cfg)
    if k not in backends._choices:
        device = torch.device(cfg.device)
        try:  # on x's GPU as the current device: the timer synchronizes the current device
            with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                backends.timed_choice(_OP, cfg, _timed_runs(cfg), device.type)
        except Exception as e:  # noqa: BLE001  (any failure: the stock way is the safe one)
            backends._choices[k] = "unfused"
            log.warning("gan_fast: auto could not time the fused conv for %s (%s: %s); "
                        "it runs the stock conv + bn_act there", cfg, type(e).__name__, e)
    return backends._choices[k] == "fused"


def _fused_conv_enabled(x: Tensor, conv, bn, geometry, batch_stats: bool) -> bool:
    """Whether this call runs the fused conv (see the module docstring)."""
    mode = _fused_conv_mode(x.device.type)
    if mode != "measure":
        return mode == "on"
    return _fused_is_faster(_config_key(x, conv, bn, geometry, batch_stats))


# ------------------------------------------------------------------------ module entry
def _applies(x: Tensor, conv, bn) -> bool:
    """Whether the fused ops can compute this block for x (module docstring, second list)."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.dtype not in _DTYPES or x.numel() == 0:
        return False
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return False
    w, b = conv.weight, conv.bias
    if w.dtype != x.dtype or w.device != x.device or (b is not None and
                                                      (b.dtype != x.dtype or b.device != x.device)):
        return False
    if conv.out_channels != bn.num_features or x.shape[1] != conv.in_channels:
        return False  # a channel mismatch: the stock conv raises its own error
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if t is not None and t.device != x.device:
            return False
    for t in (bn.weight, bn.bias):
        if t is not None and t.dtype not in (torch.float32, x.dtype):
            return False
    if (bn.weight is None) != (bn.bias is None):
        return False
    for m in (conv, bn):
        if m._forward_hooks or m._forward_pre_hooks:
            return False
    return x.numel() <= _INT32_MAX and not torch.is_autocast_enabled(x.device.type)


def _geometry(conv, output_padding=None):
    """(transposed, stride, padding, output_padding) of `conv` as bool and int lists."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    stride, padding = [int(s) for s in conv.stride], [int(p) for p in conv.padding]
    if transposed:
        op = conv.output_padding if output_padding is None else output_padding
        return transposed, stride, padding, [int(p) for p in op]
    return transposed, stride, padding, [0, 0]


def _bn_mode(bn):
    """BatchNorm2d's mode semantics, as gan_fast.nn.bn_act_from_module / functional.bn_act:
    (training, momentum, running_mean, running_var, num_batches_tracked)."""
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        momentum = bn.momentum  # None: cumulative average
    else:
        momentum = 0.0 if bn.momentum is None else bn.momentum
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    num_batches_tracked = bn.num_batches_tracked if (bn.training and bn.track_running_stats) else None
    return (training, momentum, bn.running_mean if track else None,
            bn.running_var if track else None, num_batches_tracked)


def _run_fused(x: Tensor, conv, bn, negative_slope: float, geometry) -> Tensor:
    """act(bn(conv(x))) through the fused ops (fused_block once it has decided to)."""
    transposed, stride, padding, output_padding = geometry
    training, momentum, running_mean, running_var, num_batches_tracked = _bn_mode(bn)
    w, b = conv.weight, conv.bias
    if training or running_mean is None:
        out, _, mean, var = conv_bn_act_train(x, w, b, bn.weight, bn.bias, transposed, stride,
                                              padding, output_padding, bn.eps, negative_slope)
        if training and running_mean is not None:
            oh, ow = out.shape[2], out.shape[3]
            update_running_stats(running_mean, running_var, num_batches_tracked, mean, var,
                                  momentum, x.shape[0] * oh * ow)
        return out
    return conv_bn_act_eval(x, w, b, bn.weight, bn.bias, running_mean, running_var, transposed,
                            stride, padding, output_padding, bn.eps, negative_slope)


def fused_block(x: Tensor, conv, bn: nn.BatchNorm2d, negative_slope: float,
                output_padding=None) -> Optional[Tensor]:
    """act(bn(conv(x))) through the fused-conv ops, or None when they do not apply or are
    not chosen (module docstring).

    conv: an nn.Conv2d or nn.ConvTranspose2d (its weight, bias, stride, padding and, if
    transposed, output_padding are used; pass output_padding to override the module's);
    bn: an nn.BatchNorm2d whose parameters, buffers and mode (train/eval,
    track_running_stats, momentum incl. None) are honoured exactly as
    ``gan_fast.nn.bn_act_from_module`` does; running statistics are updated in place in
    training. Returns (N, C_out, H', W') like x, or None (the caller then falls back to
    the unfused path: conv, then bn_act).
    """
    if not _applies(x, conv, bn):
        return None
    geometry = _geometry(conv, output_padding)
    oh, ow = _out_hw(x.shape, conv.weight.shape, *geometry)
    if oh <= 0 or ow <= 0 or x.shape[0] * conv.out_channels * oh * ow > _INT32_MAX:
        return None  # the stock conv raises its own error / offsets beyond int32
    training, _, running_mean, running_var, _ = _bn_mode(bn)
    if (running_mean is None) != (running_var is None):
        return None
    batch_stats = training or running_mean is None
    if batch_stats and x.shape[0] * oh * ow <= 1:  # the check and message of F.batch_norm
        size = torch.Size((x.shape[0], conv.out_channels, oh, ow))
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    if not _fused_conv_enabled(x, conv, bn, geometry, batch_stats):
        return None
    return _run_fused(x, conv, bn, negative_slope, geometry)

"""The fused conv block's entry point for the modules, and ``auto``'s timed choice of it.

``fused_block(x, conv, bn, negative_slope)`` is the entry point of the modules: it
applies BatchNorm2d's mode semantics (as ``gan_fast.nn.bn_act_from_module``) around the
custom ops of ``gan_fast.ops.conv_bn_act``, or returns None when the fused conv does not apply or is not chosen (then the
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

``fused_norm_act(cache, x, conv, norm, negative_slope)`` does the same for the chains
``gan_fast.fuse`` makes with an InstanceNorm2d (``ops.conv_in_act``: per-image statistics
in the conv's epilogue) or no norm (``ops.conv_act``: the activation in the epilogue; a
slope >= 0 only), with the same rules, timing and cache (keyed by op name:
``("conv_in_act" | "conv_act", config)``; a _Config's affine / bn_dtype / batch_stats
are then the InstanceNorm's affine, dtype and use of the input's statistics).
"""
from __future__ import annotations

import contextlib
import logging
import operator
import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from gan_fast import _checks, _formats, backends
from gan_fast.ops import bn_act as ops_bn_act
from gan_fast.ops.block import bn_mode, state
from gan_fast.ops.bn_act import update_running_stats
from gan_fast.ops import conv_act as ops_conv_act, conv_in_act as ops_conv_in_act
from gan_fast.ops.conv_bn_act import (TrainEager, _out_hw, conv_bn_act_eval,
                                      conv_bn_act_train)

log = logging.getLogger("gan_fast")
_INT32_MAX = 2 ** 31 - 1

# ------------------------------------------------------------------- auto's choice
_OP = "conv_bn_act"
# the other fused blocks: op name (auto's choices key) -> the module with their hooks
# (run_fused, stock; conv_in_act's private_norm)
_OTHERS = {"conv_in_act": ops_conv_in_act, "conv_act": ops_conv_act}
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
    norm_params = (bn.weight, bn.bias) if bn is not None else ()
    params = [t for t in (conv.weight, conv.bias, *norm_params) if t is not None]
    grad = torch.is_grad_enabled()
    bn_t = None if bn is None else bn.weight if bn.weight is not None else bn.running_mean
    size = lambda t: tuple(operator.index(d) for d in t.shape)  # noqa: E731
    return (str(x.device), transposed, size(x), str(x.dtype),
            _formats.channels_last(x),
            size(conv.weight), conv.bias is not None, tuple(stride),
            tuple(padding), tuple(output_padding), bn is not None and bn.weight is not None,
            str(x.dtype if bn_t is None else bn_t.dtype), batch_stats,
            grad and x.requires_grad, grad and any(p.requires_grad for p in params))


def _tf32(cfg: _Config) -> bool:
    """Whether fp32 convolutions of `cfg` may use TF32 now (cuDNN's and the Triton conv's rule)."""
    return (torch.device(cfg.device).type == "cuda" and cfg.dtype == str(torch.float32)
            and bool(torch.backends.cudnn.allow_tf32))


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.split(".")[-1])


def _private_block(cfg: _Config, op: str = _OP):
    """(x, conv, norm) of configuration `cfg` (a block of `op`) on fresh tensors drawn from a
    private generator (the user's tensors, modules and global RNG are not touched)."""
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
    if op == _OP:
        bn = skip_init(nn.BatchNorm2d, conv.out_channels, affine=cfg.affine, device=dev,
                       dtype=_dtype(cfg.bn_dtype))
        with torch.no_grad():
            bn.running_var.uniform_(0.5, 1.5, generator=gen)
            bn.num_batches_tracked.zero_()
        bn.train(cfg.batch_stats)
    else:
        bn = _OTHERS[op].private_norm(cfg, dev, gen) if op == "conv_in_act" else None
    norm = [] if bn is None else [*bn.parameters(), bn.running_mean]
    with torch.no_grad():
        for t in (*conv.parameters(), *norm):
            t.normal_(0.0, 0.1, generator=gen)
        if cfg.affine:
            bn.weight.add_(1.0)
    for p in (*conv.parameters(), *(bn.parameters() if bn is not None else ())):
        p.requires_grad_(cfg.grad_params)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = torch.randn(cfg.x_shape, generator=gen, device=dev, dtype=dtype)
    return x.contiguous(memory_format=fmt).requires_grad_(cfg.grad_x), conv, bn, gen


def _stock_block(x: Tensor, conv, bn, negative_slope: float) -> Tensor:
    """What the callers of fused_block run when it returns None (gan_fast.nn /
    gan_fast.fuse: the stock conv, then functional.bn_act as bn_act_from_module calls it)."""
    y = conv(x)
    batch_stats, running_mean, running_var, num_batches_tracked, momentum = bn_mode(bn)
    if batch_stats:
        return ops_bn_act.train_update(y, bn.weight, bn.bias, bn.eps, negative_slope, running_mean,
                                       running_var, num_batches_tracked, momentum)
    return ops_bn_act.eval_mode(y, bn.weight, bn.bias, running_mean, running_var, bn.eps,
                                negative_slope)


def _timed_runs(cfg: _Config, op: str = _OP) -> dict:
    """{'fused': fn, 'unfused': fn}: one forward (and, if cfg wants gradients, backward)
    of the block of `op` on private tensors, each way."""
    x, conv, bn, gen = _private_block(cfg, op)
    geometry = (cfg.transposed, list(cfg.stride), list(cfg.padding), list(cfg.output_padding))
    oh, ow = _out_hw(cfg.x_shape, cfg.weight_shape, *geometry)
    backward = cfg.grad_x or cfg.grad_params
    grad_out = torch.randn((cfg.x_shape[0], conv.out_channels, oh, ow), generator=gen,
                           device=x.device, dtype=x.dtype)
    if op != "conv_in_act":  # the block output's layout (InstanceNorm's: NCHW)
        grad_out = grad_out.contiguous(memory_format=_formats.after_conv(
            grad_out.shape, _formats.conv_memory_format(x, conv.weight)))

    def run(block):
        with torch.set_grad_enabled(backward):
            out = block()
        if backward:
            out.backward(grad_out)

    if op == _OP:
        fused = lambda: _run_fused(x, conv, bn, _MEASURE_SLOPE, geometry)  # noqa: E731
        unfused = lambda: _stock_block(x, conv, bn, _MEASURE_SLOPE)  # noqa: E731
    else:
        fused = lambda: _OTHERS[op].run_fused(x, conv, bn, _MEASURE_SLOPE, geometry)  # noqa: E731
        unfused = lambda: _OTHERS[op].stock(conv(x), bn, _MEASURE_SLOPE)  # noqa: E731
    return {"fused": lambda: run(fused), "unfused": lambda: run(unfused)}


@torch._dynamo.assume_constant_result
def _fused_is_faster(key: tuple, op: str = _OP) -> bool:
    """auto's choice for the block configuration `key` (a _Config as a plain tuple): both
    ways timed once on private tensors, the winner cached in ``backends.choices()``. When
    the timing fails (e.g. a Triton compile error) the reason is logged once and the
    unfused way is kept. Runs eagerly, also while torch.compile traces (a constant there)."""
    cfg = _Config(*key, tf32=False)
    cfg = cfg._replace(tf32=_tf32(cfg))
    k = (op, cfg)
    if k not in backends._choices:
        device = torch.device(cfg.device)
        try:  # on x's GPU as the current device: the timer synchronizes the current device
            with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                backends.timed_choice(op, cfg, _timed_runs(cfg, op), device.type)
        except Exception as e:  # noqa: BLE001  (any failure: the stock way is the safe one)
            backends._choices[k] = "unfused"
            log.warning("gan_fast: auto could not time the fused conv (%s) for %s (%s: %s); "
                        "it runs the stock conv and the rest there", op, cfg, type(e).__name__, e)
    return backends._choices[k] == "fused"


def _fused_conv_enabled(x: Tensor, conv, bn, geometry, batch_stats: bool, mode=None,
                        op: str = _OP, decisions: Optional[dict] = None,
                        memo: Optional[tuple] = None) -> bool:
    """Whether this call runs the fused conv of `op` (see the module docstring); `mode`: the
    _fused_conv_mode a caller decided once (None: decide now). `decisions`: a module's memo
    of auto's measured choice, `memo` this call's key in it (``_memo_key``: what changes
    between its calls, i.e. x's shape and strides, which gradients are needed, batch
    statistics; the weight's shape for the functional API's shared memo), so that a call
    costs a dict lookup instead of building the full configuration (about 15 us); a stale
    entry (a conv's geometry changed in place) can only cost speed, never change a result:
    both ways compute the same."""
    mode = mode or _fused_conv_mode(x.device.type)
    if mode != "measure":
        return mode == "on"
    if memo is None:
        return _fused_is_faster(_config_key(x, conv, bn, geometry, batch_stats), op)
    fused = decisions.get(memo)
    if fused is None:
        fused = decisions[memo] = _fused_is_faster(
            _config_key(x, conv, bn, geometry, batch_stats), op)
    return fused


def _memo_key(decisions: Optional[dict], mode, x, conv, batch_stats: bool, op: str):
    """The key of auto's memoised choice for this call (``_fused_conv_enabled``), or None
    where nothing is memoised (no memo given, mode not 'measure', x not a tensor). A caller
    whose memo already holds False returns at once, before the checks only the fused way
    needs (on a GPU under auto, where the stock way wins, every call would pay them)."""
    if decisions is None or mode != "measure" or not isinstance(x, Tensor):
        return None
    grad = torch.is_grad_enabled()
    w = state(conv, "weight")
    return (op, x.shape, x.stride(), w.shape, grad and x.requires_grad, grad and w.requires_grad,
            batch_stats)


# ------------------------------------------------------------------------ module entry
def _applies(x: Tensor, conv, bn) -> bool:
    """Whether the fused ops can compute this block for x (module docstring, second list);
    bn: a BatchNorm2d, an InstanceNorm2d or None (no norm). Runs on every call under
    ``auto`` on a GPU: each module tensor is read once (``block.state``), the device once."""
    if (not isinstance(x, Tensor) or x.dim() != 4 or x.dtype not in _formats.GPU_DTYPES
            or x.numel() == 0):
        return False
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return False
    device, dtype = x.device, x.dtype
    w, b = state(conv, "weight"), state(conv, "bias")
    if w.dtype != dtype or w.device != device or (b is not None and
                                                  (b.dtype != dtype or b.device != device)):
        return False
    if x.shape[1] != conv.in_channels:
        return False  # a channel mismatch: the stock conv raises its own error
    for m in (conv, bn):
        if m is not None and (m._forward_hooks or m._forward_pre_hooks):
            return False
    if x.numel() > _INT32_MAX or torch.is_autocast_enabled(device.type):
        return False
    if bn is None:
        return True
    if conv.out_channels != bn.num_features:
        return False
    bw, bb = state(bn, "weight"), state(bn, "bias")
    rm, rv = state(bn, "running_mean"), state(bn, "running_var")
    for t in (bw, bb, rm, rv):
        if t is not None and t.device != device:
            return False
    for t in (bw, bb):
        if t is not None and t.dtype not in (torch.float32, dtype):
            return False
    return (bw is None) == (bb is None) and (rm is None) == (rv is None)


def _geometry(conv, output_padding=None):
    """(transposed, stride, padding, output_padding) of `conv` as bool and int lists."""
    transposed = bool(conv.transposed)
    stride, padding = [int(s) for s in conv.stride], [int(p) for p in conv.padding]
    if transposed:
        op = conv.output_padding if output_padding is None else output_padding
        return transposed, stride, padding, [int(p) for p in op]
    return transposed, stride, padding, [0, 0]


def _run_fused(x: Tensor, conv, bn, negative_slope: float, geometry) -> Tensor:
    """act(bn(conv(x))) through the fused ops (fused_block once it has decided to)."""
    transposed, stride, padding, output_padding = geometry
    batch_stats, running_mean, running_var, num_batches_tracked, momentum = bn_mode(bn)
    w, b = conv.weight, conv.bias
    if batch_stats:
        train = conv_bn_act_train if torch.compiler.is_compiling() else TrainEager.apply
        out, _, mean, var = train(x, w, b, bn.weight, bn.bias, transposed, stride, padding,
                                  output_padding, bn.eps, negative_slope)
        if running_mean is not None:
            oh, ow = out.shape[2], out.shape[3]
            update_running_stats(running_mean, running_var, num_batches_tracked, mean, var,
                                  momentum, x.shape[0] * oh * ow)
        return out
    return conv_bn_act_eval(x, w, b, bn.weight, bn.bias, running_mean, running_var, transposed,
                            stride, padding, output_padding, bn.eps, negative_slope)


def fused_conv_mode(device_type: str) -> str:
    """'on', 'off' or 'measure': whether blocks on `device_type` tensors run the fused conv
    under the current backend and GAN_FAST_FUSED_CONV (block_forward decides it once)."""
    return _fused_conv_mode(device_type)


def fused_block(x: Tensor, conv, bn: nn.BatchNorm2d, negative_slope: float,
                output_padding=None, mode: Optional[str] = None,
                decisions: Optional[dict] = None) -> Optional[Tensor]:
    """act(bn(conv(x))) through the fused-conv ops, or None when they do not apply or are
    not chosen (module docstring).

    conv: an nn.Conv2d or nn.ConvTranspose2d (its weight, bias, stride, padding and, if
    transposed, output_padding are used; pass output_padding to override the module's);
    bn: an nn.BatchNorm2d whose parameters, buffers and mode (train/eval,
    track_running_stats, momentum incl. None) are honoured exactly as
    ``gan_fast.nn.bn_act_from_module`` does; running statistics are updated in place in
    training. Returns (N, C_out, H', W') like x, or None (the caller then falls back to
    the unfused path: conv, then bn_act). mode, decisions: see ``_fused_conv_enabled``.
    """
    batch_stats, running_mean, running_var, _, _ = bn_mode(bn)
    memo = _memo_key(decisions, mode, x, conv, batch_stats, _OP)
    if memo is not None and decisions.get(memo) is False:
        return None
    if not _applies(x, conv, bn):
        return None
    geometry = _geometry(conv, output_padding)
    oh, ow = _out_hw(x.shape, conv.weight.shape, *geometry)
    if oh <= 0 or ow <= 0 or x.shape[0] * conv.out_channels * oh * ow > _INT32_MAX:
        return None  # the stock conv raises its own error / offsets beyond int32
    if (running_mean is None) != (running_var is None):
        return None
    _checks.bn_eps(bn.eps, batch_stats)
    if batch_stats and x.shape[0] * oh * ow <= 1:  # the check and message of F.batch_norm
        size = torch.Size((x.shape[0], conv.out_channels, oh, ow))
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    if not _fused_conv_enabled(x, conv, bn, geometry, batch_stats, mode, decisions=decisions,
                               memo=memo):
        return None
    return _run_fused(x, conv, bn, negative_slope, geometry)


def fused_norm_act(cache: dict, x: Tensor, conv, norm, negative_slope: float) -> Optional[Tensor]:
    """act(norm(conv(x))) for an InstanceNorm2d `norm` or none (None) through the fused ops
    (``conv_in_act`` / ``conv_act``), decided as ``fused_block`` decides for BatchNorm; or
    None when they do not apply or are not chosen (the caller then runs the stock conv and
    the rest). `cache`: the module's dict of choices (``ops.block.paths``), where the
    backend's mode is kept per (device, dtype, backend generation), and auto's measured
    choices are memoised (``_fused_conv_enabled``)."""
    if not isinstance(x, Tensor):
        return None
    mode = None
    if not torch.compiler.is_compiling():
        key = ("norm_act", x.device, x.dtype, backends.generation)
        mode = cache.get(key)
        if mode is None:
            mode = cache[key] = _fused_conv_mode(x.device.type)
        if mode == "off":
            return None
    op = "conv_act" if norm is None else "conv_in_act"
    batch_stats = norm is not None and ops_conv_in_act.module_mode(norm)[0]
    memo = _memo_key(cache, mode, x, conv, batch_stats, op)
    if memo is not None and cache.get(memo) is False:
        return None
    if (norm is None and not ops_conv_act.applies(negative_slope)) or not _applies(x, conv, norm):
        return None
    geometry = _geometry(conv)
    oh, ow = _out_hw(x.shape, conv.weight.shape, *geometry)
    if oh <= 0 or ow <= 0 or x.shape[0] * conv.out_channels * oh * ow > _INT32_MAX:
        return None  # the stock conv raises its own error / offsets beyond int32
    if norm is not None:
        if batch_stats and oh * ow <= 1:
            return None  # stock instance_norm raises its error
        _checks.bn_eps(norm.eps, batch_stats)
    if not _fused_conv_enabled(x, conv, norm, geometry, batch_stats, mode, op, cache, memo):
        return None
    return _OTHERS[op].run_fused(x, conv, norm, negative_slope, geometry)

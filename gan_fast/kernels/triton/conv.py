"""Triton fused conv blocks: ``conv (Conv2d | ConvTranspose2d) -> BatchNorm2d -> LeakyReLU``.

Public functions (all take 4-D tensors, NCHW-contiguous or channels_last, any strides
in fact; fp32/fp16/bf16 with fp32 accumulation; groups=1, dilation=1):

* ``conv2d_stats`` / ``conv_transpose2d_stats``: implicit-GEMM conv whose epilogue
  writes y and the per-channel BatchNorm batch statistics (training forward, part 1;
  the BN+activation elementwise pass is the bn_act kernel's job).
* ``conv2d_bn_act_eval`` / ``conv_transpose2d_bn_act_eval``: eval mode in one kernel
  (BN folded into the conv weight/bias on the host, LeakyReLU in the epilogue).
* ``conv_in_stats``: as ``conv*_stats`` with InstanceNorm's per-(image, channel)
  statistics (y NCHW-contiguous); ``conv_act``: conv + bias + LeakyReLU in one kernel
  (the norm-free block; its backward: act_conv_backward, dy rebuilt in the GEMMs).
* ``bn_act_conv_backward``: the training block backward: one reduction over
  (grad_out, y), then dgrad and wgrad implicit GEMMs that rebuild
  dy = d(loss)/d(conv output) in their operand loads (dy is never written).

Kernels are in ``conv_fwd.py`` and ``conv_bwd.py``. Outputs have stock's memory format
(``gan_fast._formats``): y a convolution's (channels_last when x or the weight is laid
out so), the eval block's output that of BN + activation on it, grad_x x's. The fp32
path uses TF32 tensor cores on CUDA exactly when ``torch.backends.cudnn.allow_tf32`` is
set (as cuDNN's convolutions do); the interpreter (CPU tensors) always computes in fp32.
"""
from __future__ import annotations

import torch
import triton

from gan_fast._formats import GPU_DTYPES, after_conv, conv_memory_format, memory_format
from gan_fast._layout import conv_out_hw

from . import _targets
from . import conv_bwd as _bwd
from . import conv_fwd as _fwd

__all__ = [
    "conv2d_stats", "conv_transpose2d_stats", "conv2d_bn_act_eval",
    "conv_transpose2d_bn_act_eval", "bn_act_conv_backward", "conv_in_stats", "conv_act",
    "act_conv_backward",
]

_INT32_MAX = 2 ** 31 - 1


# ----------------------------------------------------------------------------- helpers
def _pair(v):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(t) for t in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return v


def _check(x, name="x"):
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in GPU_DTYPES:
        raise TypeError(f"{name}: dtype {x.dtype} not supported (fp32, fp16, bf16)")
    if x.numel() > _INT32_MAX:
        raise ValueError(f"{name} has {x.numel()} elements; the kernels index with int32")


def _compute_flags(x):
    """(UPCAST, PRECISION) for tl.dot: fp32 operands in the interpreter; TF32 on GPU
    for fp32 inputs iff cuDNN would use it."""
    if not _targets.is_gpu(x.device):
        return True, "ieee"
    if x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return False, "tf32"
    return False, "ieee"


def _num_sms(device):
    return _targets.num_sms(device)


def _gemm_weight(w, transposed_gather, dtype):
    """Conv weight -> GEMM B operand (KH, KW, C_A, C_OUT) contiguous in `dtype`.

    transposed_gather=False: w is a Conv2d weight (C_OUT, C_A, KH, KW);
    True: w is a ConvTranspose2d weight (C_A, C_OUT, KH, KW).
    """
    perm = (2, 3, 0, 1) if transposed_gather else (2, 3, 1, 0)
    return w.permute(*perm).to(dtype).contiguous()


def _launch_gemm(a, w_gemm, kernel, out, stride, padding, transposed, epilogue,
                 bias=None, slope=0.0, prologue=None, stats_ws=None, per_image=False):
    """Run _conv_gemm_kernel: out = conv(a) with the gather of `transposed`.

    prologue: None or (y, coef) (a is then grad_out); stats_ws: None or
    (ws_mean, ws_m2, ws_cnt); per_image: statistics per (image, channel) (PER_IMAGE).
    Returns the number of tile rows written to stats_ws.
    """
    n, c_a, h, w = a.shape
    _, c_out, oh, ow = out.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    if transposed:
        phases, taps_h, taps_w = sh * sw, triton.cdiv(kh, sh), triton.cdiv(kw, sw)
        mp_max = triton.cdiv(oh, sh) * triton.cdiv(ow, sw)
    else:
        phases, taps_h, taps_w = 1, kh, kw
        mp_max = oh * ow
    images = n if per_image else 1   # tiles per phase: images * cdiv(mp_max, BLOCK_M)
    mp_max *= 1 if per_image else n
    upcast, precision = _compute_flags(a)
    y, coef = prologue if prologue is not None else (a, out)
    ws_mean, ws_m2, ws_cnt = stats_ws if stats_ws is not None else (out, out, out)

    def grid(meta):
        return (phases * images * triton.cdiv(mp_max, meta["BLOCK_M"]),
                triton.cdiv(c_out, meta["BLOCK_N"]))

    k = _fwd._conv_gemm_kernel
    k[grid](
        a, y, coef, w_gemm, bias if bias is not None else out, out,
        ws_mean, ws_m2, ws_cnt,
        n, c_a, h, w, c_out, oh, ow,
        *a.stride(), *y.stride(), *out.stride(),
        sh, sw, ph, pw,
        mp_max, float(slope),
        KH=kh, KW=kw, TAPS_H=taps_h, TAPS_W=taps_w,
        TRANSPOSED=transposed, PROLOGUE=prologue is not None, EPILOGUE=epilogue,
        HAS_BIAS=bias is not None, UPCAST=upcast, PRECISION=precision,
        LOOP_WHILE=_fwd.INTERPRET, PER_IMAGE=per_image,
    )
    return phases * triton.cdiv(mp_max, k.best_config.kwargs["BLOCK_M"])


# ----------------------------------------------------------------------------- forward
def _out_shape(x, weight, stride, padding, output_padding, transposed):
    """Check x against the weight; (N, C_out, OH, OW) of the conv."""
    _check(x)
    n, c_in = x.shape[:2]
    w_cin, c_out = weight.shape[:2] if transposed else weight.shape[1::-1]
    if w_cin != c_in:
        raise ValueError(f"weight {tuple(weight.shape)} does not match {c_in} input channels "
                         "(groups=1 only)")
    oh, ow = conv_out_hw(x.shape, weight.shape, transposed, stride, padding, output_padding)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"output size ({oh}, {ow}) is empty")
    return n, c_out, oh, ow


def _conv_stats(x, weight, bias, stride, padding, output_padding, transposed, per_image=False):
    stride, padding, output_padding = _pair(stride), _pair(padding), _pair(output_padding)
    n, c_out, oh, ow = _out_shape(x, weight, stride, padding, output_padding, transposed)
    # per image (InstanceNorm): y NCHW-contiguous, so that (N*C, OH, OW) planes are views
    y = torch.empty((n, c_out, oh, ow), device=x.device, dtype=x.dtype, memory_format=(
        torch.contiguous_format if per_image else conv_memory_format(x, weight)))
    _check(y, "y")
    sh, sw = stride if transposed else (1, 1)
    pixels = triton.cdiv(oh, sh) * triton.cdiv(ow, sw)   # of the largest phase, one image
    t_max = sh * sw * (triton.cdiv(pixels, _fwd.MIN_BLOCK_M) if per_image
                       else triton.cdiv(n * pixels, _fwd.MIN_BLOCK_M))
    c = n * c_out if per_image else c_out   # the statistics' columns
    f32 = dict(device=x.device, dtype=torch.float32)
    ws_mean, ws_m2 = torch.empty((t_max, c), **f32), torch.empty((t_max, c), **f32)
    ws_cnt = torch.empty((t_max,), **f32)
    b = bias.float().contiguous() if bias is not None else None
    t = _launch_gemm(x, _gemm_weight(weight, transposed, x.dtype), weight.shape[2:], y, stride,
                     padding, transposed, 1, bias=b, stats_ws=(ws_mean, ws_m2, ws_cnt),
                     per_image=per_image)
    mean, var = torch.empty((c,), **f32), torch.empty((c,), **f32)
    block_c = min(128, max(16, triton.next_power_of_2(c)))
    _fwd._welford_combine_kernel[(triton.cdiv(c, block_c),)](
        ws_mean, ws_m2, ws_cnt, mean, var, t, c, BLOCK_T=32, BLOCK_C=block_c)
    return y, mean, var


def conv_in_stats(x, weight, bias=None, stride=1, padding=0, output_padding=0, transposed=False):
    """Conv2d (or, if transposed, ConvTranspose2d) whose epilogue also produces the
    InstanceNorm statistics of its output: per (image, channel) instead of per channel.

    Arguments as ``conv2d_stats`` / ``conv_transpose2d_stats``. Returns y (N, C_out, OH, OW)
    in x's dtype, NCHW-contiguous (what stock instance_norm reads), and mean, var:
    (N*C_out,) fp32, the mean and *biased* variance of each (n, c) plane of y as stored.
    """
    return _conv_stats(x, weight, bias, stride, padding, output_padding, transposed, True)


def conv_act(x, weight, bias, negative_slope, stride=1, padding=0, output_padding=0,
             transposed=False):
    """LeakyReLU(conv(x) + bias) in one kernel (the activation in the GEMM epilogue):
    the norm-free block. x: (N, C_in, H, W); weight: Conv2d's (C_out, C_in, kH, kW), or
    ConvTranspose2d's (C_in, C_out, kH, kW) if transposed; bias: (C_out,) or None.
    Returns (N, C_out, OH, OW) in x's dtype and the stock convolution's memory format."""
    stride, padding, output_padding = _pair(stride), _pair(padding), _pair(output_padding)
    shape = _out_shape(x, weight, stride, padding, output_padding, transposed)
    out = torch.empty(shape, device=x.device, dtype=x.dtype,
                      memory_format=conv_memory_format(x, weight))
    _check(out, "out")
    b = bias.float().contiguous() if bias is not None else None
    _launch_gemm(x, _gemm_weight(weight, transposed, x.dtype), weight.shape[2:], out, stride,
                 padding, transposed, 2, bias=b, slope=negative_slope)
    return out


def conv2d_stats(x, weight, bias=None, stride=1, padding=0):
    """Conv2d whose epilogue also produces the BatchNorm batch statistics of its output.

    x: (N, C_in, H, W) fp32/fp16/bf16, NCHW or channels_last.
    weight: (C_out, C_in, kH, kW) (cast to x's dtype for the GEMM); bias: (C_out,) or None.
    stride, padding: int or pair.
    Returns y (N, C_out, OH, OW) in x's dtype and a convolution's memory format, and mean,
    var: (C_out,) fp32, the per-channel mean and *biased* variance of y as stored (rounded to
    x's dtype).
    """
    return _conv_stats(x, weight, bias, stride, padding, 0, transposed=False)


def conv_transpose2d_stats(x, weight, bias=None, stride=1, padding=0, output_padding=0):
    """ConvTranspose2d (groups=1, dilation=1) with BatchNorm statistics in the epilogue.

    x: (N, C_in, H, W); weight: (C_in, C_out, kH, kW) as PyTorch; bias: (C_out,) or None.
    OH = (H-1)*stride - 2*padding + kH + output_padding (same for W).
    Returns (y (N, C_out, OH, OW) as conv2d_stats's, mean (C_out,) fp32, biased var (C_out,) fp32).
    """
    return _conv_stats(x, weight, bias, stride, padding, output_padding, transposed=True)


def _fold_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, transposed):
    """BN(eval) folded into the conv, in fp32: returns (weight', bias' fp32 (C_out,))."""
    scale = torch.rsqrt(running_var.float() + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.float()
    shift = -running_mean.float() * scale
    if bias is not None:
        shift = shift + bias.float() * scale
    if bn_bias is not None:
        shift = shift + bn_bias.float()
    shape = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)
    return weight.float() * scale.view(shape), shift.contiguous()


def _conv_bn_act_eval(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, eps,
                      negative_slope, stride, padding, output_padding, transposed, nchw=False):
    """nchw: the output NCHW-contiguous (InstanceNorm's, whose eval with running statistics
    is this same per-channel affine map)."""
    stride, padding, output_padding = _pair(stride), _pair(padding), _pair(output_padding)
    shape = _out_shape(x, weight, stride, padding, output_padding, transposed)
    wf, bf = _fold_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, transposed)
    # BN + activation of the conv output: stock's layout of it
    fmt = torch.contiguous_format if nchw else after_conv(shape, conv_memory_format(x, weight))
    out = torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=fmt)
    _check(out, "out")
    _launch_gemm(x, _gemm_weight(wf, transposed, x.dtype), weight.shape[2:], out, stride, padding,
                 transposed, 2, bias=bf, slope=negative_slope)
    return out


def conv2d_bn_act_eval(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, eps,
                       negative_slope, stride=1, padding=0):
    """Eval-mode LeakyReLU(BN(Conv2d(x))) in one kernel.

    x: (N, C_in, H, W) fp32/fp16/bf16; weight (C_out, C_in, kH, kW); bias, bn_weight,
    bn_bias: (C_out,) or None; running_mean/var: (C_out,). BN is folded into the
    conv weight and bias in fp32 on the host. Returns (N, C_out, OH, OW) in x's dtype.
    """
    return _conv_bn_act_eval(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                             eps, negative_slope, stride, padding, 0, transposed=False)


def conv_transpose2d_bn_act_eval(x, weight, bias, bn_weight, bn_bias, running_mean,
                                 running_var, eps, negative_slope, stride=1, padding=0,
                                 output_padding=0):
    """Eval-mode LeakyReLU(BN(ConvTranspose2d(x))) in one kernel.

    weight: (C_in, C_out, kH, kW); other arguments as ``conv2d_bn_act_eval``.
    Returns (N, C_out, OH, OW) in x's dtype.
    """
    return _conv_bn_act_eval(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                             eps, negative_slope, stride, padding, output_padding,
                             transposed=True)


# ---------------------------------------------------------------------------- backward
def bn_act_conv_backward(grad_out, x, weight, y, mean, var, bn_weight, bn_bias, eps,
                         negative_slope, stride=1, padding=0, transposed=False,
                         has_conv_bias=True, needs_input_grad=True, wgrad_split=None,
                         act_only=False):
    """Backward of the training block a = LeakyReLU(BN_batch(conv(x))) (act_only: of
    a = LeakyReLU(conv(x)), see act_conv_backward).

    grad_out: dL/da (N, C_out, OH, OW); x: the saved conv input (N, C_in, H, W);
    weight: conv weight ((C_out, C_in, kH, kW), or (C_in, C_out, kH, kW) if transposed);
    y: the saved conv output; mean, var: (C_out,) fp32 batch mean and biased var of y;
    bn_weight, bn_bias: (C_out,) or both None (affine=False); stride/padding as the
    forward (output_padding is implied by the shapes of x and y).
    dy = dL/dy is rebuilt inside the dgrad and wgrad GEMMs' operand loads from
    (grad_out, y) and per-channel coefficients; it is never written to memory.
    Returns (grad_x like x or None if not needs_input_grad, grad_weight like weight,
    grad_conv_bias (C_out,) in weight's dtype or None if not has_conv_bias,
    grad_bn_weight, grad_bn_bias (C_out,) in bn_weight's dtype or None if affine=False).
    """
    for t, name in ((grad_out, "grad_out"), (x, "x"), (y, "y")):
        _check(t, name)
    stride, padding = _pair(stride), _pair(padding)
    if grad_out.dtype != x.dtype:
        grad_out = grad_out.to(x.dtype)
    n, c_x, h, w = x.shape
    _, c_y, oh, ow = y.shape
    kh, kw = weight.shape[2:]
    dev = x.device
    f32 = dict(device=dev, dtype=torch.float32)
    has_affine = bn_weight is not None
    bw = bn_weight.contiguous() if has_affine else mean
    bb = bn_bias.contiguous() if has_affine else mean
    mean_c, var_c = mean.float().contiguous(), var.float().contiguous()
    count = n * oh * ow
    if count < 1:
        raise ValueError("empty conv output")

    # 1. per-channel S1, S2, S3 over (grad_out, y)
    block_c = min(64, max(16, triton.next_power_of_2(c_y)))
    block_p = max(32, 8192 // block_c) if _targets.is_gpu(dev) else 64
    c_blocks = triton.cdiv(c_y, block_c)
    progs_p = max(1, min(triton.cdiv(count, block_p), triton.cdiv(4 * _num_sms(dev), c_blocks)))
    p_per = triton.cdiv(triton.cdiv(count, progs_p), block_p) * block_p
    r = triton.cdiv(count, p_per)
    ws = torch.empty((3, r, c_y), **f32)
    _bwd._bn_act_bwd_reduce_kernel[(r, c_blocks)](
        grad_out, y, mean_c, var_c, bw, bb, ws,
        count, c_y, oh * ow, ow, *grad_out.stride(), *y.stride(),
        p_per, r, float(eps), float(negative_slope),
        HAS_AFFINE=has_affine, BLOCK_P=block_p, BLOCK_C=block_c)

    # 2. coefficients of dy and the per-channel gradients
    coef = torch.empty((5, c_y), **f32)
    grads = torch.empty((3, c_y), **f32)
    _bwd._bn_act_bwd_finalize_kernel[(c_blocks,)](
        ws, mean_c, var_c, bw, bb, coef, grads, r, c_y, float(count), float(eps),
        HAS_AFFINE=has_affine, BLOCK_R=32, BLOCK_C=block_c)

    if act_only:  # dy = 1*dz + 0 + 0*(y - 0) = dz exactly; grad_conv_bias = S1 = sum(dz)
        coef.zero_()
        coef[1].fill_(1.0)
        grads[2].copy_(grads[1])

    # 3. dgrad: the adjoint gather (conv2d <-> conv_transpose2d), dy in the A prologue
    grad_x = None
    if needs_input_grad:
        grad_x = torch.empty(x.shape, device=dev, dtype=x.dtype, memory_format=memory_format(x))
        _launch_gemm(grad_out, _gemm_weight(weight, not transposed, x.dtype), (kh, kw), grad_x,
                     stride, padding, not transposed, 0, slope=negative_slope,
                     prologue=(y, coef))

    # 4. wgrad: reduction over the pixel grid of the non-gathered operand, split-K
    if transposed:
        qh, qw, gh, gw = h, w, oh, ow
        s_wx, s_wy = c_y * kh * kw, kh * kw          # weight (C_X, C_Y, kH, kW)
    else:
        qh, qw, gh, gw = oh, ow, h, w
        s_wx, s_wy = kh * kw, c_x * kh * kw          # weight (C_Y, C_X, kH, kW)
    q = n * qh * qw
    if wgrad_split is None:
        tiles = triton.cdiv(c_x, 64) * triton.cdiv(c_y, 64) * kh * kw
        wgrad_split = min(triton.cdiv(2 * _num_sms(dev), tiles), max(1, q // 256))
    q_per = triton.cdiv(triton.cdiv(q, max(1, int(wgrad_split))), 64) * 64
    split = triton.cdiv(q, q_per)
    wws = torch.empty((split,) + tuple(weight.shape), **f32)
    upcast, precision = _compute_flags(x)

    def grid(meta):
        tiles = triton.cdiv(c_x, meta["BLOCK_M"]) * triton.cdiv(c_y, meta["BLOCK_N"])
        return (tiles, kh * kw, split)

    _bwd._conv_wgrad_kernel[grid](
        x, grad_out, y, coef, wws,
        n, c_x, c_y, qh, qw, gh, gw,
        *x.stride(), *grad_out.stride(), *y.stride(),
        wws.stride(0), s_wx, s_wy, kw, 1,
        stride[0], stride[1], padding[0], padding[1],
        q_per, float(negative_slope), split,
        KH=kh, KW=kw, GATHER_X=not transposed, UPCAST=upcast, PRECISION=precision,
        LOOP_WHILE=_fwd.INTERPRET)
    grad_w = (wws.sum(0) if split > 1 else wws[0]).to(weight.dtype)

    grad_b = grads[2].to(weight.dtype) if has_conv_bias else None
    gbn_w = grads[0].to(bn_weight.dtype) if has_affine else None
    gbn_b = grads[1].to(bn_bias.dtype) if has_affine else None
    return grad_x, grad_w, grad_b, gbn_w, gbn_b


def act_conv_backward(grad_out, x, weight, out, negative_slope, stride=1, padding=0,
                      transposed=False, has_conv_bias=True, needs_input_grad=True):
    """Backward of out = LeakyReLU(conv(x) + bias) (``conv_act``) for a slope >= 0, from
    (grad_out, out): dy = out > 0 ? grad_out : grad_out*slope (PyTorch's convention: out > 0
    exactly when conv(x) + bias > 0) is rebuilt in the dgrad/wgrad GEMMs' operand loads, as
    bn_act_conv_backward's with mean 0, scale 1, shift 0 (never written); grad_bias = sum(dy).
    Returns (grad_x like x or None, grad_weight like weight, grad_bias or None)."""
    zeros = torch.zeros(out.shape[1], device=out.device, dtype=torch.float32)
    return bn_act_conv_backward(grad_out, x, weight, out, zeros, zeros + 1.0, None, None, 0.0,
                                negative_slope, stride, padding, transposed, has_conv_bias,
                                needs_input_grad, act_only=True)[:3]

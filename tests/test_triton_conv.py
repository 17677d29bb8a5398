"""Triton fused conv kernels (gan_fast/kernels/triton/conv.py) against stock PyTorch.

Oracle: F.conv2d / F.conv_transpose2d + F.batch_norm + F.leaky_relu in float64 on
CPU (autograd for the gradients), fed the same (rounded) inputs as the kernels.
Errors are measured relative to the largest magnitude of the reference tensor.
Tolerances: fp32 1e-5 (fp32 math; TF32 is switched off for these tests on CUDA),
fp16 3e-3, bf16 3e-2 (y, dy and the GEMM operands are rounded to the input dtype, as
in the unfused path; observed in the interpreter: fp32 <= 6e-7, fp16 <= 7e-4, bf16
<= 7e-3). The BN statistics are checked against the statistics of y as stored, to
1e-5 in every dtype. For fp16/bf16 the gradients are checked against float64
gradients computed from the stored y (see _oracle_given_y).

Without a GPU the kernels run in the Triton interpreter on CPU tensors (slow: the
shapes are tiny on purpose, and the half-precision and NCHW variants run on a subset
of the cases: the 63-channel cases are channels_last fp32 only).
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from helpers import require_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
require_triton(DEVICE)

from gan_fast.kernels.triton import conv as tconv  # noqa: E402

EPS = 1e-5
SLOPE = 0.2
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}
STAT_TOL = 1e-5


pytestmark = pytest.mark.usefixtures("no_tf32")  # fp32 comparisons without TF32 on CUDA


@dataclasses.dataclass(frozen=True)
class Case:
    transposed: bool
    c_in: int
    c_out: int
    hw: tuple
    k: int
    stride: int
    padding: int
    output_padding: int = 0


CASES = {
    "D-k4s2-8x8to4x4": Case(False, 8, 5, (8, 8), 4, 2, 1),           # DCGAN discriminator
    "G-k4s1-1x1to4x4": Case(True, 8, 5, (1, 1), 4, 1, 0),            # DCGAN generator input
    "G-k4s2-4x4to8x8": Case(True, 8, 5, (4, 4), 4, 2, 1),            # DCGAN generator
    "D-k3s1-3to63-7x5": Case(False, 3, 63, (7, 5), 3, 1, 1),         # general, odd channels
    "G-k3s1-63to3-7x5": Case(True, 63, 3, (7, 5), 3, 1, 1),
    "D-k3s2p0-7x5": Case(False, 6, 7, (7, 5), 3, 2, 0),              # floor in the output size
    "G-k3s2p1op1-3x5": Case(True, 5, 7, (3, 5), 3, 2, 1, 1),         # taps not divisible by stride
}
HALF_CASES = ["D-k4s2-8x8to4x4", "G-k4s1-1x1to4x4", "G-k4s2-4x4to8x8", "G-k3s2p1op1-3x5"]

NCHW_CASES = ["D-k4s2-8x8to4x4", "G-k4s1-1x1to4x4", "G-k4s2-4x4to8x8", "D-k3s2p0-7x5",
              "G-k3s2p1op1-3x5"]
PARAMS = (
    [pytest.param(c, "cl", torch.float32, id=f"{c}-cl-fp32") for c in CASES]
    + [pytest.param(c, "nchw", torch.float32, id=f"{c}-nchw-fp32") for c in NCHW_CASES]
    + [pytest.param(c, "cl", dt, id=f"{c}-cl-{name}")
       for c in HALF_CASES for dt, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"))]
    + [pytest.param("G-k4s2-4x4to8x8", "nchw", torch.bfloat16, id="G-k4s2-4x4to8x8-nchw-bf16")]
)


def _fmt(t, fmt):
    cl = fmt == "cl"
    return t.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def _make(case, fmt, dtype, seed=0, bias_value=None, kink=False, affine=True, conv_bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, case.c_in, *case.hw, generator=g)
    wshape = (case.c_in, case.c_out) if case.transposed else (case.c_out, case.c_in)
    w = torch.randn(*wshape, case.k, case.k, generator=g) / (case.c_in * case.k * case.k) ** 0.5
    b = torch.randn(case.c_out, generator=g) if conv_bias else None
    if b is not None and bias_value is not None:
        b = b * 0.1 + bias_value
    bn_w = 1.0 + 0.5 * torch.randn(case.c_out, generator=g) if affine else None
    bn_b = 0.5 * torch.randn(case.c_out, generator=g) if affine else None
    if kink:  # z == 0 exactly on these channels: the derivative there must be `slope`
        bn_w[::2] = 0.0
        bn_b[::2] = 0.0
    x = _fmt(x.to(dtype), fmt)
    w = w.to(dtype)
    b = b.to(dtype) if b is not None else None
    return x, w, b, bn_w, bn_b


def _is_format(out, x, fmt):
    """Outputs follow the input's layout; an (N, C, 1, 1) input made with
    .contiguous(memory_format=channels_last) is both layouts, so either is right."""
    if fmt == "cl" and not x.is_contiguous():
        return out.is_contiguous(memory_format=torch.channels_last)
    if fmt == "nchw":
        return out.is_contiguous()
    return True


def _conv64(case, x, w, b):
    if case.transposed:
        return F.conv_transpose2d(x, w, b, case.stride, case.padding, case.output_padding)
    return F.conv2d(x, w, b, case.stride, case.padding)


def _leaves(*ts):
    return [t.detach().double().cpu().requires_grad_() if t is not None else None for t in ts]


def _bn_act64(y, bn_w, bn_b, grad):
    a = F.leaky_relu(F.batch_norm(y, None, None, bn_w, bn_b, True, 0.0, EPS), SLOPE)
    (a * grad.double().cpu()).sum().backward()


def _oracle_train(case, x, w, b, bn_w, bn_b, grad):
    """Float64 autograd of the whole block: (y, mean, var, [grads of x, w, b, bn_w, bn_b])."""
    leaves = _leaves(x, w, b, bn_w, bn_b)
    y = _conv64(case, *leaves[:3])
    _bn_act64(y, *leaves[3:], grad)
    yd = y.detach()
    return (yd, yd.mean((0, 2, 3)), yd.var((0, 2, 3), unbiased=False),
            [t.grad if t is not None else None for t in leaves])


def _oracle_given_y(case, x, w, b, bn_w, bn_b, grad, y_stored):
    """Float64 gradients of the block given the conv output *as stored* (rounded to
    fp16/bf16): BN+activation backward on y_stored, then the conv backward. Rounding y
    can flip the sign of z next to the kink, an O(1) change of dz there that any
    half-precision implementation (eager PyTorch too) shares; this oracle leaves it out."""
    xd, wd, bd, bwd, bbd = _leaves(x, w, b, bn_w, bn_b)
    y64 = y_stored.detach().double().cpu().requires_grad_()
    _bn_act64(y64, bwd, bbd, grad)
    conv = _conv64(case, xd, wd, bd)
    inputs = [t for t in (xd, wd, bd) if t is not None]
    grads = list(torch.autograd.grad(conv, inputs, y64.grad))
    return grads[:2] + [grads[2] if bd is not None else None,
                        bwd.grad if bwd is not None else None,
                        bbd.grad if bbd is not None else None]


def _err(got, ref, scale=None):
    ref = ref.double().cpu()
    scale = ref.abs().max().item() if scale is None else scale
    return (got.double().cpu() - ref).abs().max().item() / max(scale, 1e-12)


def _stats(case, x, w, b):
    if case.transposed:
        return tconv.conv_transpose2d_stats(x, w, b, case.stride, case.padding, case.output_padding)
    return tconv.conv2d_stats(x, w, b, case.stride, case.padding)


def _check_train(case, fmt, dtype, tol=None, **make_kw):
    tol = TOL[dtype] if tol is None else tol
    x, w, b, bn_w, bn_b = _make(case, fmt, dtype, **make_kw)
    dev = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
    x, w, b, bn_w, bn_b = map(dev, (x, w, b, bn_w, bn_b))

    y, mean, var = _stats(case, x, w, b)
    grad = _fmt(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype), fmt)
    y_ref, mean_ref, var_ref, grads_ref = _oracle_train(case, x, w, b, bn_w, bn_b, grad)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert _is_format(y, x, fmt)
    assert mean.dtype == torch.float32 and var.dtype == torch.float32
    assert mean.shape == var.shape == (case.c_out,)
    assert _err(y, y_ref) < tol
    # statistics of y as stored, accumulated in fp32 whatever y's dtype
    ys = y.double().cpu()
    std = var_ref.sqrt().max().item()
    for ref in [ys] + ([y_ref] if dtype == torch.float32 else []):
        m_ref = ref.mean((0, 2, 3))
        # mean: to STAT_TOL of the spread, plus the fp32 rounding of a large mean itself
        bound = STAT_TOL * std + 4 * torch.finfo(torch.float32).eps * m_ref.abs()
        assert ((mean.double().cpu() - m_ref).abs() <= bound).all()
        assert _err(var, ref.var((0, 2, 3), unbiased=False)) < STAT_TOL

    out = tconv.bn_act_conv_backward(grad.to(DEVICE), x, w, y, mean, var, bn_w, bn_b, EPS, SLOPE,
                                     case.stride, case.padding, case.transposed,
                                     has_conv_bias=b is not None)
    gx, gw, gb, gbn_w, gbn_b = out
    if dtype != torch.float32:
        grads_ref = _oracle_given_y(case, x, w, b, bn_w, bn_b, grad, y)
    rx, rw, rb, rbn_w, rbn_b = grads_ref
    assert gx.shape == x.shape and gx.dtype == dtype
    assert _is_format(gx, x, fmt)
    assert gw.shape == w.shape and gw.dtype == w.dtype
    assert _err(gx, rx) < tol, _err(gx, rx)
    assert _err(gw, rw) < tol, _err(gw, rw)
    if b is None:
        assert gb is None
    else:
        # ~0 in training mode: compare on the scale of the per-channel sums of dL/dz
        assert _err(gb, rb, scale=rbn_b.abs().max().item()) < tol
    if bn_w is None:
        assert gbn_w is None and gbn_b is None
    else:
        assert _err(gbn_w, rbn_w) < tol, _err(gbn_w, rbn_w)
        assert _err(gbn_b, rbn_b) < tol, _err(gbn_b, rbn_b)


@pytest.mark.parametrize("case,fmt,dtype", PARAMS)
def test_train_forward_stats_and_backward(case, fmt, dtype):
    _check_train(CASES[case], fmt, dtype)


@pytest.mark.parametrize("case,fmt,dtype", PARAMS)
def test_eval_one_kernel(case, fmt, dtype):
    c = CASES[case]
    x, w, b, bn_w, bn_b = _make(c, fmt, dtype, seed=2)
    g = torch.Generator().manual_seed(3)
    rm, rv = 0.3 * torch.randn(c.c_out, generator=g), 0.5 + torch.rand(c.c_out, generator=g)
    args = [t.to(DEVICE) for t in (x, w, b, bn_w, bn_b, rm, rv)]
    if c.transposed:
        out = tconv.conv_transpose2d_bn_act_eval(*args, EPS, SLOPE, c.stride, c.padding,
                                                 c.output_padding)
    else:
        out = tconv.conv2d_bn_act_eval(*args, EPS, SLOPE, c.stride, c.padding)
    d = [t.double() for t in (x, w, b, bn_w, bn_b, rm, rv)]
    ref = F.leaky_relu(F.batch_norm(_conv64(c, d[0], d[1], d[2]), d[5], d[6], d[3], d[4],
                                    False, 0.0, EPS), SLOPE)
    assert out.dtype == dtype and out.shape == ref.shape
    assert _is_format(out, x, fmt)
    assert _err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("case", ["D-k4s2-8x8to4x4", "G-k4s2-4x4to8x8"])
def test_large_mean(case):
    """Conv bias 100 (output mean ~100, spread ~1): the statistics must not cancel."""
    _check_train(CASES[case], "cl", torch.float32, tol=5e-5, bias_value=100.0)


@pytest.mark.parametrize("case", ["D-k3s2p0-7x5", "G-k4s2-4x4to8x8"])
def test_kink_exact_zero(case):
    """bn weight = bn bias = 0 on half the channels: z == 0 exactly, d act/dz = slope."""
    _check_train(CASES[case], "cl", torch.float32, kink=True)


def test_no_affine_no_conv_bias():
    _check_train(CASES["G-k4s2-4x4to8x8"], "nchw", torch.float32, affine=False, conv_bias=False)


def test_wgrad_split_and_no_input_grad():
    c = CASES["D-k3s1-3to63-7x5"]
    x, w, b, bn_w, bn_b = (t.to(DEVICE) for t in _make(c, "cl", torch.float32))
    y, mean, var = _stats(c, x, w, b)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    *_, grads_ref = _oracle_train(c, x, w, b, bn_w, bn_b, grad)
    gx, gw, gb, gbn_w, gbn_b = tconv.bn_act_conv_backward(
        grad, x, w, y, mean, var, bn_w, bn_b, EPS, SLOPE, c.stride, c.padding, False,
        needs_input_grad=False, wgrad_split=3)  # 70 pixels -> 2 splits of 64
    assert gx is None
    assert _err(gw, grads_ref[1]) < 1e-5
    assert _err(gbn_w, grads_ref[3]) < 1e-5


def test_rejects_bad_input():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(TypeError):
        tconv.conv2d_stats(x, torch.randn(5, 3, 3, 3, dtype=torch.float64), None, 1, 1)
    with pytest.raises(ValueError):
        tconv.conv2d_stats(x.float(), torch.randn(5, 4, 3, 3), None, 1, 1)


@pytest.mark.parametrize("scale", [1e19, 1e25, 1e30])
@pytest.mark.parametrize("case", ["D-k4s2-8x8to4x4", "G-k4s2-4x4to8x8"])
def test_huge_inputs_stay_finite(case, scale):
    """Inputs around 1e19..1e30 (issue 14): the statistics in the GEMM epilogue must not
    overflow where stock conv + BatchNorm stays finite. 1e19: var ~1e38 still fits fp32
    (a raw sum of squares overflowed): mean, var and the output match float64 (stock
    fp32 BatchNorm's own output is already flat there). 1e25/1e30: var is
    beyond fp32, so it is inf (as stock's fp32 running_var becomes); the mean stays exact
    and the block's output and gradients stay finite wherever stock's are."""
    from gan_fast.kernels.triton import bn_act as tbn
    c = CASES[case]
    x, w, _, bn_w, bn_b = _make(c, "cl", torch.float32, seed=7, conv_bias=False)
    x = x * scale
    xd, wd = x.to(DEVICE), w.to(DEVICE)
    conv_stats = tconv.conv_transpose2d_stats if c.transposed else tconv.conv2d_stats
    y, mean, var = conv_stats(xd, wd, None, c.stride, c.padding)
    out = tbn.bn_act_eval_fwd(y, bn_w.to(DEVICE), bn_b.to(DEVICE), mean, var, EPS, SLOPE)
    y64 = y.double().cpu()
    m64, v64 = y64.mean((0, 2, 3)), y64.var((0, 2, 3), unbiased=False)
    assert torch.isfinite(mean).all(), mean
    assert torch.allclose(mean.double().cpu(), m64, rtol=1e-5, atol=1e-5 * v64.sqrt().max().item())
    fits = v64 < torch.finfo(torch.float32).max
    assert torch.allclose(var.double().cpu()[fits], v64[fits], rtol=1e-5)
    assert torch.isinf(var.cpu()[~fits]).all() and not torch.isnan(var).any()
    # stock: fp32 conv + BatchNorm (training) + LeakyReLU, forward and backward
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    ys = (F.conv_transpose2d(xs, ws, None, c.stride, c.padding) if c.transposed
          else F.conv2d(xs, ws, None, c.stride, c.padding))
    stock = F.leaky_relu(F.batch_norm(ys, None, None, bn_w, bn_b, True, 0.0, EPS), SLOPE)
    grad = torch.randn(stock.shape, generator=torch.Generator().manual_seed(8))
    stock.backward(grad)
    assert torch.isfinite(out.cpu())[torch.isfinite(stock.detach())].all()
    if bool(fits.all()):   # float64 BatchNorm of y as stored (stock's fp32 gives up here)
        ref = F.leaky_relu(F.batch_norm(y64, None, None, bn_w.double(), bn_b.double(), True,
                                        0.0, EPS), SLOPE)
        assert _err(out, ref) < 1e-4
    gx, gw, _, gbw, gbb = tconv.bn_act_conv_backward(
        grad.to(DEVICE).contiguous(memory_format=torch.channels_last), xd, wd, y, mean, var,
        bn_w.to(DEVICE), bn_b.to(DEVICE), EPS, SLOPE, c.stride, c.padding,
        transposed=c.transposed, has_conv_bias=False)
    for got, ref in ((gx, xs.grad), (gw, ws.grad)):
        assert not torch.isnan(got).any()
        assert torch.isfinite(got.cpu())[torch.isfinite(ref)].all()

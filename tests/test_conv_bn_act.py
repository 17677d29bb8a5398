"""The fused conv -> BatchNorm2d -> activation path (gan_fast/ops/conv_block.py and
conv_bn_act.py) through the modules (Conv2dBNAct / ConvTranspose2dBNAct, fuse()) against
the stock nn layers.

The triton backend is forced; without a GPU its kernels run in the Triton interpreter on
CPU tensors (slow: tiny DCGAN-like shapes, and the BatchNorm variants run on a subset of
the cases). Every test checks that the fused kernels were really called (or, for the
fallback cases, that they were not).

Tolerances (errors observed in the interpreter in brackets): fp32 outputs, input
gradients and running statistics atol 1e-5 / rtol 1e-4 [<= 3.4e-6 abs, 4.4e-7 relative
to the largest magnitude], parameter gradients atol 1e-4 / rtol 1e-4 [conv weight
gradient (magnitude ~100) 5.3e-5 abs, others <= 1.7e-5]. bf16 (against fp32 stock layers
holding the same bf16-rounded parameters and input): every tensor within 3e-2 of the
largest magnitude of the stock result [outputs and gradients <= 7.4e-3; running_mean,
kept in bf16 buffers, 1.2e-2]; the conv bias gradient, which BatchNorm makes ~0, within
3e-2 of the conv weight gradient's scale.
"""
import copy

import pytest
import torch
from torch import nn

from helpers import TRITON_CONV_KERNELS as KERNELS, assert_same_step, count_calls, require_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
require_triton(DEVICE)

import gan_fast  # noqa: E402
from gan_fast.kernels.triton import conv as tconv  # noqa: E402
from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct  # noqa: E402


pytestmark = pytest.mark.usefixtures("no_tf32")  # fp32 comparisons without TF32 on CUDA


@pytest.fixture
def calls(monkeypatch):
    """Forces the triton backend and counts the calls into the Triton conv kernels."""
    counts = count_calls(monkeypatch, tconv, KERNELS)
    with gan_fast.use_backend("triton"):
        yield counts


CASES = {  # (class, constructor kwargs, input shape)
    "G-k4s1-1x1to4x4": (ConvTranspose2dBNAct, dict(in_channels=8, out_channels=6, kernel_size=4,
                                                   stride=1, padding=0, bias=False), (2, 8, 1, 1)),
    "G-k4s2-4x4to8x8": (ConvTranspose2dBNAct, dict(in_channels=6, out_channels=5, kernel_size=4,
                                                   stride=2, padding=1), (2, 6, 4, 4)),
    "D-k4s2-8x8to4x4": (Conv2dBNAct, dict(in_channels=3, out_channels=6, kernel_size=4, stride=2,
                                          padding=1, bias=False), (2, 3, 8, 8)),
    "D-k3s1-odd": (Conv2dBNAct, dict(in_channels=5, out_channels=7, kernel_size=3, stride=1,
                                     padding=1, negative_slope=0.0), (3, 5, 7, 5)),
}
BN = {"default": {}, "momentum_none": {"momentum": None}, "affine_false": {"affine": False},
      "no_running_stats": {"track_running_stats": False}}
PARAMS = (
    [pytest.param(c, cl, "default", id=f"{c}-{'cl' if cl else 'nchw'}-default")
     for c in CASES for cl in (False, True)]
    + [pytest.param(c, True, "momentum_none", id=f"{c}-cl-momentum_none")
       for c in ("G-k4s2-4x4to8x8", "D-k4s2-8x8to4x4")]
    + [pytest.param(c, False, "affine_false", id=f"{c}-nchw-affine_false")
       for c in ("G-k4s1-1x1to4x4", "D-k3s1-odd")]
    + [pytest.param("D-k4s2-8x8to4x4", False, "no_running_stats", id="D-k4s2-8x8to4x4-nchw-no_running_stats")]
)


def _make(case, bn_kwargs, channels_last, dtype=torch.float32, seed=0):
    cls, kwargs, shape = CASES[case]
    torch.manual_seed(seed)
    block = cls(**kwargs, **bn_kwargs)
    if block.bn.affine:
        with torch.no_grad():
            block.bn.weight.uniform_(0.5, 1.5)
            block.bn.bias.uniform_(-0.3, 0.3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    block = block.to(DEVICE, dtype, memory_format=fmt)
    # the stock oracle: fp32 layers holding the same (for bf16: rounded) parameters
    twin = copy.deepcopy(block.to_stock()).to(torch.float32)
    x = torch.randn(shape).to(DEVICE).contiguous(memory_format=fmt)
    return block, twin, x


def _step(block, twin, x, dtype):
    xa = x.detach().to(dtype, copy=True).requires_grad_()
    xb = xa.detach().float().requires_grad_()
    ya, yb = block(xa), twin(xb)
    g = torch.randn(yb.shape, device=yb.device)
    ya.backward(g.to(dtype))
    yb.backward(g)
    return (ya, yb), (xa.grad, xb.grad)


def _close(got, ref, tol, what, scale=None):
    if tol is None:  # fp32: tight elementwise tolerances
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4, msg=lambda m: f"{what}: {m}")
        return
    ref = ref.double()
    scale = max(ref.abs().max().item(), 1e-6) if scale is None else scale
    err = (got.double() - ref).abs().max().item() / scale
    assert err < tol, f"{what}: error {err:.2e} (relative to {scale:.2e}) >= {tol}"


def _check_block(block, twin, x, calls, dtype=torch.float32, tol=None, steps=3):
    transposed = isinstance(block[0], nn.ConvTranspose2d)
    stats = "conv_transpose2d_stats" if transposed else "conv2d_stats"
    evalk = "conv_transpose2d_bn_act_eval" if transposed else "conv2d_bn_act_eval"
    for i in range(steps):
        (ya, yb), (ga, gb) = _step(block, twin, x, dtype)
        assert ya.dtype == dtype and ya.shape == yb.shape
        _close(ya, yb, tol, f"step {i} output")
        _close(ga, gb, tol, f"step {i} grad x")
    assert calls[stats] == steps and calls["bn_act_conv_backward"] == steps, calls
    ptol = (lambda a, b, what, scale=None: torch.testing.assert_close(
        a, b, atol=1e-4, rtol=1e-4, msg=lambda m: f"{what}: {m}")) if tol is None else (
        lambda a, b, what, scale=None: _close(a, b, tol, what, scale))
    wscale = twin[0].weight.grad.abs().max().item()
    for (na, pa), (nb, pb) in zip(block.named_parameters(), twin.named_parameters()):
        assert na == nb
        ptol(pa.grad.float(), pb.grad, f"{na}.grad", wscale if na == "0.bias" else None)
    for (na, ba), (nb, bb) in zip(block.named_buffers(), twin.named_buffers()):
        assert na == nb
        if na.endswith("num_batches_tracked"):
            assert torch.equal(ba, bb)
        else:
            _close(ba.float(), bb, tol, na)

    block.eval(), twin.eval()
    (ya, yb), (ga, gb) = _step(block, twin, x, dtype)
    _close(ya, yb, tol, "eval output")
    _close(ga, gb, tol, "eval grad x")
    if block.bn.track_running_stats:
        assert calls[evalk] == 1, calls
    else:  # eval without running statistics uses batch statistics: the training op
        assert calls[stats] == steps + 1, calls


@pytest.mark.parametrize("case,channels_last,bn", PARAMS)
def test_block_matches_stock_fp32(calls, case, channels_last, bn):
    block, twin, x = _make(case, BN[bn], channels_last)
    _check_block(block, twin, x, calls)


def test_block_matches_stock_bf16(calls):
    """bf16 block (parameters, buffers, activations) against fp32 stock layers that hold
    the same bf16-rounded parameters, fed the same bf16-rounded input."""
    block, twin, x = _make("G-k4s2-4x4to8x8", {}, True, dtype=torch.bfloat16)
    _check_block(block, twin, x, calls, dtype=torch.bfloat16, tol=3e-2, steps=2)


def test_fuse_takes_the_fused_path(calls):
    stock = nn.Sequential(nn.ConvTranspose2d(6, 5, 4, 2, 1, bias=False), nn.BatchNorm2d(5),
                          nn.ReLU(), nn.Conv2d(5, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.LeakyReLU(0.2))
    fused = gan_fast.fuse(copy.deepcopy(stock), verbose=False)
    x = torch.randn(2, 6, 4, 4)
    assert_same_step(stock, fused, x)
    assert calls["conv_transpose2d_stats"] == calls["conv2d_stats"] == 1
    assert calls["bn_act_conv_backward"] == 2
    # an explicit output_size goes the stock way
    fused[0](x, output_size=(8, 8))
    assert calls["conv_transpose2d_stats"] == 1


@pytest.mark.parametrize("kwargs", [dict(groups=2), dict(dilation=2), dict(padding_mode="reflect")],
                         ids=["groups2", "dilation2", "reflect"])
def test_unsupported_convs_fall_back(calls, kwargs):
    torch.manual_seed(0)
    block = Conv2dBNAct(4, 6, 3, padding=1, **kwargs)
    twin = copy.deepcopy(block.to_stock())
    x = torch.randn(2, 4, 6, 6)
    (ya, yb), (ga, gb) = _step(block, twin, x, torch.float32)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)
    assert not any(calls.values()), calls


def test_one_value_per_channel_error(calls):
    block = Conv2dBNAct(3, 4, 4)  # 4x4 -> 1x1
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError) as stock:
        block.to_stock()(x)
    with pytest.raises(ValueError) as ours:
        block(x)
    assert str(ours.value) == str(stock.value)
    assert not any(calls.values())


def test_ops_opcheck(calls):
    """torch.library's checker (schema, fake impls vs real strides, autograd registration)."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 5, 4, 4).requires_grad_()  # ConvTranspose2d weight (C_in, C_out, k, k)
    bn_w, bn_b = torch.rand(5).requires_grad_(), torch.randn(5).requires_grad_()
    conv = (True, [2, 2], [1, 1], [0, 0])
    torch.library.opcheck(torch.ops.gan_fast.conv_bn_act_train,
                          (x, w, None, bn_w, bn_b, *conv, 1e-5, 0.2))
    torch.library.opcheck(torch.ops.gan_fast.conv_bn_act_eval,
                          (x, w, None, bn_w, bn_b, torch.randn(5), torch.rand(5) + 0.5, *conv, 1e-5, 0.2))
    assert calls["conv_transpose2d_stats"] > 0 and calls["bn_act_conv_backward"] > 0


def test_compile_fullgraph(calls):
    """torch.compile(fullgraph=True) traces the fused ops (their fake impls) and, on CPU,
    inductor calls them as opaque kernels, i.e. the Triton interpreter still runs them."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = Conv2dBNAct(4, 6, 4, 2, 1, momentum=None)
    eager = copy.deepcopy(block)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 4, 8, 8)
    for _ in range(2):
        assert_same_step(eager, compiled, x, param_atol=1e-5)
    assert calls["conv2d_stats"] == 4 and calls["bn_act_conv_backward"] == 4
    block.eval(), eager.eval()
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)
    assert calls["conv2d_bn_act_eval"] == 2

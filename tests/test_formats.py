"""Memory formats (gan_fast/_formats.py): every backend gives its outputs stock's strides,
also for tensors that are contiguous in both formats (C == 1 or H == W == 1), where stock
follows two rules: BatchNorm and elementwise ops give NCHW strides, a convolution keeps
channels_last (input or weight). Values are compared with the same stock layers.

Shapes are tiny: the triton backend runs in the Triton interpreter on CPU.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan_fast import _formats
from gan_fast import functional as GF
from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct
from helpers import require_triton

CL = torch.channels_last


def cl(t):
    """t in channels_last strides, also where t is NCHW-contiguous too (torch.contiguous
    would leave such a tensor as it is)."""
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=CL)
    return out.copy_(t)


def _x(shape, layout, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device)
    return cl(x) if layout == "cl" else x


# ------------------------------------------------------------------ the rules themselves
RULE_SHAPES = [(2, 3, 4, 5), (2, 3, 1, 1), (2, 1, 4, 5), (2, 1, 1, 1), (1, 3, 1, 5), (2, 3, 4, 1)]


@pytest.mark.parametrize("shape", RULE_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_rules_match_stock(shape, layout):
    x = _x(shape, layout)
    stock_bn = F.leaky_relu(F.batch_norm(x, None, None, training=True), 0.2)
    assert torch.empty(shape, memory_format=_formats.memory_format(x)).stride() == stock_bn.stride()
    assert _formats.channels_last(x) == (_formats.memory_format(x) == CL)
    assert _formats.like_channels_last(x) == (
        torch._prims_common.suggest_memory_format(x) == CL)
    for wl in ("nchw", "cl"):
        w = _x((4, shape[1], 1, 1), wl, seed=1)
        y = F.conv2d(x, w)
        fmt = _formats.conv_memory_format(x, w)
        assert torch.empty(y.shape, memory_format=fmt).stride() == y.stride(), (layout, wl)
        after = F.leaky_relu(F.batch_norm(y, None, None, training=True), 0.2)
        want = torch.empty(y.shape, memory_format=_formats.after_conv(y.shape, fmt)).stride()
        assert want == after.stride(), (layout, wl)


def test_dtypes_one_list():
    from gan_fast import _checks
    assert _checks.FLOAT_DTYPES is _formats.DTYPES
    assert set(_formats.GPU_DTYPES) == set(_formats.DTYPES) - {torch.float64}


# --------------------------------------------------------------------------- bn_act
BN_CASES = [((2, 3, 4, 5), "nchw"), ((2, 3, 4, 5), "cl"), ((2, 3, 1, 1), "nchw"),
            ((2, 3, 1, 1), "cl"), ((2, 1, 4, 5), "nchw"), ((2, 1, 4, 5), "cl")]


@pytest.mark.parametrize("shape,layout", BN_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_act_strides_as_stock(backend, shape, layout, training):
    _, device = backend
    x = _x(shape, layout, device).requires_grad_()
    bn = nn.BatchNorm2d(shape[1]).to(device)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    ref = copy.deepcopy(bn).train(training)
    xs = x.detach().clone().requires_grad_()
    want = F.leaky_relu(ref(xs), 0.2)
    out = GF.bn_act(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=training,
                    momentum=bn.momentum, eps=bn.eps, negative_slope=0.2)
    assert out.stride() == want.stride()
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    g = torch.randn(out.shape, device=device)
    out.backward(g)
    want.backward(g)
    torch.testing.assert_close(x.grad, xs.grad, atol=2e-5, rtol=2e-5)
    if training:
        torch.testing.assert_close(bn.running_var, ref.running_var)


# ----------------------------------------------------------------------- conv blocks
# (transposed, in, out, kernel, stride, padding, x shape): the DCGAN generator's first
# block on a (N, nz, 1, 1) input, a discriminator block ending at 1x1, a 1-channel input,
# and an ordinary block.
BLOCKS = {
    "G-1x1to4x4": (True, 4, 3, 4, 1, 0, (2, 4, 1, 1)),
    "D-4x4to1x1": (False, 3, 4, 4, 1, 0, (2, 3, 4, 4)),
    "D-1ch": (False, 1, 3, 3, 1, 1, (2, 1, 4, 4)),
    "D-k3": (False, 2, 3, 3, 2, 1, (2, 2, 5, 5)),
}
LAYOUTS = [("nchw", "nchw"), ("cl", "nchw"), ("nchw", "cl"), ("cl", "cl")]  # (x, weight)


def _blocks(case, device, wl):
    transposed, cin, cout, k, s, p, _ = BLOCKS[case]
    cls = ConvTranspose2dBNAct if transposed else Conv2dBNAct
    torch.manual_seed(0)
    fused = cls(cin, cout, k, s, p, negative_slope=0.2).to(device)
    with torch.no_grad():
        fused.bn.weight.uniform_(0.5, 1.5)
        fused.bn.bias.uniform_(-0.5, 0.5)
        fused.bn.running_mean.uniform_(-0.5, 0.5)
        fused.bn.running_var.uniform_(0.5, 1.5)
    if wl == "cl":
        fused = fused.to(memory_format=CL)
    stock = copy.deepcopy(fused.to_stock())
    return fused, stock


def _check_block(run, stock, x, training):
    xs = x.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    stock.train(training)
    want = stock(xs)
    out = run(x)
    assert out.stride() == want.stride(), f"strides {out.stride()}, stock {want.stride()}"
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    if training:
        g = torch.randn(out.shape, device=out.device)
        out.backward(g)
        want.backward(g)
        torch.testing.assert_close(x.grad, xs.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", list(BLOCKS))
@pytest.mark.parametrize("layouts", LAYOUTS, ids=lambda v: f"x_{v[0]}-w_{v[1]}")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_block_module_strides_as_stock(backend, case, layouts, training):
    _, device = backend
    xl, wl = layouts
    fused, stock = _blocks(case, device, wl)
    fused.train(training)
    _check_block(fused, stock, _x(BLOCKS[case][6], xl, device), training)
    if training:
        torch.testing.assert_close(fused.bn.running_mean, stock[1].running_mean)
        torch.testing.assert_close(fused.bn.running_var, stock[1].running_var)


@pytest.mark.parametrize("case", list(BLOCKS))
@pytest.mark.parametrize("layouts", [("cl", "nchw"), ("nchw", "cl")],
                         ids=lambda v: f"x_{v[0]}-w_{v[1]}")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_block_functional_strides_as_stock(backend, case, layouts, training):
    _, device = backend
    xl, wl = layouts
    fused, stock = _blocks(case, device, wl)
    conv, bn = fused.conv, fused.bn
    fn = GF.conv_transpose2d_bn_act if conv.transposed else GF.conv2d_bn_act

    def run(x):
        return fn(x, conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                  stride=conv.stride, padding=conv.padding, training=training,
                  momentum=bn.momentum, eps=bn.eps, negative_slope=0.2,
                  num_batches_tracked=bn.num_batches_tracked)

    _check_block(run, stock, _x(BLOCKS[case][6], xl, device), training)


def test_fake_block_outputs_match_real():
    """The fused-conv ops' fake implementations give the real outputs' strides."""
    require_triton("cpu")  # under CI (GAN_FAST_REQUIRE_TRITON=1) an error, not a skip
    from torch._subclasses.fake_tensor import FakeTensorMode

    from gan_fast.ops import conv_bn_act as ops
    for case in ("G-1x1to4x4", "D-4x4to1x1"):
        transposed, cin, cout, k, s, p, shape = BLOCKS[case]
        for xl, wl in LAYOUTS:
            w = _x((cin, cout, k, k) if transposed else (cout, cin, k, k), wl, seed=1)
            x = _x(shape, xl)
            c = torch.ones(cout)
            args = (x, w, None, c, c * 0)
            geo = (transposed, [s, s], [p, p], [0, 0], 1e-5, 0.2)
            real = ops.conv_bn_act_train(*args, *geo)
            real_eval = ops.conv_bn_act_eval(*args, c * 0, c, *geo)
            with FakeTensorMode(allow_non_fake_inputs=True):
                fake = ops.conv_bn_act_train(*args, *geo)
                fake_eval = ops.conv_bn_act_eval(*args, c * 0, c, *geo)
            for r, f in zip((*real, real_eval), (*fake, fake_eval)):
                assert r.shape == f.shape and r.stride() == f.stride(), (case, xl, wl)


def test_opcheck_on_tensors_contiguous_both_ways():
    """torch.library's checker (fake impls vs real strides among others) on the edge layouts."""
    require_triton("cpu")
    torch.manual_seed(0)
    bn_w, bn_b = torch.rand(4).requires_grad_(), torch.randn(4).requires_grad_()
    stats = (torch.randn(4), torch.rand(4) + 0.5)
    one = ([1, 1], [0, 0], [0, 0])  # stride, padding, output_padding
    for x, w, geo in ((cl(torch.randn(2, 5, 1, 1)), cl(torch.randn(5, 4, 4, 4)), (True, *one)),
                      (cl(torch.randn(2, 3, 4, 4)), torch.randn(4, 3, 4, 4), (False, *one))):
        x, w = x.requires_grad_(), w.requires_grad_()
        args = (x, w, None, bn_w, bn_b)
        torch.library.opcheck(torch.ops.gan_fast.conv_bn_act_train, (*args, *geo, 1e-5, 0.2))
        torch.library.opcheck(torch.ops.gan_fast.conv_bn_act_eval, (*args, *stats, *geo, 1e-5, 0.2))
    x = cl(torch.randn(3, 4, 1, 1)).requires_grad_()
    torch.library.opcheck(torch.ops.gan_fast.bn_act_train, (x, bn_w, bn_b, 1e-5, 0.2))
    torch.library.opcheck(torch.ops.gan_fast.bn_act_eval, (x, bn_w, bn_b, *stats, 1e-5, 0.2))

"""The Triton fused conv -> InstanceNorm2d -> activation and conv + bias -> activation blocks
(gan_fast/ops/conv_in_act.py, conv_act.py; kernels conv_in_stats / conv_act in
gan_fast/kernels/triton/conv.py) against stock PyTorch, in float32.

Kernel level: y and the per-(image, channel) statistics of the PER_IMAGE epilogue, and the
activation epilogue, against F.conv*. Module level (``gan_fast.fuse`` on the triton
backend vs the stock layers; the norm-free block's backward is the Triton dgrad/wgrad
GEMMs with dy rebuilt in their loads, tests/helpers.assert_fused_same): forward, every gradient,
running statistics, training and eval, NCHW and channels_last inputs, Conv2d and
ConvTranspose2d; the kernels are counted so a silent fall-back to the stock conv fails.
Without a GPU the kernels run in the Triton interpreter: tiny shapes.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_fused_same, count_calls, require_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
require_triton(DEVICE)

import gan_fast  # noqa: E402
from gan_fast import backends  # noqa: E402
from gan_fast.kernels.triton import conv as tconv  # noqa: E402
from gan_fast.ops import conv_block as cba  # noqa: E402

TOL = dict(atol=2e-5, rtol=2e-5)
KERNELS = ("conv_in_stats", "conv_act", "_conv_bn_act_eval", "act_conv_backward")
pytestmark = pytest.mark.usefixtures("no_tf32")  # fp32 comparisons without TF32 on CUDA


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # the layers' initial weights: independent of the tests run before


@pytest.fixture
def calls(monkeypatch):
    return count_calls(monkeypatch, tconv, KERNELS)


@pytest.fixture
def triton_backend():
    with gan_fast.use_backend("triton"):
        yield


def _fmt(t, cl):
    return t.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


# (transposed, c_in, c_out, (H, W), k, stride, padding, output_padding, N)
GEOMETRIES = {
    "conv-s2-7x5": (False, 3, 37, (7, 5), 3, 2, 0, 0, 3),      # C_out not a multiple of 32
    "convT-s2-3x5-op1": (True, 5, 7, (3, 5), 3, 2, 1, 1, 2),   # taps not divisible by stride
    "convT-k4s2-3x3": (True, 4, 6, (3, 3), 4, 2, 1, 0, 3),
}


def _conv(geo, bias=True):
    transposed, c_in, c_out, _, k, s, p, op, _ = geo
    if transposed:
        return nn.ConvTranspose2d(c_in, c_out, k, s, p, op, bias=bias)
    return nn.Conv2d(c_in, c_out, k, s, p, bias=bias)


def _x(geo, cl, seed=0):
    g = torch.Generator().manual_seed(seed)
    _, c_in, _, (h, w), *_, n = geo
    return _fmt(torch.randn(n, c_in, h, w, generator=g), cl).to(DEVICE)


def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g).to(p.device))
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm2d) and m.running_var is not None:
                m.running_mean.normal_(0.0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model


# ------------------------------------------------------------------------ kernel level
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("name", GEOMETRIES)
def test_per_image_statistics_and_activation_epilogue(name, cl):
    geo = GEOMETRIES[name]
    transposed, _, _, _, _, s, p, op, n = geo
    conv = _randomize(_conv(geo)).to(DEVICE)
    x = _x(geo, cl)
    w, b = conv.weight.detach(), conv.bias.detach()
    ref = (F.conv_transpose2d(x, w, b, s, p, op) if transposed else F.conv2d(x, w, b, s, p))
    y, mean, var = tconv.conv_in_stats(x, w, b, s, p, op, transposed)
    assert y.is_contiguous()  # NCHW, as stock instance_norm reads it
    torch.testing.assert_close(y, ref, **TOL)
    torch.testing.assert_close(mean, y.mean((2, 3)).flatten(), **TOL)
    torch.testing.assert_close(var, y.var((2, 3), unbiased=False).flatten(), **TOL)
    for slope in (0.0, 0.2):
        a = tconv.conv_act(x, w, b, slope, s, p, op, transposed)
        assert a.stride() == ref.stride()  # the stock convolution's layout
        torch.testing.assert_close(a, F.leaky_relu(ref, slope), **TOL)


def test_per_image_statistics_large_mean():
    """A large per-plane mean (cancellation) and one plane of a constant."""
    geo = GEOMETRIES["conv-s2-7x5"]
    conv = _conv(geo)
    with torch.no_grad():
        conv.bias.copy_(torch.linspace(-1e3, 1e3, conv.out_channels))
        conv.weight.mul_(1e-2)
    x = _x(geo, True)
    x[1] = 0.0  # image 1: every plane is its bias
    w, b = conv.weight.detach(), conv.bias.detach()
    y, mean, var = tconv.conv_in_stats(x, w, b, 2, 0)
    torch.testing.assert_close(mean, y.double().mean((2, 3)).flatten().float(), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(var, y.double().var((2, 3), unbiased=False).flatten().float(),
                               atol=1e-5, rtol=1e-4)
    assert var.view(3, -1)[1].max() < 1e-7  # a constant plane: rounding of a mean of ~1e3 only


# ------------------------------------------------------------------------ module level
IN_VARIANTS = [(False, False), (True, False), (False, True), (True, True)]  # (affine, track)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("affine,track", IN_VARIANTS, ids=["plain", "affine", "track", "both"])
@pytest.mark.parametrize("name", ["conv-s2-7x5", "convT-s2-3x5-op1"])
def test_conv_in_act_matches_stock(name, affine, track, cl, calls, triton_backend):
    geo = GEOMETRIES[name]
    act = nn.LeakyReLU(0.2) if geo[0] else nn.ReLU()
    stock = _randomize(nn.Sequential(
        _conv(geo), nn.InstanceNorm2d(geo[2], affine=affine, track_running_stats=track,
                                      momentum=0.3), act)).to(DEVICE)
    fused = gan_fast.fuse(copy.deepcopy(stock))
    x = _x(geo, cl)
    assert_fused_same(stock, fused, x, **TOL)
    assert calls["conv_in_stats"] == 2 + (0 if track else 1)  # 2 training steps (+ eval)
    assert calls["_conv_bn_act_eval"] == (1 if track else 0)  # eval with running stats
    for training in (True, False):
        stock.train(training), fused.train(training)
        with torch.no_grad():
            assert fused(x).stride() == stock(x).stride()  # NCHW, as stock instance_norm's


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", ["conv-s2-7x5", "convT-k4s2-3x3"])
def test_conv_act_matches_stock(name, bias, cl, calls, triton_backend):
    geo = GEOMETRIES[name]
    for act in (nn.LeakyReLU(0.2, inplace=True), nn.ReLU()):
        stock = _randomize(nn.Sequential(_conv(geo, bias), act)).to(DEVICE)
        fused = gan_fast.fuse(copy.deepcopy(stock))
        x = _x(geo, cl)
        assert_fused_same(stock, fused, x, **TOL)
        with torch.no_grad():
            assert fused(x).stride() == stock(x).stride()
    assert calls["conv_act"] == 2 * 4
    assert calls["act_conv_backward"] == 2 * 3  # the Triton GEMMs (2 training steps + eval)


def test_conv_act_kink_and_negative_slope(calls, triton_backend):
    """Exact zeros before the activation take the slope (PyTorch's y > 0 ? 1 : slope); a
    negative slope is left to the stock layers."""
    conv = nn.Conv2d(3, 5, 3, 1, 1).to(DEVICE)
    with torch.no_grad():
        conv.weight[:2].zero_()
        conv.bias[:2].zero_()  # channels 0, 1: y == 0 exactly
    for slope in (0.3, 0.0):
        stock = nn.Sequential(conv, nn.LeakyReLU(slope))
        fused = gan_fast.fuse(copy.deepcopy(stock))
        assert_fused_same(stock, fused, _x(GEOMETRIES["conv-s2-7x5"], True), **TOL)
    assert calls["conv_act"] == 2 * 3
    stock = nn.Sequential(conv, nn.LeakyReLU(-0.5))
    fused = gan_fast.fuse(copy.deepcopy(stock))
    assert_fused_same(stock, fused, _x(GEOMETRIES["conv-s2-7x5"], False), **TOL)
    assert calls["conv_act"] == 2 * 3  # not fused there: out's sign does not give y's


def test_conv_act_overflowed_output_keeps_finite_gradients(calls, triton_backend):
    """Outputs that overflow to +-inf: stock's gradients w.r.t. x, the weight and the bias
    stay finite (the activation's derivative is 1 or the slope there), so must gan_fast's."""
    conv = nn.Conv2d(3, 5, 3, 1, 1).to(DEVICE)
    x = _x(GEOMETRIES["conv-s2-7x5"], False)
    with torch.no_grad():  # outputs of channel 0 near pixel (2, 2) of image 0 go to +inf, 1's to -inf
        x[0, :, 2, 2] = 1e36
        conv.weight[0].fill_(1e3), conv.weight[1].fill_(-1e3)
    stock = nn.Sequential(conv, nn.LeakyReLU(0.2))
    fused = gan_fast.fuse(copy.deepcopy(stock))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = stock(xa), fused(xb)
    assert torch.isinf(ya).any() and torch.equal(torch.isinf(ya), torch.isinf(yb))
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    ya.backward(g), yb.backward(g)
    assert calls["act_conv_backward"] == 1
    for got, want in ((xb.grad, xa.grad), *((b.grad, a.grad) for a, b in zip(stock.parameters(), fused.parameters()))):
        assert torch.isfinite(want).all()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_double_backward(triton_backend, calls):
    """create_graph=True (gradient penalties): the second-order gradients are stock's."""
    geo = GEOMETRIES["convT-s2-3x5-op1"]
    stock = _randomize(nn.Sequential(
        _conv(geo), nn.InstanceNorm2d(geo[2], affine=True), nn.LeakyReLU(0.2),
        nn.Conv2d(geo[2], 4, 3, 1, 1), nn.LeakyReLU(0.1))).to(DEVICE)
    fused = gan_fast.fuse(copy.deepcopy(stock))
    x = _x(geo, True)
    grads = []
    for model in (stock, fused):
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(model(xi).square().sum(), xi, create_graph=True)
        gx.square().sum().backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    scale = max(float(g.abs().max()) for g in grads[0])  # the conv bias before the norm: 0 + noise
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=2e-5 * scale, rtol=1e-4)
    assert calls["conv_in_stats"] == 1 and calls["conv_act"] == 1


# ------------------------------------------------------------------------------ models
def test_resnet_generator_and_patchgan(calls, triton_backend):
    from gan_fast.train.models_cyclegan import ResnetGenerator
    from gan_fast.train.models_pix2pix import NLayerDiscriminator
    torch.manual_seed(0)
    g = _randomize(ResnetGenerator(3, 3, ngf=4, n_blocks=1)).to(DEVICE)
    assert_fused_same(g, gan_fast.fuse(copy.deepcopy(g)), torch.randn(2, 3, 8, 8).to(DEVICE),
                      steps=1, atol=1e-4, rtol=1e-4)
    assert calls["conv_in_stats"] > 0
    d = _randomize(NLayerDiscriminator(2, ndf=4, n_layers=2)).to(DEVICE)
    before = calls["conv_act"]
    img = torch.randn(2, 1, 16, 16).to(DEVICE)
    assert_fused_same(d, gan_fast.fuse(copy.deepcopy(d)), img, img.flip(-1), steps=1, **TOL)
    assert calls["conv_act"] > before


# --------------------------------------------------------------------- compile / auto
def test_opcheck_and_compile_fullgraph(calls, triton_backend):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = torch.randn(3, 5, 3, 3).requires_grad_(), torch.randn(5).requires_grad_()
    iw, ib = torch.rand(5).requires_grad_(), torch.randn(5).requires_grad_()
    geo = (True, [2, 2], [1, 1], [1, 1])
    ops = torch.ops.gan_fast
    torch.library.opcheck(ops.conv_in_act_train, (x, w, b, iw, ib, *geo, 1e-5, 0.2))
    torch.library.opcheck(ops.conv_in_act_train, (x, w, None, None, None, *geo, 1e-5, 0.0))
    torch.library.opcheck(ops.conv_in_act_eval,
                          (x, w, b, iw, ib, torch.randn(5), torch.rand(5) + 0.5, *geo, 1e-5, 0.2))
    torch.library.opcheck(ops.conv_act, (x, w, b, *geo, 0.2))
    torch.library.opcheck(ops.conv_act, (x, w, None, *geo, 0.0))
    assert calls["act_conv_backward"] > 0

    torch._dynamo.reset()
    model = _randomize(nn.Sequential(
        nn.Conv2d(3, 5, 3, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(5, 4, 3, 1, 1), nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
        nn.ReLU(), nn.ConvTranspose2d(4, 3, 3, 2, 1, 1), nn.InstanceNorm2d(3), nn.LeakyReLU(0.2)))
    eager = gan_fast.fuse(copy.deepcopy(model))
    compiled_model = gan_fast.fuse(copy.deepcopy(model))
    compiled = torch.compile(compiled_model, fullgraph=True)
    for _ in range(2):
        z = torch.randn(2, 3, 6, 6)
        le, lc = eager(z).square().sum(), compiled(z).square().sum()
        torch.testing.assert_close(lc, le, atol=1e-4, rtol=1e-5)
        le.backward(), lc.backward()
    state = lambda m: [p.grad for p in m.parameters()] + list(m.buffers())  # noqa: E731
    torch.testing.assert_close(state(compiled_model), state(eager), atol=1e-5, rtol=1e-4)
    counted = dict(calls)
    compiled_model.eval(), eager.eval()
    torch.testing.assert_close(compiled(z), eager(z), atol=1e-5, rtol=1e-5)
    assert calls["_conv_bn_act_eval"] == counted["_conv_bn_act_eval"] + 2  # fused in both


def test_auto_times_the_in_and_act_blocks(monkeypatch, calls):
    """Under auto (the timing forced on CPU tensors) each block kind is timed once per
    configuration under its own op name, and the measured winner runs."""
    monkeypatch.delenv("GAN_FAST_FUSED_CONV", raising=False)
    monkeypatch.setattr(cba, "_measures_on", lambda device_type: True)
    timed = []  # timed_choice runs each way in the order {'fused': .., 'unfused': ..}

    def fake_median_seconds(fn, device_type, reps=5):
        fn()
        timed.append("unfused" if len(timed) % 2 else "fused")
        return 1.0 if timed[-1] == "fused" else 2.0
    monkeypatch.setattr(backends, "_median_seconds", fake_median_seconds)
    ops = ("conv_in_act", "conv_act")
    for k in [k for k in backends._choices if k[0] in ops]:
        del backends._choices[k]
    model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.InstanceNorm2d(4), nn.ReLU(),
                                     nn.Conv2d(4, 3, 3, 1, 1), nn.LeakyReLU(0.2)))
    try:
        with gan_fast.use_backend("auto"):
            fused = gan_fast.fuse(copy.deepcopy(model))
            x = torch.randn(2, 3, 6, 6)
            torch.testing.assert_close(fused(x), model(x), **TOL)
            assert timed == ["fused", "unfused"] * 2
            # the timing's own fused runs, then the call's
            assert calls["conv_in_stats"] == 2 and calls["conv_act"] == 2
            assert sorted(k[0] for k in backends._choices if k[0] in ops) == sorted(ops)
            fused(x)  # cached: not timed again
            assert len(timed) == 4 and calls["conv_act"] == 3
    finally:
        for k in [k for k in backends._choices if k[0] in ops]:
            del backends._choices[k]


def test_left_to_the_stock_layers(calls, triton_backend):
    """What the fused ops do not cover runs the stock conv then the rest, with stock's
    results and errors: an output_size per call, an unbatched input, a 1x1 output in
    training (instance_norm's error), a norm whose num_features differs."""
    up = nn.Sequential(nn.ConvTranspose2d(3, 4, 3, 2, 1), nn.InstanceNorm2d(4), nn.ReLU())
    fused = gan_fast.fuse(copy.deepcopy(up))
    x = torch.randn(2, 3, 3, 3)
    torch.testing.assert_close(fused[0](x, output_size=[6, 6]), up[2](up[1](up[0](x, [6, 6]))), **TOL)
    torch.testing.assert_close(fused(x[0]), up(x[0]), **TOL)  # (C, H, W)
    assert calls["conv_in_stats"] == 0
    down = gan_fast.fuse(nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4), nn.ReLU()))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        down(x)
    odd = nn.Sequential(nn.Conv2d(3, 4, 1), nn.InstanceNorm2d(5), nn.LeakyReLU(0.2))
    torch.testing.assert_close(gan_fast.fuse(copy.deepcopy(odd))(x), odd(x), **TOL)
    assert calls["conv_in_stats"] == 0

"""fuse beyond conv -> BatchNorm -> activation (issue 16): InstanceNorm2d chains, convs
without a norm, and pre-activation chains, on the public architectures' layouts.

Each model is fused and checked against its stock copy on every backend (float64 where
the backend has it): forward, the gradients of the inputs and of every parameter, and the
buffers, in training and in eval mode (``helpers.assert_fused_same``); and the report
says what was fused and why the rest was left.
"""
import copy

import pytest
import torch
from torch import nn

import gan_fast
from gan_fast.fuse import AbsorbedInstanceNorm2d, FusedConv2d, FusedConvTranspose2d
from gan_fast.train.models_cyclegan import ResnetGenerator
from gan_fast.train.models_pix2pix import NLayerDiscriminator, UnetGenerator
from helpers import assert_fused_same


def _dtype(backend):
    name, device = backend
    return torch.float64 if name in ("reference", "cpu") else torch.float32


def _tol(dtype):
    return dict(atol=1e-11, rtol=1e-9) if dtype == torch.float64 else dict(atol=2e-4, rtol=2e-4)


def _fuse(stock, **kw):
    return gan_fast.fuse(copy.deepcopy(stock), return_report=True, **kw)


def _randomise_norms(model):
    """Non-trivial affine parameters and running statistics, so that each one matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                if m.weight is not None:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                if m.bias is not None:
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
                if m.running_mean is not None:
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, (FusedConv2d, FusedConvTranspose2d))]


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_cyclegan_resnet_generator(backend, norm):
    name, device = backend
    dtype = _dtype(backend)
    torch.manual_seed(0)
    stock = ResnetGenerator(3, 3, ngf=4, norm=norm, n_blocks=2).to(device, dtype)
    fused, report = _fuse(stock)
    # stem, 2 downs, 2 blocks x 2 convs, 2 ups; the last conv -> Tanh is not a chain
    assert len(report.fused) == 9 and not report.left, str(report)
    assert len(_blocks(fused)) == 9
    residual = [s for s in report.fused if "conv_block.5" in s]
    assert len(residual) == 2 and all("no activation" in s and "return value" in s for s in residual)
    if norm == "instance":
        assert sum(isinstance(m, AbsorbedInstanceNorm2d) for m in fused.modules()) == 9
    # float32 backends: 16x16, so that the residual blocks' InstanceNorm planes have 4x4
    # values (over 2x2 ones the gradients are ill-conditioned: a 1e-7 change of the input
    # moves some by 4e-4, more than float32's summation-order differences may)
    size = 8 if dtype == torch.float64 else 16
    x = torch.randn(2, 3, size, size, dtype=dtype, device=device)
    assert_fused_same(stock, fused, x, **_tol(dtype))


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("track", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
def test_instance_norm_chain_every_configuration(backend, affine, track, transposed):
    name, device = backend
    dtype = _dtype(backend)
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(3, 5, 4, 2, 1) if transposed else nn.Conv2d(3, 5, 3, 1, 1)
    norm = nn.InstanceNorm2d(5, affine=affine, track_running_stats=track)
    stock = _randomise_norms(nn.Sequential(conv, norm, nn.LeakyReLU(0.2))).to(device, dtype)
    fused, report = _fuse(stock)
    assert report.fused == ["0 -> 1 -> 2 (slope 0.2)"], str(report)
    assert_fused_same(stock, fused, torch.randn(3, 3, 5, 4, dtype=dtype, device=device), **_tol(dtype))
    assert_fused_same(stock, fused, torch.randn(3, 5, 4, dtype=dtype, device=device),  # unbatched
                      steps=1, **_tol(dtype))


def test_pix2pix_unet_pre_activation_chains(backend):
    """The down path's conv -> BatchNorm takes the next block's in-place LeakyReLU, whose
    result the skip torch.cat reads afterwards (as it does in stock PyTorch)."""
    name, device = backend
    dtype = _dtype(backend)
    torch.manual_seed(0)
    stock = _randomise_norms(UnetGenerator(1, 1, num_downs=5, ngf=2, use_dropout=False)).to(device, dtype)
    fused, report = _fuse(stock)
    assert len(report.fused) == 9 and not report.left, str(report)
    with_act = [s for s in report.fused if "(slope" in s]
    assert len(with_act) == 5, str(report)  # 3 pre-activation downs, the outermost and innermost convs
    assert sum("slope 0.2" in s for s in with_act) == 4 and sum("slope 0)" in s for s in with_act) == 1
    assert all("no activation" in s and "return value" in s for s in report.fused if "(slope" not in s)
    x = torch.randn(2, 1, 32, 32, dtype=dtype, device=device)
    assert_fused_same(stock, fused, x, **_tol(dtype))


def test_patchgan_first_conv_without_norm(backend):
    name, device = backend
    dtype = _dtype(backend)
    torch.manual_seed(0)
    stock = _randomise_norms(NLayerDiscriminator(2, ndf=4, n_layers=2)).to(device, dtype)
    fused, report = _fuse(stock)
    assert report.fused[0] == "model.0 -> model.1 (slope 0.2)" and len(report.fused) == 3, str(report)
    a, b = (torch.randn(2, 1, 32, 32, dtype=dtype, device=device) for _ in range(2))
    assert_fused_same(stock, fused, a, b, **_tol(dtype))


class _PreActivation(nn.Module):
    """conv -> BatchNorm, then `first` reads the BatchNorm's output before `act` does."""

    def __init__(self, act, cat_first):
        super().__init__()
        self.conv, self.bn, self.act, self.cat_first = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), act, cat_first

    def forward(self, x):
        y = self.bn(self.conv(x))
        if self.cat_first:
            skip = torch.cat([y, y], 1)
            return skip, self.act(y)
        z = self.act(y)
        return torch.cat([y, z], 1)


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("cat_first", [True, False])
def test_pre_activation_fused_only_when_identical(reference, inplace, cat_first):
    torch.manual_seed(0)
    stock = _PreActivation(nn.LeakyReLU(0.2, inplace=inplace), cat_first).double()
    fused, report = _fuse(stock)
    assert len(report.fused) == 1, str(report)
    absorbed = "(slope 0.2)" in report.fused[0]
    assert absorbed == (inplace and not cat_first), str(report)
    if not absorbed:
        note = report.fused[0]
        assert "activation left in place" in note and "cat()" in note, note
        assert ("reads the output of bn before act does" in note) == cat_first, note
        assert ("in-place activation read first it would be fused" in note) == (not inplace and not cat_first), note
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    out_s, out_f = stock(x), fused(x)
    for a, b in zip(out_s if cat_first else [out_s], out_f if cat_first else [out_f]):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10)


def test_unfuse_restores_every_kind(reference):
    torch.manual_seed(0)
    stock = UnetGenerator(1, 1, num_downs=5, ngf=2, use_dropout=False).double()
    model = gan_fast.unfuse(gan_fast.fuse(copy.deepcopy(stock)))
    assert [type(m) for m in model.modules()] == [type(m) for m in stock.modules()]
    model = gan_fast.unfuse(gan_fast.fuse(ResnetGenerator(3, 3, 4, "instance", n_blocks=1)))
    assert not any(type(m).__module__.startswith("gan_fast.fuse") for m in model.modules())


def test_compiled_instance_norm_model_matches_eager(reference):
    torch._dynamo.reset()
    torch.manual_seed(0)
    stock = ResnetGenerator(3, 3, ngf=4, norm="instance", n_blocks=1)
    eager = gan_fast.fuse(copy.deepcopy(stock))
    compiled = torch.compile(gan_fast.fuse(copy.deepcopy(stock)), fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)


@pytest.fixture
def reference():
    with gan_fast.use_backend("reference"):
        yield

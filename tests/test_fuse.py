"""gan_fast.fuse / unfuse on models of several layouts."""
import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

import gan_fast
from gan_fast.fuse import AbsorbedBatchNorm2d, FusedConv2d, FusedConvTranspose2d
from helpers import assert_same_step


class AttributeBlock(nn.Module):
    """A ResNet-like attribute layout with one shared ReLU and one functional activation."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act1 = nn.LeakyReLU(0.2)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.relu(x)  # the ReLU module is used twice


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return self.body(x)
        return self.body(-x)


def dcgan_g():
    return nn.Sequential(
        nn.ConvTranspose2d(16, 12, 4, 1, 0, bias=False), nn.BatchNorm2d(12), nn.ReLU(True),
        nn.ConvTranspose2d(12, 6, 4, 2, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(True),
        nn.ConvTranspose2d(6, 1, 4, 2, 1, bias=False), nn.Tanh())


def compare(stock, fused, x, train=True):
    stock.train(train), fused.train(train)
    assert_same_step(stock, fused, x)


def test_sequential_dcgan(backend):
    name, device = backend
    torch.manual_seed(0)
    stock = dcgan_g().to(device)
    fused, report = gan_fast.fuse(copy.deepcopy(stock), return_report=True)
    assert len(report.fused) == 2 and not report.left
    assert isinstance(fused[0], FusedConvTranspose2d) and isinstance(fused[1], AbsorbedBatchNorm2d)
    assert isinstance(fused[2], nn.Identity) and isinstance(fused[7], nn.Tanh)
    x = torch.randn(3, 16, 1, 1, device=device)
    compare(stock, fused, x)
    compare(stock, fused, x, train=False)


def test_attribute_layout_shared_and_functional_activations():
    torch.manual_seed(0)
    stock = AttributeBlock()
    fused, report = gan_fast.fuse(copy.deepcopy(stock), return_report=True)
    assert isinstance(fused.conv1, FusedConv2d) and isinstance(fused.act1, nn.Identity)
    # conv2/conv3 are fused with BatchNorm only: their activations stay where they are.
    assert isinstance(fused.conv2, FusedConv2d) and fused.conv2._gan_fast_slope == 1.0
    assert isinstance(fused.relu, nn.ReLU)
    text = str(report)
    assert "used more than once" in text and "function call" in text
    compare(stock, fused, torch.randn(2, 3, 6, 6))


def test_unanalysable_model_fuses_sequential_chains_only_when_assumed():
    """Was: an untraceable model got its nn.Sequential chains fused unasked (unsafe when
    forward also calls a chain's layers on their own); now that is an explicit opt-in."""
    torch.manual_seed(0)
    stock = Untraceable()
    fused, report = gan_fast.fuse(copy.deepcopy(stock), return_report=True)
    assert type(fused.body[0]) is nn.Conv2d and "not analysed" in report.how
    assert report.left and "assume_sequential=True" in str(report)
    fused, report = gan_fast.fuse(copy.deepcopy(stock), return_report=True,
                                  assume_sequential=True)
    assert isinstance(fused.body[0], FusedConv2d)
    assert "assume_sequential=True" in report.how
    compare(stock, fused, torch.rand(2, 3, 6, 6))


def test_left_alone_cases():
    conv = nn.Conv2d(3, 4, 3)
    shared = nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), conv)  # conv used twice
    hooked = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4), nn.ReLU())
    sync = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU())
    for model in (shared, hooked, sync):
        _, report = gan_fast.fuse(model, return_report=True)
        assert not report.fused, str(report)
    assert "more than once" in str(gan_fast.fuse(copy.deepcopy(shared), return_report=True)[1])


def test_checkpoints_load_both_ways_and_unfuse():
    torch.manual_seed(0)
    stock = dcgan_g()
    stock(torch.randn(4, 16, 1, 1))  # move the running stats
    fused = gan_fast.fuse(copy.deepcopy(stock))
    assert list(fused.state_dict()) == list(stock.state_dict())
    for k, v in stock.state_dict().items():
        assert torch.equal(v, fused.state_dict()[k]), k
    fresh_stock, fresh_fused = dcgan_g(), gan_fast.fuse(dcgan_g())
    fresh_stock.load_state_dict(fused.state_dict())
    fresh_fused.load_state_dict(stock.state_dict())
    restored = gan_fast.unfuse(fused)
    assert type(restored[0]) is nn.ConvTranspose2d and type(restored[1]) is nn.BatchNorm2d
    assert type(restored[2]) is nn.ReLU and restored[2].inplace
    compare(stock, restored, torch.randn(2, 16, 1, 1))


def test_fuse_is_idempotent():
    model = gan_fast.fuse(dcgan_g())
    _, report = gan_fast.fuse(model, return_report=True)
    assert not report.fused


def test_report_goes_to_the_log_and_is_printed_only_when_asked(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="gan_fast"):
        _, report = gan_fast.fuse(dcgan_g(), return_report=True)
    assert str(report) in [r.getMessage() for r in caplog.records if r.name == "gan_fast"]
    assert capsys.readouterr().out == ""
    gan_fast.fuse(dcgan_g(), verbose=True)
    assert capsys.readouterr().out.startswith("gan_fast.fuse: fused 2 block(s)")

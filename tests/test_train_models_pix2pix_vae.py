"""The pix2pix U-Net and PatchGAN and the conv VAE of the trainers: ``gan_fast.fuse``
(called as the trainer calls it) leaves the function unchanged. In float64, stock vs
fuse(copy): outputs, the input's and every parameter's gradient, and the BatchNorm
running statistics, in training and eval mode."""
import copy

import pytest
import torch
from torch import nn

import gan_fast
from gan_fast.train.models_pix2pix import build_pix2pix, UnetGenerator
from gan_fast.train.models_vae import build_vae

TOL = dict(rtol=1e-9, atol=1e-9)


def _cases():
    g, d = build_pix2pix(nc=1, ngf=4, ndf=4, image_size=32, seed=0)
    dec, enc = build_vae(nz=6, ngf=4, ndf=5, nc=1, image_size=32, seed=0)
    gen = torch.Generator().manual_seed(1)

    def img(n=3):
        return torch.rand(n, 1, 32, 32, generator=gen, dtype=torch.float64) * 2 - 1
    # (model, forward's inputs, blocks fuse fuses today at least)
    return {"unet": (g, (img(),), 7), "patchgan": (d, (img(), img()), 2),
            "vae_decoder": (dec, (torch.randn(3, 6, 1, 1, generator=gen,
                                              dtype=torch.float64),), 3),
            "vae_encoder": (enc, (img(),), 3)}


def _outputs(m, inputs, w):
    xs = [x.clone().requires_grad_() for x in inputs]
    out = m(*xs)
    out = out if isinstance(out, tuple) else (out,)
    sum(((o * wi).sum() for o, wi in zip(out, w))).backward()
    return ([o.detach() for o in out], [x.grad for x in xs],
            {k: p.grad for k, p in m.named_parameters()}, dict(m.named_buffers()))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["unet", "patchgan", "vae_decoder", "vae_encoder"])
def test_fused_equals_stock_in_float64(name, mode):
    model, inputs, at_least = _cases()[name]
    stock = model.double()
    for m in stock.modules():  # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fused, report = gan_fast.fuse(copy.deepcopy(stock), verbose=False, return_report=True,
                                  example_inputs=tuple(torch.zeros_like(x) for x in inputs))
    assert len(report.fused) >= at_least, str(report)
    stock.train(mode == "train")
    fused.train(mode == "train")
    probe = stock(*inputs)
    probe = probe if isinstance(probe, tuple) else (probe,)
    gen = torch.Generator().manual_seed(2)
    w = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in probe]
    stock.load_state_dict(fused.state_dict())  # undo the probe's running-stat update
    a, b = _outputs(stock, inputs, w), _outputs(fused, inputs, w)
    for part, what in zip(range(2), ("output", "input gradient")):
        for x, y in zip(a[part], b[part]):
            torch.testing.assert_close(y, x, **TOL, msg=lambda m: f"{what}: {m}")
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        torch.testing.assert_close(b[2][k], a[2][k], **TOL, msg=lambda m: f"grad {k}: {m}")
    for k in a[3]:
        torch.testing.assert_close(b[3][k], a[3][k], **TOL, msg=lambda m: f"buffer {k}: {m}")


def test_unet_is_the_pix2pix_layout():
    g = UnetGenerator(1, 1, num_downs=6, ngf=2)
    kinds = [type(m).__name__ for m in g.modules()]
    assert kinds.count("UnetSkipConnectionBlock") == 6 and kinds.count("Dropout") == 1
    inner = g.model.model[1].model  # the second level: pre-activation, cat skip
    assert [type(m).__name__ for m in inner][:3] == ["LeakyReLU", "Conv2d", "BatchNorm2d"]
    assert inner[0].inplace and inner[4].inplace and isinstance(inner[4], nn.ReLU)
    assert g(torch.zeros(2, 1, 64, 64)).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="num_downs"):
        UnetGenerator(num_downs=4)

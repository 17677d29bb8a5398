"""DCGAN generator and discriminator in the pytorch/examples layout.

Both are plain ``nn.Sequential`` stacks of stock PyTorch layers held in ``self.main``,
exactly as in https://github.com/pytorch/examples/tree/main/dcgan, so that
``gan_fast.fuse(model)`` finds and replaces every
``ConvTranspose2d|Conv2d -> BatchNorm2d -> ReLU|LeakyReLU`` chain, and a checkpoint
of the stock model loads into the fused one (and back).

Differences from the example, all configurable: the image size may be 32 (one block
fewer) or 64, the widths and latent size are arguments, and the discriminator ends
in a raw logit (no Sigmoid): the GAN loss takes logits.
"""
from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZES = (32, 64)


def _check(image_size: int, nz: int, width: int, nc: int) -> None:
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
    for name, v in (("latent size", nz), ("width", width), ("channels", nc)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


class Generator(nn.Module):
    """z (N, nz, 1, 1) -> image (N, nc, S, S) in [-1, 1].

    64x64: nz -> 8w (4x4) -> 4w (8x8) -> 2w (16x16) -> w (32x32) -> nc (64x64).
    32x32: nz -> 4w (4x4) -> 2w (8x8) -> w (16x16) -> nc (32x32).
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 1, image_size: int = 64):
        super().__init__()
        _check(image_size, nz, ngf, nc)
        self.nz, self.ngf, self.nc, self.image_size = nz, ngf, nc, image_size
        mults = [8, 4, 2, 1] if image_size == 64 else [4, 2, 1]
        layers: list[nn.Module] = []
        cin = nz
        for i, m in enumerate(mults):
            cout = ngf * m
            if i == 0:
                layers.append(nn.ConvTranspose2d(cin, cout, 4, 1, 0, bias=False))
            else:
                layers.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False))
            layers += [nn.BatchNorm2d(cout), nn.ReLU(True)]
            cin = cout
        layers += [nn.ConvTranspose2d(cin, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


class Discriminator(nn.Module):
    """image (N, nc, S, S) -> logits (N,).

    64x64: nc -> w (32) -> 2w (16) -> 4w (8) -> 8w (4) -> 1 logit.
    32x32: nc -> w (16) -> 2w (8) -> 4w (4) -> 1 logit.
    The first conv has no BatchNorm (conv -> LeakyReLU(0.2)), as in the example.
    """

    def __init__(self, ndf: int = 64, nc: int = 1, image_size: int = 64):
        super().__init__()
        _check(image_size, 1, ndf, nc)
        self.ndf, self.nc, self.image_size = ndf, nc, image_size
        mults = [1, 2, 4, 8] if image_size == 64 else [1, 2, 4]
        layers: list[nn.Module] = []
        cin = nc
        for i, m in enumerate(mults):
            cout = ndf * m
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).reshape(-1)


def weights_init(m: nn.Module) -> None:
    """The DCGAN initialisation: conv weights ~ N(0, 0.02); BN weight ~ N(1, 0.02), bias 0.

    Applied to the stock model, before ``gan_fast.fuse`` (which keeps the parameters).
    """
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


def build_models(nz: int, ngf: int, ndf: int, nc: int, image_size: int,
                 seed: int | None = None) -> tuple[Generator, Discriminator]:
    """Builds and initialises G and D (G first, then D, from the given seed if any)."""
    if seed is not None:
        torch.manual_seed(seed)
    g = Generator(nz, ngf, nc, image_size)
    g.apply(weights_init)
    d = Discriminator(ndf, nc, image_size)
    d.apply(weights_init)
    return g, d

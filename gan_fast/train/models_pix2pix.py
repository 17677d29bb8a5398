"""pix2pix networks in the published layout (Isola et al. 2017; the ``networks.py`` of
junyanz/pytorch-CycleGAN-and-pix2pix), written from it and sized for 32x32 MNIST.

* :class:`UnetGenerator`: nested :class:`UnetSkipConnectionBlock` s, ``num_downs``
  halvings (5 for 32x32: 32 -> 1), skips by ``torch.cat``; pre-activation blocks:
  ``LeakyReLU(0.2, inplace) -> Conv2d -> BatchNorm2d`` down, ``ReLU(inplace) ->
  ConvTranspose2d -> BatchNorm2d`` up; the outermost block has no norm and ends in Tanh.
* :class:`NLayerDiscriminator`: the PatchGAN, ``Conv + LeakyReLU`` (no norm) first,
  then ``Conv + BatchNorm2d + LeakyReLU`` blocks, a 1-channel conv last; it sees the
  input and the output side by side (``torch.cat`` on channels), as pix2pix's D does.

Stock layers only, so that ``gan_fast.fuse`` decides what it can fuse; initialised as
pix2pix does (``init_type='normal'``: weights N(0, 0.02), BatchNorm weight N(1, 0.02),
biases 0).
"""
from __future__ import annotations

import torch
from torch import nn

from gan_fast.train.models import weights_init


class UnetSkipConnectionBlock(nn.Module):
    """X -------------------identity---------------------- X
       |-- downsampling -- |submodule| -- upsampling --|
    (the forward of every block but the outermost returns cat([x, model(x)], 1))."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False,
                 innermost: bool = False, use_dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, 2, 1, bias=False)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = nn.BatchNorm2d(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = nn.BatchNorm2d(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=False)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=False)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """image (N, input_nc, S, S) -> image (N, output_nc, S, S) in [-1, 1], S = 2^num_downs.

    Widths from the outside in: ngf, 2 ngf, 4 ngf, then 8 ngf for every further level
    (the levels beyond the fifth have dropout, as in pix2pix)."""

    def __init__(self, input_nc: int = 1, output_nc: int = 1, num_downs: int = 5,
                 ngf: int = 16, use_dropout: bool = True):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5 (the pix2pix U-Net), got {num_downs}")
        if ngf < 1 or input_nc < 1 or output_nc < 1:
            raise ValueError("widths and channels must be >= 1")
        self.num_downs, self.ngf = num_downs, ngf
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block,
                                            use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc,
                                             submodule=block, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: (input, output) pair, each (N, nc, S, S) -> patch logits (N, 1, P, P).

    With n_layers strided convs (stride 2), then one stride-1 Conv+BN+LeakyReLU and the
    stride-1 1-channel conv: n_layers=2 at 32x32 gives 6x6 patches of 34x34 pixels
    (pix2pix's default n_layers=3 gives 70x70 patches at 256x256)."""

    def __init__(self, input_nc: int = 2, ndf: int = 16, n_layers: int = 2):
        super().__init__()
        if ndf < 1 or input_nc < 1 or n_layers < 1:
            raise ValueError("ndf, input_nc and n_layers must be >= 1")
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                    nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*seq)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([a, b], 1))


def init_weights(m: nn.Module) -> None:
    """pix2pix's ``init_type='normal'`` (gain 0.02): the DCGAN initialisation, biases 0."""
    weights_init(m)
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
        nn.init.zeros_(m.bias)


def num_downs_for(image_size: int) -> int:
    """Halvings down to 1x1: 5 for 32x32, 6 for 64x64."""
    n = image_size.bit_length() - 1
    if image_size != 2 ** n or n < 5:
        raise ValueError(f"the U-Net needs a power-of-two image size >= 32, got {image_size}")
    return n


def build_pix2pix(nc: int, ngf: int, ndf: int, image_size: int, seed: int | None = None
                  ) -> tuple[UnetGenerator, NLayerDiscriminator]:
    """The U-Net G (nc -> nc) and the conditional PatchGAN D (2 nc), initialised from
    ``seed`` (G first, then D)."""
    if seed is not None:
        torch.manual_seed(seed)
    g = UnetGenerator(nc, nc, num_downs_for(image_size), ngf)
    g.apply(init_weights)
    d = NLayerDiscriminator(2 * nc, ndf, n_layers=2)
    d.apply(init_weights)
    return g, d

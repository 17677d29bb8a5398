"""A convolutional VAE (Kingma & Welling 2014) in the DCGAN layout, for ``--model vae``.

* :class:`Encoder`: image (N, nc, S, S) -> (mu, logvar), each (N, nz): ``Conv2d ->
  BatchNorm2d -> LeakyReLU(0.2)`` blocks (stride 2) and a last 4x4 conv to 2 nz values.
* :class:`Decoder`: z (N, nz) -> Bernoulli logits (N, nc, S, S): ``ConvTranspose2d ->
  BatchNorm2d -> LeakyReLU(0.2)`` blocks and a last ConvTranspose2d; the image in
  [-1, 1] is ``to_image(logits) = tanh(logits / 2) = 2 sigmoid(logits) - 1``.

Stock layers only (``gan_fast.fuse`` fuses every block); the DCGAN initialisation.
The loss is pytorch/examples' VAE loss: binary cross-entropy of the pixels in [0, 1]
(summed over pixels) plus the KL divergence of q(z|x) from N(0, I), per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_fast.train.models import _check, weights_init


def _mults(image_size: int) -> list[int]:
    return [1, 2, 4, 8] if image_size == 64 else [1, 2, 4]


def _blocks(conv, cin: int, widths: list[int], first: tuple[int, int] = (2, 1)):
    """conv(4x4, stride 2 but the first's (stride, padding)) -> BatchNorm2d ->
    LeakyReLU(0.2) per width; returns the layers and the last width."""
    layers: list[nn.Module] = []
    for i, cout in enumerate(widths):
        stride, pad = first if i == 0 else (2, 1)
        layers += [conv(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout),
                   nn.LeakyReLU(0.2, inplace=True)]
        cin = cout
    return layers, cin


class Encoder(nn.Module):
    """32x32: nc -> w (16) -> 2w (8) -> 4w (4) -> 2 nz (1); 64x64 one block more."""

    def __init__(self, nz: int = 16, ndf: int = 32, nc: int = 1, image_size: int = 32):
        super().__init__()
        _check(image_size, nz, ndf, nc)
        layers, cin = _blocks(nn.Conv2d, nc, [ndf * m for m in _mults(image_size)])
        layers.append(nn.Conv2d(cin, 2 * nz, 4, 1, 0))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.main(x).flatten(1).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    """32x32: nz -> 4w (4) -> 2w (8) -> w (16) -> nc logits (32); 64x64 one block more."""

    def __init__(self, nz: int = 16, ngf: int = 32, nc: int = 1, image_size: int = 32):
        super().__init__()
        _check(image_size, nz, ngf, nc)
        layers, cin = _blocks(nn.ConvTranspose2d, nz,
                              [ngf * m for m in reversed(_mults(image_size))], first=(1, 0))
        layers.append(nn.ConvTranspose2d(cin, nc, 4, 2, 1))
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


def to_image(logits: torch.Tensor) -> torch.Tensor:
    """Bernoulli means in [-1, 1] (the data's range): 2 sigmoid(logits) - 1."""
    return torch.tanh(0.5 * logits)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps."""
    return mu + eps * torch.exp(0.5 * logvar)


def vae_terms(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
              logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction BCE, KL), each summed over an image and averaged over the batch,
    in float32; x in [-1, 1]. -ELBO = BCE + KL (nats per image)."""
    n = x.shape[0]
    target = (x.float() + 1) * 0.5
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum") / n
    mu, logvar = mu.float(), logvar.float()
    kl = -0.5 * torch.sum(1 + logvar - mu * mu - logvar.exp()) / n
    return bce, kl


def build_vae(nz: int, ngf: int, ndf: int, nc: int, image_size: int,
              seed: int | None = None) -> tuple[Decoder, Encoder]:
    """(decoder, encoder), initialised from ``seed`` (decoder first). The trainer holds
    the decoder where a GAN holds G (it generates from z) and the encoder where D is."""
    if seed is not None:
        torch.manual_seed(seed)
    dec = Decoder(nz, ngf, nc, image_size)
    dec.apply(weights_init)
    enc = Encoder(nz, ndf, nc, image_size)
    enc.apply(weights_init)
    return dec, enc

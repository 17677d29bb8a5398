"""CycleGAN's ResNet generator, written from the published layout.

The structure of ``ResnetGenerator`` / ``ResnetBlock`` in the pytorch-CycleGAN-and-pix2pix
repository (Zhu et al. 2017), in stock layers only, so that ``gan_fast.fuse`` sees what a
CycleGAN user's model looks like:

* stem: ReflectionPad2d(3) -> Conv 7x7 -> norm -> ReLU(inplace);
* two stride-2 Conv 3x3 -> norm -> ReLU(inplace) down-samplings;
* ``n_blocks`` residual blocks ``x + [pad, conv, norm, ReLU, (Dropout), pad, conv, norm](x)``;
* two ConvTranspose 3x3 (stride 2, output_padding 1) -> norm -> ReLU(inplace) up-samplings;
* ReflectionPad2d(3) -> Conv 7x7 (with bias) -> Tanh.

The norm is CycleGAN's default InstanceNorm2d(affine=False, track_running_stats=False) or
BatchNorm2d; convolutions carry a bias exactly when the norm is InstanceNorm (as there).
"""
from __future__ import annotations

from torch import Tensor, nn

NORMS = ("instance", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ResnetBlock(nn.Module):
    """x (N, dim, H, W) -> x + conv_block(x), same shape."""

    def __init__(self, dim: int, norm: str, use_dropout: bool, use_bias: bool):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), _norm(norm, dim),
                  nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), _norm(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """image (N, input_nc, S, S) -> image (N, output_nc, S, S) in [-1, 1]; S a multiple of 4."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, norm: str = "instance",
                 use_dropout: bool = False, n_blocks: int = 6):
        super().__init__()
        use_bias = norm == "instance"
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=use_bias), _norm(norm, ngf),
                  nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=use_bias), _norm(norm, 2 * c),
                       nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1,
                                          bias=use_bias), _norm(norm, c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

"""The DCGAN models and the layer shapes the benchmarks run on.

The models are the trainer's (``gan_fast.train.models.build_models``) when that
module is importable, else the pytorch/examples DCGAN defined here (the same
layout). The layer shapes are read off the models, so they always match what the
trainer trains: every ``ConvTranspose2d|Conv2d -> BatchNorm2d -> ReLU|LeakyReLU``
chain of G (``G1``..``G4``) and D (``D2``..``D4``; D's first conv has no BatchNorm).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

NZ, NGF, NDF, NC, IMAGE_SIZE = 100, 64, 64, 3, 64

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


# ------------------------------------------------------------------ fallback models
class _Generator(nn.Module):
    """pytorch/examples DCGAN generator: z (N, nz, 1, 1) -> (N, nc, 64, 64)."""

    def __init__(self, nz=NZ, ngf=NGF, nc=NC):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z):
        return self.main(z)


class _Discriminator(nn.Module):
    """pytorch/examples DCGAN discriminator, ending in a raw logit: (N, nc, 64, 64) -> (N,)."""

    def __init__(self, ndf=NDF, nc=NC):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False))

    def forward(self, x):
        return self.main(x).reshape(-1)


def _weights_init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def models_source() -> str:
    """Where the DCGAN models come from: the trainer's module, or this file's fallback."""
    try:
        from gan_fast.train.models import build_models  # noqa: F401
        return "gan_fast.train.models.build_models"
    except Exception as e:  # noqa: BLE001 - any import problem means: use the fallback
        return f"benchmarks.shapes fallback ({type(e).__name__}: {e})"


def build_dcgan(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(G, D) for 64x64 images, nz=100, ngf=ndf=64, nc=3, DCGAN init; D returns (N,) logits."""
    try:
        from gan_fast.train.models import build_models
    except Exception:  # noqa: BLE001
        build_models = None
    if build_models is not None:
        return build_models(NZ, NGF, NDF, NC, IMAGE_SIZE, seed=seed)
    torch.manual_seed(seed)
    g, d = _Generator(), _Discriminator()
    g.apply(_weights_init)
    d.apply(_weights_init)
    return g, d


# ------------------------------------------------------------------- layer shapes
@dataclasses.dataclass(frozen=True)
class Layer:
    """One conv -> BatchNorm2d -> activation chain of the DCGAN (per image, no batch)."""
    name: str            # "G1".."G4", "D2".."D4"
    transposed: bool     # ConvTranspose2d (G) or Conv2d (D)
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    in_hw: int           # input spatial size (square)
    out_hw: int          # output spatial size
    slope: float         # activation: 0.0 = ReLU, 0.2 = LeakyReLU(0.2)

    def conv_module(self, bias: bool = False) -> nn.Module:
        cls = nn.ConvTranspose2d if self.transposed else nn.Conv2d
        return cls(self.cin, self.cout, self.kernel, self.stride, self.padding, bias=bias)

    @property
    def act_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the BatchNorm input/output."""
        return (self.cout, self.out_hw, self.out_hw)

    def describe(self) -> str:
        conv = "ConvT" if self.transposed else "Conv"
        act = "ReLU" if self.slope == 0 else f"LReLU({self.slope:g})"
        return (f"{conv}({self.cin}->{self.cout},k{self.kernel},s{self.stride},p{self.padding}) "
                f"{self.in_hw}x{self.in_hw}->{self.out_hw}x{self.out_hw} +BN+{act}")


def _chains(model: nn.Module, prefix: str, example: torch.Tensor, first_index: int) -> list[Layer]:
    seq = model.main if hasattr(model, "main") else model
    mods = list(seq)
    sizes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: sizes.__setitem__(k, (i[0].shape[-1], o.shape[-1])))
             for k, m in enumerate(mods) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model.eval()(example)
    for h in hooks:
        h.remove()
    layers, conv_no = [], first_index - 1
    for k, m in enumerate(mods):
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        conv_no += 1
        bn = mods[k + 1] if k + 1 < len(mods) else None
        act = mods[k + 2] if k + 2 < len(mods) else None
        if not isinstance(bn, nn.BatchNorm2d) or not isinstance(act, (nn.ReLU, nn.LeakyReLU)):
            continue
        slope = 0.0 if isinstance(act, nn.ReLU) else float(act.negative_slope)
        hin, hout = sizes[k]
        layers.append(Layer(f"{prefix}{conv_no}", isinstance(m, nn.ConvTranspose2d), m.in_channels,
                            m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], hin, hout, slope))
    return layers


_LAYERS: list[Layer] | None = None


def dcgan_layers() -> list[Layer]:
    """The conv+BN+act chains of the DCGAN G then D, in forward order."""
    global _LAYERS
    if _LAYERS is None:
        g, d = build_dcgan(0)
        _LAYERS = (_chains(g, "G", torch.zeros(1, NZ, 1, 1), 1)
                   + _chains(d, "D", torch.zeros(2, NC, IMAGE_SIZE, IMAGE_SIZE), 1))
    return list(_LAYERS)


def parse_list(text: str | None, allowed=None, cast=str) -> list | None:
    """'a,b' -> ['a', 'b'] (None stays None); checks against `allowed`."""
    if text is None:
        return None
    items = [cast(s.strip()) for s in str(text).split(",") if s.strip()]
    if allowed is not None:
        bad = [s for s in items if s not in allowed]
        if bad:
            raise ValueError(f"unknown value(s) {bad}; choose from {sorted(allowed)}")
    return items

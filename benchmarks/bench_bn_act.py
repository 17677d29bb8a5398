"""bn_act: BatchNorm2d (training mode) + ReLU / LeakyReLU(0.2) on the DCGAN layer shapes.

Stock: ``nn.BatchNorm2d`` then ``nn.ReLU()`` / ``nn.LeakyReLU(0.2)`` (not in place).
gan_fast: ``gan_fast.nn.bn_act_from_module`` (the fused op the drop-in blocks run)
with the same BatchNorm2d module. Input (N, C, H, W) in the case's dtype and memory
format, BN parameters fp32 (as under autocast). Gradients w.r.t. x, weight, bias.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from benchmarks import shapes
from benchmarks.common import Bench, Case, Options, randn, seeded
from benchmarks.timing import Rotator, rotation_count

OP = "bn_act"
MODES = ("fwd", "bwd", "fwd+bwd")


def _build(layer: shapes.Layer, batch: int, dtype: str, fmt: str, device: str, seed: int, variant) -> Bench:
    c, h, w = layer.act_shape
    gen = seeded(seed, device)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(1.0 + 0.02 * torch.randn(c, generator=gen))
        bn.bias.copy_(0.02 * torch.randn(c, generator=gen))
    bn.to(device)
    slope = layer.slope
    if variant.fused:
        from gan_fast.nn import bn_act_from_module

        def fn(x):
            return bn_act_from_module(x, bn, slope)
    else:
        act = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)

        def fn(x):
            return act(bn(x))
    fn = variant.wrap(fn)
    td = shapes.DTYPES[dtype]
    shape = (batch, c, h, w)
    nbytes = 2 * batch * c * h * w * torch.empty((), dtype=td).element_size()
    sets = []
    for _ in range(rotation_count(nbytes, device)):
        x = randn(shape, td, device, fmt, gen, requires_grad=True, scale=2.0, shift=0.5)
        g = randn(shape, td, device, fmt, gen)
        sets.append((x, g))
    return Bench(rotator=Rotator(sets),
                 forward=lambda x, g: fn(x),
                 grad_wrt=lambda s: [s[0], bn.weight, bn.bias],
                 grad_out=lambda s: s[1],
                 exclude=[bn.weight, bn.bias, bn.running_mean, bn.running_var],
                 pre_iter=variant.pre_iter())


def cases(opts: Options) -> list[Case]:
    out = []
    layers = [l for l in shapes.dcgan_layers() if not opts.layers or l.name in opts.layers]
    for ci, (dtype, fmt) in enumerate((d, f) for d in opts.dtypes for f in opts.formats):
        for bi, batch in enumerate(opts.batches):
            for li, layer in enumerate(layers):
                c, h, w = layer.act_shape
                out.append(Case(
                    op=OP, label=layer.name, batch=batch, dtype=dtype, fmt=fmt, modes=MODES,
                    build=functools.partial(_build, layer, batch, dtype, fmt, opts.device, opts.seed),
                    shape=f"({batch},{c},{h},{w})",
                    describe=f"BN2d+{'ReLU' if layer.slope == 0 else f'LReLU({layer.slope:g})'} after {layer.name}",
                    priority=(ci, bi, 0, li)))
    return out

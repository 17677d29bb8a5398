"""blocks: the whole fused block, conv included, on each DCGAN conv->BN->act chain.

Stock: ``nn.Sequential(conv, nn.BatchNorm2d, nn.ReLU()/nn.LeakyReLU(0.2))`` with a
not-in-place activation. gan_fast: ``gan_fast.nn.ConvTranspose2dBNAct`` /
``Conv2dBNAct`` wrapping the very same modules (``from_modules``). The conv runs in
the case's dtype, BatchNorm parameters stay fp32. Gradients w.r.t. the block's input
(except G1, whose input is the latent z) and all parameters.

Memory: besides each variant's own numbers, the case records what the stock block
holds with an in-place activation (``eager_inplace_held_bytes``): the memory target
is <= 0.7x stock for not-in-place activations and never above stock in place.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from benchmarks import shapes
from benchmarks.common import Bench, Case, Options, randn, seeded, skip_slow_autotune
from benchmarks.timing import Rotator, SavedBytes, rotation_count

OP = "blocks"


def _modules(layer: shapes.Layer, dtype: str, device: str, gen: torch.Generator, inplace: bool):
    conv = layer.conv_module()
    bn = nn.BatchNorm2d(layer.cout)
    with torch.no_grad():
        conv.weight.copy_(0.02 * torch.randn(conv.weight.shape, generator=gen))
        bn.weight.copy_(1.0 + 0.02 * torch.randn(layer.cout, generator=gen))
        bn.bias.zero_()
    act = nn.ReLU(inplace) if layer.slope == 0 else nn.LeakyReLU(layer.slope, inplace)
    conv.to(device=device, dtype=shapes.DTYPES[dtype])
    bn.to(device)
    return conv, bn, act


def _inputs(layer, batch, dtype, fmt, device, gen):
    td = shapes.DTYPES[dtype]
    esize = torch.empty((), dtype=td).element_size()
    in_shape = (batch, layer.cin, layer.in_hw, layer.in_hw)
    out_shape = (batch, layer.cout, layer.out_hw, layer.out_hw)
    nbytes = (batch * layer.cin * layer.in_hw ** 2 + batch * layer.cout * layer.out_hw ** 2) * esize
    needs_grad = layer.name != "G1"
    sets = []
    for _ in range(rotation_count(nbytes, device)):
        x = randn(in_shape, td, device, fmt, gen, requires_grad=needs_grad)
        g = randn(out_shape, td, device, fmt, gen)
        sets.append((x, g))
    return sets


def _inplace_held(layer, batch, dtype, fmt, device, seed) -> int:
    """Bytes the stock block with an in-place activation holds for backward."""
    gen = seeded(seed, device)
    conv, bn, act = _modules(layer, dtype, device, gen, inplace=True)
    block = nn.Sequential(conv, bn, act).to(memory_format=shapes.FORMATS[fmt])
    x, _ = _inputs(layer, batch, dtype, fmt, device, gen)[0]
    with SavedBytes() as sb:
        out = block(x)
    return sb.held([out], [x, *block.parameters(), *block.buffers()])


def _build(layer: shapes.Layer, batch: int, dtype: str, fmt: str, device: str, seed: int, variant) -> Bench:
    gen = seeded(seed, device)
    conv, bn, act = _modules(layer, dtype, device, gen, inplace=False)
    if variant.fused:
        from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct
        cls = ConvTranspose2dBNAct if layer.transposed else Conv2dBNAct
        block = cls.from_modules(conv, bn, act)
    else:
        block = nn.Sequential(conv, bn, act)
    block.to(memory_format=shapes.FORMATS[fmt])
    params = list(block.parameters())
    fn = variant.wrap(block)
    sets = _inputs(layer, batch, dtype, fmt, device, gen)
    extras = {}
    if variant.name == "eager":
        extras["eager_inplace_held_bytes"] = _inplace_held(layer, batch, dtype, fmt, device, seed)
    return Bench(rotator=Rotator(sets),
                 forward=lambda x, g: fn(x),
                 grad_wrt=(lambda s: [s[0], *params]) if layer.name != "G1" else (lambda s: params),
                 grad_out=lambda s: s[1],
                 exclude=[*params, *block.buffers()],
                 pre_iter=variant.pre_iter(), extras=extras)


def cases(opts: Options) -> list[Case]:
    out = []
    layers = [l for l in shapes.dcgan_layers() if not opts.layers or l.name in opts.layers]
    modes = ("fwd", "fwd+bwd") if opts.device == "cuda" else ("fwd+bwd",)
    combos = [(d, f) for d in opts.dtypes for f in opts.formats]
    for dtype, fmt in [(d, f) for d in opts.dtypes for f in opts.block_formats]:
        ci = combos.index((dtype, fmt)) if (dtype, fmt) in combos else len(combos)
        for bi, batch in enumerate(opts.batches):
            for li, layer in enumerate(layers):
                out.append(Case(
                    op=OP, label=layer.name, batch=batch, dtype=dtype, fmt=fmt, modes=modes,
                    build=functools.partial(_build, layer, batch, dtype, fmt, opts.device, opts.seed),
                    shape=f"({batch},{layer.cin},{layer.in_hw},{layer.in_hw})->({batch},{layer.cout},{layer.out_hw},{layer.out_hw})",
                    describe=layer.describe(), priority=(ci, bi, 2, li), variant_filter=skip_slow_autotune))
    return out

"""dispatch: the host cost of one call (issue 12), on tensors so small that kernels cost nothing.

At GAN batch sizes a GPU runs a block's kernels in tens of microseconds, so the
host time of a call (Python, the dispatcher, autograd) decides speed. Each case
times one call of a tiny block or loss: N=2, C=8, 2x2 -> 4x4 (G) and 4x4 -> 2x2 (D),
(2,) logits, fp32 NCHW, one torch thread, every variant built side by side and
timed *interleaved* (``benchmarks.interleave``: the variants alternate within each
repetition, the median over many repetitions is reported), on CPU, and on CUDA
when the run is on CUDA (synchronised once per batch of calls, not per call).

Cases (stock = the layers gan_fast replaces, with the same parameters):

* ``G-train`` / ``D-train``: ``ConvTranspose2dBNAct`` (ReLU) / ``Conv2dBNAct``
  (LeakyReLU(0.2)) vs ``nn.Sequential(conv, BatchNorm2d, act)``, training mode,
  forward + backward (gradients w.r.t. the input and every parameter);
* ``G-eval`` / ``D-eval``: the same blocks in eval mode, forward under ``no_grad``;
* ``*-fuse``: the same four, the fused side being ``gan_fast.fuse`` applied to the
  stock ``nn.Sequential`` (that path must cost no more than the blocks); the
  torch.compile variants are timed in the cases without ``-fuse`` only;
* ``*-conv-only``: the stock convolution alone (no fused variant): the share of a
  block's host time that is the convolution itself, the same call on both sides, so
  fused / stock cannot go below conv / stock;
* ``in-train-fuse`` / ``in-eval-fuse``: ``gan_fast.fuse`` of CycleGAN's
  ``Conv2d(3x3) + InstanceNorm2d(affine) + ReLU`` and ``act-*-fuse`` of PatchGAN's first
  ``Conv2d(4x4, stride 2) + LeakyReLU(0.2)`` (no norm) vs the stock layers, on
  (2, 8, 4, 4): the chains fuse makes without a BatchNorm (their own target: not slower);
* ``bce-g``: ``GANLoss('bce', 'g')`` vs ``F.binary_cross_entropy_with_logits(x, ones)``,
  ``bce-d``: ``GANLoss('bce', 'd')`` vs the trainer's stock two-term BCE
  (``benchmarks.bench_gan_loss.stock_loss``), forward + backward.

torch.compile variants compile the stock module or loss. Targets (``report.py``):
a block call at most 0.7x stock's host time, a loss call at most 1.0x.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from benchmarks.bench_gan_loss import stock_loss
from benchmarks.common import Bench, Case, Options, randn, seeded
from benchmarks.timing import Rotator

OP = "dispatch"
N, C = 2, 8
THREADS = 1
# block -> (transposed, input H=W, output H=W, activation slope)
BLOCKS = {"G": (True, 2, 4, 0.0), "D": (False, 4, 2, 0.2)}


def _block(which: str, train: bool, via_fuse: bool, device: str, seed: int, variant,
           conv_only: bool = False) -> Bench:
    transposed, hin, hout, slope = BLOCKS[which]
    gen = seeded(seed, device)
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(C, C, 4, 2, 1, bias=False)
    bn = nn.BatchNorm2d(C)
    with torch.no_grad():
        conv.weight.copy_(0.2 * torch.randn(conv.weight.shape, generator=gen))
        bn.weight.copy_(1.0 + 0.02 * torch.randn(C, generator=gen))
        bn.bias.copy_(0.02 * torch.randn(C, generator=gen))
    act = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    block = nn.Sequential(conv, bn, act) if not conv_only else nn.Sequential(conv)
    if variant.fused and not conv_only:
        if via_fuse:
            import gan_fast
            block = gan_fast.fuse(block, verbose=False)
        else:
            from gan_fast.nn import Conv2dBNAct, ConvTranspose2dBNAct
            block = (ConvTranspose2dBNAct if transposed else Conv2dBNAct).from_modules(conv, bn, act)
    return _timed(block, train, device, gen, variant, hin, hout)


def _timed(block: nn.Module, train: bool, device: str, gen, variant, hin: int, hout: int) -> Bench:
    """One call of `block` (training: forward + backward w.r.t. the input and every
    parameter; eval: forward under no_grad) on an (N, C, hin, hin) input."""
    block.to(device).train(train)
    params = list(block.parameters())
    fn = variant.wrap(block)
    x = randn((N, C, hin, hin), torch.float32, device, "nchw", gen, requires_grad=train)
    g = randn((N, C, hout, hout), torch.float32, device, "nchw", gen)
    if train:
        forward = lambda x, g: fn(x)  # noqa: E731
    else:
        def forward(x, g):
            with torch.no_grad():
                return fn(x)
    return Bench(rotator=Rotator([(x, g)]), forward=forward,
                 grad_wrt=lambda s: [s[0], *params], grad_out=lambda s: s[1],
                 exclude=[*params, *block.buffers()], pre_iter=variant.pre_iter())


# chain -> (stock layers of C channels, the output's H=W for a 4x4 input)
CHAINS = {
    "in": (lambda: [nn.Conv2d(C, C, 3, 1, 1), nn.InstanceNorm2d(C, affine=True), nn.ReLU(True)], 4),
    "act": (lambda: [nn.Conv2d(C, C, 4, 2, 1), nn.LeakyReLU(0.2, True)], 2),
}


def _chain(which: str, train: bool, device: str, seed: int, variant) -> Bench:
    """A chain fuse makes without a BatchNorm (CHAINS), stock or fused by gan_fast.fuse."""
    layers, hout = CHAINS[which]
    gen = seeded(seed, device)
    block = nn.Sequential(*layers())
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    if variant.fused:
        import gan_fast
        block = gan_fast.fuse(block, verbose=False)
    return _timed(block, train, device, gen, variant, 4, hout)


def _loss(side: str, device: str, seed: int, variant) -> Bench:
    gen = seeded(seed, device)
    if variant.fused:
        from gan_fast.nn import GANLoss
        crit = GANLoss("bce", side)
    else:
        crit = stock_loss("bce", side)
    fn = variant.wrap(crit)
    real = randn((N,), torch.float32, device, "nchw", gen, requires_grad=True, scale=2.0, shift=0.5)
    fake = randn((N,), torch.float32, device, "nchw", gen, requires_grad=True, scale=2.0, shift=-0.5)
    if side == "d":
        forward, wrt = (lambda r, f: fn(r, f)), (lambda s: [s[0], s[1]])
    else:
        forward, wrt = (lambda r, f: fn(f)), (lambda s: [s[1]])
    return Bench(rotator=Rotator([(real, fake)]), forward=forward, grad_wrt=wrt,
                 grad_out=lambda s: None, pre_iter=variant.pre_iter())


def _stock_only(variant, opts: Options):
    if variant.fused or variant.is_compiled:
        return "the convolution alone: the floor both sides share, timed stock only"
    return None


def _compiled_elsewhere(variant, opts: Options):
    if variant.is_compiled:
        return "the torch.compile variants of this block are timed in the case without -fuse"
    return None


def _chain_vs_stock(variant, opts: Options):
    if variant.is_compiled:
        return "fuse's chains vs the stock layers; torch.compile's host cost is timed in the G/D cases"
    return None


def cases(opts: Options) -> list[Case]:
    out = []
    common = dict(op=OP, batch=N, dtype="fp32", threads=THREADS, interleaved=True)
    i = 0
    for via_fuse in (False, True):
        for which, (transposed, hin, hout, slope) in BLOCKS.items():
            for train in (True, False):
                conv = "ConvTranspose2d" if transposed else "Conv2d"
                act = "ReLU" if slope == 0 else f"LeakyReLU({slope:g})"
                fused = ("gan_fast.fuse(stock)" if via_fuse
                         else f"{'ConvTranspose2dBNAct' if transposed else 'Conv2dBNAct'}")
                out.append(Case(
                    label=f"{which}-{'train' if train else 'eval'}{'-fuse' if via_fuse else ''}",
                    modes=("fwd+bwd",) if train else ("fwd",),
                    build=functools.partial(_block, which, train, via_fuse, opts.device, opts.seed),
                    shape=f"({N},{C},{hin},{hin})->({N},{C},{hout},{hout})",
                    describe=f"{fused} vs {conv}+BatchNorm2d+{act}, "
                             + ("train fwd+bwd" if train else "eval fwd under no_grad"),
                    fmt="nchw", priority=(0, 0, 4, i),
                    variant_filter=_compiled_elsewhere if via_fuse else None,
                    **common))
                i += 1
    for which, (transposed, hin, hout, slope) in BLOCKS.items():
        for train in (True, False):  # the convolution alone: the same call on both sides
            out.append(Case(
                label=f"{which}-{'train' if train else 'eval'}-conv-only",
                modes=("fwd+bwd",) if train else ("fwd",),
                build=functools.partial(_block, which, train, False, opts.device, opts.seed,
                                        conv_only=True),
                shape=f"({N},{C},{hin},{hin})->({N},{C},{hout},{hout})",
                describe=f"{'ConvTranspose2d' if transposed else 'Conv2d'} alone (stock): "
                         "the part of a block's host time that fusing cannot remove",
                fmt="nchw", priority=(0, 0, 4, i), variant_filter=_stock_only, **common))
            i += 1
    for which, (_, hout) in CHAINS.items():
        for train in (True, False):
            out.append(Case(
                label=f"{which}-{'train' if train else 'eval'}-fuse",
                modes=("fwd+bwd",) if train else ("fwd",),
                build=functools.partial(_chain, which, train, opts.device, opts.seed),
                shape=f"({N},{C},4,4)->({N},{C},{hout},{hout})",
                describe=("gan_fast.fuse(stock) vs "
                          + ("Conv2d+InstanceNorm2d+ReLU" if which == "in" else "Conv2d+LeakyReLU(0.2)")
                          + (", train fwd+bwd" if train else ", eval fwd under no_grad")),
                fmt="nchw", priority=(0, 0, 4, i), variant_filter=_chain_vs_stock, **common))
            i += 1
    for side in ("g", "d"):
        out.append(Case(
            label=f"bce-{side}", modes=("fwd+bwd",),
            build=functools.partial(_loss, side, opts.device, opts.seed),
            shape=f"({N},)" + (" x2" if side == "d" else ""),
            describe=f"GANLoss('bce', '{side}') vs "
                     + ("F.binary_cross_entropy_with_logits(x, ones)" if side == "g"
                        else "the trainer's stock BCE(real, 1) + BCE(fake, 0)"),
            fmt="-", priority=(0, 0, 4, i), **common))
        i += 1
    return out

"""gan_loss: the GAN losses on the DCGAN discriminator's logits, (N,) fp32.

Stock: the trainer's plain-PyTorch losses (``gan_fast.train.loop.stock_gan_loss``,
e.g. D's BCE: ``bce_with_logits(real, 1) + bce_with_logits(fake, 0)``). gan_fast:
``gan_fast.functional.gan_loss``. side 'd' differentiates w.r.t. real and fake
logits, side 'g' w.r.t. the fake logits. The trainer casts logits to fp32 before the
loss, so only fp32 runs here (the case's dtype/format fields read fp32/-).
"""
from __future__ import annotations

import functools

import torch

from benchmarks.common import Bench, Case, Options, randn, seeded
from benchmarks.timing import Rotator, rotation_count

OP = "gan_loss"
MODES = ("fwd", "bwd", "fwd+bwd")


def stock_loss(kind: str, side: str):
    """The eager baseline: the trainer's plain-PyTorch loss."""
    from gan_fast.train.loop import stock_gan_loss
    return stock_gan_loss(kind, side)


def _build(kind: str, side: str, batch: int, device: str, seed: int, variant) -> Bench:
    gen = seeded(seed, device)
    if variant.fused:
        from gan_fast.functional import gan_loss

        if side == "d":
            def fn(real, fake):
                return gan_loss(real, fake, kind, "d")
        else:
            def fn(fake):
                return gan_loss(None, fake, kind, "g")
    else:
        fn = stock_loss(kind, side)
    fn = variant.wrap(fn)
    sets = []
    for _ in range(rotation_count(2 * batch * 4, device)):
        real = randn((batch,), torch.float32, device, "nchw", gen, requires_grad=True, scale=2.0, shift=0.5)
        fake = randn((batch,), torch.float32, device, "nchw", gen, requires_grad=True, scale=2.0, shift=-0.5)
        sets.append((real, fake))
    if side == "d":
        forward, wrt = (lambda r, f: fn(r, f)), (lambda s: [s[0], s[1]])
    else:
        forward, wrt = (lambda r, f: fn(f)), (lambda s: [s[1]])
    return Bench(rotator=Rotator(sets), forward=forward, grad_wrt=wrt, grad_out=lambda s: None,
                 pre_iter=variant.pre_iter())


def cases(opts: Options) -> list[Case]:
    out = []
    for bi, batch in enumerate(opts.batches):
        for ki, kind in enumerate(opts.loss_kinds):
            for si, side in enumerate(opts.loss_sides):
                out.append(Case(
                    op=OP, label=f"{kind}-{side}", batch=batch, dtype="fp32", fmt="-", modes=MODES,
                    build=functools.partial(_build, kind, side, batch, opts.device, opts.seed),
                    shape=f"({batch},)" + (" x2" if side == "d" else ""),
                    describe=f"{kind} loss, {'discriminator (real, fake)' if side == 'd' else 'generator (fake)'}",
                    priority=(0, bi, 1, ki * 2 + si)))
    return out

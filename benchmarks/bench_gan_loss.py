"""gan_loss: the GAN losses on discriminator logits, fp32: the DCGAN discriminator's
(N,) and a PatchGAN's (N, 1, 30, 30) (pix2pix's 70x70 PatchGAN on 256x256 images).

Stock: the trainer's plain-PyTorch losses (``gan_fast.train.losses.stock_gan_loss``,
e.g. D's BCE: ``bce_with_logits(real, 1) + bce_with_logits(fake, 0)``). gan_fast:
``gan_fast.functional.gan_loss``. side 'd' differentiates w.r.t. real and fake
logits, side 'g' w.r.t. the fake logits. The trainer casts logits to fp32 before the
loss, so only fp32 runs here (the case's dtype/format fields read fp32/-).

At (N,) every variant is bound by fixed per-call costs, not by the kernel:
``loss.backward()`` alone costs tens of microseconds on a CPU (the Python wrapper
``torch.autograd.backward`` plus the engine), the same for stock and gan_fast. The patch
logits (900 values per image) show the kernels.
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
    try:
        from gan_fast.train.losses import stock_gan_loss
    except ImportError:  # before the trainer's losses had their own module
        from gan_fast.train.losses import stock_gan_loss
    return stock_gan_loss(kind, side)


# case label suffix -> per-image logit shape
LOGITS = {"": (), "-patch": (1, 30, 30)}


def _build(kind: str, side: str, batch: int, per_image: tuple, device: str, seed: int,
           variant) -> Bench:
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
    shape = (batch, *per_image)
    numel = batch * max(1, torch.Size(per_image).numel())
    for _ in range(rotation_count(2 * numel * 4, device)):
        real = randn(shape, torch.float32, device, "nchw", gen, requires_grad=True, scale=2.0, shift=0.5)
        fake = randn(shape, torch.float32, device, "nchw", gen, requires_grad=True, scale=2.0, shift=-0.5)
        sets.append((real, fake))
    if side == "d":
        forward, wrt = (lambda r, f: fn(r, f)), (lambda s: [s[0], s[1]])
    else:
        forward, wrt = (lambda r, f: fn(f)), (lambda s: [s[1]])
    return Bench(rotator=Rotator(sets), forward=forward, grad_wrt=wrt, grad_out=lambda s: None,
                 pre_iter=variant.pre_iter())


def cases(opts: Options) -> list[Case]:
    out = []
    for li, (suffix, per_image) in enumerate(LOGITS.items()):
        for bi, batch in enumerate(opts.batches):
            for ki, kind in enumerate(opts.loss_kinds):
                for si, side in enumerate(opts.loss_sides):
                    out.append(Case(
                        op=OP, label=f"{kind}-{side}{suffix}", batch=batch, dtype="fp32", fmt="-",
                        modes=MODES,
                        build=functools.partial(_build, kind, side, batch, per_image, opts.device,
                                                opts.seed),
                        shape=str((batch, *per_image)).replace(" ", "")
                        + (" x2" if side == "d" else ""),
                        describe=f"{kind} loss on {'patch' if per_image else 'per-image'} logits, "
                                 f"{'discriminator (real, fake)' if side == 'd' else 'generator (fake)'}",
                        priority=(0, bi, 1, li * 8 + ki * 2 + si)))
    return out

"""step: one DCGAN training step with Adam, as the trainer runs it.

Models: the trainer's DCGAN (64x64, nz=100, ngf=ndf=64, nc=3; ``benchmarks.shapes``),
Adam(lr=2e-4, betas=(0.5, 0.999)), BCE loss on logits.

* ``gd_step``: the trainer's whole step (``Trainer._train_step``): G makes the fakes,
  D's step on real and detached fakes, then G's step through D on the same fakes (G's
  graph stays alive during D's step: this is the step whose peak memory counts).
* ``d_step``: D on a batch of real images and a batch of (already generated,
  detached) fakes, the D loss, backward, ``opt_d.step()``.
* ``g_step``: G on z, D on the fakes, the non-saturating G loss, backward into G's
  parameters only, ``opt_g.step()``.

``d_step`` + ``g_step`` is the trainer's step with the fakes generated twice.
Stock: the stock models and the trainer's stock loss. gan_fast: ``gan_fast.fuse``
on both models and ``gan_fast.nn.GANLoss``. torch.compile variants compile G and D
(as the trainer's ``--compile``); the loss and the optimizer stay eager. bf16 runs
under ``torch.autocast`` like the trainer.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from benchmarks import shapes
from benchmarks.bench_gan_loss import stock_loss
from benchmarks.common import Bench, Case, Options, randn, seeded, skip_slow_autotune
from benchmarks.timing import Rotator, rotation_count

OP = "step"
DESCRIBE = {
    "gd_step": "the trainer's step: G fwd, D step (real, fake) with Adam, G step with Adam",
    "d_step": "D fwd(real, fake) + BCE + bwd + Adam",
    "g_step": "G fwd + D fwd + BCE + bwd into G + Adam",
}


def _build(which: str, batch: int, dtype: str, fmt: str, device: str, seed: int, variant) -> Bench:
    g, d = shapes.build_dcgan(seed)
    if variant.fused:
        import gan_fast
        from gan_fast.nn import GANLoss
        gan_fast.fuse(g, verbose=False)
        gan_fast.fuse(d, verbose=False)
        crit_d, crit_g = GANLoss("bce", "d"), GANLoss("bce", "g")
    else:
        crit_d, crit_g = stock_loss("bce", "d"), stock_loss("bce", "g")
    mf = shapes.FORMATS[fmt]
    g.to(device, memory_format=mf).train()
    d.to(device, memory_format=mf).train()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g_run, d_run = variant.wrap(g), variant.wrap(d)
    g_params = list(g.parameters())

    def autocast():
        if dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device, dtype=shapes.DTYPES[dtype])

    gen = seeded(seed, device)
    img = (batch, shapes.NC, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    sets = []
    for _ in range(rotation_count(2 * batch * shapes.NC * shapes.IMAGE_SIZE ** 2 * 4, device, max_sets=4)):
        real = randn(img, torch.float32, device, fmt, gen).clamp_(-1, 1)
        z = randn((batch, shapes.NZ, 1, 1), torch.float32, device, "nchw", gen)
        if which == "d_step":
            with torch.no_grad(), autocast():
                fake = g(z).detach()
            sets.append((real, fake.contiguous(memory_format=mf)))
        elif which == "g_step":
            sets.append((z,))
        else:
            sets.append((real, z))

    def d_step(real, fake):
        with autocast():
            lr, lf = d_run(real), d_run(fake)
        loss = crit_d(lr.float(), lf.float())
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()

    def g_step(z):
        with autocast():
            lf = d_run(g_run(z))
        loss = crit_g(lf.float())
        opt_g.zero_grad(set_to_none=True)
        loss.backward(inputs=g_params)
        opt_g.step()

    def gd_step(real, z):  # the trainer's step: fakes made once, for D's step and G's
        with autocast():
            fake = g_run(z)
            lr, lf = d_run(real), d_run(fake.detach())
        loss_d = crit_d(lr.float(), lf.float())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with autocast():
            gl = d_run(fake)
        loss_g = crit_g(gl.float())
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward(inputs=g_params)
        opt_g.step()

    params = [*g.parameters(), *d.parameters(), *g.buffers(), *d.buffers()]
    step = {"d_step": d_step, "g_step": g_step, "gd_step": gd_step}[which]
    return Bench(rotator=Rotator(sets), step=step,
                 exclude=params, pre_iter=variant.pre_iter())


def cases(opts: Options) -> list[Case]:
    out = []
    combos = [(dt, f) for dt in opts.dtypes for f in opts.formats]
    for dtype in opts.step_dtypes:
        for fmt in opts.step_formats:
            ci = combos.index((dtype, fmt)) if (dtype, fmt) in combos else len(combos)
            for bi, batch in enumerate(opts.step_batches):
                for si, which in enumerate(opts.steps):
                    out.append(Case(
                        op=OP, label=which, batch=batch, dtype=dtype, fmt=fmt, modes=("step",),
                        build=functools.partial(_build, which, batch, dtype, fmt, opts.device, opts.seed),
                        shape=f"({batch},{shapes.NC},{shapes.IMAGE_SIZE},{shapes.IMAGE_SIZE})",
                        describe=DESCRIBE[which],
                        priority=(ci, bi, 3, si), variant_filter=skip_slow_autotune))
    return out

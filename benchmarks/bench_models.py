"""models: whole-model training steps of the networks beyond DCGAN (issue 16).

Each case is one training step with Adam(lr=2e-4, betas=(0.5, 0.999)) of a public
architecture written from its published layout (``gan_fast/train/models_*.py``), 64x64:

* ``pix2pix``: the U-Net generator (num_downs 6, ngf 32; pre-activation blocks, skips by
  cat) and the 70x70-style PatchGAN (n_layers 2, ndf 32): fakes made once, D's step on the
  (input, target) and (input, fake) pairs with BCE, then G's step with BCE + 100 L1;
* ``cyclegan_g``: CycleGAN's ResNet generator (ngf 16, 6 residual blocks,
  InstanceNorm2d) on an image-to-image L1 loss (a CycleGAN step runs it four times);
* ``vae``: the conv VAE (nz 32, widths 32; Conv/ConvTranspose + BatchNorm2d + LeakyReLU)
  with its BCE + KL loss.

Stock: the stock models and losses. gan_fast: ``gan_fast.fuse`` on every model (and
GANLoss for pix2pix). torch.compile variants compile the models; losses and optimizers
stay eager. bf16 runs under ``torch.autocast``.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from benchmarks import shapes
from benchmarks.bench_gan_loss import stock_loss
from benchmarks.common import Bench, Case, Options, randn, seeded, skip_slow_autotune
from benchmarks.timing import Rotator

OP = "models"
SIZE = 64
DESCRIBE = {
    "pix2pix": "pix2pix U-Net G + PatchGAN D: D step (BCE) + G step (BCE + 100 L1), Adam",
    "cyclegan_g": "CycleGAN ResNet generator (InstanceNorm2d, 6 blocks): L1 step, Adam",
    "vae": "conv VAE (BatchNorm2d + LeakyReLU): BCE + KL step, Adam",
}
BATCHES = {"pix2pix": 8, "cyclegan_g": 4, "vae": 64}  # about 0.1-0.5 s a step on 2 CPU cores


def _adam(model):
    return torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))


def _models(which: str, seed: int):
    torch.manual_seed(seed)
    if which == "pix2pix":
        from gan_fast.train.models_pix2pix import build_pix2pix
        return build_pix2pix(nc=3, ngf=32, ndf=32, image_size=SIZE, seed=seed)
    if which == "cyclegan_g":
        from gan_fast.train.models_cyclegan import ResnetGenerator
        return (ResnetGenerator(3, 3, ngf=16, norm="instance", n_blocks=6),)
    from gan_fast.train.models_vae import build_vae
    return build_vae(nz=32, ngf=32, ndf=32, nc=3, image_size=SIZE, seed=seed)


def _build(which: str, batch: int, dtype: str, fmt: str, device: str, seed: int, variant) -> Bench:
    models = _models(which, seed)
    if variant.fused:
        import gan_fast
        for m in models:
            gan_fast.fuse(m)
    mf = shapes.FORMATS[fmt]
    for m in models:
        m.to(device, memory_format=mf).train()
    runs = [variant.wrap(m) for m in models]
    opts = [_adam(m) for m in models]

    def autocast():
        if dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device, dtype=shapes.DTYPES[dtype])

    gen = seeded(seed, device)
    img = (batch, 3, SIZE, SIZE)
    sets = [(randn(img, torch.float32, device, fmt, gen).clamp_(-1, 1),
             randn(img, torch.float32, device, fmt, gen).clamp_(-1, 1)) for _ in range(2)]
    if variant.fused:
        from gan_fast.nn import GANLoss
        losses = (GANLoss("bce", "d"), GANLoss("bce", "g"))
    else:
        losses = (stock_loss("bce", "d"), stock_loss("bce", "g"))
    step = {"pix2pix": _pix2pix_step, "cyclegan_g": _cyclegan_g_step, "vae": _vae_step}[which]
    params = [t for m in models for t in (*m.parameters(), *m.buffers())]
    return Bench(rotator=Rotator(sets), step=functools.partial(step, runs, opts, autocast, losses, gen),
                 exclude=params, pre_iter=variant.pre_iter())


def _pix2pix_step(runs, opts, autocast, losses, gen, a, b):
    (g, d), (opt_g, opt_d), (crit_d, crit_g) = runs, opts, losses
    with autocast():
        fake = g(a)
        real_logits, fake_logits = d(a, b), d(a, fake.detach())
    loss_d = crit_d(real_logits.float(), fake_logits.float())
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    with autocast():
        logits = d(a, fake)
    loss_g = crit_g(logits.float()) + 100.0 * F.l1_loss(fake.float(), b.float())
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward(inputs=list(opt_g.param_groups[0]["params"]))
    opt_g.step()


def _cyclegan_g_step(runs, opts, autocast, losses, gen, a, b):
    (g,), (opt,) = runs, opts
    with autocast():
        out = g(a)
    loss = F.l1_loss(out.float(), b.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _vae_step(runs, opts, autocast, losses, gen, a, b):
    from gan_fast.train.models_vae import reparameterize, vae_terms
    (dec, enc), (opt_dec, opt_enc) = runs, opts
    with autocast():
        mu, logvar = enc(a)
        eps = torch.randn(mu.shape, generator=gen).to(mu.device, mu.dtype)
        logits = dec(reparameterize(mu, logvar, eps))
    bce, kl = vae_terms(logits, a, mu, logvar)
    opt_dec.zero_grad(set_to_none=True), opt_enc.zero_grad(set_to_none=True)
    (bce + kl).backward()
    opt_dec.step(), opt_enc.step()


def cases(opts: Options) -> list[Case]:
    out = []
    for dtype in opts.step_dtypes:
        for fmt in opts.step_formats:
            for i, which in enumerate(DESCRIBE):
                batch = BATCHES[which]
                out.append(Case(
                    op=OP, label=which, batch=batch, dtype=dtype, fmt=fmt, modes=("step",),
                    build=functools.partial(_build, which, batch, dtype, fmt, opts.device, opts.seed),
                    shape=f"({batch},3,{SIZE},{SIZE})", describe=DESCRIBE[which],
                    priority=(0, 0, 3, 5 + i), variant_filter=skip_slow_autotune))
    return out

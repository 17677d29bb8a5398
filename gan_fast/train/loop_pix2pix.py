"""``gan-fast train --model pix2pix --task inpaint|denoise``: image-to-image
translation as in pix2pix (Isola et al. 2017), on (corrupted, clean) pairs made from the
data (:func:`gan_fast.train.data.corrupt`).

U-Net G and conditional PatchGAN D (:mod:`gan_fast.train.models_pix2pix`); each step one
D update on ``0.5 * (GAN(D(a, b), real) + GAN(D(a, G(a)), fake))`` and one G update on
``GAN(D(a, G(a)), real) + l1_weight * |G(a) - b|_1`` (pix2pix's objective; the GAN loss
is ``--loss``, bce by default as pix2pix's 'vanilla'). A tenth of the images is held
out (:func:`gan_fast.train.data.split_held_out`), corrupted once with a fixed seed, and
scored at the end: PSNR and SSIM of G's output (eval mode: running BatchNorm
statistics) next to those of the corrupted input itself.

Everything else (checkpoints, resume, records, signals, non-finite checks, --layers,
--backend, --dtype, --channels-last, --compile) is the DCGAN trainer's
(:class:`gan_fast.train.loop.Trainer`). The checkpoint's ``generator`` is the U-Net,
its ``discriminator`` the PatchGAN, its ``fixed_noise`` the corrupted inputs of the
sample grids.
"""
from __future__ import annotations

import torch

from gan_fast.train.data import corrupt, split_held_out
from gan_fast.train.image_metrics import restoration_scores
from gan_fast.train.images import save_grid
from gan_fast.train.loop import Trainer
from gan_fast.train.models_pix2pix import build_pix2pix
from gan_fast.train.records_fields import FieldsLog
from gan_fast.train.rundir import METRICS, TIMING

FIELDS = ("loss_d", "loss_g", "l1", "d_real", "d_fake")
HELD_OUT_SEED = 20260  # the corruption of the held-out images: one fixed draw
GRID_IMAGES = 32  # held-out images in the sample grids (rows of 8: input, output, target)


def fuse_reports_dict(reports, names=("generator", "discriminator")) -> dict:
    """What gan_fast.fuse did to each model, as plain lists (summary.json)."""
    if reports is None:
        return {}
    return {"fuse": {n: {"fused": list(r.fused), "left": list(r.left)}
                     for n, r in zip(names, reports)}}


class Pix2PixTrainer(Trainer):
    def _training_images(self, data_seed: int) -> torch.Tensor:
        train_idx, held_idx = split_held_out(len(self.data), data_seed)
        self.held_clean = self.data.images[held_idx]
        self.held_input = corrupt(self.held_clean, self.cfg.task,
                                  torch.Generator().manual_seed(HELD_OUT_SEED))
        return self.data.images[train_idx]

    def build_models(self):
        c = self.cfg
        return build_pix2pix(self.nc, c.ngf, c.ndf, c.image_size, seed=c.seed)

    def example_inputs(self) -> tuple:
        x = torch.zeros(2, self.nc, self.cfg.image_size, self.cfg.image_size)
        return (x,), (x, x)

    def _fixed_inputs(self) -> torch.Tensor:
        return self.held_input[:GRID_IMAGES].clone()

    def _new_metrics_log(self):
        return FieldsLog(self.out / METRICS, self.out / TIMING, self.cfg.log_every, FIELDS)

    def summary_extra(self) -> dict:
        c = self.cfg
        return {"model": "pix2pix", "task": c.task, "l1_weight": c.l1_weight,
                "held_out": int(self.held_clean.shape[0]),
                **fuse_reports_dict(self.fuse_reports)}

    def _next_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.next().to(self.device)
        clean = self.images.index_select(0, idx)
        a = corrupt(clean, self.cfg.task, self.noise_gen)
        if self.cfg.channels_last:
            a, clean = (t.contiguous(memory_format=torch.channels_last) for t in (a, clean))
        return a, clean

    def _train_step(self, a: torch.Tensor, b: torch.Tensor):
        """One D step then one G step; returns detached (loss_d, GAN part of G's loss,
        L1, mean D logit on real pairs, on fake pairs)."""
        with self._autocast():
            fake = self.g_run(a)
            real_logits = self.d_run(a, b)
            fake_logits = self.d_run(a, fake.detach())
        loss_d = 0.5 * self.crit_d(real_logits.float(), fake_logits.float())
        self._update_d(loss_d)
        with self._autocast():
            gen_logits = self.d_run(a, fake)
        loss_gan = self.crit_g(gen_logits.float())
        l1 = (fake.float() - b.float()).abs().mean()
        self.opt_g.zero_grad(set_to_none=True)
        self._backward_step(loss_gan + self.cfg.l1_weight * l1, self.opt_g, self.scaler_g,
                            inputs=self.g_params)
        return (loss_d.detach(), loss_gan.detach(), l1.detach(),
                real_logits.detach().float().mean(), fake_logits.detach().float().mean())

    @torch.no_grad()
    def restore(self, inputs: torch.Tensor, g: torch.nn.Module | None = None,
                batch_size: int = 250) -> torch.Tensor:
        """G(inputs) in eval mode (running BatchNorm statistics), float32 on the CPU."""
        g = self.g if g is None else g
        was_training = g.training
        g.eval()
        try:
            out = [g(inputs[i:i + batch_size].to(self.device).contiguous(
                memory_format=self.mf)).float().cpu()
                   for i in range(0, inputs.shape[0], batch_size)]
        finally:
            g.train(was_training)
        return torch.cat(out)

    def _save_samples(self, name: str) -> None:
        """Groups of three rows of 8 held-out images: input, G's output, target."""
        a = self.fixed_noise
        out = self.restore(a)
        clean = self.held_clean[:a.shape[0]]
        rows = [t[i:i + 8] for i in range(0, a.shape[0], 8) for t in (a, out, clean)]
        grid = torch.cat(rows)
        save_grid(grid, self.out / name)
        save_grid(grid, self.out / "samples_latest.png")

    def evaluate(self, n: int) -> dict:
        """PSNR/SSIM on (up to n of) the held-out pairs: G's output and the input's own."""
        k = min(n, self.held_input.shape[0])
        a, clean = self.held_input[:k], self.held_clean[:k]
        result = restoration_scores(self.restore(a), a, clean)
        result["bn_mode"] = "eval"
        return result

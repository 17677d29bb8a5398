"""``gan-fast train --model vae``: a convolutional VAE (:mod:`gan_fast.train.models_vae`)
trained on the ELBO, with the DCGAN trainer's machinery
(:class:`gan_fast.train.loop.Trainer`: checkpoints, exact resume, records, signals,
non-finite checks, --layers, --backend, --dtype, --channels-last, --compile).

Each step: (mu, logvar) = encoder(x), z = mu + sigma * eps (eps from the trainer's
seeded noise generator, so a resume draws the same), logits = decoder(z), and one Adam
step on ``BCE + kl_weight * KL`` (per image; -ELBO when kl_weight is 1). The decoder
stands where a GAN's generator does (checkpoint ``generator``, ``--lr-g``), the encoder
where the discriminator does (``discriminator``, ``--lr-d``); Adam's update is per
parameter, so two optimizers make the same step as one over both networks.

A tenth of the images is held out; the final evaluation reports on it (eval mode:
running BatchNorm statistics) the reconstruction error (MSE per pixel in [0, 1] units,
BCE per image), the KL and the ELBO (nats per image), and the Fréchet distance (the
shipped MNIST classifier's features, :mod:`gan_fast.train.metrics`) of decoder(z),
z ~ N(0, I), against the real images, as the DCGAN trainer scores G (BatchNorm on each
batch's statistics; ``fd_bn_eval`` with the running ones), next to the untrained
decoder's and real-vs-real.
"""
from __future__ import annotations

import copy

import torch

from gan_fast.train.data import split_held_out
from gan_fast.train.images import save_grid
from gan_fast.train.loop import Trainer
from gan_fast.train.loop_pix2pix import fuse_reports_dict
from gan_fast.train.models_vae import build_vae, reparameterize, to_image, vae_terms
from gan_fast.train.records_fields import FieldsLog, FieldsPrinter
from gan_fast.train.rundir import METRICS, TIMING

FIELDS = ("loss", "recon_bce", "kl", "mse")


class ImageDecoder(torch.nn.Module):
    """The decoder's images in [-1, 1] (what the sample grids and the Fréchet distance
    see); the decoder itself gives the logits the loss takes."""

    def __init__(self, decoder: torch.nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return to_image(self.decoder(z))


class VAEPrinter(FieldsPrinter):
    shown = ("loss", "kl")


class VAETrainer(Trainer):
    printer_class = VAEPrinter

    def _training_images(self, data_seed: int) -> torch.Tensor:
        train_idx, held_idx = split_held_out(len(self.data), data_seed)
        self.held_out = self.data.images[held_idx]
        return self.data.images[train_idx]

    def build_models(self):
        c = self.cfg
        return build_vae(c.nz, c.ngf, c.ndf, self.nc, c.image_size, seed=c.seed)

    def example_inputs(self) -> tuple:
        s = self.cfg.image_size
        return (torch.zeros(2, self.cfg.nz, 1, 1),), (torch.zeros(2, self.nc, s, s),)

    def _new_metrics_log(self):
        return FieldsLog(self.out / METRICS, self.out / TIMING, self.cfg.log_every, FIELDS)

    def summary_extra(self) -> dict:
        return {"model": "vae", "loss": "elbo", "kl_weight": self.cfg.kl_weight,
                "held_out": int(self.held_out.shape[0]),
                **fuse_reports_dict(self.fuse_reports, ("decoder", "encoder"))}

    def _next_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        real, z = super()._next_inputs()  # the batch, and N(0, I) noise (N, nz, 1, 1)
        return real, z.flatten(1)

    def _forward(self, x: torch.Tensor, eps: torch.Tensor, enc=None, dec=None):
        """(logits, mu, logvar) of x with the given noise."""
        enc = self.d_run if enc is None else enc
        dec = self.g_run if dec is None else dec
        with self._autocast():
            mu, logvar = enc(x)
            logits = dec(reparameterize(mu, logvar, eps))
        return logits, mu, logvar

    def _train_step(self, x: torch.Tensor, eps: torch.Tensor):
        logits, mu, logvar = self._forward(x, eps)
        bce, kl = vae_terms(logits, x, mu, logvar)
        loss = bce + self.cfg.kl_weight * kl
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        scaler = self.scaler_g
        if scaler is None:
            loss.backward()
            self.opt_g.step()
            self.opt_d.step()
        else:  # one loss: one scaler steps both optimizers
            scaler.scale(loss).backward()
            scaler.step(self.opt_g)
            scaler.step(self.opt_d)
            scaler.update()
        with torch.no_grad():
            mse = (to_image(logits.detach().float()) - x.float()).pow(2).mean() / 4
        return loss.detach(), bce.detach(), kl.detach(), mse

    def _save_samples(self, name: str) -> None:
        """An 8x8 grid of decoder(fixed z), BatchNorm on the batch's statistics (on a copy,
        as the DCGAN trainer's grids)."""
        with torch.no_grad():
            x = ImageDecoder(copy.deepcopy(self.g).train())(self.fixed_noise.to(self.device))
        save_grid(x, self.out / name)
        save_grid(x, self.out / "samples_latest.png")

    @torch.no_grad()
    def held_out_scores(self, batch_size: int = 500) -> dict:
        """Reconstruction error, KL and ELBO on the held-out images (eval mode; z = mu
        for the reconstructions, the ELBO with one seeded sample of z per image)."""
        self.g.eval()
        self.d.eval()
        gen = torch.Generator().manual_seed(1234)
        tot = torch.zeros(4, dtype=torch.float64)
        try:
            for i in range(0, self.held_out.shape[0], batch_size):
                x = self.held_out[i:i + batch_size].to(self.device)
                eps = torch.randn(x.shape[0], self.cfg.nz, generator=gen).to(self.device)
                logits, mu, logvar = self._forward(x, eps, self.d, self.g)
                bce, kl = vae_terms(logits, x, mu, logvar)
                with self._autocast():
                    rec = to_image(self.g(mu)).float()
                mse = (rec - x.float()).pow(2).mean() / 4
                tot += torch.tensor([bce.item(), kl.item(), mse.item(), 1.0]) * x.shape[0]
        finally:
            self.g.train()
            self.d.train()
        bce, kl, mse, n = (tot[:3] / tot[3]).tolist() + [int(tot[3])]
        return {"recon_mse": round(mse, 6), "recon_bce": round(bce, 3), "kl": round(kl, 3),
                "elbo": round(-(bce + kl), 3), "n_held_out": n}

    def evaluate(self, n: int) -> dict:
        """The Fréchet distance and class histogram of n samples decoder(z), z ~ N(0, I),
        as the DCGAN trainer scores G (BatchNorm on each batch's statistics; with the
        running statistics: ``fd_bn_eval``), and the held-out scores."""
        from gan_fast.train.metrics import Evaluator
        ev = Evaluator(self.data.images, self.device)
        nz = self.cfg.nz
        result = ev.score_generator(ImageDecoder(self.g), n, nz)
        result["fd_bn_eval"] = ev.score_generator(ImageDecoder(self.g), n, nz,
                                                  bn_mode="eval")["fd"]
        dec0, _ = build_vae(nz, self.cfg.ngf, self.cfg.ndf, self.nc, self.cfg.image_size,
                            seed=self.cfg.seed)
        base = ev.score_generator(ImageDecoder(dec0.to(self.device)), n, nz)
        result.update({"fd_untrained": base["fd"], "classes_untrained": base["classes"],
                       "fd_real_halves": ev.real_split_fd()})
        result.update(self.held_out_scores())
        return result

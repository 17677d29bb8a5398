"""Which trainer runs ``--model``: the DCGAN :class:`~gan_fast.train.loop.Trainer`, or
its subclasses for pix2pix (:mod:`~gan_fast.train.loop_pix2pix`) and the VAE
(:mod:`~gan_fast.train.loop_vae`), which share its run, checkpoint, record and output
machinery and replace the models, the inputs, the step, the samples and the evaluation."""
from __future__ import annotations

from typing import Callable, Optional

from gan_fast.train.config import TrainConfig


def make_trainer(cfg: TrainConfig, log: Optional[Callable[[str], None]] = None):
    """The trainer of ``cfg.model``, built (its settings checked, data and models loaded)."""
    if cfg.model == "pix2pix":
        from gan_fast.train.loop_pix2pix import Pix2PixTrainer as cls
    elif cfg.model == "vae":
        from gan_fast.train.loop_vae import VAETrainer as cls
    else:
        from gan_fast.train.loop import Trainer as cls
    return cls(cfg, log)


def train(cfg: TrainConfig, log: Optional[Callable[[str], None]] = None) -> dict:
    """Trains with ``cfg`` and returns the summary dict (also written to out/summary.json)."""
    return make_trainer(cfg, log).run()

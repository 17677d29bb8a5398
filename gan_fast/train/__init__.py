"""gan_fast.train: the reference trainers (``gan-fast train`` / ``python -m gan_fast.train``):
DCGAN (the default), pix2pix (``--model pix2pix``) and a conv VAE (``--model vae``).

It uses only gan_fast's public API (``gan_fast.fuse``, ``gan_fast.nn.GANLoss``,
``gan_fast.use_backend``), so it doubles as the example of integrating gan_fast into an
existing PyTorch trainer: build the stock model, ``gan_fast.fuse(model)``, train as usual.

Submodules: ``config`` (settings and their checks), ``models`` (DCGAN G/D),
``models_pix2pix``, ``models_vae``, ``models_cyclegan`` (CycleGAN's ResNet generator, for
the tests and benchmarks), ``losses``, ``data`` (MNIST subset, digits, image folder,
synthetic, corrupted pairs), ``loop`` (the DCGAN training loop), ``loop_pix2pix`` and
``loop_vae`` (its subclasses), ``trainers`` (which one ``--model`` runs),
``image_metrics`` (PSNR, SSIM),
``records`` (metrics.jsonl, timing.jsonl, progress), ``checkpoint`` (atomic, checksummed,
resumable checkpoints), ``rundir`` (the output folder's rules), ``guard`` (signals and
non-finite values), ``classifier`` + ``metrics`` (Fréchet distance and mode coverage),
``cli`` (the command line).
"""
from __future__ import annotations

__all__ = ["TrainConfig", "train", "main"]


def __getattr__(name):  # lazy: importing gan_fast.train stays cheap
    if name == "TrainConfig":
        from gan_fast.train.config import TrainConfig
        return TrainConfig
    if name == "train":
        from gan_fast.train.trainers import train
        return train
    if name == "main":
        from gan_fast.train.cli import main
        return main
    raise AttributeError(name)

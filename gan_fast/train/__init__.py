"""gan_fast.train: the reference DCGAN trainer (``gan-fast train`` / ``python -m gan_fast.train``).

It uses only gan_fast's public API (``gan_fast.fuse``, ``gan_fast.nn.GANLoss``,
``gan_fast.use_backend``), so it doubles as the example of integrating gan_fast into an
existing PyTorch trainer: build the stock model, ``gan_fast.fuse(model)``, train as usual.

Submodules: ``config`` (settings and their checks), ``models`` (DCGAN G/D), ``losses``,
``data`` (MNIST subset, digits, image folder, synthetic), ``loop`` (the training loop),
``records`` (metrics.jsonl, timing.jsonl, progress), ``checkpoint`` (atomic, checksummed,
resumable checkpoints), ``rundir`` (the output folder's rules), ``guard`` (signals and
non-finite values), ``classifier`` + ``metrics`` (Fréchet distance and mode coverage),
``cli`` (the command line).
"""
from __future__ import annotations

__all__ = ["TrainConfig", "train", "main"]


def __getattr__(name):  # lazy: importing gan_fast.train stays cheap
    if name in ("TrainConfig", "train"):
        from gan_fast.train import loop
        return getattr(loop, name)
    if name == "main":
        from gan_fast.train.cli import main
        return main
    raise AttributeError(name)

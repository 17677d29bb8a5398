"""Checkpoints: written atomically, holding everything a bit-for-bit resume needs.

A checkpoint is one ``torch.save`` file with plain tensors and Python values only, so
it loads with ``torch.load(weights_only=True)``:

* ``config``: the run's settings (a dict of plain values);
* ``step``; ``generator``/``discriminator`` state_dicts (the *stock* keys: fused and
  stock models share them); ``opt_g``/``opt_d`` optimizer state; ``scaler`` (fp16);
* ``data_order``: (seed, epoch, position) of :class:`gan_fast.train.data.BatchOrder`;
* ``rng``: the trainer's own noise generator, and the global torch (CPU and CUDA),
  numpy and Python ``random`` states;
* ``fixed_noise``: the latent vectors of the sample grids.

Writing goes to a temporary file in the same folder, is flushed to disk, then renamed
over the target (``os.replace``), so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


def rng_state(noise_gen: torch.Generator | None = None) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if noise_gen is not None:
        state["noise"] = noise_gen.get_state()
    return state


def set_rng_state(state: dict, noise_gen: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if noise_gen is not None and "noise" in state:
        noise_gen.set_state(state["noise"])


def atomic_write(path: str | os.PathLike, write, binary: bool = True) -> Path:
    """Write ``path`` through a temporary file in the same folder, fsync, then rename:
    a reader (or a crash) sees the old file or the new one, never half of one.
    ``write(f)`` writes the contents to the open temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable where the platform allows it
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to ``path`` atomically (temporary file + rename)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable gan_fast checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != "gan_fast.train" \
            or "generator" not in ckpt:
        raise ValueError(f"{path} is not a gan_fast.train checkpoint")
    if ckpt.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer gan_fast (format "
                         f"{ckpt['version']} > {FORMAT_VERSION})")
    return ckpt


def make(step: int, config: dict, g: torch.nn.Module, d: torch.nn.Module,
         opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, data_order: dict,
         noise_gen: torch.Generator, fixed_noise: torch.Tensor, scaler=None,
         extra: dict | None = None) -> dict:
    return {
        "format": "gan_fast.train", "version": FORMAT_VERSION, "step": int(step),
        "config": dict(config),
        "generator": {k: v.detach().clone() for k, v in g.state_dict().items()},
        "discriminator": {k: v.detach().clone() for k, v in d.state_dict().items()},
        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "data_order": dict(data_order), "rng": rng_state(noise_gen),
        "fixed_noise": fixed_noise.detach().cpu(), "extra": dict(extra or {}),
    }


def atomic_save_text(text: str, path: str | os.PathLike) -> Path:
    """Writes text atomically (temporary file + rename)."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def _chmod_default(path) -> None:
    """mkstemp makes files 0600; give the final file the usual 0666 & ~umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)

"""Checkpoints: written atomically, holding everything a bit-for-bit resume needs.

A checkpoint is one ``torch.save`` file with plain tensors and Python values only, so
it loads with ``torch.load(weights_only=True)``:

* ``config``: the run's settings (a dict of plain values);
* ``step``; ``generator``/``discriminator`` state_dicts (the *stock* keys: fused and
  stock models share them); ``opt_g``/``opt_d`` optimizer state; ``scaler`` (fp16);
* ``data_order``: (seed, epoch, position) of :class:`gan_fast.train.data.BatchOrder`;
* ``rng``: the trainer's own noise generator, and the global torch (CPU and CUDA),
  numpy and Python ``random`` states;
* ``fixed_noise``: the latent vectors of the sample grids;
* ``metrics_log``: the loss sums of the log interval in progress (so that a resume writes
  the records an uninterrupted run writes);
* ``checksum``: ``{"sha256": hex}`` over every tensor's dtype, shape and bytes and every
  other value, in a fixed order (:func:`digest`). :func:`load` refuses a file whose
  contents do not match it; a file without one (format 1, before checksums) loads with
  a warning.

Writing goes to a temporary file in the same folder, is flushed to disk, then renamed
over the target (``os.replace``), so a crash never leaves a half-written checkpoint; the
temporary files a killed write leaves (``.NAME.*.tmp``) are removed by the next write.
"""
from __future__ import annotations

import glob
import hashlib
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

FORMAT_VERSION = 2  # 2: checksum and metrics_log


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
    remove_stale_temps(path)
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


def temp_target(name: str) -> Optional[str]:
    """The file a temporary name of :func:`atomic_write` (``.NAME.XXXXXXXX.tmp``) was
    for, or None if ``name`` is not one."""
    if not (name.startswith(".") and name.endswith(".tmp")) or name.count(".") < 3:
        return None
    return name[1:-len(".tmp")].rsplit(".", 1)[0] or None


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Removes the temporary files that killed writes of ``path`` left beside it."""
    path = Path(path)
    stale = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp")
             if temp_target(p.name) == path.name]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to ``path`` atomically (temporary file + rename)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def digest(ckpt: dict) -> str:
    """sha256 over the checkpoint's contents but its ``checksum``: each tensor's place,
    dtype, shape and bytes, and the repr of every other value, dict keys in sorted order."""
    h = hashlib.sha256()
    _hash_into(h, {k: v for k, v in ckpt.items() if k != "checksum"}, "")
    return h.hexdigest()


def _hash_into(h, obj, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"{where}:{t.dtype}:{tuple(obj.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            _hash_into(h, obj[k], f"{where}/{k!r}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _hash_into(h, v, f"{where}/{i}")
    else:
        h.update(f"{where}={obj!r}\n".encode())


def save(ckpt: dict, path: str | os.PathLike) -> Path:
    """Adds the checksum (:func:`digest`) and writes ``ckpt`` atomically."""
    return atomic_save(dict(ckpt, checksum={"sha256": digest(ckpt)}), path)


def file_of(path: str | os.PathLike) -> Path:
    """The checkpoint file: ``path``, or ``path/checkpoint.pt`` for a run folder."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def load(path: str | os.PathLike, map_location: Any = "cpu", verify: bool = True,
         warn: Optional[Callable[[str], None]] = None) -> dict:
    """Reads a checkpoint (a file, or the run folder holding ``checkpoint.pt``).

    With ``verify``, refuses (ValueError naming the file) one whose contents do not match
    its checksum, and accepts one written before checksums with a warning (``warn(msg)``,
    default ``warnings.warn``)."""
    path = file_of(path)
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
    if verify:
        _verify(ckpt, path, warn or (lambda msg: warnings.warn(msg, stacklevel=3)))
    return ckpt


def _verify(ckpt: dict, path: Path, warn: Callable[[str], None]) -> None:
    recorded = (ckpt.get("checksum") or {}).get("sha256")
    if recorded is None and ckpt.get("version", 0) < 2:
        warn(f"{path} has no checksum (written before gan_fast checked them): its contents "
             f"cannot be verified")
        return
    if recorded is None or digest(ckpt) != recorded:
        raise ValueError(f"{path} is damaged: its contents do not match the sha256 checksum "
                         f"stored in it; use another copy, or start again with --overwrite")


def load_module_state(module: torch.nn.Module, state: dict, what: str, path) -> None:
    """``module.load_state_dict(state)``, a one-line ValueError naming ``path`` if the
    tensors do not fit the model (a shape or key that differs)."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        detail = "; ".join(x.strip() for x in str(e).splitlines() if x.strip())
        raise ValueError(f"{path}: the {what} does not fit the model ({detail})") from None


def make(step: int, config: dict, g: torch.nn.Module, d: torch.nn.Module,
         opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, data_order: dict,
         noise_gen: torch.Generator, fixed_noise: torch.Tensor, scaler=None,
         extra: dict | None = None, metrics_log: dict | None = None) -> dict:
    """The checkpoint dict of a training state: a copy (on the CPU) that later steps do
    not change, so it can be kept in memory as well as saved."""
    return cpu_copy({
        "format": "gan_fast.train", "version": FORMAT_VERSION, "step": int(step),
        "config": dict(config),
        "generator": g.state_dict(), "discriminator": d.state_dict(),
        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "data_order": dict(data_order), "rng": rng_state(noise_gen),
        "fixed_noise": fixed_noise, "extra": dict(extra or {}),
        "metrics_log": dict(metrics_log or {}),
    })


def cpu_copy(obj):
    """A copy of nested dicts/lists/tuples whose tensors are detached CPU copies."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def atomic_save_text(text: str, path: str | os.PathLike) -> Path:
    """Writes text atomically (temporary file + rename)."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def _chmod_default(path) -> None:
    """mkstemp makes files 0600; give the final file the usual 0666 & ~umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)

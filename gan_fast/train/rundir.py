"""The output folder (``--out``): which files are the trainer's, and the rules a run
follows there.

* A fresh run refuses a folder that holds an earlier run's files, unless ``--overwrite``
  (which deletes those files, and only those) or ``--resume``.
* Temporary files of killed atomic writes (``.checkpoint.pt.XXXXXXXX.tmp``, ...) are
  removed at the start of every run.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from gan_fast.train.checkpoint import temp_target

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TIMING = "timing.jsonl"
SUMMARY = "summary.json"
_SAMPLES = re.compile(r"samples_(\d{6,}|final|latest)\.png")


def is_own(name: str) -> bool:
    """Whether a file name is one the trainer writes (temporary files not included)."""
    return name in (CHECKPOINT, METRICS, TIMING, SUMMARY) or bool(_SAMPLES.fullmatch(name))


def own_files(out: Path) -> list[Path]:
    """The trainer's files in ``out`` (not its subfolders), sorted."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_file() and is_own(p.name))


def stale_temps(out: Path) -> list[Path]:
    """Temporary files that killed writes of the trainer's files left in ``out``."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir()
                  if p.is_file() and is_own(temp_target(p.name) or ""))


def prepare(out: Path, resume: bool, overwrite: bool) -> None:
    """Creates ``out`` and checks it can be written, removes stale temporary files, and
    applies the rules above (FileExistsError / FileNotFoundError / ValueError, one line).
    Deletes nothing of an earlier run: :func:`clear` does, when the run starts."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    for p in stale_temps(out):
        p.unlink(missing_ok=True)
    earlier = own_files(out)
    if resume:
        if not (out / CHECKPOINT).is_file():
            hint = (f" (it holds {', '.join(p.name for p in earlier)} of a run that stopped "
                    f"before its first checkpoint: --overwrite starts again)" if earlier else "")
            raise FileNotFoundError(f"--resume: no checkpoint in {out}{hint}")
    elif earlier and not overwrite:
        names = ", ".join(p.name for p in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise FileExistsError(
            f"{out} already holds an earlier run's files ({names}): pass --resume to "
            f"continue it, --overwrite to delete them and start again, or another --out")


def clear(out: Path) -> list[Path]:
    """Deletes the trainer's files in ``out`` (``--overwrite``); leaves every other file."""
    files = own_files(out)
    for p in files:
        p.unlink(missing_ok=True)
    return files

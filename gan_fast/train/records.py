"""The run's records: ``metrics.jsonl`` (losses; deterministic, so a resumed run writes
the lines an uninterrupted one writes), ``timing.jsonl`` (wall-clock, kept apart), and
the progress printer.

A record covers the steps since the previous one: every ``log_every`` steps, plus a
*tail* record at the last step of a run when that is not a multiple. The sums of the
interval in progress travel in the checkpoint (:meth:`MetricsLog.state_dict`); a resume
drops the lines written after the last full interval before the checkpoint (a tail, or
lines of steps the checkpoint does not hold) and goes on from the saved sums.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch

FIELDS = ("loss_d", "loss_g", "d_real", "d_fake")


class MetricsLog:
    """Accumulates (loss_d, loss_g, D(x), D(G(z))) per step; writes interval records."""

    def __init__(self, metrics_path: Path, timing_path: Path, log_every: int):
        self.metrics_path, self.timing_path = Path(metrics_path), Path(timing_path)
        self.log_every = log_every
        self.sum: Optional[torch.Tensor] = None
        self.count = 0
        self.logged_through = 0  # step of the last full-interval record
        self.last_step = None  # step of the last record written (full or tail)

    def add(self, vals) -> None:
        """Adds one step's detached scalars (loss_d, loss_g, D(x), D(G(z)))."""
        v = torch.stack(vals)
        self.sum = v if self.sum is None else self.sum + v
        self.count += 1

    def pending(self) -> list:
        """The tensors a finiteness check must look at (the interval's sums)."""
        return [] if self.sum is None else [self.sum]

    def write(self, step: int, epoch: int, timing: dict) -> Optional[dict]:
        """Writes the record of the steps since the last one (no line if there were
        none); at a multiple of log_every the interval closes. Returns the record with
        the timing fields added, for printing."""
        if self.sum is None or self.last_step == step:
            return None
        m = (self.sum / self.count).tolist()
        rec = {"step": step, **dict(zip(FIELDS, m)), "epoch": epoch}
        _append(self.metrics_path, rec)
        _append(self.timing_path, {"step": step, **timing})
        self.last_step = step
        if step % self.log_every == 0:
            self.sum, self.count, self.logged_through = None, 0, step
        return {**rec, **timing}

    def state_dict(self) -> dict:
        return {"sum": self.sum, "count": self.count, "logged_through": self.logged_through,
                "log_every": self.log_every}

    def load_state_dict(self, st: dict, step: int, device) -> None:
        """Restores the interval in progress of a checkpoint at ``step`` and drops the
        lines it does not hold. A checkpoint without this state (format 1) or one written
        with another --log-every keeps the lines up to its step and starts afresh."""
        if st and st.get("log_every") == self.log_every:
            s = st.get("sum")
            self.sum = None if s is None else s.to(device)
            self.count, self.logged_through = int(st["count"]), int(st["logged_through"])
        else:
            self.logged_through = step
        for p in (self.metrics_path, self.timing_path):
            truncate(p, self.logged_through)

    def start_fresh(self) -> None:
        """Empties both files (a run from step 0)."""
        for p in (self.metrics_path, self.timing_path):
            p.write_text("")


def _append(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def truncate(path: Path, last_step: int) -> None:
    """Drops records past ``last_step`` (and a torn last line)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            break
    path.write_text("".join(k + "\n" for k in keep))


class Printer:
    """tqdm progress bar when available (and asked for), else plain lines."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                                file=sys.stderr, desc="train")
            except ImportError:
                print("(no progress bar: pip install 'gan-fast[train]' for tqdm)",
                      file=sys.stderr)

    def update(self, n: int = 1):
        if self.bar is not None:
            self.bar.update(n)

    def log(self, rec: dict):
        if self.bar is not None:
            self.bar.set_postfix(d=f"{rec['loss_d']:.3f}", g=f"{rec['loss_g']:.3f}",
                                 img_s=f"{rec['images_per_s']:.0f}", refresh=False)
        else:
            print(f"step {rec['step']:6d}  loss_d {rec['loss_d']:.4f}  loss_g "
                  f"{rec['loss_g']:.4f}  {rec['step_time_s'] * 1e3:.1f} ms/step  "
                  f"{rec['images_per_s']:.0f} img/s", flush=True)

    def write(self, msg: str):
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Clock:
    """Training time per record interval, leaving out checks, sampling and saving."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.t0 = self.t_last = time.perf_counter()
        self.steps, self.left_out, self.train_s = 0, 0.0, 0.0
        self.first = None  # (steps, seconds) of the first interval: warm-up, compile

    def lap(self) -> Optional[dict]:
        """The timing fields of a record of the steps since the last lap."""
        if self.steps == 0:
            return None
        now = time.perf_counter()
        dt = max(now - self.t_last - self.left_out, 1e-9)
        self.train_s += dt
        if self.first is None:
            self.first = (self.steps, dt)
        rec = {"step_time_s": dt / self.steps,
               "images_per_s": self.batch_size * self.steps / dt,
               "time_s": round(now - self.t0, 3)}
        self.steps, self.left_out, self.t_last = 0, 0.0, now
        return rec

    @contextlib.contextmanager
    def excluded(self):
        """Time spent inside is left out of the step timings."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.left_out += time.perf_counter() - t


def steady_rate(batch_size, steps, seconds, first):
    """images/s leaving out the first log interval (compilation, graph capture, caches)."""
    if first is None or steps <= first[0] or seconds <= first[1]:
        return None
    return round(batch_size * (steps - first[0]) / (seconds - first[1]), 1)

"""Records of the other models' trainers (pix2pix, VAE): :mod:`gan_fast.train.records`'
metrics log and progress printer, with the model's own fields in place of the DCGAN's
(loss_d, loss_g, d_real, d_fake). Same files, same rules (deterministic
``metrics.jsonl``, wall-clock values apart in ``timing.jsonl``, exact resume)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from gan_fast.train import records


class FieldsLog(records.MetricsLog):
    """A MetricsLog whose records name ``fields`` (one per value a step adds)."""

    def __init__(self, metrics_path: Path, timing_path: Path, log_every: int,
                 fields: tuple[str, ...]):
        super().__init__(metrics_path, timing_path, log_every)
        self.fields = tuple(fields)

    def write(self, step: int, epoch: int, timing: dict) -> Optional[dict]:
        if self.sum is None or self.last_step == step:
            return None
        values = dict(zip(self.fields, (self.sum / self.count).tolist()))
        rec = {"step": step, **values, "epoch": epoch}
        records._append(self.metrics_path, rec)
        records._append(self.timing_path, {"step": step, **timing})
        self.last_step = step
        if step % self.log_every == 0:
            self.sum, self.count, self.logged_through = None, 0, step
        return {**rec, **timing}


class FieldsPrinter(records.Printer):
    """The progress printer showing the fields named in ``shown`` (the class's)."""
    shown: tuple[str, ...] = ("loss_d", "loss_g")

    def log(self, rec: dict):
        vals = {k: f"{rec[k]:.4f}" for k in self.shown}
        if self.bar is not None:
            self.bar.set_postfix(**vals, img_s=f"{rec['images_per_s']:.0f}", refresh=False)
        else:
            print(f"step {rec['step']:6d}  " + "  ".join(f"{k} {v}" for k, v in vals.items())
                  + f"  {rec['step_time_s'] * 1e3:.1f} ms/step  "
                  f"{rec['images_per_s']:.0f} img/s", flush=True)

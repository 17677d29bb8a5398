"""The DCGAN training loop (pytorch/examples order: one D step, then one G step).

It integrates gan_fast through the public API only:

* ``gan_fast.fuse(G)``, ``gan_fast.fuse(D)`` on the stock models (``--layers fused``);
* ``gan_fast.nn.GANLoss(kind, side)`` for the losses (``--loss-impl fused``);
* ``gan_fast.use_backend(name)`` around the whole run (``--backend``).

Everything else is ordinary PyTorch: Adam, autocast, channels_last, torch.compile,
CUDA graphs (whole training step captured; Adam with ``capturable=True``).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gan_fast.train import checkpoint as ckpt_mod
from gan_fast.train.data import BatchOrder, load_dataset
from gan_fast.train.images import save_grid
from gan_fast.train.models import build_models

LOSS_KINDS = ("bce", "hinge", "lsgan", "wgan")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"

# Settings that define the model, the data and the optimisation: a resume must keep them.
ARCH_KEYS = ("data", "data_dir", "channels", "mixed_sizes", "synthetic_n", "image_size", "nz",
             "ngf", "ndf", "batch_size", "lr_g", "lr_d", "beta1", "beta2", "loss",
             "label_smoothing", "clip_d", "seed", "data_seed")


@dataclass
class TrainConfig:
    # data
    data: str = "mnist"
    data_dir: Optional[str] = None
    channels: Optional[int] = None
    mixed_sizes: str = "error"
    synthetic_n: int = 4096
    # model
    image_size: int = 32
    nz: int = 64
    ngf: int = 32
    ndf: int = 32
    # optimisation
    batch_size: int = 32
    steps: int = 2000
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    loss: str = "bce"
    label_smoothing: float = 0.0
    clip_d: Optional[float] = None
    seed: int = 0
    data_seed: Optional[int] = None
    # how it runs
    layers: str = "fused"
    loss_impl: str = "fused"
    backend: str = "auto"
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    device: str = "auto"
    threads: Optional[int] = None
    # output
    out: str = "runs/dcgan"
    log_every: int = 20
    sample_every: int = 200
    checkpoint_every: int = 500
    eval_samples: int = 2000
    eval: bool = True
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- losses
def stock_gan_loss(kind: str, side: str, label_smoothing: float = 0.0) -> Callable:
    """The four GAN losses in plain PyTorch (the baseline that gan_fast's fused loss
    replaces); same definitions as gan_fast.nn.GANLoss with reduction='mean'."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss must be one of {LOSS_KINDS}, got {kind!r}")

    def real_term(x):  # wants x classified as real
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(
                x, torch.full_like(x, 1.0 - label_smoothing))
        if kind == "hinge":
            return F.relu(1.0 - x).mean()
        if kind == "lsgan":
            return ((x - 1.0) ** 2).mean()
        return -x.mean()

    def fake_term(x):  # D on fakes
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(x, torch.zeros_like(x))
        if kind == "hinge":
            return F.relu(1.0 + x).mean()
        if kind == "lsgan":
            return (x ** 2).mean()
        return x.mean()

    if side == "d":
        return lambda real, fake: real_term(real) + fake_term(fake)
    if kind in ("hinge", "wgan"):
        return lambda fake: -fake.mean()
    if kind == "bce":
        return lambda fake: F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    return real_term


def make_losses(cfg: TrainConfig):
    if cfg.loss_impl == "stock":
        return (stock_gan_loss(cfg.loss, "d", cfg.label_smoothing),
                stock_gan_loss(cfg.loss, "g"))
    import gan_fast.nn
    return (gan_fast.nn.GANLoss(cfg.loss, "d", label_smoothing=cfg.label_smoothing),
            gan_fast.nn.GANLoss(cfg.loss, "g"))


# ---------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def validate(cfg: TrainConfig) -> None:
    """Raises ValueError for settings that cannot work, before anything is loaded."""
    if cfg.loss not in LOSS_KINDS:
        raise ValueError(f"--loss must be one of {', '.join(LOSS_KINDS)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}")
    if cfg.layers not in ("stock", "fused"):
        raise ValueError("--layers must be stock or fused")
    if cfg.loss_impl not in ("stock", "fused"):
        raise ValueError("--loss-impl must be stock or fused")
    if cfg.image_size not in (32, 64):
        raise ValueError(f"--image-size must be 32 or 64, got {cfg.image_size}")
    zero_ok = ("steps", "sample_every", "checkpoint_every")
    for name in ("steps", "batch_size", "nz", "ngf", "ndf", "log_every") + zero_ok[1:]:
        v, low = getattr(cfg, name), 0 if name in zero_ok else 1
        if v < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if cfg.batch_size < 2:
        raise ValueError("--batch-size must be >= 2 (BatchNorm needs more than one image)")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.label_smoothing and cfg.loss != "bce":
        raise ValueError("--label-smoothing applies to --loss bce only")
    if cfg.clip_d is not None and cfg.clip_d <= 0:
        raise ValueError(f"--clip-d must be > 0, got {cfg.clip_d}")
    if cfg.lr_g <= 0 or cfg.lr_d <= 0:
        raise ValueError("learning rates must be > 0")
    if cfg.eval_samples < 0:
        raise ValueError("--eval-samples must be >= 0")
    dev = resolve_device(cfg.device)
    if cfg.cuda_graphs:
        if dev.type != "cuda":
            raise ValueError("--cuda-graphs needs a CUDA device (--device cuda)")
        if cfg.dtype == "fp16":
            raise ValueError("--cuda-graphs does not support --dtype fp16 (its loss scaler "
                             "synchronises with the CPU); use bf16")
        if cfg.compile:
            raise ValueError("use either --compile or --cuda-graphs, not both")
    if cfg.data == "folder" and not cfg.data_dir:
        raise ValueError("--data folder needs --data-dir DIR")


def default_cpu_threads() -> int:
    """Half the logical cores, at least 1 (1 on the 2-core machines this project targets).

    Measured on a shared 2-core machine: with torch's default of 2 threads, a DCGAN step
    ran 8x slower than with 1 as soon as another process used a core (OpenMP threads
    wait on each other); with 1 it degrades gracefully. Pass --threads to override.
    """
    return max(1, (os.cpu_count() or 2) // 2)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Printer:
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


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drops records past ``last_step`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a torn last line
    path.write_text("".join(k + "\n" for k in keep))


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """Holds models, optimizers, data and state; ``run()`` trains to ``cfg.steps``."""

    def __init__(self, cfg: TrainConfig, log: Optional[Callable[[str], None]] = None):
        validate(cfg)
        self.cfg = cfg
        self.say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)
        has_ckpt = (self.out / CHECKPOINT).exists()
        if has_ckpt and not cfg.resume and not cfg.overwrite:
            raise FileExistsError(
                f"{self.out} already holds a checkpoint: pass --resume to continue it, "
                f"--overwrite to start again there, or another --out")
        if cfg.resume and not has_ckpt:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.out}")
        resume_state = ckpt_mod.load(self.out / CHECKPOINT) if cfg.resume else None
        if resume_state is not None:
            self._check_resume_config(resume_state["config"])

        seed_everything(cfg.seed)
        data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
        self.data = load_dataset(cfg.data, cfg.image_size, cfg.data_dir, cfg.channels,
                                 cfg.mixed_sizes, cfg.synthetic_n, seed=data_seed)
        self.nc = self.data.channels
        self.images = self.data.images.to(self.device)
        self.order = BatchOrder(len(self.data), cfg.batch_size, data_seed)

        self.g, self.d = build_models(cfg.nz, cfg.ngf, cfg.ndf, self.nc, cfg.image_size,
                                      seed=cfg.seed)
        if cfg.layers == "fused":
            import gan_fast
            gan_fast.fuse(self.g, verbose=False)
            gan_fast.fuse(self.d, verbose=False)
        self.mf = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.g.to(self.device, memory_format=self.mf)
        self.d.to(self.device, memory_format=self.mf)
        capturable = cfg.cuda_graphs
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g,
                                      betas=(cfg.beta1, cfg.beta2), capturable=capturable)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d,
                                      betas=(cfg.beta1, cfg.beta2), capturable=capturable)
        fp16 = cfg.dtype == "fp16"
        self.scaler_g = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.scaler_d = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.crit_d, self.crit_g = make_losses(cfg)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.fixed_noise = torch.randn(64, cfg.nz, 1, 1,
                                       generator=torch.Generator().manual_seed(cfg.seed + 2))
        self.step = 0
        if resume_state is not None:
            self._load(resume_state)
            _truncate_metrics(self.out / METRICS, self.step)
        self.g_run = torch.compile(self.g) if cfg.compile else self.g
        self.d_run = torch.compile(self.d) if cfg.compile else self.d
        self._graph = None
        self._warmup_left = 3
        self.g_params = list(self.g.parameters())

    # -- state
    def _check_resume_config(self, saved: dict) -> None:
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(self.cfg, k)!r}"
                 for k in ARCH_KEYS if k in saved and saved.get(k) != getattr(self.cfg, k)]
        if diffs:
            raise ValueError("--resume with settings that differ from the checkpoint's: "
                             + "; ".join(diffs))

    def state(self) -> dict:
        extra = {}
        if self.scaler_g is not None:
            extra["scaler_g"], extra["scaler_d"] = (self.scaler_g.state_dict(),
                                                    self.scaler_d.state_dict())
        return ckpt_mod.make(self.step, self.cfg.to_dict(), self.g, self.d, self.opt_g,
                             self.opt_d, self.order.state_dict(), self.noise_gen,
                             self.fixed_noise, extra=extra)

    def _load(self, st: dict) -> None:
        self.g.load_state_dict(st["generator"])
        self.d.load_state_dict(st["discriminator"])
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        if self.scaler_g is not None and "scaler_g" in st.get("extra", {}):
            self.scaler_g.load_state_dict(st["extra"]["scaler_g"])
            self.scaler_d.load_state_dict(st["extra"]["scaler_d"])
        self.order.load_state_dict(st["data_order"])
        ckpt_mod.set_rng_state(st["rng"], self.noise_gen)
        self.fixed_noise = st["fixed_noise"]
        self.step = int(st["step"])

    def save_checkpoint(self) -> Path:
        return ckpt_mod.atomic_save(self.state(), self.out / CHECKPOINT)

    # -- one step
    def _autocast(self):
        if self.cfg.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.cfg.dtype],
                              cache_enabled=not self.cfg.cuda_graphs)

    def _next_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.next().to(self.device)
        real = self.images.index_select(0, idx)
        z = torch.randn(self.cfg.batch_size, self.cfg.nz, 1, 1, generator=self.noise_gen)
        z = z.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real, z

    def _backward_step(self, loss, opt, scaler, inputs=None):
        if scaler is None:
            loss.backward(inputs=inputs)
            opt.step()
        else:
            scaler.scale(loss).backward(inputs=inputs)
            scaler.step(opt)
            scaler.update()

    def _train_step(self, real: torch.Tensor, z: torch.Tensor):
        """One D step then one G step; returns detached (loss_d, loss_g, D(x), D(G(z)))."""
        # D: maximise log D(x) + log(1 - D(G(z))) (or the hinge/LS/W equivalent)
        with self._autocast():
            fake = self.g_run(z)
            real_logits = self.d_run(real)
            fake_logits = self.d_run(fake.detach())
        loss_d = self.crit_d(real_logits.float(), fake_logits.float())
        self.opt_d.zero_grad(set_to_none=True)
        self._backward_step(loss_d, self.opt_d, self.scaler_d)
        if self.cfg.clip_d is not None:
            with torch.no_grad():
                for p in self.d.parameters():
                    p.clamp_(-self.cfg.clip_d, self.cfg.clip_d)
        # G: non-saturating (bce) / -D(G(z)) (hinge, wgan) / LS; only G's grads are made
        with self._autocast():
            gen_logits = self.d_run(fake)
        loss_g = self.crit_g(gen_logits.float())
        self.opt_g.zero_grad(set_to_none=True)
        self._backward_step(loss_g, self.opt_g, self.scaler_g, inputs=self.g_params)
        return (loss_d.detach(), loss_g.detach(), real_logits.detach().float().mean(),
                fake_logits.detach().float().mean())

    def _graph_step(self, real: torch.Tensor, z: torch.Tensor):
        """The same step, captured once as a CUDA graph and replayed."""
        if self._graph is None:
            if self._warmup_left == 3:
                self._static_real = torch.empty_like(real)
                self._static_z = torch.empty_like(z)
                self._side = torch.cuda.Stream()
            self._static_real.copy_(real)
            self._static_z.copy_(z)
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):  # warm-up steps are real training steps
                out = self._train_step(self._static_real, self._static_z)
            self._warmup_left -= 1
            torch.cuda.current_stream().wait_stream(self._side)
            if self._warmup_left > 0:
                return out
            # capture now (for the next step); this step has already run above
            self.opt_d.zero_grad(set_to_none=True)
            self.opt_g.zero_grad(set_to_none=True)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._static_out = self._train_step(self._static_real, self._static_z)
            return out
        self._static_real.copy_(real)
        self._static_z.copy_(z)
        self._graph.replay()
        return tuple(t.clone() for t in self._static_out)

    # -- the run
    def run(self) -> dict:
        """Trains to cfg.steps, then checkpoints, samples, evaluates; returns the summary."""
        threads = torch.get_num_threads()
        want = self.cfg.threads or (default_cpu_threads() if self.device.type == "cpu" else None)
        if want:
            torch.set_num_threads(want)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite and not cfg.resume:
            for name in (CHECKPOINT, METRICS, SUMMARY):
                (self.out / name).unlink(missing_ok=True)
        if cfg.backend != "auto":
            import gan_fast
            backend_ctx = gan_fast.use_backend(cfg.backend)
        else:
            backend_ctx = contextlib.nullcontext()
        printer = _Printer(cfg.steps, min(self.step, cfg.steps), cfg.progress)
        start_step = self.step
        self.g.train()
        self.d.train()
        step_fn = self._graph_step if cfg.cuda_graphs else self._train_step
        sync = (torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None))
        if self.step == 0 and cfg.sample_every:
            self._save_samples("samples_000000.png")
        acc = None
        t_run = time.perf_counter()
        t_last, n_last, total_train_s, excluded = t_run, 0, 0.0, 0.0
        first_interval = None  # (steps, seconds) of the first log interval: warm-up, compile
        try:
            with backend_ctx, open(self.out / METRICS, "a") as mlog:
                while self.step < cfg.steps:
                    real, z = self._next_inputs()
                    vals = step_fn(real, z)
                    self.step += 1
                    if vals is not None:
                        v = torch.stack(vals)
                        acc = v if acc is None else acc + v
                        n_last += 1
                    printer.update()
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        sync()
                        now = time.perf_counter()
                        dt = now - t_last - excluded
                        total_train_s += dt
                        if first_interval is None:
                            first_interval = (n_last, dt)
                        if acc is not None:
                            m = (acc / n_last).tolist()
                            rec = {"step": self.step, "loss_d": m[0], "loss_g": m[1],
                                   "d_real": m[2], "d_fake": m[3],
                                   "step_time_s": dt / n_last,
                                   "images_per_s": cfg.batch_size * n_last / dt,
                                   "epoch": self.order.epoch,
                                   "time_s": round(now - t_run, 3)}
                            mlog.write(json.dumps(rec) + "\n")
                            mlog.flush()
                            printer.log(rec)
                            self.last_record = rec
                        acc, n_last, excluded = None, 0, 0.0
                        t_last = time.perf_counter()
                    t_extra = time.perf_counter()
                    extra = False
                    if cfg.sample_every and self.step % cfg.sample_every == 0:
                        self._save_samples(f"samples_{self.step:06d}.png")
                        extra = True
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                        extra = True
                    if extra:  # keep sampling/saving out of the step timings
                        sync()
                        excluded += time.perf_counter() - t_extra
        finally:
            printer.close()
        wall = time.perf_counter() - t_run
        self.save_checkpoint()
        self._save_samples("samples_final.png")
        steps_done = self.step - start_step
        summary = {
            "steps": self.step, "steps_this_run": steps_done,
            "wall_s": round(wall, 2), "train_s": round(total_train_s, 2),
            "images_per_s": round(cfg.batch_size * steps_done / total_train_s, 1)
            if total_train_s > 0 else None,
            "images_per_s_after_warmup": _rate(cfg.batch_size, steps_done, total_train_s,
                                               first_interval),
            "final": getattr(self, "last_record", None),
            "device": str(self.device), "layers": cfg.layers, "loss": cfg.loss,
            "loss_impl": cfg.loss_impl, "dtype": cfg.dtype, "data": self.data.name,
            "images": len(self.data), "out": str(self.out),
        }
        if cfg.eval and cfg.eval_samples > 0:
            summary["eval"] = self.evaluate(cfg.eval_samples)
        ckpt_mod.atomic_save_text(json.dumps(summary, indent=2) + "\n", self.out / SUMMARY)
        return summary

    def _save_samples(self, name: str) -> None:
        """Grid of G(fixed noise), BatchNorm on the batch's statistics as in the example,
        computed on a copy of G so that its running statistics stay untouched."""
        with torch.no_grad():
            g = copy.deepcopy(self.g).train()
            x = g(self.fixed_noise.to(self.device).contiguous(memory_format=self.mf))
        save_grid(x.float(), self.out / name)
        save_grid(x.float(), self.out / "samples_latest.png")

    def evaluate(self, n: int) -> dict:
        """FD of this G and of the untrained G (same seed) against the real data, and the
        class histogram of this G's samples."""
        from gan_fast.train.metrics import Evaluator
        ev = Evaluator(self.data.images, self.device)
        result = ev.score_generator(self.g, n, self.cfg.nz)
        g0, _ = build_models(self.cfg.nz, self.cfg.ngf, self.cfg.ndf, self.nc,
                             self.cfg.image_size, seed=self.cfg.seed)
        base = ev.score_generator(g0.to(self.device), n, self.cfg.nz)
        result["fd_untrained"] = base["fd"]
        result["classes_untrained"] = base["classes"]
        result["fd_real_halves"] = ev.real_split_fd()
        return result


def _rate(batch_size, steps, seconds, first):
    """images/s leaving out the first log interval (compilation, graph capture, caches)."""
    if first is None or steps <= first[0] or seconds <= first[1]:
        return None
    return round(batch_size * (steps - first[0]) / (seconds - first[1]), 1)


def train(cfg: TrainConfig, log: Optional[Callable[[str], None]] = None) -> dict:
    """Trains with ``cfg`` and returns the summary dict (also written to out/summary.json)."""
    return Trainer(cfg, log).run()

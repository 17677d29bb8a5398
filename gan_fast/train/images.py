"""Image grids written as PNG with the standard library only (zlib), no Pillow needed."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from gan_fast.train.checkpoint import atomic_write


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2,
              pad_value: float = 0.5) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (H', W') for C == 1 or (H', W', 3) for C == 3."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    pv = int(round(pad_value * 255))
    grid = np.full((padding + nrows * (h + padding), padding + ncol * (w + padding), c), pv,
                   dtype=np.uint8)
    arr = x.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = arr[i]
    return grid[..., 0] if c == 1 else grid


def encode_png(arr: np.ndarray) -> bytes:
    """uint8 (H, W) grayscale or (H, W, 3) RGB -> PNG bytes."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim == 2:
        color = 0
    elif arr.ndim == 3 and arr.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"expected (H, W) or (H, W, 3), got {arr.shape}")
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Writes a grid PNG of images in [-1, 1] (atomically: temp file + rename)."""
    data = encode_png(make_grid(images, nrow))
    return atomic_write(path, lambda f: f.write(data))

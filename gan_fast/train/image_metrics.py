"""Restoration metrics in plain torch: PSNR and SSIM (Wang, Bovik, Sheikh & Simoncelli,
"Image quality assessment: from error visibility to structural similarity", IEEE TIP
2004), per image, for images scaled to [0, data_range].

SSIM follows the paper and its reference implementation (``ssim_index.m``): an 11x11
Gaussian window with sigma 1.5 (normalised to sum 1), K1 = 0.01, K2 = 0.03,
C1 = (K1 L)^2, C2 = (K2 L)^2, local means, variances and covariance from the window
(population statistics), the SSIM map over the positions where the window fits
('valid'), and its mean; a multi-channel image averages its channels. Computed in
float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0,
         max_db: float = 100.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, (N,) float64 in dB:
    10 log10(data_range^2 / MSE); identical images give ``max_db``."""
    _check(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    floor = data_range ** 2 * 10.0 ** (-max_db / 10)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(floor))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size, size) float64 Gaussian, normalised to sum 1 (MATLAB's fspecial)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r * r) / (2 * sigma * sigma))
    w = g[:, None] * g[None, :]
    return w / w.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean structural similarity of each image, (N,) float64."""
    _check(x, y)
    n, c, h, w = x.shape
    if min(h, w) < win_size:
        raise ValueError(f"images of {h}x{w} are smaller than the {win_size}x{win_size} "
                         f"SSIM window")
    x, y = x.double(), y.double()
    win = gaussian_window(win_size, sigma).to(x.device).expand(c, 1, win_size, win_size)

    def filt(t):
        return F.conv2d(t, win, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x * mu_x
    var_y = filt(y * y) - mu_y * mu_y
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
            / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
    return smap.flatten(1).mean(1)


def restoration_scores(restored: torch.Tensor, corrupted: torch.Tensor,
                       clean: torch.Tensor) -> dict:
    """PSNR (dB) and SSIM, averaged over the images, of the restored images and of the
    corrupted inputs themselves, against the clean ones; all in [-1, 1]."""
    def unit(t):
        return (t.double().cpu().clamp(-1, 1) + 1) * 0.5

    clean = unit(clean)
    out = {}
    for name, t in (("restored", restored), ("input", corrupted)):
        t = unit(t)
        out[f"psnr_{name}"] = round(float(psnr(t, clean).mean()), 3)
        out[f"ssim_{name}"] = round(float(ssim(t, clean).mean()), 4)
    out["n"] = int(clean.shape[0])
    return out

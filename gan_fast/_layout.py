"""Layout and geometry of the 4-D tensors the kernels take: one definition of each, shared
by the ops, their fake (meta) implementations and the Triton launchers (no triton import).

* ``dense(x)``: x as contiguous NCHW or channels_last, the two layouts every kernel takes
  (a copy only for any other strides). Which of the two an output gets is
  ``gan_fast._formats``'s rule.
* ``conv_out_hw(...)``: the output (H, W) of a Conv2d or ConvTranspose2d (groups=1,
  dilation=1), as PyTorch computes it.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dense", "conv_out_hw"]


def dense(x: Tensor) -> Tensor:
    """x as contiguous NCHW or channels_last (the two layouts kernels accept)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def conv_out_hw(x_shape, w_shape, transposed: bool, stride, padding, output_padding):
    """(OH, OW) of a conv of an (N, C, H, W) input with a (.., .., kH, kW) weight;
    stride, padding, output_padding: pairs (output_padding is ignored unless transposed)."""
    h, w = x_shape[2], x_shape[3]
    kh, kw = w_shape[2], w_shape[3]
    (sh, sw), (ph, pw), (oph, opw) = stride, padding, output_padding
    if transposed:
        return (h - 1) * sh - 2 * ph + kh + oph, (w - 1) * sw - 2 * pw + kw + opw
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

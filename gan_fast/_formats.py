"""The dtypes gan_fast's ops take and the memory format of their outputs: one definition of
each rule, used by the ops, their fake (meta) implementations, the kernels and the reference.

Memory format. Stock PyTorch follows two rules, and gan_fast follows stock. They differ only
for a tensor that is contiguous in both formats (C == 1 or H == W == 1, e.g. a channels_last
(N, C, 1, 1)), whose elements are in the same order either way:

* ``memory_format(x)``, for BatchNorm and elementwise ops (ATen's batch_norm takes
  ``suggest_memory_format_contig``, TensorIterator its contiguous fast path): channels_last
  iff x is channels_last-contiguous and not NCHW-contiguous. A tensor that is both gives
  NCHW strides. bn_act's outputs, and a fused block's output (the activation of the
  convolution's output), follow it.
* ``conv_memory_format(x, weight)``, for convolutions (cuDNN and oneDNN:
  ``suggest_memory_format`` of the input or of the weight, decided on the strides):
  channels_last iff x or the weight is laid out channels_last, also when it is contiguous
  in both formats (a channels_last (N, C, 1, 1) keeps its channels_last strides). The
  fused convolution's output y follows it.

Both cost two cached-flag reads per tensor in the common case (a tensor contiguous in
exactly one format); only a tensor that is both, or neither, looks at its strides.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Every dtype the ops accept (the reference and cpu backends run them all)...
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# ...and the named exception: the GPU kernels (Triton, CUDA) have no float64.
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_CL = torch.channels_last
_NCHW = torch.contiguous_format


def channels_last(x: Tensor) -> bool:
    """Whether BatchNorm / an elementwise op gives x's outputs channels_last strides."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=_CL)


def memory_format(x: Tensor) -> torch.memory_format:
    """The memory format of BatchNorm's / an elementwise op's output for a 4-D x."""
    return _CL if not x.is_contiguous() and x.is_contiguous(memory_format=_CL) else _NCHW


def _strides_like_channels_last(t: Tensor) -> bool:
    """ATen's is_channels_last_strides_2d: what suggest_memory_format decides on."""
    size, stride = t.shape, t.stride()
    if stride[1] == 0:
        return False
    lo = 0
    for d in (1, 3, 2, 0):
        if size[d] == 0 or stride[d] < lo or (d == 0 and lo == stride[1]):
            return False
        lo = stride[d] * size[d] if size[d] > 1 else stride[d]
    return True


def like_channels_last(t: Tensor) -> bool:
    """``t.suggest_memory_format() == channels_last`` for a 4-D t. Cheap when t is
    contiguous in exactly one format (a channels_last-contiguous t that is not
    NCHW-contiguous counts as channels_last without a look at its size-1 strides)."""
    if t.is_contiguous():
        return t.is_contiguous(memory_format=_CL) and _strides_like_channels_last(t)
    return t.is_contiguous(memory_format=_CL) or _strides_like_channels_last(t)


def conv_memory_format(x: Tensor, weight: Tensor) -> torch.memory_format:
    """The memory format of a convolution's output for input x and weight (both 4-D)."""
    return _CL if like_channels_last(x) or like_channels_last(weight) else _NCHW


def after_conv(shape, conv_format: torch.memory_format) -> torch.memory_format:
    """``memory_format`` of a tensor of `shape` (N, C, H, W) allocated in `conv_format`: the
    format of BatchNorm + activation applied to a convolution output, without allocating it."""
    n, c, h, w = shape
    return _CL if conv_format == _CL and n * c * h * w != 0 and c != 1 and h * w != 1 else _NCHW

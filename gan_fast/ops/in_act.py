"""in_act: InstanceNorm2d + LeakyReLU/ReLU, on the bn_act kernels of every backend.

Instance normalisation is batch normalisation of each (sample, channel) plane on its
own, which is how stock PyTorch computes it too (``at::instance_norm`` views x as
(1, N*C, H, W) and calls batch_norm with the per-channel tensors repeated N times).
gan_fast does the same with its fused bn_act, so every backend (reference, cpu,
cuda, triton) and its autograd, double backward and torch.compile support carry
over unchanged: statistics, normalisation and activation in two passes forward
(one in eval), one fused pass backward, where stock runs instance_norm then the
activation.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gan_fast.ops import bn_act


def _affine(weight: Optional[Tensor], bias: Optional[Tensor], n: int):
    """weight/bias (C,) repeated for the N*C planes; a missing half of an affine pair
    (``InstanceNorm2d(affine=True, bias=False)``) becomes its identity value."""
    if weight is None and bias is None:
        return None, None
    if bias is None:
        bias = torch.zeros_like(weight)
    elif weight is None:
        weight = torch.ones_like(bias)
    return weight.repeat(n), bias.repeat(n)


def in_act(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
           running_mean: Optional[Tensor], running_var: Optional[Tensor],
           use_input_stats: bool, momentum: float, eps: float, negative_slope: float) -> Tensor:
    """LeakyReLU(InstanceNorm2d(x)); arguments already validated (``functional.in_act``).

    x: (N, C, H, W) with N*C*H*W > 0, any layout (read as stock reads it: NCHW-contiguous).
    weight/bias/running_mean/running_var: (C,) or None. use_input_stats: normalise by each
    plane's own statistics (training, or track_running_stats=False); then the running
    statistics, if given, are updated in place as stock does. Returns (N, C, H, W),
    NCHW-contiguous like stock's output, differentiable w.r.t. x, weight and bias.
    """
    n, c, h, w = x.shape
    planes = x.contiguous().view(1, n * c, h, w)
    weight_n, bias_n = _affine(weight, bias, n)
    if use_input_stats:
        mean_n = None if running_mean is None else running_mean.repeat(n)
        var_n = None if running_var is None else running_var.repeat(n)
        out = bn_act.train_update(planes, weight_n, bias_n, eps, negative_slope, mean_n, var_n,
                                  None, momentum)
        if running_mean is not None:  # the batch's average of the per-plane updates
            with torch.no_grad():
                running_mean.copy_(mean_n.view(n, c).mean(0))
                running_var.copy_(var_n.view(n, c).mean(0))
    else:
        out = bn_act.eval_mode(planes, weight_n, bias_n, running_mean.repeat(n),
                               running_var.repeat(n), eps, negative_slope)
    return out.view(n, c, h, w)


def module_mode(norm) -> tuple:
    """InstanceNorm2d.forward's rule, the one definition of it in gan_fast:
    (use_input_stats, momentum) for the module `norm` (momentum None passes 0.0)."""
    momentum = norm.momentum
    return norm.training or not norm.track_running_stats, 0.0 if momentum is None else momentum


def takes_as_is(use_input_stats: bool, momentum, eps, running_mean) -> bool:
    """Whether the fused ops take these InstanceNorm arguments without
    ``functional.in_act``'s checks: a positive float eps, a float momentum, and running
    statistics where use_input_stats=False needs them (else those checks give stock's
    errors, or stock's own composition for eps = 0)."""
    return (type(eps) is float and eps > 0.0 and type(momentum) is float
            and (use_input_stats or running_mean is not None))


def from_module(x: Tensor, norm, negative_slope: float) -> Tensor:
    """LeakyReLU(norm(x)) for an InstanceNorm2d module `norm` (fused into the conv before
    it by ``gan_fast.fuse``, which checked its num_features): x (N, C, H, W), the conv's
    output. Only what can change between calls is checked here (mode, eps, momentum, the
    spatial size stock refuses); anything unusual goes through ``functional.in_act``'s
    full checks and errors. An unbatched (C, H, W) x, which InstanceNorm2d takes too, is
    normalised as a batch of one."""
    from gan_fast import functional
    if x.dim() == 3:
        return from_module(x.unsqueeze(0), norm, negative_slope).squeeze(0)
    from gan_fast.ops.block import state
    use_input_stats, momentum = module_mode(norm)
    eps = norm.eps
    args = (x, state(norm, "running_mean"), state(norm, "running_var"), state(norm, "weight"),
            state(norm, "bias"), use_input_stats, momentum, eps, negative_slope)
    if (not takes_as_is(use_input_stats, momentum, eps, args[1]) or x.dim() != 4
            or x.numel() == 0 or (use_input_stats and x.shape[2] * x.shape[3] == 1)):
        return functional.in_act(*args)
    return in_act(args[0], args[3], args[4], args[1], args[2], use_input_stats, momentum, eps,
                  negative_slope)

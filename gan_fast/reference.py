"""Pure-PyTorch ground truth for every gan_fast op.

Two kinds of functions live here:

* oracles (``bn_act``, ``in_act``, ``gan_loss_terms``, ``gan_loss``): plain autograd-differentiable
  compositions, written from the textbook formulas, float64-capable. Tests
  differentiate them with autograd and compare every backend against them.
* the reference *backend* (``bn_act_train_fwd`` ... ``gan_loss_fwd``): the same
  kernel contract the C++/CUDA/Triton backends implement, with explicit forward
  and backward formulas. It is what runs when no compiled backend can.

Conventions shared by all backends (the kernel contract):

* ``x``: (N, C, H, W), contiguous NCHW or channels_last; fp32/fp16/bf16. Outputs and
  gradients like x have x's dtype and stock BatchNorm's memory format
  (``gan_fast._formats.memory_format``: NCHW strides for a tensor contiguous both ways).
* ``weight``/``bias``: (C,) or None (affine=False); fp32 or x's dtype.
* ``mean``/``var``: (C,) float32, ``var`` is the *biased* batch variance.
* activation: LeakyReLU(negative_slope); slope 0 is ReLU. The derivative at
  exactly zero is ``slope`` (PyTorch's convention: ``z > 0 ? 1 : slope``).
* the normalised value is computed as ``z = (x - mean) * (weight * invstd) + bias``,
  never as ``x * scale + shift``: for inputs with a large mean the latter cancels
  catastrophically in fp32 (x - mean is exact for nearby values; x * scale is not).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gan_fast._formats import memory_format as _memory_format  # stock's rule for BN outputs

LOSS_KINDS = ("bce", "hinge", "lsgan", "wgan")
REDUCTIONS = ("mean", "sum")


# --------------------------------------------------------------------------- oracles
def bn_act(x, weight, bias, running_mean, running_var, training, momentum, eps,
           negative_slope, num_batches_tracked=None):
    """BatchNorm2d + LeakyReLU from first principles (autograd-differentiable).

    x: (N, C, H, W) any float dtype; computes in x's dtype (use float64 for an oracle).
    Updates running_mean/running_var/num_batches_tracked in place like BatchNorm2d
    when training and they are given. Returns the activation, same shape as x.
    """
    if training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        if running_mean is not None:
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                if num_batches_tracked is not None:
                    num_batches_tracked.add_(1)
                m = (1.0 / float(num_batches_tracked)) if momentum is None else momentum
                running_mean.mul_(1 - m).add_(mean.detach().to(running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / (n - 1))
                running_var.mul_(1 - m).add_(unbiased.to(running_var.dtype), alpha=m)
    else:
        mean, var = running_mean.to(x.dtype), running_var.to(x.dtype)
    shape = (1, -1, 1, 1)
    z = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    if weight is not None:
        z = z * weight.to(x.dtype).view(shape) + bias.to(x.dtype).view(shape)
    return F.leaky_relu(z, negative_slope)


def in_act(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps,
           negative_slope):
    """InstanceNorm2d + LeakyReLU from first principles (autograd-differentiable).

    x: (N, C, H, W) any float dtype; each (sample, channel) plane is normalised by its own
    mean and biased variance over (H, W) when use_input_stats, else by running_mean /
    running_var (C,). weight/bias: (C,) or None (bias may be None alone, as
    ``InstanceNorm2d(affine=True, bias=False)``). With use_input_stats and running stats
    given, running_mean/running_var become ``(1 - m) * r + m * stat`` averaged over the
    batch (stat: the plane's mean, its unbiased variance), in place, as stock does;
    num_batches_tracked is never counted (stock InstanceNorm2d does not).
    """
    shape = (1, -1, 1, 1)
    if use_input_stats:
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
        if running_mean is not None:
            n = x.shape[2] * x.shape[3]
            with torch.no_grad():
                m = momentum
                new_mean = (1 - m) * running_mean + m * mean.detach().flatten(1).to(running_mean.dtype)
                unbiased = (var.detach() * (n / (n - 1))).flatten(1).to(running_var.dtype)
                new_var = (1 - m) * running_var + m * unbiased
                running_mean.copy_(new_mean.mean(0))
                running_var.copy_(new_var.mean(0))
    else:
        mean, var = running_mean.to(x.dtype).view(shape), running_var.to(x.dtype).view(shape)
    z = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        z = z * weight.to(x.dtype).view(shape)
    if bias is not None:
        z = z + bias.to(x.dtype).view(shape)
    return F.leaky_relu(z, negative_slope)


def gan_loss_terms(logits, kind, target_real, label_smoothing=0.0):
    """Per-element loss of `logits` (any shape, float) for one side of a GAN loss.

    target_real=True: the term that wants these logits classified as real
    (D on real images, G on fakes); False: the term for D on fakes.
    """
    x = logits
    if kind == "bce":
        t = (1.0 - label_smoothing) if target_real else 0.0
        return (1.0 - t) * x - F.logsigmoid(x)
    if kind == "hinge":
        return F.relu(1.0 - x) if target_real else F.relu(1.0 + x)
    if kind == "lsgan":
        return (x - 1.0) ** 2 if target_real else x ** 2
    if kind == "wgan":
        return -x if target_real else x
    raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")


def gan_loss(kind, real=None, fake=None, side="d", reduction="mean", label_smoothing=0.0):
    """The GAN loss from first principles (autograd-differentiable).

    side 'd': loss(real as real) + loss(fake as fake), each reduced over its own logits.
    side 'g': the generator's loss on `fake` (non-saturating for bce, -D(fake) for
    hinge and wgan). Returns a 0-dim tensor in the logits' dtype.
    """
    red = torch.mean if reduction == "mean" else torch.sum
    if side == "g":
        if kind in ("hinge", "wgan"):
            return red(-fake)
        return red(gan_loss_terms(fake, kind, True))
    return (red(gan_loss_terms(real, kind, True, label_smoothing))
            + red(gan_loss_terms(fake, kind, False)))


# ----------------------------------------------------------------- reference backend
def _cshape(t):
    return t.view(1, -1, 1, 1)


def _acc(x):
    """Accumulation dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _normalise(xf, weight, bias, mean, invstd):
    """z = (x - mean) * (weight * invstd) + bias, per channel, in xf's dtype."""
    if weight is None:
        return (xf - _cshape(mean)) * _cshape(invstd)
    scale = weight.to(mean.dtype) * invstd
    return (xf - _cshape(mean)) * _cshape(scale) + _cshape(bias.to(mean.dtype))


def bn_act_train_fwd(x, weight, bias, eps, negative_slope):
    """Training forward: returns (out like x, mean fp32 (C,), biased var fp32 (C,))."""
    xd = x.double()  # float64 two-pass statistics: the reference favours accuracy over speed
    mean = xd.mean(dim=(0, 2, 3))
    var = (xd - _cshape(mean)).square().mean(dim=(0, 2, 3))
    mean, var = mean.to(_acc(x)), var.to(_acc(x))
    out = bn_act_eval_fwd(x, weight, bias, mean, var, eps, negative_slope)
    return out, mean, var


def bn_act_eval_fwd(x, weight, bias, mean, var, eps, negative_slope):
    """Forward with given statistics (eval mode): returns act(BN(x)) like x."""
    acc = _acc(x)
    invstd = torch.rsqrt(var.to(acc) + eps)
    z = _normalise(x.to(acc), weight, bias, mean.to(acc), invstd)
    out = F.leaky_relu(z, negative_slope)
    return out.to(x.dtype).contiguous(memory_format=_memory_format(x))


def bn_act_bwd(grad_out, x, weight, bias, mean, var, eps, negative_slope, batch_stats):
    """Backward of act(BN(x)).

    batch_stats=True: mean/var are x's batch statistics (training), so the gradient
    flows through them; False: they are constants (eval). Returns
    (grad_x like x, grad_weight or None, grad_bias or None); grads of weight/bias in
    weight's dtype.
    """
    acc = _acc(x)
    xf, g = x.to(acc), grad_out.to(acc)
    invstd = torch.rsqrt(var.to(acc) + eps)
    mean = mean.to(acc)
    z = _normalise(xf, weight, bias, mean, invstd)
    dz = torch.where(z > 0, g, g * negative_slope)
    xc = xf - _cshape(mean)
    sum_dz = dz.sum(dim=(0, 2, 3))
    sum_dz_xc = (dz * xc).sum(dim=(0, 2, 3))
    a = invstd if weight is None else weight.to(acc) * invstd
    gx = _cshape(a) * dz
    if batch_stats:
        n = x.numel() // x.shape[1]
        gx = gx - _cshape(a * sum_dz / n) - xc * _cshape(a * invstd * invstd * sum_dz_xc / n)
    gx = gx.to(x.dtype).contiguous(memory_format=_memory_format(x))
    if weight is None:
        return gx, None, None
    return gx, (sum_dz_xc * invstd).to(weight.dtype), sum_dz.to(bias.dtype)


def _loss_grad(x, kind, target_real, label_smoothing, side):
    """d(elementwise loss)/dx in fp32, matching PyTorch's autograd at ties."""
    if kind == "bce":
        t = (1.0 - label_smoothing) if target_real else 0.0
        return torch.sigmoid(x) - t
    if kind in ("hinge", "wgan") and side == "g":
        return torch.full_like(x, -1.0)
    if kind == "hinge":
        # relu's backward passes the gradient unless its input is <= 0: zero at a
        # margin of exactly 1, and passed through for NaN logits (as PyTorch does).
        return -(~(1.0 - x <= 0)).to(x.dtype) if target_real else (~(1.0 + x <= 0)).to(x.dtype)
    if kind == "lsgan":
        return 2.0 * (x - 1.0) if target_real else 2.0 * x
    return torch.full_like(x, -1.0 if target_real else 1.0)


def _loss_values(x, kind, target_real, label_smoothing, side):
    if kind in ("hinge", "wgan") and side == "g":
        return -x
    return gan_loss_terms(x, kind, target_real, label_smoothing)


def gan_loss_fwd(real, fake, kind, side, reduction, label_smoothing):
    """Loss and its gradient in one call.

    real: logits of real images or None (side 'g'); fake: logits of fakes.
    Returns (loss 0-dim in the logits' dtype, grad_real like real or None,
    grad_fake like fake) where grads are d(loss)/d(logits).
    """
    total = torch.zeros((), dtype=_acc(fake), device=fake.device)
    grads = []
    parts = [(fake, True)] if side == "g" else [(real, True), (fake, False)]
    for t, target_real in parts:
        tf = t.to(_acc(t))
        vals = _loss_values(tf, kind, target_real, label_smoothing, side)
        grad = _loss_grad(tf, kind, target_real, label_smoothing, side)
        if reduction == "mean":
            total = total + vals.mean()
            grad = grad / t.numel()
        else:
            total = total + vals.sum()
        grads.append(grad.to(t.dtype))
    if side == "g":
        return total.to(fake.dtype), None, grads[0]
    return total.to(fake.dtype), grads[0], grads[1]

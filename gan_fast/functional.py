"""Functional API: validated entry points that the modules call.

Shapes: images are (N, C, H, W) in NCHW or channels_last; per-channel tensors (C,).
Dtypes: float32, float16, bfloat16 (float64 on CPU). Statistics accumulate in fp32.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_fast import _checks, ops
from gan_fast.ops.block import BatchNormSpec, ConvSpec, block_forward
from gan_fast.reference import LOSS_KINDS, REDUCTIONS

_KIND_ALIASES = {"nonsaturating": "bce", "ns": "bce", "bce": "bce", "hinge": "hinge",
                 "lsgan": "lsgan", "wgan": "wgan"}


def bn_act(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
           weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
           momentum: Optional[float] = 0.1, eps: float = 1e-5, negative_slope: float = 0.0,
           num_batches_tracked: Optional[Tensor] = None) -> Tensor:
    """LeakyReLU(BatchNorm2d(x)) in two fused passes (training) or one (eval).

    x: (N, C, H, W). running_mean/running_var: (C,) or None (then batch statistics
    are used, as BatchNorm2d with track_running_stats=False). weight/bias: (C,) or
    None. negative_slope 0 gives ReLU. In training mode the running statistics and
    num_batches_tracked are updated in place exactly as BatchNorm2d does
    (momentum=None: cumulative average). Returns a tensor like x.
    """
    _checks.tensor("x", x, dim=4)
    c = x.shape[1]
    _checks.per_channel(c, "x", running_mean=running_mean, running_var=running_var,
                        weight=weight, bias=bias)
    _checks.same_device("x", x, running_mean=running_mean, running_var=running_var,
                        weight=weight, bias=bias)
    if (weight is None) != (bias is None):
        raise ValueError("weight and bias must both be given (affine) or both be None")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    _checks.param_dtype("weight", weight, x)
    _checks.param_dtype("bias", bias, x)
    use_batch_stats = training or running_mean is None
    _checks.bn_eps(eps, use_batch_stats)
    momentum = _checks.momentum(momentum)
    if c == 0:  # stock BatchNorm2d fails with an IndexError here
        raise IndexError(f"x must have at least one channel, got shape {tuple(x.shape)}")
    if use_batch_stats and x.numel() // c == 1:  # the check and message of F.batch_norm
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
    if x.numel() == 0:  # nothing to normalise: what the stock layers give (an empty tensor)
        return _empty_batch(x, running_mean, running_var, weight, bias, use_batch_stats,
                            training, eps, negative_slope, num_batches_tracked)
    if use_batch_stats:
        if not training:  # batch statistics without running ones: nothing to update
            running_mean = running_var = num_batches_tracked = None
        return ops.bn_act.train_update(x, weight, bias, eps, negative_slope, running_mean,
                                       running_var, num_batches_tracked, momentum)
    return ops.bn_act.eval_mode(x, weight, bias, running_mean, running_var, eps, negative_slope)


def _empty_batch(x, running_mean, running_var, weight, bias, use_batch_stats, training, eps,
                 negative_slope, num_batches_tracked):
    """act(BN(x)) for an x with no elements, as BatchNorm2d + the activation give it: an
    empty tensor, the statistics untouched, num_batches_tracked still counting the batch."""
    if training and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    stats = (None, None) if use_batch_stats else (running_mean, running_var)
    return F.leaky_relu(F.batch_norm(x, *stats, weight, bias, use_batch_stats, 0.0, eps),
                        negative_slope)


def in_act(x: Tensor, running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None,
           weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
           use_input_stats: bool = True, momentum: float = 0.1, eps: float = 1e-5,
           negative_slope: float = 0.0) -> Tensor:
    """LeakyReLU(InstanceNorm2d(x)): ``F.leaky_relu(F.instance_norm(...), negative_slope)``
    on the fused bn_act kernels (``ops/in_act.py``), with F.instance_norm's arguments.

    x: (N, C, H, W), float32/float16/bfloat16 (float64 on CPU). running_mean/running_var,
    weight, bias: (C,) or None. use_input_stats (training, or track_running_stats=False):
    each (sample, channel) plane is normalised by its own mean and biased variance, and the
    running statistics, if given, move towards the batch's average (momentum as a float;
    InstanceNorm2d passes 0.0 for None); else the running statistics normalise. Returns
    (N, C, H, W), NCHW-contiguous as stock's.
    """
    _checks.tensor("x", x, dim=4)
    _checks.per_channel(x.shape[1], "x", running_mean=running_mean, running_var=running_var,
                        weight=weight, bias=bias)
    _checks.same_device("x", x, running_mean=running_mean, running_var=running_var,
                        weight=weight, bias=bias)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    if not use_input_stats and running_mean is None:  # stock's rule, in a sentence
        raise ValueError("use_input_stats=False needs running_mean and running_var "
                         "(InstanceNorm2d with track_running_stats=True)")
    _checks.param_dtype("weight", weight, x)
    _checks.param_dtype("bias", bias, x)
    _checks.bn_eps(eps, False)  # a number; unlike batch_norm, instance_norm takes eps = 0 in training
    momentum = _checks.momentum(momentum)
    if momentum is None:
        raise TypeError("momentum must be a float for instance norm (InstanceNorm2d passes 0.0 "
                        "for None)")
    if use_input_stats and x.shape[2] * x.shape[3] == 1:  # the check and message of F.instance_norm
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.size()}")
    if x.numel() == 0 or eps == 0:  # nothing to normalise / 1/sqrt(var) as stock has it:
        # whatever the stock layers do (an empty tensor; inf or NaN on constant planes)
        return F.leaky_relu(F.instance_norm(x, running_mean, running_var, weight, bias,
                                            use_input_stats, momentum, eps), negative_slope)
    return ops.in_act.in_act(x, weight, bias, running_mean, running_var, use_input_stats,
                             momentum, eps, negative_slope)


def conv2d_bn_act(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                  running_mean: Optional[Tensor], running_var: Optional[Tensor],
                  bn_weight: Optional[Tensor] = None, bn_bias: Optional[Tensor] = None, *,
                  stride=1, padding=0, dilation=1, groups=1, training=False, momentum=0.1,
                  eps=1e-5, negative_slope=0.2, num_batches_tracked=None) -> Tensor:
    """LeakyReLU(BatchNorm2d(conv2d(x))): the discriminator block, run as the modules run it.

    x: (N, C_in, H, W); conv_weight: (C_out, C_in/groups, kH, kW). Returns (N, C_out, H', W').
    """
    return _block(x, conv_weight, conv_bias, running_mean, running_var, bn_weight, bn_bias,
                  stride, padding, 0, dilation, groups, False, training, momentum, eps,
                  negative_slope, num_batches_tracked)


def conv_transpose2d_bn_act(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                            running_mean: Optional[Tensor], running_var: Optional[Tensor],
                            bn_weight: Optional[Tensor] = None, bn_bias: Optional[Tensor] = None, *,
                            stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                            training=False, momentum=0.1, eps=1e-5, negative_slope=0.0,
                            num_batches_tracked=None) -> Tensor:
    """act(BatchNorm2d(conv_transpose2d(x))): the generator block (ReLU by default), run as
    the modules run it.

    x: (N, C_in, H, W); conv_weight: (C_in, C_out/groups, kH, kW). Returns (N, C_out, H', W').
    """
    return _block(x, conv_weight, conv_bias, running_mean, running_var, bn_weight, bn_bias,
                  stride, padding, output_padding, dilation, groups, True, training, momentum,
                  eps, negative_slope, num_batches_tracked)


_BLOCK_PATHS: dict = {}  # block_forward's choices for the functional blocks


def _block(x, weight, bias, running_mean, running_var, bn_weight, bn_bias, stride, padding,
           output_padding, dilation, groups, transposed, training, momentum, eps,
           negative_slope, num_batches_tracked):
    _checks.tensor("x", x, dim=4)
    _checks.tensor("conv_weight", weight, dim=4)
    c = weight.shape[1] * groups if transposed else weight.shape[0]
    _checks.per_channel(c, "the conv's output", running_mean=running_mean,
                        running_var=running_var, bn_weight=bn_weight, bn_bias=bn_bias)
    conv = ConvSpec(weight, bias, _pair(stride), _pair(padding), _pair(output_padding),
                    _pair(dilation), groups, transposed)
    bn = BatchNormSpec(running_mean, running_var, bn_weight, bn_bias, training, momentum, eps,
                       num_batches_tracked, c)
    return block_forward(_BLOCK_PATHS, x, conv, bn, negative_slope)


def _pair(v):
    """An int or a pair as [int, int]; a string padding ('same', 'valid') as it is (the
    stock conv takes it, or refuses it as stock does for transposed convs)."""
    if isinstance(v, str):
        return v
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def gan_loss(real: Optional[Tensor], fake: Tensor, kind: str = "bce", side: str = "d",
             reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """A GAN loss and its gradient in one fused kernel.

    real/fake: discriminator logits of any shape ((N,), (N, 1), patch maps ...), float.
    kind: 'bce' (aliases 'nonsaturating', 'ns'), 'hinge', 'lsgan' (MSE) or 'wgan'.
    side 'd': loss(real as real) + loss(fake as fake), each reduced over its own
    logits (real and fake may differ in size); side 'g': the generator's loss on
    `fake` (real must be None). label_smoothing: bce only, the real target becomes
    1 - label_smoothing. Returns a 0-dim tensor in the logits' dtype; under
    torch.autocast, float16/bfloat16 logits are computed in float32 and the loss is
    float32, as for ``F.binary_cross_entropy_with_logits``.
    """
    args = loss_args(kind, side, reduction, label_smoothing)
    real, fake = loss_inputs(real, fake, args[1])
    return ops.gan_loss.loss(real, fake, *args)


_HALF = (torch.float16, torch.bfloat16)


def _type_name(v) -> str:
    return f"{type(v).__name__} {v!r}" if isinstance(v, (str, bytes)) else type(v).__name__


def loss_args(kind: str, side: str, reduction: str, label_smoothing: float) -> tuple[str, str, str, float]:
    """Validate a GAN loss configuration, once: returns it canonical,
    ``(kind, side, reduction, label_smoothing)`` with kind's aliases resolved ('nonsaturating'
    and 'ns' are 'bce') and label_smoothing a float. The one definition of these checks:
    what it returns is all a backend is ever given. Wrong types raise TypeError, wrong
    values ValueError, each naming the argument and what it accepts."""
    for name, value, allowed in (("kind", kind, tuple(_KIND_ALIASES)), ("side", side, ("d", "g")),
                                 ("reduction", reduction, REDUCTIONS)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, one of {allowed}, got {_type_name(value)}")
    canonical = _KIND_ALIASES.get(kind)
    if canonical is None:
        raise ValueError(f"kind must be one of {LOSS_KINDS} (or 'nonsaturating'/'ns' for 'bce'), got {kind!r}")
    if side not in ("d", "g"):
        raise ValueError(f"side must be 'd' (discriminator) or 'g' (generator), got {side!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a real number (a float in [0, 1)), "
                        f"got {_type_name(label_smoothing)}")
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing and (canonical != "bce" or side != "d"):
        raise ValueError("label_smoothing applies to the bce discriminator loss only")
    return canonical, side, reduction, label_smoothing


def _not_tensor(name: str, t) -> TypeError:
    return TypeError(f"{name} must be a torch.Tensor of logits, got {type(t).__name__}")


def loss_inputs(real: Optional[Tensor], fake: Tensor, side: str) -> tuple[Optional[Tensor], Tensor]:
    """The per-call checks of a loss's logits (side already validated), kept cheap: the
    tensors' type, a floating dtype, the same device and dtype for real and fake, none
    empty. Under torch.autocast for their device, float16/bfloat16 logits come back as
    float32 (what autocast does for binary_cross_entropy_with_logits)."""
    if not isinstance(fake, Tensor):
        raise _not_tensor("fake", fake)
    dtype = fake.dtype
    if dtype in _HALF and _autocast_on(fake):
        fake, dtype = fake.float(), torch.float32
    if side == "d":
        if real is None:
            raise ValueError("side='d' needs the discriminator's logits on real images (real)")
        if not isinstance(real, Tensor):
            raise _not_tensor("real", real)
        if real.dtype in _HALF and _autocast_on(real):
            real = real.float()
        if real.device != fake.device:
            _checks.same_device("fake", fake, real=real)
        if real.dtype != dtype:
            raise TypeError(f"real and fake must have the same dtype, got {real.dtype} and {dtype}")
        if real.numel() == 0:
            raise ValueError("real is empty")
    elif real is not None:
        raise ValueError("side='g' takes only the logits of fakes: pass real=None")
    if dtype not in _checks.FLOAT_DTYPES:
        _checks.tensor("fake", fake)
    if fake.numel() == 0:
        raise ValueError("fake is empty")
    return real, fake


def _autocast_on(t: Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(t.device.type)
    except RuntimeError:  # a device type autocast does not know
        return False


def d_loss(real: Tensor, fake: Tensor, kind: str = "bce", reduction: str = "mean",
           label_smoothing: float = 0.0) -> Tensor:
    """The discriminator's loss: ``gan_loss(real, fake, kind, 'd', ...)``."""
    return gan_loss(real, fake, kind, "d", reduction, label_smoothing)


def g_loss(fake: Tensor, kind: str = "bce", reduction: str = "mean") -> Tensor:
    """The generator's loss on D's logits of fakes: ``gan_loss(None, fake, kind, 'g', ...)``."""
    return gan_loss(None, fake, kind, "g", reduction)

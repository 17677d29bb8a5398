"""The ``cpu`` and ``cuda`` backends: thin wrappers over the compiled extension.

Each function has the reference backend's signature and contract
(``gan_fast.reference``) and calls one op of ``torch.ops.gan_fast_C``, which the
extension registers (schemas in ``csrc/README.md``), the eager ones through
``eager_entry``; the dispatcher picks the CPU or CUDA kernel from the tensors' device.
Importing this module imports ``gan_fast._C`` and fails with ImportError when the
extension is not built.
"""
from __future__ import annotations

import torch

import gan_fast._C  # noqa: F401  (registers torch.ops.gan_fast_C.*)

_ops = torch.ops.gan_fast_C


def eager_entry(name: str):
    """The eager op `name` (csrc/eager_ops.h: it builds its own autograd node) as a Python
    callable: gan_fast._C's direct binding of the C++ function, without the dispatcher's
    boxed Python call (about 3.5 us less a call, on every fused block). The op itself,
    ``torch.ops.gan_fast_C.<name>``, runs instead where the binding would not behave as
    it: while torch.jit.trace records (the trace must hold the op, not its insides), for
    arguments with ``__torch_function__`` or under a TorchFunctionMode (they must see the
    op), and for arguments pybind does not convert (e.g. numpy ints in a conv's stride),
    which it refuses before running anything."""
    direct, boxed = getattr(gan_fast._C, name), getattr(_ops, name).default
    tracing, has_torch_function = torch._C._get_tracing_state, torch._C._has_torch_function
    refused = f"{name}(): incompatible function arguments"

    def call(*args):
        if tracing() is not None or has_torch_function(args):
            return boxed(*args)
        try:
            return direct(*args)
        except TypeError as e:
            if not str(e).startswith(refused):
                raise
        return boxed(*args)
    call.__name__ = call.__qualname__ = name
    return call


_bn_act_train_eager = eager_entry("bn_act_train_eager")
_bn_act_eval_eager = eager_entry("bn_act_eval_eager")
_gan_loss_eager = eager_entry("gan_loss_eager")


def bn_act_train_fwd(x, weight, bias, eps, negative_slope):
    """Training forward: (out like x, mean (C,), biased var (C,)); stats fp32 (fp64 for fp64 x)."""
    return _ops.bn_act_train_fwd(x, weight, bias, float(eps), float(negative_slope))


def bn_act_eval_fwd(x, weight, bias, mean, var, eps, negative_slope):
    """Forward with given statistics: act(BN(x)) like x."""
    return _ops.bn_act_eval_fwd(x, weight, bias, mean, var, float(eps), float(negative_slope))


def bn_act_bwd(grad_out, x, weight, bias, mean, var, eps, negative_slope, batch_stats):
    """(grad_x like x, grad_weight, grad_bias); the last two are None when weight is None."""
    gx, gw, gb = _ops.bn_act_bwd(grad_out, x, weight, bias, mean, var, float(eps),
                                 float(negative_slope), bool(batch_stats))
    if weight is None:
        return gx, None, None
    return gx, gw, gb


def bn_act_train_eager(x, weight, bias, running_mean, running_var, num_batches_tracked, momentum,
                       eps, negative_slope):
    """Eager training forward with a C++ autograd node: act(BN(x)) like x; running stats
    (C,) and num_batches_tracked (if given) updated in place as BatchNorm2d does."""
    momentum = None if momentum is None else float(momentum)
    return _bn_act_train_eager(x, weight, bias, running_mean, running_var, num_batches_tracked,
                               momentum, float(eps), float(negative_slope))


def bn_act_eval_eager(x, weight, bias, mean, var, eps, negative_slope):
    """Eager forward with given statistics and a C++ autograd node: act(BN(x)) like x."""
    return _bn_act_eval_eager(x, weight, bias, mean, var, float(eps), float(negative_slope))


def gan_loss_fwd(real, fake, kind, side, reduction, label_smoothing):
    """(loss 0-dim in fake's dtype, grad_real or None for side 'g', grad_fake)."""
    loss, grad_real, grad_fake = _ops.gan_loss_fwd(real, fake, kind, side, reduction,
                                                   float(label_smoothing))
    if side == "g":
        return loss, None, grad_fake
    return loss, grad_real, grad_fake


def gan_loss_eager(real, fake, kind, side, reduction, label_smoothing):
    """The loss (0-dim, logits' dtype) with a C++ autograd node that saves d(loss)/d(logits)
    from the same kernel; real is ignored for side 'g'."""
    return _gan_loss_eager(real, fake, kind, side, reduction, float(label_smoothing))

"""The backward of every fused op when it runs with ``create_graph=True``.

The fused kernels compute first-order gradients only. When a backward is asked to
build a graph (gradient penalties: R1, WGAN-GP, path length), the op's gradients are
instead computed here from the stock differentiable PyTorch ops, recomputed from the
saved inputs, so differentiating them again gives every second-order term, exactly as
the stock layers would (StyleGAN's ops take the same route). This costs a recomputation,
only on that path; a plain ``backward()`` never comes here.

Each function returns the gradients in input order, None for one not asked for
(``needs`` False, or its input None), as an autograd backward returns them. Each is also
an op (``torch.ops.gan_fast.<name>``, CompositeImplicitAutograd) so that the C++ autograd
nodes of the cpu/cuda backends call the same definition; an op returns ``Tensor[]``, so
there a gradient not asked for is an empty (0,) tensor (the C++ side reads it as none).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_fast import reference

_lib = torch.library.Library("gan_fast", "FRAGMENT")


def _grads(output: Tensor, grad_output: Tensor, inputs, needs) -> List[Optional[Tensor]]:
    """d(output)/d(inputs) . grad_output with a graph, for the inputs that `needs` asks for
    and that require grad; None for each of the others."""
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs))
              if need and t is not None and t.requires_grad]
    got = torch.autograd.grad(output, [inputs[i] for i in wanted], grad_output,
                              create_graph=True, allow_unused=True) if wanted else ()
    result: List[Optional[Tensor]] = [None] * len(inputs)
    for i, g in zip(wanted, got):
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return result


def _bn_act(y: Tensor, weight, bias, mean, var, batch_stats: bool, eps: float, slope: float):
    """act(BN(y)) with the stock ops: batch statistics, or mean/var as constants."""
    stats = (None, None) if batch_stats else (mean, var)
    return F.leaky_relu(F.batch_norm(y, *stats, weight, bias, batch_stats, 0.0, eps), slope)


def bn_act_grads(grad_out: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                 mean: Tensor, var: Tensor, batch_stats: bool, eps: float,
                 negative_slope: float, needs: List[bool]) -> List[Optional[Tensor]]:
    """[grad_x, grad_weight, grad_bias] of act(BN(x)) (x (N, C, H, W); the rest (C,)),
    differentiable; mean/var (the running statistics) are used only when not batch_stats."""
    with torch.enable_grad():
        out = _bn_act(x, weight, bias, mean, var, batch_stats, eps, negative_slope)
        return _grads(out, grad_out, [x, weight, bias], needs)


def conv_bn_act_grads(grad_out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                      bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], mean: Tensor,
                      var: Tensor, stride: List[int], padding: List[int],
                      output_padding: List[int], dilation: List[int], groups: int,
                      transposed: bool, batch_stats: bool, eps: float, negative_slope: float,
                      needs: List[bool]) -> List[Optional[Tensor]]:
    """[grad_x, grad_weight, grad_conv_bias, grad_bn_weight, grad_bn_bias] of
    act(BN(conv(x))), differentiable (the convolution as nn.Conv2d/ConvTranspose2d runs it)."""
    with torch.enable_grad():
        y = torch.convolution(x, weight, bias, stride, padding, dilation, transposed,
                              output_padding, groups)
        out = _bn_act(y, bn_weight, bn_bias, mean, var, batch_stats, eps, negative_slope)
        return _grads(out, grad_out, [x, weight, bias, bn_weight, bn_bias], needs)


def gan_loss_grads(grad_loss: Tensor, real: Optional[Tensor], fake: Tensor, kind: str, side: str,
                   reduction: str, label_smoothing: float,
                   needs: List[bool]) -> List[Optional[Tensor]]:
    """[grad_real, grad_fake] of the loss (``gan_fast.reference.gan_loss``), differentiable."""
    with torch.enable_grad():
        loss = reference.gan_loss(kind, real, fake, side, reduction, label_smoothing)
        return _grads(loss, grad_loss, [real, fake], needs)


_lib.define("bn_act_grads(Tensor grad_out, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, "
            "Tensor var, bool batch_stats, float eps, float negative_slope, bool[] needs) "
            "-> Tensor[]")
_lib.define("conv_bn_act_grads(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, "
            "Tensor? bn_weight, Tensor? bn_bias, Tensor mean, Tensor var, int[] stride, "
            "int[] padding, int[] output_padding, int[] dilation, int groups, bool transposed, "
            "bool batch_stats, float eps, float negative_slope, bool[] needs) -> Tensor[]")
_lib.define("gan_loss_grads(Tensor grad_loss, Tensor? real, Tensor fake, str kind, str side, "
            "str reduction, float label_smoothing, bool[] needs) -> Tensor[]")


def _as_op(fn):
    """`fn` with None gradients as empty (0,) tensors, what a Tensor[] op can return."""
    def op(grad, *args):
        return [grad.new_empty((0,)) if g is None else g for g in fn(grad, *args)]
    return op


for _fn in (bn_act_grads, conv_bn_act_grads, gan_loss_grads):
    _lib.impl(_fn.__name__, _as_op(_fn), "CompositeImplicitAutograd")

"""Custom ops for BatchNorm2d + LeakyReLU (``gan_fast::bn_act_*``).

* ``bn_act_train(x, weight, bias, eps, slope) -> (out, mean, var)``: batch statistics;
  mean/var are fp32 (C,) and non-differentiable (they feed the running stats).
* ``bn_act_eval(x, weight, bias, mean, var, eps, slope) -> out``: given statistics.
* ``bn_act_backward(...)``: the backward of both (``batch_stats`` tells which).

Autograd saves x (the pre-BN tensor) and the per-channel statistics only; the
activation output is never kept.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gan_fast import backends
from gan_fast._formats import memory_format as _memory_format  # outputs' layout (stock's rule)
from gan_fast._layout import dense as _dense
from gan_fast.ops import double_backward


def _stat_dtype(x: Tensor):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# The backend calls, shared by the custom ops (torch.compile) and the eager Functions.
# x must already be dense (_dense); each returns what the backend contract does.
def _run_train(x, weight, bias, eps, negative_slope):
    run = lambda be: be.bn_act_train_fwd(x, weight, bias, eps, negative_slope)  # noqa: E731
    return run(backends.resolve(x, "bn_act_train", run))


def _run_eval(x, weight, bias, mean, var, eps, negative_slope):
    mean, var = mean.to(_stat_dtype(x)), var.to(_stat_dtype(x))
    run = lambda be: be.bn_act_eval_fwd(x, weight, bias, mean, var, eps, negative_slope)  # noqa: E731
    return run(backends.resolve(x, "bn_act_eval", run))


def _run_backward(grad_out, x, weight, bias, mean, var, eps, negative_slope, batch_stats):
    grad_out = grad_out.contiguous(memory_format=_memory_format(x))
    mean, var = mean.to(_stat_dtype(x)), var.to(_stat_dtype(x))
    run = lambda be: be.bn_act_bwd(grad_out, x, weight, bias, mean, var, eps,  # noqa: E731
                                   negative_slope, batch_stats)
    return run(backends.resolve(x, "bn_act_backward", run))


@torch.library.custom_op("gan_fast::bn_act_train", mutates_args=())
def bn_act_train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                 eps: float, negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    return _run_train(_dense(x), weight, bias, eps, negative_slope)


@bn_act_train.register_fake
def _(x, weight, bias, eps, negative_slope):
    c = x.shape[1]
    out = torch.empty_like(x, memory_format=_memory_format(x))
    return out, x.new_empty((c,), dtype=_stat_dtype(x)), x.new_empty((c,), dtype=_stat_dtype(x))


@torch.library.custom_op("gan_fast::bn_act_eval", mutates_args=())
def bn_act_eval(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
                var: Tensor, eps: float, negative_slope: float) -> Tensor:
    return _run_eval(_dense(x), weight, bias, mean, var, eps, negative_slope)


@bn_act_eval.register_fake
def _(x, weight, bias, mean, var, eps, negative_slope):
    return torch.empty_like(x, memory_format=_memory_format(x))


@torch.library.custom_op("gan_fast::bn_act_backward", mutates_args=())
def bn_act_backward(grad_out: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                    mean: Tensor, var: Tensor, eps: float, negative_slope: float,
                    batch_stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    gx, gw, gb = _run_backward(grad_out, _dense(x), weight, bias, mean, var, eps, negative_slope,
                               batch_stats)
    if gw is None:  # affine=False: custom ops return tensors, the autograd wrapper drops these
        gw, gb = x.new_empty((0,)), x.new_empty((0,))
    return gx, gw, gb


@bn_act_backward.register_fake
def _(grad_out, x, weight, bias, mean, var, eps, negative_slope, batch_stats):
    gx = torch.empty_like(x, memory_format=_memory_format(x))
    if weight is None:
        return gx, x.new_empty((0,)), x.new_empty((0,))
    return gx, torch.empty_like(weight), torch.empty_like(bias)


def _backward(ctx, grad_out, x, batch_stats):
    weight, bias, mean, var = ctx.saved_tensors[1:]
    if torch.is_grad_enabled():
        return _graph_backward(ctx, grad_out, batch_stats)
    gx, gw, gb = bn_act_backward(grad_out, x, weight, bias, mean, var, ctx.eps,
                                 ctx.negative_slope, batch_stats)
    if weight is None:
        gw = gb = None
    return gx, gw, gb


def _graph_backward(ctx, grad_out, batch_stats):
    """The backward under create_graph=True: differentiable (gan_fast.ops.double_backward);
    None for the gradients not asked for."""
    x, weight, bias, mean, var = ctx.saved_tensors
    return tuple(double_backward.bn_act_grads(grad_out, x, weight, bias, mean, var, batch_stats,
                                              ctx.eps, ctx.negative_slope,
                                              ctx.needs_input_grad[:3]))


def _setup_train(ctx, inputs, output):
    x, weight, bias, eps, negative_slope = inputs
    _, mean, var = output
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.eps, ctx.negative_slope = eps, negative_slope
    ctx.mark_non_differentiable(mean, var)


def _backward_train(ctx, grad_out, _grad_mean, _grad_var):
    gx, gw, gb = _backward(ctx, grad_out, ctx.saved_tensors[0], True)
    return gx, gw, gb, None, None


def _setup_eval(ctx, inputs, output):
    x, weight, bias, mean, var, eps, negative_slope = inputs
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.eps, ctx.negative_slope = eps, negative_slope


def _backward_eval(ctx, grad_out):
    gx, gw, gb = _backward(ctx, grad_out, ctx.saved_tensors[0], False)
    return gx, gw, gb, None, None, None, None


bn_act_train.register_autograd(_backward_train, setup_context=_setup_train)
bn_act_eval.register_autograd(_backward_eval, setup_context=_setup_eval)


# Eager mode: the same backend calls through plain autograd.Functions. torch.library's
# Python dispatch costs tens of microseconds a call, comparable to the kernels at
# small shapes; under torch.compile the custom ops above are used instead.
class _TrainEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, negative_slope):
        out, mean, var = _run_train(_dense(x), weight, bias, eps, negative_slope)
        ctx.save_for_backward(x, weight, bias, mean, var)  # x as given: create_graph recomputes
        ctx.eps, ctx.negative_slope = eps, negative_slope
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        return (*_eager_backward(ctx, grad_out, True), None, None)


class _EvalEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, negative_slope):
        out = _run_eval(_dense(x), weight, bias, mean, var, eps, negative_slope)
        ctx.save_for_backward(x, weight, bias, mean, var)
        ctx.eps, ctx.negative_slope = eps, negative_slope
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return (*_eager_backward(ctx, grad_out, False), None, None, None, None)


def _eager_backward(ctx, grad_out, batch_stats):
    if torch.is_grad_enabled():  # create_graph=True: exact double backward
        return _graph_backward(ctx, grad_out, batch_stats)
    x, weight, bias, mean, var = ctx.saved_tensors
    return _run_backward(grad_out, _dense(x), weight, bias, mean, var, ctx.eps,
                         ctx.negative_slope, batch_stats)


def train(x, weight, bias, eps, negative_slope):
    """(out, mean, var) with batch statistics; differentiable w.r.t. x, weight, bias."""
    if torch.compiler.is_compiling():
        return bn_act_train(x, weight, bias, eps, negative_slope)
    return _TrainEager.apply(x, weight, bias, eps, negative_slope)


def train_update(x, weight, bias, eps, negative_slope, running_mean, running_var,
                 num_batches_tracked, momentum):
    """act(BN(x)) with batch statistics, differentiable w.r.t. x, weight, bias; the running
    statistics (C,) (if given) and num_batches_tracked are updated in place as BatchNorm2d
    does (momentum None: cumulative average). In eager mode on a backend with a C++
    autograd entry point (cpu, cuda) the whole call is one C++ op."""
    if not torch.compiler.is_compiling():
        be = _eager_backend(x, weight, bias, eps, negative_slope)
        if hasattr(be, "bn_act_train_eager"):
            return be.bn_act_train_eager(x, weight, bias, running_mean, running_var,
                                         num_batches_tracked, momentum, eps, negative_slope)
    out, mean, var = train(x, weight, bias, eps, negative_slope)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, momentum,
                             x.numel() // x.shape[1])
    return out


def _eager_backend(x, weight, bias, eps, negative_slope):
    """The backend module that runs bn_act_train for x (the choice _run_train makes)."""
    run = lambda be: be.bn_act_train_fwd(_dense(x), weight, bias, eps, negative_slope)  # noqa: E731
    return backends.resolve(x, "bn_act_train", run)


def eval_mode(x, weight, bias, mean, var, eps, negative_slope):
    """act(BN(x)) with given statistics; differentiable w.r.t. x, weight, bias."""
    if torch.compiler.is_compiling():
        return bn_act_eval(x, weight, bias, mean, var, eps, negative_slope)
    run = lambda be: be.bn_act_eval_fwd(_dense(x), weight, bias,  # noqa: E731
                                        mean.to(_stat_dtype(x)), var.to(_stat_dtype(x)), eps,
                                        negative_slope)
    be = backends.resolve(x, "bn_act_eval", run)
    if hasattr(be, "bn_act_eval_eager"):
        return be.bn_act_eval_eager(x, weight, bias, mean, var, eps, negative_slope)
    return _EvalEager.apply(x, weight, bias, mean, var, eps, negative_slope)


@torch.no_grad()
def update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, momentum, n):
    """BatchNorm2d's update of running_mean/running_var (C,) and num_batches_tracked from
    the batch mean and biased var (C,) of n values per channel, in place."""
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    if momentum is None and num_batches_tracked is not None:
        # Cumulative moving average; a tensor factor keeps torch.compile free of graph breaks.
        factor = (1.0 / num_batches_tracked.to(torch.float64)).to(running_mean.dtype)
    elif momentum is None:
        factor = 0.0  # as BatchNorm2d: no counter, no update
    else:
        factor = momentum
    unbiased = var * (n / (n - 1))
    running_mean.mul_(1 - factor).add_(mean.to(running_mean.dtype) * factor)
    running_var.mul_(1 - factor).add_(unbiased.to(running_var.dtype) * factor)

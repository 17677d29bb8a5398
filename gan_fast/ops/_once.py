"""A stricter ``once_differentiable`` for the eager autograd Functions.

``torch.autograd.function.once_differentiable`` lets a backward run under
``create_graph=True`` return gradients with no graph when the incoming gradients do not
require grad, e.g. ``torch.autograd.grad(y.sum(), x, create_graph=True)``: those
gradients still depend on the saved inputs, so differentiating them again would give a
result with the second-order terms silently missing. Here any backward run with grad
mode on returns its gradients behind a node that raises when it is differentiated, as
the C++ eager ops do.
"""
from __future__ import annotations

import functools

import torch


def once_differentiable(what: str):
    """Decorator for ``backward(ctx, *grads)``: no graph inside; double backward raises."""
    message = (f"gan_fast {what}: double backward is not supported (the fused kernels have no "
               "second derivative); use the stock PyTorch layers where a second-order gradient "
               "goes through this op (trying to differentiate twice)")

    def wrap(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return outputs
            tensors = [o.detach().requires_grad_(True) if isinstance(o, torch.Tensor) else o
                       for o in outputs]
            return torch._C._functions.DelayedError(message, len(tensors))(*tensors)
        return wrapper
    return wrap

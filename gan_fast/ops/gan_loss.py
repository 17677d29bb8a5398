"""Custom op for the fused GAN loss (``gan_fast::gan_loss``) and its eager entry point.

The forward computes the loss *and* d(loss)/d(logits) in one kernel; autograd saves
only that gradient, and the backward scales it by the incoming gradient (on CPU a
gradient of exactly 1 passes the saved one through: no second pass). The backward
runs with create_graph=True, it recomputes the gradient from differentiable formulas
(``gan_fast.ops.double_backward``), so gradient penalties through the loss are exact.
"""
from __future__ import annotations

import functools
import threading
from typing import Optional

import torch
from torch import Tensor

from gan_fast import backends
from gan_fast.ops import double_backward


def _backend(fake: Tensor, real: Optional[Tensor], kind, side, reduction, label_smoothing):
    """The backend module for these logits (under ``auto`` on CUDA: the faster, by measurement)."""
    run = lambda be: be.gan_loss_fwd(real, fake, kind, side, reduction, label_smoothing)  # noqa: E731
    return backends.resolve(fake, "gan_loss", run)


def _contiguous(real: Optional[Tensor], fake: Tensor):
    """The logits as contiguous tensors, what every backend's kernel takes (and what
    auto's timing of the backends must be given too)."""
    return (None if real is None else real.contiguous()), fake.contiguous()


def _run(real: Optional[Tensor], fake: Tensor, kind, side, reduction, label_smoothing):
    """(loss 0-dim, grad_real or None, grad_fake) from the chosen backend, on dense logits."""
    real, fake = _contiguous(real, fake)
    be = _backend(fake, real, kind, side, reduction, label_smoothing)
    return be.gan_loss_fwd(real, fake, kind, side, reduction, label_smoothing)


def _scaled(grad_loss: Tensor, grad_real: Optional[Tensor], grad_fake: Tensor):
    """The saved gradients times grad_loss (traceable: torch.compile fuses the product)."""
    scale = grad_loss.to(grad_fake.dtype)
    return (None if grad_real is None else grad_real * scale), grad_fake * scale


@torch.library.custom_op("gan_fast::gan_loss", mutates_args=())
def gan_loss(real: Optional[Tensor], fake: Tensor, kind: str, side: str, reduction: str,
             label_smoothing: float) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (loss 0-dim, grad_real (empty for side 'g'), grad_fake)."""
    loss, grad_real, grad_fake = _run(real, fake, kind, side, reduction, label_smoothing)
    if grad_real is None:
        grad_real = fake.new_empty((0,))
    return loss, grad_real, grad_fake


@gan_loss.register_fake
def _(real, fake, kind, side, reduction, label_smoothing):
    grad_real = fake.new_empty((0,)) if real is None else torch.empty_like(real, memory_format=torch.contiguous_format)
    return fake.new_empty(()), grad_real, torch.empty_like(fake, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    _, grad_real, grad_fake = output
    ctx.has_real = inputs[0] is not None
    _save(ctx, grad_real, grad_fake, inputs[0], inputs[1], inputs[2:])
    ctx.mark_non_differentiable(grad_real, grad_fake)


def _save(ctx, grad_real, grad_fake, real, fake, args):
    """Saves the kernel's gradients, and the logits (references, no copies) and the loss
    configuration for a backward with create_graph."""
    ctx.save_for_backward(grad_real, grad_fake, real, fake)
    ctx.loss_args = args


def _graph_grads(ctx, grad_loss):
    """(grad_real, grad_fake) of the loss, differentiable (a backward with create_graph)."""
    real, fake = ctx.saved_tensors[2:]
    needs = [real is not None and ctx.needs_input_grad[-6], ctx.needs_input_grad[-5]]
    return tuple(double_backward.gan_loss_grads(grad_loss, real, fake, *ctx.loss_args, needs))


def _backward(ctx, grad_loss, _g1, _g2):
    if torch.is_grad_enabled():
        return (*_graph_grads(ctx, grad_loss), None, None, None, None)
    grad_real, grad_fake = ctx.saved_tensors[:2]
    g_real, g_fake = _scaled(grad_loss, grad_real if ctx.has_real else None, grad_fake)
    return g_real, g_fake, None, None, None, None


gan_loss.register_autograd(_backward, setup_context=_setup)


class _GanLossEager(torch.autograd.Function):
    """Eager mode on backends without a C++ autograd entry (triton, reference): the same
    kernels without the custom-op layer, whose Python dispatch costs several times the
    kernel at DCGAN sizes."""

    @staticmethod
    def forward(ctx, be, real, fake, kind, side, reduction, label_smoothing):
        loss, grad_real, grad_fake = be.gan_loss_fwd(real, fake, kind, side, reduction,
                                                     label_smoothing)
        _save(ctx, grad_real, grad_fake, real, fake, (kind, side, reduction, label_smoothing))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():  # create_graph=True: exact double backward
            return (None, *_graph_grads(ctx, grad_loss), None, None, None, None)
        grads = ctx.saved_tensors[:2]
        # loss.backward() on CPU: the saved gradients are the answer, no second pass (on
        # CUDA reading grad_loss would wait for the stream: it is multiplied instead)
        if not (grad_loss.device.type == "cpu" and grad_loss.item() == 1.0):
            grads = _scaled(grad_loss, *grads)
        return (None, *grads, None, None, None, None)


class EagerLoss:
    """``(real, fake) -> loss`` for one validated, canonical configuration
    (``functional.loss_args``; the logits checked by ``functional.loss_inputs``).

    The backend's eager callable is resolved once per (requested backend name, device,
    dtype) and kept: a call costs an integer compare and a dict lookup, not a backend
    resolution. The requested name is read again (``backends.requested()``) when
    ``backends.generation`` moves (``use_backend``, ``set_backend``) or another thread
    calls, so switching backends after construction takes effect at the next call;
    GAN_FAST_BACKEND is read then too (a change of the variable alone, mid-process, is
    seen at the next such switch). The one choice that depends on the input's shape,
    ``auto`` on CUDA with both the cuda and triton backends (timed per shape), is made
    per call by ``backends.resolve`` instead. Under torch.compile: the custom op.
    """

    def __init__(self, kind: str, side: str, reduction: str, label_smoothing: float):
        self.args = (kind, side, reduction, float(label_smoothing))
        self._by_name: dict = {}            # requested name -> {(device, dtype): fn}
        self._cur = (None, None, None, None)  # (backend token, thread, name's dict, name)

    def __getstate__(self):  # the cached callables are rebuilt where it is unpickled
        return {"args": self.args}

    def __setstate__(self, state):
        self.__init__(*state["args"])

    def __call__(self, real: Optional[Tensor], fake: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return gan_loss(real, fake, *self.args)[0]
        cur = self._cur
        if cur[0] != backends.generation or cur[1] != threading.get_ident():
            cur = self._refresh()
        fn = cur[2].get((fake.device, fake.dtype))
        if fn is None:
            fn = self._resolve(fake, cur[2], cur[3])
        return fn(real, fake, *self.args)

    def _refresh(self):
        # the token before the name: a switch in between makes the next call refresh again
        token = backends.generation
        name = backends.requested()
        self._cur = cur = (token, threading.get_ident(), self._by_name.setdefault(name, {}), name)
        return cur

    def _resolve(self, fake: Tensor, fns: dict, name: str):
        """``fn(real, fake, kind, side, reduction, label_smoothing)`` for fake's device and
        dtype on backend `name`; cached in `fns` unless auto chooses per shape."""
        per_shape = (name == "auto" and fake.device.type == "cuda"
                     and all(backends.why_unavailable(c, "cuda", fake.dtype) is None
                             for c in ("cuda", "triton")))
        if per_shape:
            return _per_call
        be = backends.resolve(fake)
        # the C++ eager op makes the logits contiguous itself
        fn = getattr(be, "gan_loss_eager", None) or functools.partial(_call_function, be)
        fns[(fake.device, fake.dtype)] = fn
        return fn


def _call_function(be, real, fake, *args):
    real, fake = _contiguous(real, fake)
    return _GanLossEager.apply(be, real, fake, *args)


def _per_call(real, fake, *args):
    """auto on CUDA with two fast backends: the choice is timed per shape (backends.resolve)."""
    real, fake = _contiguous(real, fake)
    be = _backend(fake, real, *args)
    eager = getattr(be, "gan_loss_eager", None)
    if eager is not None:
        return eager(real, fake, *args)
    return _GanLossEager.apply(be, real, fake, *args)


_BOUND: dict = {}


def loss(real: Optional[Tensor], fake: Tensor, kind: str, side: str, reduction: str,
         label_smoothing: float) -> Tensor:
    """The differentiable loss (0-dim, logits' dtype) for a canonical configuration and
    checked logits: the custom op under torch.compile; in eager mode the backend's C++
    autograd op (cpu, cuda) or an autograd.Function, through a shared ``EagerLoss``."""
    key = (kind, side, reduction, label_smoothing)
    bound = _BOUND.get(key)
    if bound is None:
        bound = _BOUND[key] = EagerLoss(*key)
    return bound(real, fake)

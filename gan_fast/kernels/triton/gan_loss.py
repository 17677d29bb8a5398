"""Triton kernel for the GAN losses: value and d(loss)/d(logits) in one launch.

GAN logits are batch-sized (tens to thousands of values), so a single program
walks the real then the fake logits in blocks: one launch instead of ~20 eager
kernels. Implements ``gan_loss_fwd`` of the kernel contract in
``gan_fast.reference``, including its NaN/inf behaviour and its ties (hinge
margin exactly 1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gan_fast._formats import GPU_DTYPES

_KINDS = {"bce": 0, "hinge": 1, "lsgan": 2, "wgan": 3}


@triton.jit
def _log1p(e):
    # Accurate log(1 + e) for e >= 0 without libdevice (which the interpreter lacks).
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def _terms(x, t, one_minus_t, KIND: tl.constexpr, TARGET_REAL: tl.constexpr,
           SIDE_G: tl.constexpr):
    """Elementwise loss and its derivative, written like the reference so that
    NaN and +-inf logits give the same values."""
    if KIND == 0:  # bce: (1 - t) * x - logsigmoid(x), t = 0 for a fake target
        logsig = tl.where(x < 0, x, 0.0) - _log1p(tl.exp(-tl.abs(x)))
        sig = 1.0 / (1.0 + tl.exp(-x))
        if TARGET_REAL:
            val = one_minus_t * x - logsig
            grad = sig - t
        else:
            val = x - logsig
            grad = sig
    elif (KIND == 1 or KIND == 3) and SIDE_G:  # generator: -D(fake)
        val = -x
        grad = tl.zeros_like(x) - 1.0
    elif KIND == 1:  # hinge: relu(1 -+ x); relu passes NaN, its grad is 0 where input <= 0
        y = 1.0 - x if TARGET_REAL else 1.0 + x
        val = tl.where(y <= 0, 0.0, y)
        grad = tl.where(y <= 0, 0.0, -1.0 if TARGET_REAL else 1.0)
    elif KIND == 2:  # lsgan
        d = x - 1.0 if TARGET_REAL else x
        val = d * d
        grad = 2.0 * d
    else:  # wgan
        val = -x if TARGET_REAL else x
        grad = tl.zeros_like(x) + (-1.0 if TARGET_REAL else 1.0)
    return val, grad


@triton.jit
def _loss_part(x_ptr, g_ptr, n, t, one_minus_t, KIND: tl.constexpr, TARGET_REAL: tl.constexpr,
               SIDE_G: tl.constexpr, MEAN: tl.constexpr, BLOCK: tl.constexpr):
    """Writes the gradient of one side's logits and returns its reduced loss."""
    acc = tl.zeros([BLOCK], tl.float32)
    start = tl.cast(0, tl.int32)
    while start < n:  # not range(): see the note in bn_act.py
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        val, grad = _terms(x, t, one_minus_t, KIND, TARGET_REAL, SIDE_G)
        if MEAN:
            grad = grad / n
        tl.store(g_ptr + offs, grad.to(g_ptr.dtype.element_ty), mask=mask)
        acc += tl.where(mask, val, 0.0)
        start += BLOCK
    total = tl.sum(acc, axis=0)
    if MEAN:
        total = total / n  # 0/0 = NaN for empty logits, like torch.mean
    return total


@triton.jit
def _gan_loss_kernel(real_ptr, fake_ptr, grad_real_ptr, grad_fake_ptr, loss_ptr, n_real, n_fake,
                     t, one_minus_t, KIND: tl.constexpr, SIDE_G: tl.constexpr,
                     MEAN: tl.constexpr, BLOCK: tl.constexpr):
    # Side g: the fake logits are scored as real. Side d: real as real, fake as fake.
    total = _loss_part(fake_ptr, grad_fake_ptr, n_fake, t, one_minus_t, KIND, SIDE_G, SIDE_G,
                       MEAN, BLOCK)
    if not SIDE_G:
        total += _loss_part(real_ptr, grad_real_ptr, n_real, t, one_minus_t, KIND, True, False,
                            MEAN, BLOCK)
    tl.store(loss_ptr, total.to(loss_ptr.dtype.element_ty))


def _flat(t, name):
    if t.dtype not in GPU_DTYPES:
        raise TypeError(f"gan_fast triton gan_loss: {name} logits must be float32, float16 or "
                        f"bfloat16, got {t.dtype} (float64 is not supported on GPU; use the cpu "
                        f"or reference backend)")
    return t.contiguous().view(-1)


def gan_loss_fwd(real, fake, kind, side, reduction, label_smoothing):
    """GAN loss and its gradient w.r.t. the logits, in one kernel launch.

    real: logits of real images (any shape) or None for side 'g'; fake: logits of
    fakes (any shape); float32/float16/bfloat16. kind: bce|hinge|lsgan|wgan;
    side: d|g; reduction: mean|sum; label_smoothing: the real target of bce is
    1 - label_smoothing. Returns (loss: 0-dim in fake's dtype, accumulated in
    float32; grad_real shaped like real in its dtype, or None for side 'g';
    grad_fake shaped like fake in its dtype).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {tuple(_KINDS)}, got {kind!r}")
    if side not in ("d", "g"):
        raise ValueError(f"side must be 'd' or 'g', got {side!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    side_g = side == "g"
    if not side_g and real is None:
        raise ValueError("side 'd' needs the real logits")
    f = _flat(fake, "fake")
    gf = torch.empty_like(f)
    r, gr = (f, gf) if side_g else (_flat(real, "real"), None)
    if gr is None:
        gr = torch.empty_like(r)
    loss = torch.empty((), dtype=fake.dtype, device=fake.device)
    block = min(1024, max(16, triton.next_power_of_2(max(r.numel(), f.numel()))))
    t = 1.0 - float(label_smoothing)
    _gan_loss_kernel[(1,)](r, f, gr, gf, loss, r.numel(), f.numel(), t, 1.0 - t,
                           KIND=_KINDS[kind], SIDE_G=side_g, MEAN=reduction == "mean",
                           BLOCK=block, num_warps=4)
    grad_real = None if side_g else gr.view(real.shape)
    return loss, grad_real, gf.view(fake.shape)

"""Triton kernels for the backward of the fused conv -> BatchNorm2d -> LeakyReLU block.

Pipeline (host code in ``conv.py``):

1. ``_bn_act_bwd_reduce_kernel``: one pass over (grad_out, y) writing per-program
   partial sums S1 = sum(dz), S2 = sum(dz*(y-mean)), S3 = sum(y-mean) per channel.
2. ``_bn_act_bwd_finalize_kernel``: sums the partials and turns them into the
   per-channel coefficients of ``dy = a*dz + k1 + k2*(y-mean)`` (a = bn_w*invstd,
   k1 = -a*S1/n, k2 = -a*invstd^2*S2/n) plus grad_bn_weight = invstd*S2,
   grad_bn_bias = S1, grad_conv_bias = sum(dy) = k2*S3 (the a*S1 + n*k1 part
   cancels exactly).
3. dgrad: ``conv_fwd._conv_gemm_kernel`` with ``PROLOGUE=True`` (dy rebuilt in the
   A-operand load).
4. wgrad: ``_conv_wgrad_kernel`` below, dy rebuilt in the B-operand load.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import _targets
from .conv_fwd import INTERPRET, _cfg, _divmod, _next_pow2

if INTERPRET:
    WGRAD_CONFIGS = [_cfg(32, 32, 32, 4, 1)]
else:
    WGRAD_CONFIGS = [
        _cfg(128, 128, 64, 8, 3),
        _cfg(128, 128, 32, 8, 4),
        _cfg(128, 64, 64, 4, 4),
        _cfg(64, 128, 64, 4, 4),
        _cfg(64, 64, 64, 4, 4),
        _cfg(64, 64, 32, 4, 5),
        _cfg(32, 64, 64, 4, 4),
        _cfg(64, 32, 64, 4, 4),
        # Narrow-K tiles with at most 3 stages, kept by the rule (_targets.fits) for dy
        # rebuilt from grad_out and y: 8 warps, and 4 warps (fp32, narrow outputs)
        _cfg(128, 64, 32, 8, 3),
        _cfg(64, 128, 32, 8, 3),
        _cfg(64, 64, 32, 4, 3),
    ]


def _prune_wgrad(configs, named_args, **kwargs):
    """Drop configs that cannot fit the target (``_targets.fits``), then tiles wider than
    the channel counts."""
    x = named_args["x_ptr"]
    # grad_out/y not contiguous along the channels: their gathered rows are loaded into
    # registers (ld.global, not cp.async) in every dtype
    strided = named_args["s_gc"] != 1 or named_args["s_yc"] != 1
    configs = _targets.prune_to_target(configs, x.device, x.element_size(), b_tiles=2,
                                       strided=strided)
    mmax = max(32, _next_pow2(named_args["C_X"]))
    nmax = max(32, _next_pow2(named_args["C_Y"]))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= mmax and c.kwargs["BLOCK_N"] <= nmax]
    return kept or configs[-1:]


@triton.jit
def _bn_act_coefs(mean_ptr, var_ptr, w_ptr, b_ptr, offs_c, c_ok, eps, HAS_AFFINE: tl.constexpr):
    mu = tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    invstd = tl.rsqrt(tl.load(var_ptr + offs_c, mask=c_ok, other=1.0).to(tl.float32) + eps)
    if HAS_AFFINE:
        a = tl.load(w_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32) * invstd
        b = tl.load(b_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    else:
        a = invstd
        b = tl.zeros_like(invstd)
    return mu, invstd, a, b


@triton.jit
def _bn_act_bwd_reduce_kernel(
    g_ptr, y_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, ws_ptr,
    P, C, HW, W,
    s_gn, s_gc, s_gh, s_gw,
    s_yn, s_yc, s_yh, s_yw,
    P_PER_PROG, R, eps, negative_slope,
    HAS_AFFINE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Partial S1, S2, S3 over pixels [pid_p*P_PER_PROG, +P_PER_PROG) -> ws (3, R, C)."""
    pid_p = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mu, invstd, a, b = _bn_act_coefs(mean_ptr, var_ptr, w_ptr, b_ptr, offs_c, c_ok, eps, HAS_AFFINE)
    acc1 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    p_lo = pid_p * P_PER_PROG
    p_hi = tl.minimum(p_lo + P_PER_PROG, P)
    p0 = p_lo
    while p0 < p_hi:
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_ok = offs_p < p_hi
        img, rem = _divmod(offs_p, HW)
        h, w = _divmod(rem, W)
        mask = p_ok[:, None] & c_ok[None, :]
        g = tl.load(g_ptr + (img * s_gn + h * s_gh + w * s_gw)[:, None] + offs_c[None, :] * s_gc,
                    mask=mask, other=0.0).to(tl.float32)
        yv = tl.load(y_ptr + (img * s_yn + h * s_yh + w * s_yw)[:, None] + offs_c[None, :] * s_yc,
                     mask=mask, other=0.0).to(tl.float32)
        yc = tl.where(mask, yv - mu[None, :], 0.0)
        z = yc * a[None, :] + b[None, :]
        dz = tl.where(z > 0, g, g * negative_slope)
        acc1 += dz
        acc2 += dz * yc
        acc3 += yc
        p0 += BLOCK_P
    tl.store(ws_ptr + pid_p * C + offs_c, tl.sum(acc1, axis=0), mask=c_ok)
    tl.store(ws_ptr + (R + pid_p) * C + offs_c, tl.sum(acc2, axis=0), mask=c_ok)
    tl.store(ws_ptr + (2 * R + pid_p) * C + offs_c, tl.sum(acc3, axis=0), mask=c_ok)


@triton.jit
def _bn_act_bwd_finalize_kernel(
    ws_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, coef_ptr, grads_ptr,
    R, C, count, eps,
    HAS_AFFINE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """ws (3, R, C) -> coef (5, C) = [mean, a, b, k1, k2] and grads (3, C) =
    [grad_bn_weight, grad_bn_bias, grad_conv_bias], all fp32."""
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    s1 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    s3 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    r0 = tl.cast(0, tl.int32)   # a tensor even when R is specialised to 1
    while r0 < R:
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask = (offs_r < R)[:, None] & c_ok[None, :]
        ptrs = ws_ptr + offs_r[:, None] * C + offs_c[None, :]
        s1 += tl.load(ptrs, mask=mask, other=0.0)
        s2 += tl.load(ptrs + R * C, mask=mask, other=0.0)
        s3 += tl.load(ptrs + 2 * R * C, mask=mask, other=0.0)
        r0 += BLOCK_R
    S1 = tl.sum(s1, axis=0)
    S2 = tl.sum(s2, axis=0)
    S3 = tl.sum(s3, axis=0)
    mu, invstd, a, b = _bn_act_coefs(mean_ptr, var_ptr, w_ptr, b_ptr, offs_c, c_ok, eps, HAS_AFFINE)
    k1 = -a * S1 / count
    k2 = -a * invstd * invstd * S2 / count
    tl.store(coef_ptr + offs_c, mu, mask=c_ok)
    tl.store(coef_ptr + C + offs_c, a, mask=c_ok)
    tl.store(coef_ptr + 2 * C + offs_c, b, mask=c_ok)
    tl.store(coef_ptr + 3 * C + offs_c, k1, mask=c_ok)
    tl.store(coef_ptr + 4 * C + offs_c, k2, mask=c_ok)
    tl.store(grads_ptr + offs_c, invstd * S2, mask=c_ok)
    tl.store(grads_ptr + C + offs_c, S1, mask=c_ok)
    tl.store(grads_ptr + 2 * C + offs_c, k2 * S3, mask=c_ok)


@triton.jit
def _wgrad_step(acc, q0, q_hi, x_ptr, g_ptr, y_ptr, offs_x, x_ok, offs_y, y_ok,
                mu, sa, sb, k1, k2, kh, kw, qhw, QW, GH, GW,
                s_xn, s_xc, s_xh, s_xw, s_gn, s_gc, s_gh, s_gw, s_yn, s_yc, s_yh, s_yw,
                stride_h, stride_w, pad_h, pad_w, negative_slope,
                GATHER_X: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """One K step (BLOCK_K pixels) of the weight-gradient GEMM."""
    offs_q = q0 + tl.arange(0, BLOCK_K)
    q_ok = offs_q < q_hi
    img, rem = _divmod(offs_q, qhw)
    qh, qw = _divmod(rem, QW)
    gh = qh * stride_h - pad_h + kh
    gw = qw * stride_w - pad_w + kw
    gat_ok = q_ok & (gh >= 0) & (gh < GH) & (gw >= 0) & (gw < GW)
    if GATHER_X:
        x_sp = img * s_xn + gh * s_xh + gw * s_xw
        x_row_ok = gat_ok
        g_sp = img * s_gn + qh * s_gh + qw * s_gw
        y_sp = img * s_yn + qh * s_yh + qw * s_yw
        d_row_ok = q_ok
    else:
        x_sp = img * s_xn + qh * s_xh + qw * s_xw
        x_row_ok = q_ok
        g_sp = img * s_gn + gh * s_gh + gw * s_gw
        y_sp = img * s_yn + gh * s_yh + gw * s_yw
        d_row_ok = gat_ok
    xa = tl.load(x_ptr + offs_x[:, None] * s_xc + x_sp[None, :],
                 mask=x_ok[:, None] & x_row_ok[None, :], other=0.0)          # (BM, BK)
    d_mask = d_row_ok[:, None] & y_ok[None, :]
    g = tl.load(g_ptr + g_sp[:, None] + offs_y[None, :] * s_gc,
                mask=d_mask, other=0.0).to(tl.float32)                      # (BK, BN)
    yc = tl.load(y_ptr + y_sp[:, None] + offs_y[None, :] * s_yc,
                 mask=d_mask, other=0.0).to(tl.float32) - mu[None, :]
    z = yc * sa[None, :] + sb[None, :]
    dz = tl.where(z > 0, g, g * negative_slope)
    y_term = tl.where(k2[None, :] != 0.0, k2[None, :] * yc, 0.0)  # k2 == 0: none, y may be inf
    dy = tl.where(d_mask, sa[None, :] * dz + k1[None, :] + y_term, 0.0)
    dy = dy.to(x_ptr.dtype.element_ty)
    if UPCAST:
        xa = xa.to(tl.float32)
        dy = dy.to(tl.float32)
    acc = tl.dot(xa, dy, acc, input_precision=PRECISION)
    return acc


@triton.autotune(
    configs=WGRAD_CONFIGS,
    key=["N", "C_X", "C_Y", "QH", "QW", "GH", "GW", "KH", "KW", "SPLIT", "GATHER_X",
         "s_gc", "s_yc"],   # strides: the rule's `strided`
    prune_configs_by=None if INTERPRET else {"early_config_prune": _prune_wgrad},
)
@triton.jit
def _conv_wgrad_kernel(
    x_ptr, g_ptr, y_ptr, coef_ptr, ws_ptr,
    N, C_X, C_Y, QH, QW, GH, GW,
    s_xn, s_xc, s_xh, s_xw,
    s_gn, s_gc, s_gh, s_gw,
    s_yn, s_yc, s_yh, s_yw,
    s_wsplit, s_wx, s_wy, s_wkh, s_wkw,
    stride_h, stride_w, pad_h, pad_w,
    Q_PER_SPLIT, negative_slope,
    SPLIT, KH: tl.constexpr, KW: tl.constexpr, GATHER_X: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, LOOP_WHILE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Weight gradient: ws[split, cx, cy, kh, kw] = sum_q x[.., cx, ..] * dy[.., cy, ..].

    The reduction runs over the pixel grid Q = (N, QH, QW) of one operand (the
    "plain" side); the other operand is gathered at q*stride - pad + k on its grid
    (GH, GW). Conv2d: Q = output pixels, x gathered (GATHER_X). ConvTranspose2d:
    Q = input pixels, dy gathered. dy = BN+LeakyReLU backward rebuilt from
    (grad_out, y) with coef (5, C_Y). Grid: (cdiv(C_X,BM)*cdiv(C_Y,BN), KH*KW, SPLIT);
    split s covers q in [s*Q_PER_SPLIT, (s+1)*Q_PER_SPLIT); partials in fp32.
    """
    pid = tl.program_id(0)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    num_n = (C_Y + BLOCK_N - 1) // BLOCK_N
    pid_m, pid_n = _divmod(pid, num_n)
    kh, kw = _divmod(tap, KW)

    offs_x = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    x_ok = offs_x < C_X
    offs_y = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y_ok = offs_y < C_Y
    mu = tl.load(coef_ptr + offs_y, mask=y_ok, other=0.0)
    sa = tl.load(coef_ptr + C_Y + offs_y, mask=y_ok, other=0.0)
    sb = tl.load(coef_ptr + 2 * C_Y + offs_y, mask=y_ok, other=0.0)
    k1 = tl.load(coef_ptr + 3 * C_Y + offs_y, mask=y_ok, other=0.0)
    k2 = tl.load(coef_ptr + 4 * C_Y + offs_y, mask=y_ok, other=0.0)

    qhw = QH * QW
    q_lo = split * Q_PER_SPLIT
    q_hi = tl.minimum(q_lo + Q_PER_SPLIT, N * qhw)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if LOOP_WHILE:   # interpreter: NumPy >= 2.4 cannot take a runtime bound in range()
        q0 = q_lo
        while q0 < q_hi:
            acc = _wgrad_step(acc, q0, q_hi, x_ptr, g_ptr, y_ptr, offs_x, x_ok, offs_y, y_ok,
                              mu, sa, sb, k1, k2, kh, kw, qhw, QW, GH, GW,
                              s_xn, s_xc, s_xh, s_xw, s_gn, s_gc, s_gh, s_gw,
                              s_yn, s_yc, s_yh, s_yw, stride_h, stride_w, pad_h, pad_w,
                              negative_slope, GATHER_X, UPCAST, PRECISION, BLOCK_K)
            q0 += BLOCK_K
    else:            # GPU: a for loop, so the software pipeliner overlaps loads and MMAs
        for q0 in range(q_lo, q_hi, BLOCK_K):
            acc = _wgrad_step(acc, q0, q_hi, x_ptr, g_ptr, y_ptr, offs_x, x_ok, offs_y, y_ok,
                              mu, sa, sb, k1, k2, kh, kw, qhw, QW, GH, GW,
                              s_xn, s_xc, s_xh, s_xw, s_gn, s_gc, s_gh, s_gw,
                              s_yn, s_yc, s_yh, s_yw, stride_h, stride_w, pad_h, pad_w,
                              negative_slope, GATHER_X, UPCAST, PRECISION, BLOCK_K)

    tl.store(ws_ptr + split * s_wsplit + kh * s_wkh + kw * s_wkw
             + offs_x[:, None] * s_wx + offs_y[None, :] * s_wy,
             acc, mask=x_ok[:, None] & y_ok[None, :])

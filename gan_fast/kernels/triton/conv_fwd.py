"""Triton kernels: implicit-GEMM convolution with fused prologue/epilogue.

One GEMM kernel, ``_conv_gemm_kernel``, serves the forward of Conv2d and
ConvTranspose2d, their BN-folded eval forward, and the dgrad (grad w.r.t. the
conv input) of the fused training block:

* GEMM view: M = output pixels (n, oh, ow), N = output channels, K = (kernel tap,
  input channel). The K loop is one flat loop over (tap, channel block) so the
  software pipeliner sees a single loop; channels are the innermost (contiguous in
  channels_last) dimension of every operand tile.
* ``TRANSPOSED=False``: the Conv2d gather ``ih = oh*stride - pad + kh``.
  ``TRANSPOSED=True``: the ConvTranspose2d gather ``ih = (oh + pad - kh)/stride``
  (only taps where it divides exactly). The output is split into stride_h*stride_w
  *phases* (oh % stride_h, ow % stride_w); inside one phase only every stride-th
  tap contributes, so each program loops over ceil(KH/stride)*ceil(KW/stride)
  taps and none of the FLOPs is wasted on taps that cannot divide.
* ``PROLOGUE``: the A operand is not read from memory as such but recomputed from
  (grad_out, y) of the following BatchNorm+LeakyReLU:
  ``dy = a*dz + k1 + k2*(y - mean)``, ``dz = g*(z > 0 ? 1 : slope)``,
  ``z = (y - mean)*a + b``; coefficients per channel in ``coef`` (5, C):
  mean, a (= bn_w*invstd), b (= bn_b), k1, k2 (see conv_bwd). dy never hits memory.
* ``EPILOGUE``: 0 store; 1 store y and write per-tile (count, mean, std) partials of
  the *stored* (rounded) y per channel, combined by ``_welford_combine_kernel`` with
  Chan's formula (stable for outputs with a large mean, and finite for outputs up to
  ~1e38: no raw sum of squares); 2 LeakyReLU then store
  (eval mode, BN already folded into weight/bias on the host; the norm-free block's
  training forward: conv + bias + activation).
* ``PER_IMAGE`` (InstanceNorm statistics): M is tiled per image (a tile never straddles
  two images: TPI = cdiv(MP_MAX, BLOCK_M) tiles per image and phase, MP_MAX then being
  the largest phase's pixel count of *one* image), and EPILOGUE 1 writes the partials of
  tile t of image n in phase p at row p*TPI + t, column n*C_OUT + c: the combine kernel
  over phases*TPI rows and N*C_OUT columns gives the per-(n, c) mean and variance.

Loops: on the GPU the K loop is a ``for`` over a runtime bound (software-pipelined);
under TRITON_INTERPRET (``LOOP_WHILE``) it is a ``while`` loop, because the Triton 3.6
interpreter cannot take a runtime bound in ``range`` with NumPy >= 2.4.

All activation tensors are addressed through their 4 strides (N, C, H, W), so NCHW
and channels_last both work; channels_last is the fast path (unit channel stride is
specialised by Triton and loads vectorise along K). Index arithmetic is int32: the
host checks that every tensor has fewer than 2**31 elements.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from . import _targets

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
                         num_warps=warps, num_stages=stages)


if INTERPRET:
    # The interpreter runs every program serially in numpy: one small config.
    GEMM_CONFIGS = [_cfg(32, 32, 32, 4, 1)]
else:
    GEMM_CONFIGS = [
        _cfg(128, 128, 64, 8, 3),
        _cfg(128, 128, 32, 8, 4),
        _cfg(128, 64, 64, 4, 4),
        _cfg(64, 128, 64, 4, 4),
        _cfg(128, 64, 32, 4, 4),
        _cfg(64, 64, 64, 4, 4),
        _cfg(64, 64, 32, 4, 5),
        _cfg(128, 32, 32, 4, 4),
        _cfg(64, 32, 32, 2, 4),
        # Narrow-K tiles with at most 3 stages: what the rule (_targets.fits) keeps for
        # the dgrad GEMM, whose prologue holds grad_out and y in fp32 registers (8 warps;
        # 4 warps for fp32, a whole warp group for wgmma on sm_90a)
        _cfg(128, 64, 32, 8, 3),
        _cfg(64, 128, 32, 8, 3),
        _cfg(64, 64, 32, 4, 3),
    ]
MIN_BLOCK_M = min(c.kwargs["BLOCK_M"] for c in GEMM_CONFIGS)


def _next_pow2(v):
    return 1 << max(0, int(v) - 1).bit_length()


def _prune_gemm(configs, named_args, **kwargs):
    """Drop configs that cannot fit the target's shared memory (``_targets.fits``, the
    rule ``gan_fast.aot`` checks), then tiles much wider than the problem."""
    a, w = named_args["a_ptr"], named_args["w_ptr"]
    prologue = bool(kwargs.get("PROLOGUE"))
    # grad_out/y not contiguous along the channels: 2-byte elements are loaded one by one
    # into registers (cp.async copies 4 bytes at least); fp32 ones still go by cp.async
    strided = (prologue and a.element_size() < 4
               and (named_args["s_ac"] != 1 or named_args["s_yc"] != 1))
    configs = _targets.prune_to_target(configs, a.device, a.element_size(), w.element_size(),
                                       a_tiles=2 if prologue else 1, strided=strided)
    c_a, c_out = named_args["C_A"], named_args["C_OUT"]
    kmax = max(16, _next_pow2(c_a))
    nmax = max(32, _next_pow2(c_out))
    kept = [c for c in configs if c.kwargs["BLOCK_K"] <= kmax and c.kwargs["BLOCK_N"] <= nmax]
    return kept or configs[-1:]


@triton.jit
def _divmod(a, b):
    """(a // b, a % b) for non-negative integers, as one division and a multiply."""
    q = a // b
    return q, a - q * b


@triton.jit
def _gemm_step(acc, it, n_cblk, a_ptr, y_ptr, coef_ptr, w_ptr, a_img, y_img, oh, ow, m_ok,
               offs_k, offs_n, n_ok, kh0, kw0, C_A, H, W, C_OUT,
               s_ac, s_ah, s_aw, s_yc, s_yh, s_yw, stride_h, stride_w, pad_h, pad_w,
               negative_slope, KH: tl.constexpr, KW: tl.constexpr, TAPS_W: tl.constexpr,
               TRANSPOSED: tl.constexpr, PROLOGUE: tl.constexpr, UPCAST: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """One K step (one kernel tap x one block of BLOCK_K input channels) of the GEMM."""
    tap, cb = _divmod(it, n_cblk)
    th, tw = _divmod(tap, TAPS_W)
    if TRANSPOSED:
        kh = kh0 + th * stride_h
        kw = kw0 + tw * stride_w
        ih = (oh + pad_h - kh) // stride_h       # exact: divisible by construction
        iw = (ow + pad_w - kw) // stride_w
        tap_ok = (kh < KH) & (kw < KW)
    else:
        kh = th
        kw = tw
        ih = oh * stride_h - pad_h + kh
        iw = ow * stride_w - pad_w + kw
        tap_ok = kh < KH
    row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & tap_ok
    offs_c = cb * BLOCK_K + offs_k
    c_ok = offs_c < C_A
    a_mask = row_ok[:, None] & c_ok[None, :]
    a = tl.load(a_ptr + (a_img + ih * s_ah + iw * s_aw)[:, None] + offs_c[None, :] * s_ac,
                mask=a_mask, other=0.0)
    if PROLOGUE:
        # a holds grad_out; rebuild dy of BN+LeakyReLU from (grad_out, y).
        g = a.to(tl.float32)
        yv = tl.load(y_ptr + (y_img + ih * s_yh + iw * s_yw)[:, None] + offs_c[None, :] * s_yc,
                     mask=a_mask, other=0.0).to(tl.float32)
        mu = tl.load(coef_ptr + offs_c, mask=c_ok, other=0.0)
        sa = tl.load(coef_ptr + C_A + offs_c, mask=c_ok, other=0.0)
        sb = tl.load(coef_ptr + 2 * C_A + offs_c, mask=c_ok, other=0.0)
        k1 = tl.load(coef_ptr + 3 * C_A + offs_c, mask=c_ok, other=0.0)
        k2 = tl.load(coef_ptr + 4 * C_A + offs_c, mask=c_ok, other=0.0)
        yc = yv - mu[None, :]
        z = yc * sa[None, :] + sb[None, :]
        dz = tl.where(z > 0, g, g * negative_slope)
        # k2 == 0 (the norm-free block, conv_act): no y term, even where y overflowed to
        # +-inf (0 * inf would make the gradient NaN where stock's is finite)
        dy = sa[None, :] * dz + k1[None, :] + tl.where(k2[None, :] != 0.0, k2[None, :] * yc, 0.0)
        a = tl.where(a_mask, dy, 0.0).to(a_ptr.dtype.element_ty)
    b = tl.load(w_ptr + ((kh * KW + kw) * C_A + offs_c)[:, None] * C_OUT + offs_n[None, :],
                mask=(c_ok & tap_ok)[:, None] & n_ok[None, :], other=0.0)
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    acc = tl.dot(a, b, acc, input_precision=PRECISION)

    return acc


@triton.autotune(
    configs=GEMM_CONFIGS,
    key=["N", "C_A", "H", "W", "C_OUT", "OH", "OW", "KH", "KW",
         "TRANSPOSED", "PROLOGUE", "EPILOGUE", "PER_IMAGE", "s_ac", "s_yc"],   # strides: the rule's `strided`
    prune_configs_by=None if INTERPRET else {"early_config_prune": _prune_gemm},
)
@triton.jit
def _conv_gemm_kernel(
    a_ptr, y_ptr, coef_ptr, w_ptr, bias_ptr, out_ptr,
    ws_mean_ptr, ws_m2_ptr, ws_cnt_ptr,
    N, C_A, H, W, C_OUT, OH, OW,
    s_an, s_ac, s_ah, s_aw,
    s_yn, s_yc, s_yh, s_yw,
    s_on, s_oc, s_oh, s_ow,
    stride_h, stride_w, pad_h, pad_w,
    MP_MAX, negative_slope,
    KH: tl.constexpr, KW: tl.constexpr, TAPS_H: tl.constexpr, TAPS_W: tl.constexpr,
    TRANSPOSED: tl.constexpr, PROLOGUE: tl.constexpr, EPILOGUE: tl.constexpr,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    LOOP_WHILE: tl.constexpr, PER_IMAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[n, co, oh, ow] = sum_{tap, ci} A[n, ci, ih, iw] * Wt[tap, ci, co] (+ bias).

    a: (N, C_A, H, W) any strides; w: (KH*KW, C_A, C_OUT) contiguous in the compute
    dtype; out: (N, C_OUT, OH, OW) any strides. Grid: (phases * M_TILES, cdiv(C_OUT,
    BLOCK_N)); phases = stride_h*stride_w if TRANSPOSED else 1, M_TILES =
    cdiv(MP_MAX, BLOCK_M), MP_MAX = the pixel count of the largest phase (PER_IMAGE:
    M_TILES = N*cdiv(MP_MAX, BLOCK_M), MP_MAX that of one image).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    tpi = (MP_MAX + BLOCK_M - 1) // BLOCK_M
    if PER_IMAGE:
        M_TILES = N * tpi
    else:
        M_TILES = tpi
    phase, tile = _divmod(pid_m, M_TILES)

    if TRANSPOSED:
        ph, pw = _divmod(phase, stride_w)
        ohp = (OH - ph + stride_h - 1) // stride_h   # rows with oh % stride_h == ph
        owp = (OW - pw + stride_w - 1) // stride_w
        kh0 = (ph + pad_h) % stride_h                # first tap that divides
        kw0 = (pw + pad_w) % stride_w
    else:
        ohp = OH
        owp = OW
        kh0 = 0
        kw0 = 0
    hw = ohp * owp
    mp = N * hw
    hw_safe = tl.maximum(hw, 1)
    owp_safe = tl.maximum(owp, 1)

    if PER_IMAGE:   # one image per tile: img a scalar, the tile's rows that image's pixels
        img, tile = _divmod(tile, tpi)
        m_lim = hw
        ws_row = phase * tpi + tile
        ws_col = img * C_OUT
        ws_ld = N * C_OUT
        rem = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = rem < hw
    else:
        m_lim = mp
        ws_row = pid_m
        ws_col = 0
        ws_ld = C_OUT
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < mp
        img, rem = _divmod(offs_m, hw_safe)
    i, j = _divmod(rem, owp_safe)
    if TRANSPOSED:
        oh = ph + i * stride_h
        ow = pw + j * stride_w
    else:
        oh = i
        ow = j

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_OUT
    offs_k = tl.arange(0, BLOCK_K)
    a_img = img * s_an
    if PROLOGUE:
        y_img = img * s_yn
    else:
        y_img = a_img

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_cblk = (C_A + BLOCK_K - 1) // BLOCK_K
    n_iter = TAPS_H * TAPS_W * n_cblk
    if LOOP_WHILE:   # interpreter: NumPy >= 2.4 cannot take a runtime bound in range()
        it = tl.cast(0, tl.int32)
        while it < n_iter:
            acc = _gemm_step(acc, it, n_cblk, a_ptr, y_ptr, coef_ptr, w_ptr, a_img, y_img, oh, ow,
                             m_ok, offs_k, offs_n, n_ok, kh0, kw0, C_A, H, W, C_OUT,
                             s_ac, s_ah, s_aw, s_yc, s_yh, s_yw, stride_h, stride_w, pad_h, pad_w,
                             negative_slope, KH, KW, TAPS_W, TRANSPOSED, PROLOGUE, UPCAST,
                             PRECISION, BLOCK_K)
            it += 1
    else:            # GPU: a for loop, so the software pipeliner overlaps loads and MMAs
        for it in range(0, n_iter):
            acc = _gemm_step(acc, it, n_cblk, a_ptr, y_ptr, coef_ptr, w_ptr, a_img, y_img, oh, ow,
                             m_ok, offs_k, offs_n, n_ok, kh0, kw0, C_A, H, W, C_OUT,
                             s_ac, s_ah, s_aw, s_yc, s_yh, s_yw, stride_h, stride_w, pad_h, pad_w,
                             negative_slope, KH, KW, TAPS_W, TRANSPOSED, PROLOGUE, UPCAST,
                             PRECISION, BLOCK_K)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 2:
        acc = tl.where(acc > 0, acc, acc * negative_slope)
    o_mask = m_ok[:, None] & n_ok[None, :]
    yq = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + (img * s_on + oh * s_oh + ow * s_ow)[:, None] + offs_n[None, :] * s_oc,
             yq, mask=o_mask)
    if EPILOGUE == 1:
        # BatchNorm statistics of what was stored: per-tile count, mean and standard
        # deviation. Nothing here squares a value larger than the result: the mean is a
        # sum of y/cnt, and the deviations are scaled by their largest magnitude before
        # squaring, so outputs up to ~1e38 give finite statistics (stock BatchNorm's
        # range), not the inf - inf = NaN of a raw sum of squares.
        yf = tl.where(o_mask, yq.to(tl.float32), 0.0)
        cnt = tl.maximum(tl.minimum(m_lim - tile * BLOCK_M, BLOCK_M), 0).to(tl.float32)
        tmean = tl.sum(yf * (1.0 / tl.maximum(cnt, 1.0)), axis=0)
        d = tl.where(o_mask, yf - tmean[None, :], 0.0)
        dmax = tl.max(tl.abs(d), axis=0)
        dsc = tl.where(dmax > 0, dmax, 1.0)
        r = d / dsc[None, :]
        tstd = dsc * tl.sqrt(tl.sum(r * r, axis=0) / tl.maximum(cnt, 1.0))
        tl.store(ws_mean_ptr + ws_row * ws_ld + ws_col + offs_n, tmean, mask=n_ok)
        tl.store(ws_m2_ptr + ws_row * ws_ld + ws_col + offs_n, tstd, mask=n_ok)
        if pid_n == 0:   # PER_IMAGE: every image writes the same count to its row
            tl.store(ws_cnt_ptr + ws_row, cnt)


@triton.jit
def _welford_combine_kernel(ws_mean_ptr, ws_m2_ptr, ws_cnt_ptr, mean_ptr, var_ptr, T, C,
                            BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Combine T per-tile (count, mean, std) rows into per-channel mean and biased var.

    Chunks of BLOCK_T rows are merged around the chunk mean, chunks are merged with
    Chan's parallel formula written in weight fractions and standard deviations:
    var = (sqrt(fa)*sd_a)^2 + (sqrt(fb)*sd_b)^2 + (sqrt(fa*fb)*delta)^2, each term at
    most the result, so nothing overflows unless the variance itself exceeds fp32
    (then var is inf, the mean stays finite), and no sum-of-squares cancellation.
    """
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    n_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    mean_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sd_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    t0 = tl.cast(0, tl.int32)   # a tensor even when T is specialised to 1
    while t0 < T:
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < T
        mask = t_ok[:, None] & c_ok[None, :]
        cnt = tl.load(ws_cnt_ptr + offs_t, mask=t_ok, other=0.0)
        wt = tl.where(mask, cnt[:, None], 0.0)
        mu = tl.load(ws_mean_ptr + offs_t[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
        sd = tl.load(ws_m2_ptr + offs_t[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
        n_b = tl.sum(wt, axis=0)
        f = wt / tl.maximum(n_b, 1.0)[None, :]
        mean_b = tl.sum(f * mu, axis=0)
        sf = tl.sqrt(f)
        d = tl.where(mask, (mu - mean_b[None, :]) * sf, 0.0)
        e = sd * sf
        sd_b = tl.sqrt(tl.sum(e * e + d * d, axis=0))
        n = n_a + n_b
        inv_n = 1.0 / tl.maximum(n, 1.0)
        fa = n_a * inv_n
        fb = n_b * inv_n
        delta = mean_b - mean_a
        mean_a = mean_a * fa + mean_b * fb
        p = sd_a * tl.sqrt(fa)
        q = sd_b * tl.sqrt(fb)
        rr = delta * tl.sqrt(fa * fb)
        sd_a = tl.sqrt(p * p + q * q + rr * rr)
        n_a = n
        t0 += BLOCK_T
    tl.store(mean_ptr + offs_c, mean_a, mask=c_ok)
    tl.store(var_ptr + offs_c, sd_a * sd_a, mask=c_ok)

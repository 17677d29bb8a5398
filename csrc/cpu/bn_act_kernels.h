// The bn_act CPU kernels over raw pointers, as a table of function pointers.
//
// bn_act_impl.h holds the kernels; it is compiled once with at::vec's DEFAULT
// instruction set (bn_act.cpp, namespace `base`) and, on x86-64 with GCC, once
// more for AVX2+FMA+F16C (kernels_avx2.cpp, namespace `avx2`). bn_act.cpp picks
// one table at run time.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace gan_fast::cpu {

struct BnShape {
  int64_t N, C, HW;    // HW = H * W
  bool channels_last;  // false: contiguous NCHW
};

// Called by the channel-local kernels once channel c's two sums (u, w) are
// complete and before channel c's elementwise pass: fills channel c of that
// pass's parameter arrays (ctx: the caller's state).
using ChannelFinish = void (*)(void* ctx, int64_t c, double u, double w);

// Whether the channel-local kernels take shape `s`: NCHW, planes of at most
// 16384 values (the reductions' task size), one channel of one tensor at most
// kChannelLocalBytes, so that it (x, or x and the gradient) is read again from
// L2, and at most kChannelLocalRuns planes: a channel's planes lie C*HW apart,
// often a power of two, and many of them evict each other from the cache sets.
// Measured on a 2-core EPYC (512 KiB L2) with cold inputs, fwd+bwd: the DCGAN
// layers at batch 64 gain 5-55%; 256 KiB channels (256x128x16x16) lose ~10%,
// 256 planes of 64 B (256x512x4x4) ~15%.
constexpr int64_t kChannelLocalBytes = 128 * 1024, kChannelLocalRuns = 128;
inline bool channel_local(const BnShape& s, int64_t elem_size) {
  return !s.channels_last && s.HW <= 16384 && s.N * s.HW > 0 && s.N <= kChannelLocalRuns &&
         s.N * s.HW * elem_size <= kChannelLocalBytes;
}

// Per-channel parameter arrays (K, mean, scale, bias, B, K2) are float for
// float/half/bfloat16 data and double for double data. Per-channel sums come
// back in double.
struct BnKernels {
  // Over channel c: Q[c] = sum((x - K[c])^2), X[c] = sum(x) for float,
  // half and bfloat16 data and X[c] = sum(x - K[c]) for double data.
  void (*stats)(c10::ScalarType dtype, const void* x, const BnShape& s, const void* K,
                double* X, double* Q);
  // z = (x - mean[c]) * scale[c] + bias[c]; out = leaky(z).
  void (*apply)(c10::ScalarType dtype, const void* x, void* out, const BnShape& s,
                const void* mean, const void* scale, const void* bias, double slope);
  // dz = g * (z > 0 ? 1 : slope);
  // sum_dz[c] = sum(dz), sum_dz_xc[c] = sum(dz * (x - mean[c])).
  void (*bwd_reduce)(c10::ScalarType dtype, const void* g, const void* x, const BnShape& s,
                     const void* mean, const void* scale, const void* bias, double slope,
                     double* sum_dz, double* sum_dz_xc);
  // gx = (scale[c] * dz - B[c]) - (x - mean[c]) * K2[c]  (batch_stats)
  // gx = scale[c] * dz                                   (!batch_stats)
  void (*bwd_apply)(c10::ScalarType dtype, const void* g, const void* x, void* gx,
                    const BnShape& s, const void* mean, const void* scale, const void* bias,
                    const void* B, const void* K2, double slope, bool batch_stats);
  // Channel-local (channel_local(s, .)): one task per channel runs stats'
  // sums, finish(ctx, c, X[c], Q[c]) (which fills mean/scale/bias[c]), then
  // apply, while the channel is still in cache: one read from memory, not two.
  // The sums are those of stats, bit for bit.
  void (*train_local)(c10::ScalarType dtype, const void* x, void* out, const BnShape& s,
                      const void* K, ChannelFinish finish, void* ctx, const void* mean,
                      const void* scale, const void* bias, double slope);
  // Channel-local backward (channel_local(s, .)): bwd_reduce's sums,
  // finish(ctx, c, sum_dz[c], sum_dz_xc[c]) (fills B/K2[c]), then bwd_apply.
  void (*bwd_local)(c10::ScalarType dtype, const void* g, const void* x, void* gx,
                    const BnShape& s, const void* mean, const void* scale, const void* bias,
                    double slope, ChannelFinish finish, void* ctx, const void* B, const void* K2,
                    bool batch_stats);
};

namespace base {
const BnKernels& kernels();
}  // namespace base

// The AVX2 table, or nullptr (not compiled in, CPU lacks AVX2/FMA/F16C, or
// GAN_FAST_CPU_ISA=default).
const BnKernels* bn_kernels_avx2();

}  // namespace gan_fast::cpu

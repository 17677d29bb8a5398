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
};

namespace base {
const BnKernels& kernels();
}  // namespace base

// The AVX2 table, or nullptr (not compiled in, CPU lacks AVX2/FMA/F16C, or
// GAN_FAST_CPU_ISA=default).
const BnKernels* bn_kernels_avx2();

}  // namespace gan_fast::cpu

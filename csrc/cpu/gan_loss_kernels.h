// The GAN loss CPU kernel over raw pointers, as a table like BnKernels
// (bn_act_kernels.h): gan_loss_impl.h is compiled for at::vec's DEFAULT
// instruction set (gan_loss.cpp) and for AVX2 (kernels_avx2.cpp).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu_ops.h"

namespace gan_fast::cpu {

// Which loss term a logits tensor gets: the real-target term (D's reals, and
// G's fakes for bce/lsgan), the fake-target term (D's fakes), or -x (G's
// fakes for hinge/wgan).
enum LossMode { kRealTarget = 0, kFakeTarget = 1, kGenNeg = 2 };

struct LossKernels {
  // Sums the loss terms of x[0, n) (double) and writes their gradients to
  // grad[0, n), divided by n when `mean`. t: the target of the real-target
  // bce term (1 - label_smoothing). x and grad have `dtype`.
  double (*pass)(c10::ScalarType dtype, LossMode mode, LossKind kind, const void* x, void* grad,
                 int64_t n, bool mean, double t);
};

namespace base {
const LossKernels& loss_kernels();
}  // namespace base

// The AVX2 table, or nullptr (not compiled in, CPU lacks AVX2/FMA/F16C, or
// GAN_FAST_CPU_ISA=default).
const LossKernels* loss_kernels_avx2();

}  // namespace gan_fast::cpu

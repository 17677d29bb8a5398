// The GAN loss CPU kernel (templates), included once per instruction set with
// GAN_FAST_ISA naming the namespace, like bn_act_impl.h.
//
// One pass over a logits tensor: the loss terms are summed (float vector
// lanes for kFlush steps, then double) and their gradients written.
// Contract: gan_loss_fwd in gan_fast/reference.py, NaN/inf behaviour
// included (it mirrors PyTorch's autograd):
//   bce    term(x, t) = (1 - t) * x - logsigmoid(x)   grad sigmoid(x) - t
//          (t = 1 - label_smoothing for the real-target term, 0 for D's fakes)
//   hinge  D real relu(1 - x), grad (1 - x <= 0) ? 0 : -1 (NaN passes -1)
//          D fake relu(1 + x), grad (1 + x <= 0) ? 0 : 1
//   lsgan  real-target (x - 1)^2, D fake x^2
//   wgan   D real -x, D fake x;  G side hinge/wgan: -x, grad -1
// Logits are usually small (one per image): below kLossParallelMin (values times a
// per-kind cost) the pass runs inline; above, in fixed chunks (sums independent of the
// thread count).
#pragma once

#ifndef GAN_FAST_ISA
#error "define GAN_FAST_ISA before including gan_loss_impl.h"
#endif

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gan_loss_kernels.h"
#include "vec_util.h"

namespace gan_fast::cpu::GAN_FAST_ISA {
namespace {

constexpr int64_t kLossChunk = 16384;
// Below this many values times the kind's cost the pass runs inline: a parallel region
// costs several microseconds, hinge/lsgan/wgan take ~0.15 ns a value, bce (an exp, a
// log1p, a division) about 20 times that.
constexpr int64_t kLossParallelMin = 262144;
constexpr int64_t cost_per_value(LossKind kind, int mode) {
  return kind == LossKind::bce && mode != kGenNeg ? 16 : 1;
}
constexpr int64_t kLossFlush = 16;  // float vector steps summed before the sum moves to double

// The same formulas for vectors (VV = Vectorized<A>) and scalars (VV = A).
template <typename VV> inline VV v_exp(const VV& v) { return v.exp(); }
template <typename VV> inline VV v_log1p(const VV& v) { return v.log1p(); }
template <typename VV> inline VV v_abs(const VV& v) { return v.abs(); }
template <typename VV> inline VV le0_select(const VV& v, const VV& a, const VV& b) {
  return VV::blendv(b, a, v <= VV(0));  // v <= 0 ? a : b  (b for NaN)
}
template <typename VV> inline VV neg_select(const VV& v, const VV& a, const VV& b) {
  return VV::blendv(b, a, v < VV(0));  // v < 0 ? a : b
}
#define GAN_FAST_SCALAR_OPS(A)                                                      \
  inline A v_exp(A v) { return std::exp(v); }                                      \
  inline A v_log1p(A v) { return std::log1p(v); }                                  \
  inline A v_abs(A v) { return std::abs(v); }                                      \
  inline A le0_select(A v, A a, A b) { return v <= A(0) ? a : b; }                 \
  inline A neg_select(A v, A a, A b) { return v < A(0) ? a : b; }
GAN_FAST_SCALAR_OPS(float)
GAN_FAST_SCALAR_OPS(double)
#undef GAN_FAST_SCALAR_OPS

// log1p(e) for e in [0, 1] (NaN passes): 2 atanh(u) with u = e / (2 + e) <= 1/3, by its
// odd series through u^13 (the first term left out is below 1.5e-8 relative, under float
// rounding); a division and a few multiply-adds instead of the library log1p, which
// costs as much as the exp. Float lanes only: double would need twice the terms.
template <typename VV>
inline VV log1p_unit(const VV& e) {
  if constexpr (std::is_same_v<VV, double> || std::is_same_v<VV, Vectorized<double>>) {
    return v_log1p(e);
  } else {
    const VV u = e / (VV(2) + e);
    const VV u2 = u * u;
    VV p = VV(1.0f / 13);
    p = p * u2 + VV(1.0f / 11);
    p = p * u2 + VV(1.0f / 9);
    p = p * u2 + VV(1.0f / 7);
    p = p * u2 + VV(1.0f / 5);
    p = p * u2 + VV(1.0f / 3);
    p = p * u2 + VV(1);
    return VV(2) * u * p;
  }
}

template <LossKind kKind, int kMode, typename VV>
inline void term(const VV& x, const VV& c1, const VV& t, VV& val, VV& grad) {
  const VV zero(0), one(1);
  if constexpr (kMode == kGenNeg) {
    val = zero - x;
    grad = VV(-1);
  } else if constexpr (kKind == LossKind::bce) {
    // With e = exp(-|x|) (one exp for both; NaN propagates through it):
    // logsigmoid(x) = min(x, 0) - log1p(e), sigmoid(x) = x < 0 ? e / (1 + e) : 1 / (1 + e)
    const VV e = v_exp(zero - v_abs(x));
    const VV ls = neg_select(x, x, zero) - log1p_unit(e);
    val = c1 * x - ls;
    const VV r = one / (one + e);
    grad = neg_select(x, e * r, r) - t;
  } else if constexpr (kKind == LossKind::hinge) {
    const VV v = kMode == kRealTarget ? one - x : one + x;
    val = le0_select(v, zero, v);  // relu that lets NaN through, like torch.relu
    grad = le0_select(v, zero, kMode == kRealTarget ? VV(-1) : one);
  } else if constexpr (kKind == LossKind::lsgan) {
    const VV d = kMode == kRealTarget ? x - one : x;
    val = d * d;
    grad = VV(2) * d;
  } else {  // wgan
    val = kMode == kRealTarget ? zero - x : x;
    grad = kMode == kRealTarget ? VV(-1) : one;
  }
}

// Sum of the loss terms over x[b, e); writes grad[b, e) (divided by n if mean).
template <LossKind kKind, int kMode, typename T>
double loss_run(const T* x, T* grad, int64_t b, int64_t e, int64_t n, bool mean, double t_d) {
  using L = Lanes<T>;
  using A = typename L::acc_t;
  using V = typename L::V;
  constexpr int64_t kW = L::kW;
  const A denom = static_cast<A>(n);
  const A t = static_cast<A>(t_d), c1 = static_cast<A>(1.0 - t_d);
  SumN<A, 1, 0, kLossFlush> acc;
  const V tv(t), c1v(c1), denomv(denom);
  int64_t i = b;
  for (; i + kW <= e; i += kW) {
    V xa, xb, va, vb, ga, gb;
    L::load(x + i, xa, xb);
    term<kKind, kMode>(xa, c1v, tv, va, ga);
    term<kKind, kMode>(xb, c1v, tv, vb, gb);
    if (mean) {
      ga = ga / denomv;
      gb = gb / denomv;
    }
    L::store(grad + i, ga, gb);
    acc.add(&va, &vb);
  }
  for (; i < e; ++i) {
    A val, g;
    term<kKind, kMode>(L::ld(x + i), c1, t, val, g);
    acc.add(&val);
    L::st(grad + i, mean ? g / denom : g);
  }
  acc.flush();
  return acc.total(0);
}

template <LossKind kKind, int kMode, typename T>
double loss_pass_t(const void* xv, void* gv, int64_t n, bool mean, double t) {
  const T* x = static_cast<const T*>(xv);
  T* grad = static_cast<T*>(gv);
  if (n * cost_per_value(kKind, kMode) < kLossParallelMin || n <= kLossChunk) {
    return loss_run<kKind, kMode>(x, grad, 0, n, n, mean, t);
  }
  const int64_t chunks = (n + kLossChunk - 1) / kLossChunk;
  std::vector<double> part(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      part[c] = loss_run<kKind, kMode>(x, grad, c * kLossChunk,
                                       std::min(n, (c + 1) * kLossChunk), n, mean, t);
    }
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}

template <int kMode, typename T>
double loss_pass_k(LossKind kind, const void* x, void* grad, int64_t n, bool mean, double t) {
  switch (kind) {
    case LossKind::bce: return loss_pass_t<LossKind::bce, kMode, T>(x, grad, n, mean, t);
    case LossKind::hinge: return loss_pass_t<LossKind::hinge, kMode, T>(x, grad, n, mean, t);
    case LossKind::lsgan: return loss_pass_t<LossKind::lsgan, kMode, T>(x, grad, n, mean, t);
    case LossKind::wgan: return loss_pass_t<LossKind::wgan, kMode, T>(x, grad, n, mean, t);
  }
  return 0;
}

template <typename T>
double loss_pass_m(LossMode mode, LossKind kind, const void* x, void* grad, int64_t n, bool mean,
                   double t) {
  switch (mode) {
    case kRealTarget: return loss_pass_k<kRealTarget, T>(kind, x, grad, n, mean, t);
    case kFakeTarget: return loss_pass_k<kFakeTarget, T>(kind, x, grad, n, mean, t);
    default: return loss_pass_k<kGenNeg, T>(kind, x, grad, n, mean, t);
  }
}

double loss_pass(c10::ScalarType dtype, LossMode mode, LossKind kind, const void* x, void* grad,
                 int64_t n, bool mean, double t) {
  switch (dtype) {
    case c10::ScalarType::Float: return loss_pass_m<float>(mode, kind, x, grad, n, mean, t);
    case c10::ScalarType::Double: return loss_pass_m<double>(mode, kind, x, grad, n, mean, t);
    case c10::ScalarType::Half: return loss_pass_m<c10::Half>(mode, kind, x, grad, n, mean, t);
    case c10::ScalarType::BFloat16:
      return loss_pass_m<c10::BFloat16>(mode, kind, x, grad, n, mean, t);
    default: return 0;  // dtypes are checked by the caller (bindings.cpp)
  }
}

}  // namespace

const LossKernels& loss_kernels() {
  static const LossKernels table{&loss_pass};
  return table;
}

}  // namespace gan_fast::cpu::GAN_FAST_ISA

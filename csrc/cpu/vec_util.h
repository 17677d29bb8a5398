// Vector helpers shared by the CPU kernels (bn_act_impl.h, gan_loss_impl.h):
// loads/stores of any supported dtype as float (or double) vectors, a
// NaN-aware select, float -> double widening and SumN, running sums that stay
// in vector lanes. Included once per instruction set, inside the namespace
// GAN_FAST_ISA names (see bn_act_kernels.h); internal linkage throughout.
#pragma once

#ifndef GAN_FAST_ISA
#error "define GAN_FAST_ISA before including vec_util.h"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

namespace gan_fast::cpu::GAN_FAST_ISA {
namespace {

using at::vec::Vectorized;

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

// Loads/stores 2 vectors of the accumulation type (float, or double) per step.
template <typename T>
struct Lanes {
  using acc_t = typename AccOf<T>::type;
  using V = Vectorized<acc_t>;
  static constexpr int64_t kHalf = V::size();
  static constexpr int64_t kW = 2 * V::size();

  static inline void load(const T* p, V& a, V& b) {
    if constexpr (std::is_same_v<T, acc_t>) {
      a = V::loadu(p);
      b = V::loadu(p + kHalf);
    } else {
      static_assert(Vectorized<T>::size() == kW, "16-bit vector holds 2 float vectors");
      std::tie(a, b) = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p));
    }
  }
  static inline void store(T* p, const V& a, const V& b) {
    if constexpr (std::is_same_v<T, acc_t>) {
      a.store(p);
      b.store(p + kHalf);
    } else {
      at::vec::convert_from_float<T>(a, b).store(p);
    }
  }
  static inline acc_t ld(const T* p) { return static_cast<acc_t>(*p); }
  static inline void st(T* p, acc_t v) { *p = static_cast<T>(v); }
};

// z > 0 ? a : b  (b when z is NaN), for vectors and scalars
template <typename V>
inline V pos_select(const V& z, const V& a, const V& b) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512) || defined(__aarch64__)
  return V::blendv(b, a, z > V(0));
#else
  // at::vec's generic blendv branches per lane; a plain select loop vectorizes
  using acc_t = typename V::value_type;
  alignas(64) acc_t zb[V::size()], ab[V::size()], bb[V::size()];
  z.store(zb);
  a.store(ab);
  b.store(bb);
  for (int64_t i = 0; i < V::size(); ++i) ab[i] = zb[i] > acc_t(0) ? ab[i] : bb[i];
  return V::loadu(ab);
#endif
}
inline float pos_select(float z, float a, float b) { return z > 0 ? a : b; }
inline double pos_select(double z, double a, double b) { return z > 0 ? a : b; }

// Widening: one float vector -> two double vectors (double: identity split).
using VD = Vectorized<double>;
static_assert(Vectorized<float>::size() == 2 * VD::size(), "float vector = 2 double vectors");

inline void widen(const Vectorized<float>& v, VD& a, VD& b) {
#if defined(CPU_CAPABILITY_AVX2)
  const __m256 x = v;
  a = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
  b = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
#else
  alignas(64) float f[Vectorized<float>::size()];
  alignas(64) double d[Vectorized<float>::size()];
  v.store(f);
  for (int64_t i = 0; i < Vectorized<float>::size(); ++i) d[i] = f[i];
  a = VD::loadu(d);
  b = VD::loadu(d + VD::size());
#endif
}

// dst[i] += src[i] for i < n, src in acc_t, dst in double
template <typename acc_t>
inline void add_widened(double* dst, const acc_t* src, int64_t n) {
  using V = Vectorized<acc_t>;
  int64_t i = 0;
  if constexpr (std::is_same_v<acc_t, float>) {
    for (; i + V::size() <= n; i += V::size()) {
      VD a, b;
      widen(V::loadu(src + i), a, b);
      (VD::loadu(dst + i) + a).store(dst + i);
      (VD::loadu(dst + i + VD::size()) + b).store(dst + i + VD::size());
    }
  }
  for (; i < n; ++i) dst[i] += src[i];
}

// kN running sums. The first kWide go straight into double vector lanes every
// step; the others run in acc_t vector lanes and move into the double lanes
// every kFlush steps. No horizontal sum on the hot path; total(k) adds the
// lanes up once.
template <typename acc_t, int kN, int kWide, int64_t kFlush>
struct SumN {
  using V = Vectorized<acc_t>;
  static constexpr bool kF = std::is_same_v<acc_t, float>;
  static constexpr int kDV = kF ? 4 : 2;  // double vectors per 2 V
  V lo[kN], hi[kN];
  VD wide[kN][kDV];
  int64_t steps = 0;
  double tail[kN] = {};
  SumN() {
    for (int k = 0; k < kN; ++k) {
      lo[k] = hi[k] = V(acc_t(0));
      for (int j = 0; j < kDV; ++j) wide[k][j] = VD(0.0);
    }
  }
  inline void add_wide(int k, const V& a, const V& b) {
    if constexpr (kF) {
      VD a0, a1, b0, b1;
      widen(a, a0, a1);
      widen(b, b0, b1);
      wide[k][0] += a0;
      wide[k][1] += a1;
      wide[k][2] += b0;
      wide[k][3] += b1;
    } else {
      wide[k][0] += a;
      wide[k][1] += b;
    }
  }
  inline void add(const V* a, const V* b) {
    for (int k = 0; k < kWide; ++k) add_wide(k, a[k], b[k]);
    for (int k = kWide; k < kN; ++k) {
      lo[k] += a[k];
      hi[k] += b[k];
    }
    if constexpr (kWide < kN) {
      if (++steps == kFlush) flush();
    }
  }
  inline void add(const acc_t* a) {
    for (int k = 0; k < kN; ++k) tail[k] += a[k];
  }
  inline void flush() {
    if (steps == 0) return;
    for (int k = kWide; k < kN; ++k) {
      add_wide(k, lo[k], hi[k]);
      lo[k] = hi[k] = V(acc_t(0));
    }
    steps = 0;
  }
  inline double total(int k) const {
    VD w = wide[k][0];
    for (int j = 1; j < kDV; ++j) w += wide[k][j];
    alignas(64) double d[VD::size()];
    w.store(d);
    double t = 0;
    for (int64_t i = 0; i < VD::size(); ++i) t += d[i];
    return t + tail[k];
  }
};

}  // namespace
}  // namespace gan_fast::cpu::GAN_FAST_ISA

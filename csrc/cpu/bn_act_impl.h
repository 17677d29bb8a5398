// bn_act CPU kernels (templates). Included once per instruction set, with
// GAN_FAST_ISA naming the namespace (see bn_act_kernels.h). Everything except
// `kernels()` has internal linkage, so the copies never clash.
//
// Layouts:
//  * NCHW: channel c of image n is the contiguous plane x[(n*C + c)*HW ...].
//    Reductions: a task is one channel over a block of images (planes up to
//    kTaskElems values) or one kTaskElems chunk of a plane, summed in
//    registers; the task sums are combined per channel in a fixed order.
//    Elementwise: runs of whole planes (or plane chunks) in memory order.
//    Channel-local kernels (a channel small enough to stay in cache): one task
//    per channel sums its planes, finishes its parameters and maps them, so the
//    data comes from memory once instead of twice.
//  * channels_last: rows of C contiguous values, one row per (n, h, w), read
//    row after row. Reductions: a task is a range of rows with its own
//    per-channel partial sums (combined afterwards). Elementwise: ranges of
//    rows; per-channel parameters are reloaded from L1 for every row.
// Work is split the same way whatever the thread count, so results are
// bitwise reproducible.
//
// Numerics: sums of float values run in float vector lanes for at most
// kFlushStats / kFlushBwd steps (or rows), then move to double. The statistics
// pass sums x in double lanes (the mean) and (x - K)^2 with K one sample of
// the channel (shifted sum: the variance does not cancel for a large mean).
// z = (x - mean) * scale + bias is computed with separate subtract, multiply
// and add (the build uses -ffp-contract=off) exactly as the reference does, so
// the sign of z at the kink matches it bit for bit (x == mean gives z == bias).
#pragma once

#ifndef GAN_FAST_ISA
#error "define GAN_FAST_ISA before including bn_act_impl.h"
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "bn_act_kernels.h"
#include "vec_util.h"

namespace gan_fast::cpu::GAN_FAST_ISA {
namespace {

constexpr int64_t kTaskElems = 16384;  // elements per parallel task
constexpr int64_t kParallelMin = 32768;  // below this many elements: one thread
// float vector steps (NCHW) / rows (channels_last) summed in acc_t before the
// sums move to double: short for the variance (the reference's statistics are
// float64 two-pass ones), longer for the backward sums (the reference's are
// float32 sums)
constexpr int64_t kFlushStats = 8, kFlushBwd = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// grain for at::parallel_for over `tasks` tasks of `per_task` elements each
inline int64_t grain_for(int64_t per_task) {
  return std::max<int64_t>(1, kParallelMin / std::max<int64_t>(1, per_task));
}

// ----------------------------------------------------------------- the ops
// Each op gives a functor per channel: bcast<VV>(c) broadcasts channel c's
// parameters (VV = vector or scalar), lanes(c) loads channels c.. c+V::size()
// one per lane (channels_last).

// Statistics: sum(x) straight into double lanes (the mean, as accurate as the
// reference's float64 sum and exact for a constant channel; for double data
// sum(x - K) instead, exact differences for a large mean) and sum((x - K)^2)
// with K = one sample of the channel (shifted, so the variance
// S_dd / n - (mean - K)^2 does not cancel for a large mean).
template <typename acc_t>
struct StatsOp {
  static constexpr bool kNeedsG = false;
  static constexpr int kN = 2, kWide = 1;
  static constexpr int64_t kFlush = kFlushStats;
  using V = Vectorized<acc_t>;
  const acc_t* K;
  template <typename VV>
  struct F {
    VV k;
    inline void operator()(const VV& x, const VV&, VV* out) const {
      const VV d = x - k;
      if constexpr (std::is_same_v<acc_t, double>) {
        out[0] = d;  // double data: shifted sum, exact x - K for a large mean
      } else {
        out[0] = x;  // float data: exact in double lanes
      }
      out[1] = d * d;
    }
  };
  template <typename VV>
  F<VV> bcast(int64_t c) const { return F<VV>{VV(K[c])}; }
  F<V> lanes(int64_t c) const { return F<V>{V::loadu(K + c)}; }
};

// The per-channel (mean, scale, bias) and the slope of FwdOp and BwdReduceOp, handed to
// their functor F (fields m, sc, b, sl) broadcast for one channel (bcast) or as the
// lanes of consecutive channels (lanes).
template <typename acc_t, template <typename> class F>
struct ChannelParams {
  using V = Vectorized<acc_t>;
  const acc_t *mean, *scale, *bias;
  acc_t slope;
  template <typename VV>
  F<VV> bcast(int64_t c) const {
    return F<VV>{VV(mean[c]), VV(scale[c]), VV(bias[c]), VV(slope)};
  }
  F<V> lanes(int64_t c) const {
    return F<V>{V::loadu(mean + c), V::loadu(scale + c), V::loadu(bias + c), V(slope)};
  }
};

// out = act((x - mean) * scale + bias)
template <typename VV>
struct FwdF {
  VV m, sc, b, sl;
  inline VV operator()(const VV& x, const VV&) const {
    VV z = (x - m) * sc + b;
    return pos_select(z, z, z * sl);
  }
};

template <typename acc_t>
struct FwdOp : ChannelParams<acc_t, FwdF> {};

// (dz, dz * (x - mean)) with dz = g * act'((x - mean) * scale + bias)
template <typename VV>
struct BwdReduceF {
  VV m, sc, b, sl;
  inline void operator()(const VV& x, const VV& g, VV* out) const {
    const VV xc = x - m;
    const VV z = xc * sc + b;
    const VV dz = pos_select(z, g, g * sl);
    out[0] = dz;
    out[1] = dz * xc;
  }
};

template <typename acc_t>
struct BwdReduceOp : ChannelParams<acc_t, BwdReduceF> {
  static constexpr bool kNeedsG = true;
  static constexpr int kN = 2, kWide = 0;
  static constexpr int64_t kFlush = kFlushBwd;
};

// gx = (scale * dz - B) - (x - mean) * K2   (kBatch)
// gx = scale * dz                           (!kBatch)
template <typename acc_t, bool kBatch>
struct BwdApplyOp {
  using V = Vectorized<acc_t>;
  const acc_t *mean, *scale, *bias, *B, *K2;
  acc_t slope;
  template <typename VV>
  struct F {
    VV m, sc, b, bb, k2, sl;
    inline VV operator()(const VV& x, const VV& g) const {
      const VV xc = x - m;
      const VV z = xc * sc + b;
      const VV dz = pos_select(z, g, g * sl);
      if constexpr (kBatch) {
        return (sc * dz - bb) - xc * k2;
      } else {
        return sc * dz;
      }
    }
  };
  template <typename VV>
  F<VV> bcast(int64_t c) const {
    return F<VV>{VV(mean[c]), VV(scale[c]), VV(bias[c]), VV(kBatch ? B[c] : acc_t(0)),
                 VV(kBatch ? K2[c] : acc_t(0)), VV(slope)};
  }
  F<V> lanes(int64_t c) const {
    return F<V>{V::loadu(mean + c), V::loadu(scale + c), V::loadu(bias + c),
                kBatch ? V::loadu(B + c) : V(acc_t(0)), kBatch ? V::loadu(K2 + c) : V(acc_t(0)),
                V(slope)};
  }
};

// ------------------------------------------------------------ reductions
// out[k][c] = per-channel sum of the op's k-th output (k < Op::kN).
template <typename Op>
void combine(const std::vector<double>& part, int64_t tasks, int64_t C, double* const* out) {
  for (int k = 0; k < Op::kN; ++k) {
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0;
      for (int64_t t = 0; t < tasks; ++t) sum += part[(t * Op::kN + k) * C + c];
      out[k][c] = sum;
    }
  }
}

// Sums op(x, g) over one run of `len` contiguous values of channel c into acc.
template <typename T, typename Op, typename Acc>
inline void sum_run(const T* px, const T* pg, int64_t len, int64_t c, const Op& op, Acc& acc) {
  using L = Lanes<T>;
  using acc_t = typename L::acc_t;
  using V = typename L::V;
  constexpr int64_t kW = L::kW;
  constexpr int kN = Op::kN;
  const auto fv = op.template bcast<V>(c);
  int64_t i = 0;
  for (; i + kW <= len; i += kW) {
    V xa, xb, ga(acc_t(0)), gb(acc_t(0)), oa[kN], ob[kN];
    L::load(px + i, xa, xb);
    if constexpr (Op::kNeedsG) L::load(pg + i, ga, gb);
    fv(xa, ga, oa);
    fv(xb, gb, ob);
    acc.add(oa, ob);
  }
  if (i < len) {
    const auto fs = op.template bcast<acc_t>(c);
    for (; i < len; ++i) {
      acc_t gs = 0, os[kN];
      if constexpr (Op::kNeedsG) gs = L::ld(pg + i);
      fs(L::ld(px + i), gs, os);
      acc.add(os);
    }
  }
}

// One task of reduce_nchw: the runs of channel c that `runs` visits (it calls
// run(offset, length) for each, in order), summed in one accumulator; its kN totals
// go to dst.
template <typename T, typename Op, typename Runs>
inline void nchw_task(const T* x, const T* g, int64_t c, const Op& op, double* dst,
                      const Runs& runs) {
  SumN<typename Lanes<T>::acc_t, Op::kN, Op::kWide, Op::kFlush> acc;
  runs([&](int64_t off, int64_t len) {
    sum_run<T>(x + off, Op::kNeedsG ? g + off : nullptr, len, c, op, acc);
  });
  acc.flush();
  for (int k = 0; k < Op::kN; ++k) dst[k] = acc.total(k);
}

// out[k][c] = the sum over channel c's tasks i < per_channel of their k-th totals,
// in i order; task(c, i) is the index of that task in `part`.
template <int kN, typename TaskOf>
void combine_nchw(const std::vector<double>& part, int64_t C, int64_t per_channel,
                  double* const* out, const TaskOf& task) {
  for (int64_t c = 0; c < C; ++c) {
    for (int k = 0; k < kN; ++k) {
      double sum = 0;
      for (int64_t i = 0; i < per_channel; ++i) sum += part[task(c, i) * kN + k];
      out[k][c] = sum;
    }
  }
}

template <typename T, typename Op>
void reduce_nchw(const T* x, const T* g, const BnShape& s, const Op& op, double* const* out) {
  constexpr int kN = Op::kN;
  const int64_t C = s.C, HW = s.HW;
  if (HW <= kTaskElems) {
    // A task = channel c over a block of consecutive images: its planes are
    // summed in one set of registers, so short planes (4x4 maps) pay the
    // horizontal sums once per task, not once per plane.
    const int64_t planes_per = std::max<int64_t>(1, kTaskElems / HW);
    const int64_t blocks = ceil_div(s.N, planes_per);
    std::vector<double> part(C * blocks * kN, 0.0);
    at::parallel_for(0, C * blocks, grain_for(planes_per * HW), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t c = t / blocks, n0 = (t % blocks) * planes_per;
        const int64_t n1 = std::min(s.N, n0 + planes_per);
        nchw_task<T>(x, g, c, op, &part[t * kN], [&](const auto& run) {
          for (int64_t n = n0; n < n1; ++n) run((n * C + c) * HW, HW);
        });
      }
    });
    combine_nchw<kN>(part, C, blocks, out, [&](int64_t c, int64_t b) { return c * blocks + b; });
    return;
  }
  // Large planes: a task = one kTaskElems chunk of a plane.
  const int64_t n_chunks = ceil_div(HW, kTaskElems);
  const int64_t tasks = s.N * C * n_chunks;
  std::vector<double> part(tasks * kN, 0.0);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t plane = t / n_chunks, c = plane % C;
      const int64_t h0 = (t % n_chunks) * kTaskElems, len = std::min(kTaskElems, HW - h0);
      nchw_task<T>(x, g, c, op, &part[t * kN], [&](const auto& run) { run(plane * HW + h0, len); });
    }
  });
  // channel c's tasks in (image, chunk) order
  combine_nchw<kN>(part, C, s.N * n_chunks, out, [&](int64_t c, int64_t i) {
    return ((i / n_chunks) * C + c) * n_chunks + i % n_chunks;
  });
}

template <typename T, typename Op>
void reduce_cl(const T* x, const T* g, const BnShape& s, const Op& op, double* const* out) {
  using L = Lanes<T>;
  using acc_t = typename L::acc_t;
  using V = typename L::V;
  constexpr int64_t kW = L::kW, kHalf = L::kHalf;
  constexpr int kN = Op::kN;
  const int64_t C = s.C, R = s.N * s.HW;
  const int64_t rows_per = std::max<int64_t>(1, kTaskElems / C);
  const int64_t tasks = ceil_div(R, rows_per);
  const int64_t Cv = C - C % kW;  // channels handled by vectors
  std::vector<double> part(tasks * kN * C, 0.0);
  at::parallel_for(0, tasks, grain_for(rows_per * C), [&](int64_t begin, int64_t end) {
    // row-major streaming; per-channel sums acc[k][c] (L1-resident): in
    // double for the first kWide outputs, else in acc_t and moved to the
    // task's double partials every Op::kFlush rows
    constexpr int kWide = Op::kWide;
    std::vector<acc_t> acc(kN * C);
    for (int64_t t = begin; t < end; ++t) {
      double* tp = part.data() + t * kN * C;
      const int64_t r0 = t * rows_per, r1 = std::min(R, r0 + rows_per);
      for (int64_t rb = r0; rb < r1; rb += Op::kFlush) {
        const int64_t re = std::min(r1, rb + Op::kFlush);
        std::fill(acc.begin() + kWide * C, acc.end(), acc_t(0));
        // vector channels: kRows rows at a time, summed in registers before
        // the accumulators in memory are touched
        auto vec_rows = [&](int64_t r, auto rows_tag) {
          constexpr int kRows = decltype(rows_tag)::value;
          for (int64_t c = 0; c < Cv; c += kW) {
            const auto fa = op.lanes(c);
            const auto fb = op.lanes(c + kHalf);
            V sa[kN], sb[kN];
            VD sw[kWide > 0 ? kWide : 1][4];
            for (int j = 0; j < kRows; ++j) {
              const int64_t off = (r + j) * C + c;
              V xa, xb, ga(acc_t(0)), gb(acc_t(0)), oa[kN], ob[kN];
              L::load(x + off, xa, xb);
              if constexpr (Op::kNeedsG) L::load(g + off, ga, gb);
              fa(xa, ga, oa);
              fb(xb, gb, ob);
              for (int k = 0; k < kWide; ++k) {
                VD w[4];
                if constexpr (std::is_same_v<acc_t, float>) {
                  widen(oa[k], w[0], w[1]);
                  widen(ob[k], w[2], w[3]);
                } else {
                  w[0] = oa[k];
                  w[1] = ob[k];
                }
                constexpr int nw = std::is_same_v<acc_t, float> ? 4 : 2;
                for (int q = 0; q < nw; ++q) sw[k][q] = j == 0 ? w[q] : sw[k][q] + w[q];
              }
              for (int k = kWide; k < kN; ++k) {
                sa[k] = j == 0 ? oa[k] : sa[k] + oa[k];
                sb[k] = j == 0 ? ob[k] : sb[k] + ob[k];
              }
            }
            for (int k = 0; k < kWide; ++k) {
              double* pw = tp + k * C + c;
              constexpr int nw = std::is_same_v<acc_t, float> ? 4 : 2;
              for (int q = 0; q < nw; ++q) {
                (VD::loadu(pw + q * VD::size()) + sw[k][q]).store(pw + q * VD::size());
              }
            }
            for (int k = kWide; k < kN; ++k) {
              acc_t* pa = acc.data() + k * C + c;
              (V::loadu(pa) + sa[k]).store(pa);
              (V::loadu(pa + kHalf) + sb[k]).store(pa + kHalf);
            }
          }
        };
        // (two rows per call measured slower for C = 128 here, no better for C = 64)
        for (int64_t r = rb; r < re; ++r) vec_rows(r, std::integral_constant<int, 1>{});
        if (Cv < C) {
          for (int64_t rr = rb; rr < re; ++rr) {
            const T* px = x + rr * C;
            const T* pg = Op::kNeedsG ? g + rr * C : nullptr;
            for (int64_t c = Cv; c < C; ++c) {
              acc_t gs = 0, os[kN];
              if constexpr (Op::kNeedsG) gs = L::ld(pg + c);
              op.template bcast<acc_t>(c)(L::ld(px + c), gs, os);
              for (int k = 0; k < kWide; ++k) tp[k * C + c] += os[k];
              for (int k = kWide; k < kN; ++k) acc[k * C + c] += os[k];
            }
          }
        }
        add_widened(tp + kWide * C, acc.data() + kWide * C, (kN - kWide) * C);
      }
    }
  });
  combine<Op>(part, tasks, C, out);
}

// ------------------------------------------------------------ elementwise
// out = op(x, g) over one run of `len` contiguous values of channel c.
template <typename T, typename Op>
inline void map_run(const T* px, const T* pg, T* po, int64_t len, int64_t c, const Op& op) {
  using L = Lanes<T>;
  using acc_t = typename L::acc_t;
  using V = typename L::V;
  constexpr int64_t kW = L::kW;
  const auto fv = op.template bcast<V>(c);
  int64_t i = 0;
  if (pg) {
    for (; i + kW <= len; i += kW) {
      V xa, xb, ga, gb;
      L::load(px + i, xa, xb);
      L::load(pg + i, ga, gb);
      L::store(po + i, fv(xa, ga), fv(xb, gb));
    }
  } else {
    const V zero(acc_t(0));
    for (; i + kW <= len; i += kW) {
      V xa, xb;
      L::load(px + i, xa, xb);
      L::store(po + i, fv(xa, zero), fv(xb, zero));
    }
  }
  if (i < len) {
    const auto fs = op.template bcast<acc_t>(c);
    for (; i < len; ++i) L::st(po + i, fs(L::ld(px + i), pg ? L::ld(pg + i) : acc_t(0)));
  }
}

// out = op(x, g) elementwise; g may be null when the op ignores it.
template <typename T, typename Op>
void map_nchw(const T* x, const T* g, T* out, const BnShape& s, const Op& op) {
  const int64_t C = s.C, HW = s.HW;
  if (HW <= kTaskElems) {  // whole planes; the channel advances without a division per plane
    at::parallel_for(0, s.N * C, grain_for(HW), [&](int64_t begin, int64_t end) {
      int64_t c = begin % C;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t off = p * HW;
        map_run<T>(x + off, g ? g + off : nullptr, out + off, HW, c, op);
        if (++c == C) c = 0;
      }
    });
    return;
  }
  const int64_t n_chunks = ceil_div(HW, kTaskElems);
  at::parallel_for(0, s.N * C * n_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t plane = t / n_chunks, h0 = (t % n_chunks) * kTaskElems;
      const int64_t off = plane * HW + h0;
      map_run<T>(x + off, g ? g + off : nullptr, out + off, std::min(kTaskElems, HW - h0),
                 plane % C, op);
    }
  });
}

template <typename T, typename Op>
void map_cl(const T* x, const T* g, T* out, const BnShape& s, const Op& op) {
  using L = Lanes<T>;
  using acc_t = typename L::acc_t;
  using V = typename L::V;
  constexpr int64_t kW = L::kW, kHalf = L::kHalf;
  const int64_t C = s.C, R = s.N * s.HW;
  const int64_t Cv = C - C % kW;
  // row-major streaming; the per-channel parameters come from L1
  at::parallel_for(0, R, grain_for(C), [&](int64_t begin, int64_t end) {
    const V zero(acc_t(0));
    for (int64_t r = begin; r < end; ++r) {
      const T* px = x + r * C;
      const T* pg = g ? g + r * C : nullptr;
      T* po = out + r * C;
      if (pg) {
        for (int64_t c = 0; c < Cv; c += kW) {
          V xa, xb, ga, gb;
          L::load(px + c, xa, xb);
          L::load(pg + c, ga, gb);
          L::store(po + c, op.lanes(c)(xa, ga), op.lanes(c + kHalf)(xb, gb));
        }
      } else {
        for (int64_t c = 0; c < Cv; c += kW) {
          V xa, xb;
          L::load(px + c, xa, xb);
          L::store(po + c, op.lanes(c)(xa, zero), op.lanes(c + kHalf)(xb, zero));
        }
      }
      for (int64_t c = Cv; c < C; ++c) {
        L::st(po + c, op.template bcast<acc_t>(c)(L::ld(px + c), pg ? L::ld(pg + c) : acc_t(0)));
      }
    }
  });
}

// ------------------------------------------------------------ channel-local
// Channel c's sums over its N planes (HW <= kTaskElems) in reduce_nchw's
// order: blocks of planes_per images summed in registers, then the block
// totals one after another, so both paths give the same bits.
template <typename T, typename Op>
void channel_sums(const T* x, const T* g, const BnShape& s, int64_t c, const Op& op,
                  double* tot) {
  using Acc = SumN<typename Lanes<T>::acc_t, Op::kN, Op::kWide, Op::kFlush>;
  const int64_t planes_per = std::max<int64_t>(1, kTaskElems / s.HW);
  for (int k = 0; k < Op::kN; ++k) tot[k] = 0.0;
  for (int64_t n0 = 0; n0 < s.N; n0 += planes_per) {
    Acc acc;
    for (int64_t n = n0; n < std::min(s.N, n0 + planes_per); ++n) {
      const int64_t off = (n * s.C + c) * s.HW;
      sum_run<T>(x + off, Op::kNeedsG ? g + off : nullptr, s.HW, c, op, acc);
    }
    acc.flush();
    for (int k = 0; k < Op::kN; ++k) tot[k] += acc.total(k);
  }
}

template <typename T, typename MOp>
inline void map_channel(const T* x, const T* g, T* out, const BnShape& s, int64_t c,
                        const MOp& op) {
  for (int64_t n = 0; n < s.N; ++n) {
    const int64_t off = (n * s.C + c) * s.HW;
    map_run<T>(x + off, g ? g + off : nullptr, out + off, s.HW, c, op);
  }
}

// Per channel, one task: reduce with rop, finish, map with mop (whose
// parameter arrays finish fills for that channel).
template <typename T, typename ROp, typename MOp>
void local_nchw(const T* x, const T* g, T* out, const BnShape& s, const ROp& rop, const MOp& mop,
                ChannelFinish finish, void* ctx) {
  const int64_t per_channel = s.N * s.HW * (ROp::kNeedsG ? 3 : 2);
  at::parallel_for(0, s.C, grain_for(per_channel), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double tot[ROp::kN];
      channel_sums<T>(x, g, s, c, rop, tot);
      finish(ctx, c, tot[0], tot[1]);
      map_channel<T>(x, g, out, s, c, mop);
    }
  });
}

// ------------------------------------------------------- typed entry points
template <typename T>
using Acc = typename AccOf<T>::type;

template <typename acc_t>
const acc_t* as(const void* p) {
  return static_cast<const acc_t*>(p);
}

// The ops from the kernels' type-erased per-channel arrays (acc_t each).
template <typename acc_t>
FwdOp<acc_t> fwd_op(const void* mean, const void* scale, const void* bias, double slope) {
  return {{as<acc_t>(mean), as<acc_t>(scale), as<acc_t>(bias), static_cast<acc_t>(slope)}};
}

template <typename acc_t>
BwdReduceOp<acc_t> bwd_reduce_op(const void* mean, const void* scale, const void* bias,
                                 double slope) {
  return {{as<acc_t>(mean), as<acc_t>(scale), as<acc_t>(bias), static_cast<acc_t>(slope)}};
}

template <typename acc_t, bool kBatch>
BwdApplyOp<acc_t, kBatch> bwd_apply_op(const void* mean, const void* scale, const void* bias,
                                       const void* B, const void* K2, double slope) {
  return {as<acc_t>(mean), as<acc_t>(scale), as<acc_t>(bias),
          as<acc_t>(B),    as<acc_t>(K2),    static_cast<acc_t>(slope)};
}

// Calls f(std::integral_constant<bool, batch_stats>{}).
template <typename F>
void with_batch(bool batch_stats, const F& f) {
  if (batch_stats) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// A reduction over x (and g, when the op needs it) into out[0..1], in s's layout.
template <typename T, typename Op>
void reduce_t(const void* x, const void* g, const BnShape& s, const Op& op, double* a,
              double* b) {
  const T* px = static_cast<const T*>(x);
  const T* pg = static_cast<const T*>(g);
  double* const out[2] = {a, b};
  if (s.channels_last) {
    reduce_cl<T>(px, pg, s, op, out);
  } else {
    reduce_nchw<T>(px, pg, s, op, out);
  }
}

// An elementwise map (x, g) -> out, in s's layout.
template <typename T, typename Op>
void map_t(const void* x, const void* g, void* out, const BnShape& s, const Op& op) {
  const T* px = static_cast<const T*>(x);
  const T* pg = static_cast<const T*>(g);
  T* po = static_cast<T*>(out);
  if (s.channels_last) {
    map_cl<T>(px, pg, po, s, op);
  } else {
    map_nchw<T>(px, pg, po, s, op);
  }
}

template <typename T>
void stats_t(const void* x, const BnShape& s, const void* K, double* X, double* Q) {
  reduce_t<T>(x, nullptr, s, StatsOp<Acc<T>>{as<Acc<T>>(K)}, X, Q);
}

template <typename T>
void apply_t(const void* x, void* out, const BnShape& s, const void* mean, const void* scale,
             const void* bias, double slope) {
  map_t<T>(x, nullptr, out, s, fwd_op<Acc<T>>(mean, scale, bias, slope));
}

template <typename T>
void bwd_reduce_t(const void* g, const void* x, const BnShape& s, const void* mean,
                  const void* scale, const void* bias, double slope, double* sum_dz,
                  double* sum_dz_xc) {
  reduce_t<T>(x, g, s, bwd_reduce_op<Acc<T>>(mean, scale, bias, slope), sum_dz, sum_dz_xc);
}

template <typename T>
void bwd_apply_t(const void* g, const void* x, void* gx, const BnShape& s, const void* mean,
                 const void* scale, const void* bias, const void* B, const void* K2,
                 double slope, bool batch_stats) {
  with_batch(batch_stats, [&](auto batch) {
    constexpr bool kBatch = decltype(batch)::value;
    map_t<T>(x, g, gx, s, bwd_apply_op<Acc<T>, kBatch>(mean, scale, bias, B, K2, slope));
  });
}

template <typename T>
void train_local_t(const void* x, void* out, const BnShape& s, const void* K, ChannelFinish finish,
                   void* ctx, const void* mean, const void* scale, const void* bias,
                   double slope) {
  local_nchw<T>(static_cast<const T*>(x), static_cast<const T*>(nullptr), static_cast<T*>(out), s,
                StatsOp<Acc<T>>{as<Acc<T>>(K)}, fwd_op<Acc<T>>(mean, scale, bias, slope), finish,
                ctx);
}

template <typename T>
void bwd_local_t(const void* g, const void* x, void* gx, const BnShape& s, const void* mean,
                 const void* scale, const void* bias, double slope, ChannelFinish finish,
                 void* ctx, const void* B, const void* K2, bool batch_stats) {
  with_batch(batch_stats, [&](auto batch) {
    constexpr bool kBatch = decltype(batch)::value;
    local_nchw<T>(static_cast<const T*>(x), static_cast<const T*>(g), static_cast<T*>(gx), s,
                  bwd_reduce_op<Acc<T>>(mean, scale, bias, slope),
                  bwd_apply_op<Acc<T>, kBatch>(mean, scale, bias, B, K2, slope), finish, ctx);
  });
}

#define GAN_FAST_BN_DISPATCH(dtype, FN, ...)                                   \
  switch (dtype) {                                                             \
    case c10::ScalarType::Float: return FN<float>(__VA_ARGS__);                \
    case c10::ScalarType::Double: return FN<double>(__VA_ARGS__);              \
    case c10::ScalarType::Half: return FN<c10::Half>(__VA_ARGS__);             \
    case c10::ScalarType::BFloat16: return FN<c10::BFloat16>(__VA_ARGS__);     \
    default: return; /* dtypes are checked by the caller (bindings.cpp) */  \
  }

void stats(c10::ScalarType dt, const void* x, const BnShape& s, const void* K, double* X,
           double* Q) {
  GAN_FAST_BN_DISPATCH(dt, stats_t, x, s, K, X, Q)
}
void apply(c10::ScalarType dt, const void* x, void* out, const BnShape& s, const void* mean,
           const void* scale, const void* bias, double slope) {
  GAN_FAST_BN_DISPATCH(dt, apply_t, x, out, s, mean, scale, bias, slope)
}
void bwd_reduce(c10::ScalarType dt, const void* g, const void* x, const BnShape& s,
                const void* mean, const void* scale, const void* bias, double slope,
                double* sum_dz, double* sum_dz_xc) {
  GAN_FAST_BN_DISPATCH(dt, bwd_reduce_t, g, x, s, mean, scale, bias, slope, sum_dz, sum_dz_xc)
}
void bwd_apply(c10::ScalarType dt, const void* g, const void* x, void* gx, const BnShape& s,
               const void* mean, const void* scale, const void* bias, const void* B,
               const void* K2, double slope, bool batch_stats) {
  GAN_FAST_BN_DISPATCH(dt, bwd_apply_t, g, x, gx, s, mean, scale, bias, B, K2, slope,
                       batch_stats)
}
void train_local(c10::ScalarType dt, const void* x, void* out, const BnShape& s, const void* K,
                 ChannelFinish finish, void* ctx, const void* mean, const void* scale,
                 const void* bias, double slope) {
  GAN_FAST_BN_DISPATCH(dt, train_local_t, x, out, s, K, finish, ctx, mean, scale, bias, slope)
}
void bwd_local(c10::ScalarType dt, const void* g, const void* x, void* gx, const BnShape& s,
               const void* mean, const void* scale, const void* bias, double slope,
               ChannelFinish finish, void* ctx, const void* B, const void* K2, bool batch_stats) {
  GAN_FAST_BN_DISPATCH(dt, bwd_local_t, g, x, gx, s, mean, scale, bias, slope, finish, ctx, B, K2,
                       batch_stats)
}
#undef GAN_FAST_BN_DISPATCH

}  // namespace

const BnKernels& kernels() {
  static const BnKernels table{&stats,     &apply,      &bwd_reduce,
                                 &bwd_apply, &train_local, &bwd_local};
  return table;
}

}  // namespace gan_fast::cpu::GAN_FAST_ISA

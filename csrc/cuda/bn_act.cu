// Fused BatchNorm2d + LeakyReLU: CUDA kernels and launchers (see bn_act.h).
//
// Passes over memory:
//   train forward : stats (read x) [+ finalize] -> apply (read x, write out)
//   eval forward  : coef (per channel) -> apply
//   backward      : coef -> reduce (read x, grad_out) [+ finalize] -> elementwise
//                   (read x, grad_out, write grad_x)
//
// Reductions (per channel, deterministic):
//   NCHW: grid (C, S). Block (c, s) owns a contiguous range of channel c's N*HW
//         values (in vectors), threads walk it with a carried (n, hw) position;
//         Welford per thread, Chan merges across the warp (shuffles) and the
//         block (shared memory), in a fixed tree order. The statistics run on
//         x - K, K = the channel's first value, so a large mean costs no accuracy.
//   NHWC: block (TX, TY) = (channel vectors, rows); grid (channel tiles, S row
//         ranges). Thread (tx, ty) owns V consecutive channels and walks rows
//         ty, ty+TY, ... of its range; a shared-memory tree merges over ty.
//   S == 1: the block writes the per-channel result itself. S > 1: blocks write
//   (mean, M2) or (S1, S2) partials to the workspace and a finalize kernel (one
//   warp per channel, float64) merges them in split order.
// Elementwise:
//   NCHW: grid-stride over the flat tensor in vectors; the channel of the
//         current vector is carried (no division in the loop).
//   NHWC: the reduction's 2-D tiling; each thread loads its channels' per-channel
//         coefficients once and walks rows.
// Vectors: V = 16 bytes / sizeof(T) elements (float4 / 8 halves) when every data
// pointer is 16-byte aligned and HW % V == 0 (NCHW) or C % V == 0 (NHWC), so a
// vector never straddles two channels (NCHW) or two rows (NHWC); otherwise V = 1.
#include "bn_act.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <type_traits>

#include "common.cuh"

namespace gan_fast {
namespace cuda {
namespace {

constexpr int kBlock = 256;                       // threads per block, every kernel
constexpr int kWarps = kBlock / 32;
constexpr int kMaxVec = 8;                        // 16 bytes of 16-bit elements
constexpr int64_t kTargetBlocks = 1024;           // reductions: enough blocks to fill a GPU
constexpr int64_t kElemsPerBlock = 16384;         // reductions: at least this much work a block
constexpr int64_t kMaxBlockElems = int64_t(1) << 24;  // float counts stay exact
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxElemBlocks = 4096;          // grid-stride elementwise kernels
constexpr int64_t kNhwcTileChannels = 128;        // planning estimate of channels per tile

// ------------------------------------------------------------------ element access
// (to_float, from_float, Pack: common.cuh)
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&out)[V]) {
  const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = to_float(pk.v[j]);
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&in)[V]) {
  Pack<T, V> pk;
#pragma unroll
  for (int j = 0; j < V; ++j) pk.v[j] = from_float<T>(in[j]);
  *reinterpret_cast<Pack<T, V>*>(p) = pk;
}

// weight / bias / grad_weight / grad_bias: float32 or x's dtype, chosen at run time.
__device__ __forceinline__ float load_param(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::Float16: return __half2float(static_cast<const __half*>(p)[i]);
    case DType::BFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_param(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::Float16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case DType::BFloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

__device__ __forceinline__ float leaky(float z, float slope) { return z > 0.f ? z : z * slope; }

// Statistics accumulate x - K with K = the channel's first value (0 if not finite):
// Welford on values of the order of the spread, so inputs with a mean large
// compared with their spread keep their variance (mean = K + mean of x - K).
template <typename T>
__device__ __forceinline__ float stat_shift(const T* __restrict__ x, int64_t first) {
  const float k = to_float(x[first]);
  return isfinite(k) ? k : 0.f;
}

// --------------------------------------------------------------- Welford / Chan
// A partial result is (n, S, m2): count, sum of the (shifted) values and sum of
// squared deviations from their mean S / n. The sum is kept by plain additions
// rather than Welford's weighted mean updates, so data whose sums are exact (small
// integers, e.g. tie tests) get an exact mean; m2 follows Welford / Chan.
// (n, S, m2) += (nb, Sb, m2b); an empty side is copied exactly.
template <typename F>
__device__ __forceinline__ void chan_merge(F& n, F& S, F& m2, F nb, F Sb, F m2b) {
  if (nb == F(0)) return;
  if (n == F(0)) {
    n = nb; S = Sb; m2 = m2b;
    return;
  }
  const F nn = n + nb;
  const F d = Sb / nb - S / n;
  m2 = m2 + m2b + d * d * (n * nb / nn);
  S = S + Sb;
  n = nn;
}

// Add V values to a thread's running (n, S, m2); mc caches S / n (used when V == 1).
template <int V>
__device__ __forceinline__ void welford_push(float& n, float& S, float& mc, float& m2,
                                             const float (&v)[V]) {
  if (V == 1) {
    n += 1.f;
    S += v[0];
    const float mn = S / n;
    m2 += (v[0] - mc) * (v[0] - mn);
    mc = mn;
  } else {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < V; ++j) s += v[j];
    const float lm = s * (1.f / V);
    float lm2 = 0.f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float d = v[j] - lm;
      lm2 += d * d;
    }
    chan_merge(n, S, m2, float(V), s, lm2);
  }
}

// Chan-merges (n, S, m2) down a warp in a fixed tree order; the result is in lane 0.
template <typename F>
__device__ __forceinline__ void warp_welford(F& n, F& S, F& m2) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const F nb = __shfl_down_sync(0xffffffffu, n, o);
    const F sb = __shfl_down_sync(0xffffffffu, S, o);
    const F qb = __shfl_down_sync(0xffffffffu, m2, o);
    chan_merge(n, S, m2, nb, sb, qb);
  }
}

// Deterministic block reductions for 1-D blocks of kBlock threads; result in thread 0.
__device__ __forceinline__ void block_welford(float& n, float& S, float& m2) {
  __shared__ float sh[3][kWarps];
  warp_welford(n, S, m2);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sh[0][warp] = n; sh[1][warp] = S; sh[2][warp] = m2;
  }
  __syncthreads();
  if (warp == 0) {
    n = lane < kWarps ? sh[0][lane] : 0.f;
    S = lane < kWarps ? sh[1][lane] : 0.f;
    m2 = lane < kWarps ? sh[2][lane] : 0.f;
    warp_welford(n, S, m2);
  }
}

// (block_sum2, the same for (a, b) sums: common.cuh)

// ------------------------------------------------------------ per-channel outputs
struct Affine {
  const void* weight;
  const void* bias;
  DType wdt, bdt;
  int has_affine;
  float eps;
};

// Per-channel coefficients of the elementwise passes: {mean, a, b, invstd} with
// z = (x - mean) * a + b, a = w * invstd, invstd = 1 / sqrt(var + eps).
// (x - mean) first: exact zero at x == mean (ties at the kink), no cancellation
// for inputs with a large mean.
__device__ __forceinline__ float4 make_coef(const Affine& af, int64_t c, float mean, float var) {
  const float invstd = 1.f / sqrtf(var + af.eps);
  float a = invstd, b = 0.f;
  if (af.has_affine) {
    a = load_param(af.weight, af.wdt, c) * invstd;
    b = load_param(af.bias, af.bdt, c);
  }
  return make_float4(mean, a, b, invstd);
}

struct StatsOut {
  float* mean;     // (C,)
  float* var;      // (C,), biased
  float4* coef;    // (C,) workspace
  Affine af;
  double count;    // N * HW
};

__device__ __forceinline__ void write_stats(const StatsOut& so, int64_t c, double mean, double m2) {
  float mf, vf;
  if (so.count > 0) {
    mf = static_cast<float>(mean);
    vf = static_cast<float>(m2 / so.count);
  } else {
    mf = vf = __int_as_float(0x7fc00000);  // NaN: the statistics of no values
  }
  so.mean[c] = mf;
  so.var[c] = vf;
  so.coef[c] = make_coef(so.af, c, mf, vf);
}

struct BwdOut {
  const float4* coef;  // (C,) from coef_kernel
  float2* coef2;       // (C,) workspace: {k1, k2} with gx = a*dz - k1 - (x - mean)*k2
  void* grad_weight;   // may be null
  void* grad_bias;     // may be null
  DType gwdt, gbdt;
  float n;             // N * HW as the reference's float
  int batch_stats;
};

__device__ __forceinline__ void write_bwd(const BwdOut& bo, int64_t c, double S1, double S2) {
  const float s1 = static_cast<float>(S1), s2 = static_cast<float>(S2);
  const float4 k = bo.coef[c];
  const float a = k.y, invstd = k.w;
  if (bo.grad_weight != nullptr) store_param(bo.grad_weight, bo.gwdt, c, s2 * invstd);
  if (bo.grad_bias != nullptr) store_param(bo.grad_bias, bo.gbdt, c, s1);
  float k1 = 0.f, k2 = 0.f;
  if (bo.batch_stats) {  // same operation order as gan_fast/reference.py
    k1 = a * s1 / bo.n;
    k2 = a * invstd * invstd * s2 / bo.n;
  }
  bo.coef2[c] = make_float2(k1, k2);
}

// ------------------------------------------------------------------------- walks
// The index walks the kernels share: f(offset) once per vector (NCHW, offsets in
// vectors) or per row (NHWC, element offset of the thread's channel vector).

// NCHW reductions: vectors m0 + threadIdx.x, + kBlock, ... < m1 of channel c's N*HWv
// vectors (vector m is (n = m / HWv, hw = m % HWv)), position carried (no division).
template <typename F>
__device__ __forceinline__ void walk_channel_nchw(int C, int64_t HWv, int c, int64_t m0,
                                                  int64_t m1, F&& f) {
  int64_t m = m0 + threadIdx.x;
  if (m >= m1) return;
  int64_t h = m % HWv;
  const int64_t rs = static_cast<int64_t>(C) * HWv;                  // vectors from n to n+1
  int64_t off = (m / HWv) * rs + static_cast<int64_t>(c) * HWv + h;  // in vectors
  const int64_t dn = kBlock / HWv, dh = kBlock - dn * HWv;
  const int64_t doff = dn * rs + dh;
  for (; m < m1; m += kBlock) {
    f(off);
    off += doff;
    h += dh;
    if (h >= HWv) {
      h -= HWv;
      off += rs - HWv;
    }
  }
}

// NCHW elementwise: grid-stride over the totalv vectors, f(i, c) with c the channel of
// vector i, carried (no division in the loop).
template <typename F>
__device__ __forceinline__ void walk_grid_nchw(int C, int64_t HWv, int64_t totalv, F&& f) {
  int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (i >= totalv) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  const int64_t row = i / HWv;
  int64_t h = i - row * HWv;
  int c = static_cast<int>(row % C);
  const int64_t drow = stride / HWv, dh = stride - drow * HWv;
  const int dc = static_cast<int>(drow % C);
  for (; i < totalv; i += stride) {
    f(i, c);
    h += dh;
    c += dc;
    if (h >= HWv) {
      h -= HWv;
      ++c;
    }
    if (c >= C) c -= C;
  }
}

// NHWC reductions (tiling of stats_nhwc_kernel): rows r0 + ty, r0 + ty + TY, ... < r1.
template <int V, typename F>
__device__ __forceinline__ void walk_split_nhwc(int C, int cv, int64_t r0, int64_t r1, F&& f) {
  const int TY = blockDim.y, ty = threadIdx.y;
  const int64_t step = static_cast<int64_t>(TY) * C;
  int64_t off = (r0 + ty) * static_cast<int64_t>(C) + static_cast<int64_t>(cv) * V;
  for (int64_t r = r0 + ty; r < r1; r += TY, off += step) f(off);
}

// NHWC elementwise: rows grid-strided over blockIdx.y / threadIdx.y.
template <int V, typename F>
__device__ __forceinline__ void walk_rows_nhwc(int C, int cv, int64_t R, F&& f) {
  const int64_t rstep = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < R; r += rstep)
    f(r * C + static_cast<int64_t>(cv) * V);
}

// ----------------------------------------------------------------------- kernels
__global__ void __launch_bounds__(kBlock)
coef_kernel(const float* __restrict__ mean, const float* __restrict__ var, float4* __restrict__ coef,
            Affine af, int C) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (c < C) coef[c] = make_coef(af, c, mean[c], var[c]);
}

// NCHW statistics. Grid (C, S); block (c, s) owns vectors [s*chunk, (s+1)*chunk) of
// channel c's Mv = N*HWv vectors, vector m being (n = m / HWv, hw = m % HWv).
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
stats_nchw_kernel(const T* __restrict__ x, int C, int64_t HWv, int64_t Mv, int64_t chunk,
                  float2* __restrict__ partial, StatsOut so) {
  const int c = blockIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t m1 = m0 + chunk < Mv ? m0 + chunk : Mv;
  const float K = stat_shift(x, static_cast<int64_t>(c) * HWv * V);
  float n = 0.f, S = 0.f, mc = 0.f, m2 = 0.f;
  walk_channel_nchw(C, HWv, c, m0, m1, [&](int64_t off) {
    float v[V];
    load_vec<T, V>(x + off * V, v);
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] -= K;
    welford_push<V>(n, S, mc, m2, v);
  });
  block_welford(n, S, m2);
  if (threadIdx.x == 0) {
    if (gridDim.y == 1) write_stats(so, c, static_cast<double>(K) + static_cast<double>(S) / so.count, m2);
    else partial[static_cast<int64_t>(blockIdx.y) * C + c] = make_float2(S, m2);
  }
}

// NHWC statistics. Block (TX, TY), TX * TY == kBlock, TY a power of two; grid
// (ceil(Cv / TX), S). Thread (tx, ty) owns channels [cv*V, cv*V + V) and rows
// r0 + ty, r0 + ty + TY, ... < r1 of block row range [r0, r1).
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
stats_nhwc_kernel(const T* __restrict__ x, int C, int Cv, int64_t R, int64_t chunk,
                  float2* __restrict__ partial, StatsOut so) {
  __shared__ float s_S[kBlock * kMaxVec];
  __shared__ float s_m2[kBlock * kMaxVec];
  __shared__ float s_n[kBlock];
  const int TX = blockDim.x, TY = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int cv = blockIdx.x * TX + tx;
  const bool valid = cv < Cv;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t r1 = r0 + chunk < R ? r0 + chunk : R;
  float n = 0.f, S[V], mc[V], m2[V], K[V];  // mc caches S / n
#pragma unroll
  for (int j = 0; j < V; ++j) {
    S[j] = mc[j] = m2[j] = 0.f;
    K[j] = valid ? stat_shift(x, static_cast<int64_t>(cv) * V + j) : 0.f;
  }
  walk_split_nhwc<V>(C, cv, r0, r1, [&](int64_t off) {
    n += 1.f;  // counted by invalid threads too: every thread of a row ty has the same n
    if (valid) {
      float v[V];
      load_vec<T, V>(x + off, v);
      const float inv = 1.f / n;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float y = v[j] - K[j];
        S[j] += y;
        const float mn = S[j] * inv;
        m2[j] += (y - mc[j]) * (y - mn);
        mc[j] = mn;
      }
    }
  });
  // Tree over ty: at step s, rows ty < s merge row ty + s (reads [s, 2s), writes [0, s)).
  const int base = (ty * TX + tx) * V;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    s_S[base + j] = S[j];
    s_m2[base + j] = m2[j];
  }
  if (tx == 0) s_n[ty] = n;
  for (int s = TY >> 1; s > 0; s >>= 1) {
    __syncthreads();
    if (ty < s) {
      const int ob = ((ty + s) * TX + tx) * V;
      const float nb = s_n[ty + s];
      if (nb > 0.f) {
        if (n == 0.f) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            S[j] = s_S[ob + j];
            m2[j] = s_m2[ob + j];
          }
          n = nb;
        } else {  // chan_merge for the V channels, sharing the count arithmetic
          const float nn = n + nb, ia = 1.f / n, ib = 1.f / nb, wgt = n * nb / nn;
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const float d = s_S[ob + j] * ib - S[j] * ia;
            m2[j] = m2[j] + s_m2[ob + j] + d * d * wgt;
            S[j] = S[j] + s_S[ob + j];
          }
          n = nn;
        }
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        s_S[base + j] = S[j];
        s_m2[base + j] = m2[j];
      }
      if (tx == 0) s_n[ty] = n;
    }
  }
  if (ty == 0 && valid) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t c = static_cast<int64_t>(cv) * V + j;
      if (gridDim.y == 1)
        write_stats(so, c, static_cast<double>(K[j]) + static_cast<double>(S[j]) / so.count, m2[j]);
      else partial[static_cast<int64_t>(blockIdx.y) * C + c] = make_float2(S[j], m2[j]);
    }
  }
}

// Number of values in split s of a reduction over `total` units of `mult` values.
__device__ __forceinline__ double split_count(int s, int64_t chunk, int64_t total, int64_t mult) {
  const int64_t lo = static_cast<int64_t>(s) * chunk;
  const int64_t hi = lo + chunk < total ? lo + chunk : total;
  return hi > lo ? static_cast<double>((hi - lo) * mult) : 0.0;
}

// One warp per channel merges the S partials (sum of x - K, m2) in float64, split
// order. Channel c's first value is x[c * cstride].
template <typename T>
__global__ void __launch_bounds__(kBlock)
stats_finalize_kernel(const float2* __restrict__ partial, const T* __restrict__ x, int64_t cstride,
                      int C, int S, int64_t chunk, int64_t total, int64_t mult, StatsOut so) {
  const int lane = threadIdx.x & 31;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (c >= C) return;  // whole warp
  double n = 0.0, sum = 0.0, m2 = 0.0;
  for (int s = lane; s < S; s += 32) {
    const double nb = split_count(s, chunk, total, mult);
    if (nb > 0.0) {
      const float2 p = partial[static_cast<int64_t>(s) * C + c];
      chan_merge(n, sum, m2, nb, static_cast<double>(p.x), static_cast<double>(p.y));
    }
  }
  warp_welford(n, sum, m2);
  if (lane == 0) {
    const double K = so.count > 0 ? static_cast<double>(stat_shift(x, c * cstride)) : 0.0;
    write_stats(so, c, so.count > 0 ? K + sum / so.count : 0.0, m2);
  }
}

// out = leaky((x - mean) * a + b), NCHW, grid-stride over vectors.
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
apply_nchw_kernel(const T* __restrict__ x, T* __restrict__ out, const float4* __restrict__ coef,
                  int C, int64_t HWv, int64_t totalv, float slope) {
  walk_grid_nchw(C, HWv, totalv, [&](int64_t i, int c) {
    const float4 k = coef[c];
    float v[V];
    load_vec<T, V>(x + i * V, v);
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = leaky(fmaf(v[j] - k.x, k.y, k.z), slope);
    store_vec<T, V>(out + i * V, v);
  });
}

// out = leaky((x - mean) * a + b), NHWC, 2-D tiling (see stats_nhwc_kernel), rows grid-strided.
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
apply_nhwc_kernel(const T* __restrict__ x, T* __restrict__ out, const float4* __restrict__ coef,
                  int C, int Cv, int64_t R, float slope) {
  const int cv = blockIdx.x * blockDim.x + threadIdx.x;
  if (cv >= Cv) return;
  float4 k[V];
#pragma unroll
  for (int j = 0; j < V; ++j) k[j] = coef[static_cast<int64_t>(cv) * V + j];
  walk_rows_nhwc<V>(C, cv, R, [&](int64_t off) {
    float v[V];
    load_vec<T, V>(x + off, v);
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = leaky(fmaf(v[j] - k[j].x, k[j].y, k[j].z), slope);
    store_vec<T, V>(out + off, v);
  });
}

// dz and (x - mean) of one element.
__device__ __forceinline__ void bwd_terms(float xv, float gv, const float4& k, float slope,
                                          float& dz, float& xc) {
  xc = xv - k.x;
  const float z = fmaf(xc, k.y, k.z);
  dz = z > 0.f ? gv : gv * slope;
}

// Backward sums S1 = sum dz, S2 = sum dz * (x - mean), NCHW (layout as stats_nchw_kernel).
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
bwd_reduce_nchw_kernel(const T* __restrict__ g, const T* __restrict__ x, int C, int64_t HWv,
                       int64_t Mv, int64_t chunk, float slope, float2* __restrict__ partial,
                       BwdOut bo) {
  const int c = blockIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t m1 = m0 + chunk < Mv ? m0 + chunk : Mv;
  const float4 k = bo.coef[c];
  float s1 = 0.f, s2 = 0.f;
  walk_channel_nchw(C, HWv, c, m0, m1, [&](int64_t off) {
    float xv[V], gv[V];
    load_vec<T, V>(x + off * V, xv);
    load_vec<T, V>(g + off * V, gv);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float dz, xc;
      bwd_terms(xv[j], gv[j], k, slope, dz, xc);
      s1 += dz;
      s2 += dz * xc;
    }
  });
  block_sum2(s1, s2);
  if (threadIdx.x == 0) {
    if (gridDim.y == 1) write_bwd(bo, c, s1, s2);
    else partial[static_cast<int64_t>(blockIdx.y) * C + c] = make_float2(s1, s2);
  }
}

// Backward sums, NHWC (tiling as stats_nhwc_kernel).
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
bwd_reduce_nhwc_kernel(const T* __restrict__ g, const T* __restrict__ x, int C, int Cv, int64_t R,
                       int64_t chunk, float slope, float2* __restrict__ partial, BwdOut bo) {
  __shared__ float s_a[kBlock * kMaxVec];
  __shared__ float s_b[kBlock * kMaxVec];
  const int TX = blockDim.x, TY = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int cv = blockIdx.x * TX + tx;
  const bool valid = cv < Cv;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t r1 = r0 + chunk < R ? r0 + chunk : R;
  float s1[V], s2[V];
  float4 k[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    s1[j] = s2[j] = 0.f;
    k[j] = valid ? bo.coef[static_cast<int64_t>(cv) * V + j] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  if (valid) {
    walk_split_nhwc<V>(C, cv, r0, r1, [&](int64_t off) {
      float xv[V], gv[V];
      load_vec<T, V>(x + off, xv);
      load_vec<T, V>(g + off, gv);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float dz, xc;
        bwd_terms(xv[j], gv[j], k[j], slope, dz, xc);
        s1[j] += dz;
        s2[j] += dz * xc;
      }
    });
  }
  const int base = (ty * TX + tx) * V;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    s_a[base + j] = s1[j];
    s_b[base + j] = s2[j];
  }
  for (int s = TY >> 1; s > 0; s >>= 1) {
    __syncthreads();
    if (ty < s) {
      const int ob = ((ty + s) * TX + tx) * V;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        s1[j] += s_a[ob + j];
        s2[j] += s_b[ob + j];
        s_a[base + j] = s1[j];
        s_b[base + j] = s2[j];
      }
    }
  }
  if (ty == 0 && valid) {
    // the sums from shared memory, one channel at a time: write_bwd unrolled V times
    // beside the s1/s2 registers made ptxas spill
#pragma unroll 1
    for (int j = 0; j < V; ++j) {
      const int64_t c = static_cast<int64_t>(cv) * V + j;
      const float a = s_a[base + j], b = s_b[base + j];
      if (gridDim.y == 1) write_bwd(bo, c, a, b);
      else partial[static_cast<int64_t>(blockIdx.y) * C + c] = make_float2(a, b);
    }
  }
}

// One warp per channel sums the S partial (S1, S2) in float64, split order.
__global__ void __launch_bounds__(kBlock)
bwd_finalize_kernel(const float2* __restrict__ partial, int C, int S, BwdOut bo) {
  const int lane = threadIdx.x & 31;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (c >= C) return;  // whole warp
  double a = 0.0, b = 0.0;
  for (int s = lane; s < S; s += 32) {
    const float2 p = partial[static_cast<int64_t>(s) * C + c];
    a += p.x;
    b += p.y;
  }
  warp_sum2(a, b);
  if (lane == 0) write_bwd(bo, c, a, b);
}

template <bool kTrain>
__device__ __forceinline__ float bwd_elem(float xv, float gv, const float4& k, const float2& k2,
                                          float slope) {
  float dz, xc;
  bwd_terms(xv, gv, k, slope, dz, xc);
  if (kTrain) return (k.y * dz - k2.x) - xc * k2.y;
  return k.y * dz;
}

// grad_x, NCHW, grid-stride (as apply_nchw_kernel).
template <typename T, int V, bool kTrain>
__global__ void __launch_bounds__(kBlock)
bwd_elem_nchw_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                     const float4* __restrict__ coef, const float2* __restrict__ coef2, int C,
                     int64_t HWv, int64_t totalv, float slope) {
  walk_grid_nchw(C, HWv, totalv, [&](int64_t i, int c) {
    const float4 k = coef[c];
    const float2 k2 = kTrain ? coef2[c] : make_float2(0.f, 0.f);
    float xv[V], gv[V];
    load_vec<T, V>(x + i * V, xv);
    load_vec<T, V>(g + i * V, gv);
#pragma unroll
    for (int j = 0; j < V; ++j) xv[j] = bwd_elem<kTrain>(xv[j], gv[j], k, k2, slope);
    store_vec<T, V>(gx + i * V, xv);
  });
}

// grad_x, NHWC (as apply_nhwc_kernel).
template <typename T, int V, bool kTrain>
__global__ void __launch_bounds__(kBlock)
bwd_elem_nhwc_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                     const float4* __restrict__ coef, const float2* __restrict__ coef2, int C,
                     int Cv, int64_t R, float slope) {
  const int cv = blockIdx.x * blockDim.x + threadIdx.x;
  if (cv >= Cv) return;
  float4 k[V];
  float2 k2[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    k[j] = coef[static_cast<int64_t>(cv) * V + j];
    k2[j] = kTrain ? coef2[static_cast<int64_t>(cv) * V + j] : make_float2(0.f, 0.f);
  }
  walk_rows_nhwc<V>(C, cv, R, [&](int64_t off) {
    float xv[V], gv[V];
    load_vec<T, V>(x + off, xv);
    load_vec<T, V>(g + off, gv);
#pragma unroll
    for (int j = 0; j < V; ++j) xv[j] = bwd_elem<kTrain>(xv[j], gv[j], k[j], k2[j], slope);
    store_vec<T, V>(gx + off, xv);
  });
}

// ------------------------------------------------------------------ host planning
// With HW == 1 both layouts are the same (N rows of C values); the NHWC kernels
// read it coalesced, the NCHW ones would stride by C.
inline Layout effective_layout(int64_t HW, Layout layout) { return HW == 1 ? Layout::NHWC : layout; }

// Number of blocks (splits) per channel (NCHW) / per channel tile (NHWC) of the
// reductions. Depends only on the shape, so the caller sizes the workspace first.
int64_t plan_splits(int64_t N, int64_t C, int64_t HW, Layout layout) {
  const int64_t M = N * HW;  // values per channel (= rows in NHWC)
  if (M <= 0 || C <= 0) return 1;
  int64_t s;
  if (layout == Layout::NCHW) {
    s = std::min(ceil_div(kTargetBlocks, C), ceil_div(M, kElemsPerBlock));
  } else {
    const int64_t tiles = ceil_div(C, kNhwcTileChannels);
    const int64_t ctile = std::min(C, kNhwcTileChannels);
    s = std::min(ceil_div(kTargetBlocks, tiles), ceil_div(M * ctile, kElemsPerBlock));
  }
  s = std::max(s, ceil_div(M, kMaxBlockElems));
  return std::max<int64_t>(1, std::min(s, kMaxGridY));
}

constexpr size_t kAlign = 256;
inline size_t align_up(size_t b) { return (b + kAlign - 1) / kAlign * kAlign; }

struct Workspace {
  float4* coef;
  float2* coef2;
  float2* partial;
};

Workspace carve(void* ws, int64_t C) {
  char* p = static_cast<char*>(ws);
  Workspace w{};
  w.coef = reinterpret_cast<float4*>(p);
  p += align_up(sizeof(float4) * C);
  w.coef2 = reinterpret_cast<float2*>(p);
  p += align_up(sizeof(float2) * C);
  w.partial = reinterpret_cast<float2*>(p);
  return w;
}


// Geometry of one call: vector width and the 2-D NHWC tiling.
struct Geometry {
  int V;           // elements per vector (1 or 16 / sizeof(T))
  int64_t HWv;     // NCHW: vectors per (n, c) row
  int Cv;          // NHWC: channel vectors per row
  dim3 tile;       // NHWC block (TX, TY)
};

template <typename T>
Geometry geometry(int64_t C, int64_t HW, Layout layout, const void* a, const void* b,
                  const void* c) {
  constexpr int kV = 16 / sizeof(T);
  const bool ptrs = aligned16(a) && aligned16(b) && aligned16(c);
  Geometry g;
  if (layout == Layout::NCHW) g.V = (ptrs && HW % kV == 0) ? kV : 1;
  else g.V = (ptrs && C % kV == 0) ? kV : 1;
  g.HWv = layout == Layout::NCHW ? HW / g.V : HW;
  g.Cv = static_cast<int>(layout == Layout::NHWC ? C / g.V : C);
  int tx = 1;
  while (tx < 32 && tx < g.Cv) tx <<= 1;
  g.tile = dim3(tx, kBlock / tx, 1);
  return g;
}

// Grid of the NHWC elementwise kernels.
dim3 nhwc_elem_grid(const Geometry& g, int64_t R) {
  const int64_t gx = ceil_div(g.Cv, g.tile.x);
  int64_t gy = ceil_div(R, g.tile.y);
  gy = std::min(gy, std::max<int64_t>(1, kMaxElemBlocks / gx));
  gy = std::min(gy, kMaxGridY);
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(std::max<int64_t>(gy, 1)), 1);
}

unsigned nchw_elem_grid(int64_t totalv) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(totalv, kBlock), kMaxElemBlocks)));
}

#define GF_LAUNCH_CHECK()                        \
  do {                                           \
    const cudaError_t e_ = cudaGetLastError();   \
    if (e_ != cudaSuccess) return e_;            \
  } while (0)

bool valid_sizes(int64_t N, int64_t C, int64_t HW) {
  // C bounds: int channel indices with headroom for the carried-channel arithmetic.
  return N >= 0 && HW >= 0 && C >= 0 && C <= (int64_t(1) << 30);
}

bool valid_dtype(DType d) {
  return d == DType::Float32 || d == DType::Float16 || d == DType::BFloat16;
}

// The checks every launcher starts with; `layout` becomes the effective one.
bool valid_args(int64_t N, int64_t C, int64_t HW, Layout& layout, DType dtype) {
  if (!valid_sizes(N, C, HW) || !valid_dtype(dtype)) return false;
  if (layout != Layout::NCHW && layout != Layout::NHWC) return false;
  layout = effective_layout(HW, layout);
  return true;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Returns f(TypeTag<T>{}) with T the element type of `dtype` (valid_dtype).
template <typename F>
cudaError_t with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float16: return f(TypeTag<__half>{});
    case DType::BFloat16: return f(TypeTag<__nv_bfloat16>{});
    default: return f(TypeTag<float>{});
  }
}

// The launchers' weight / bias arguments as an Affine; false when has_affine lacks one.
bool affine_of(const void* weight, DType wdt, const void* bias, DType bdt, bool has_affine,
               float eps, Affine& af) {
  if (has_affine && (weight == nullptr || bias == nullptr)) return false;
  af = Affine{weight, bias, wdt, bdt, has_affine ? 1 : 0, eps};
  return true;
}

// Eval forward and backward, given statistics: checks the affine arguments, carves the
// workspace into w and computes the per-channel coefficients into it.
cudaError_t given_stats_coef(const void* weight, DType wdt, const void* bias, DType bdt,
                             bool has_affine, float eps, const float* mean, const float* var,
                             void* workspace, int64_t C, cudaStream_t stream, Workspace& w) {
  Affine af;
  if (!affine_of(weight, wdt, bias, bdt, has_affine, eps, af)) return cudaErrorInvalidValue;
  w = carve(workspace, C);
  coef_kernel<<<static_cast<unsigned>(ceil_div(C, kBlock)), kBlock, 0, stream>>>(
      mean, var, w.coef, af, static_cast<int>(C));
  return cudaGetLastError();
}

// ---------------------------------------------------------------- typed drivers
// Calls launch(std::integral_constant<int, V>{}) with the geometry's vector width V
// (1, or 16 bytes of T), so each kernel has one launch site for both instantiations.
template <typename T, typename Launch>
void with_vec(int V, Launch&& launch) {
  if (V == 1) launch(std::integral_constant<int, 1>{});
  else launch(std::integral_constant<int, 16 / sizeof(T)>{});
}

// Calls launch(std::integral_constant<bool, flag>{}).
template <typename Launch>
void with_flag(bool flag, Launch&& launch) {
  if (flag) launch(std::true_type{});
  else launch(std::false_type{});
}

// Per-channel statistics into so (mean, var, coef). M = N*HW > 0.
template <typename T>
cudaError_t run_stats(const T* x, const Workspace& w, const StatsOut& so, int64_t N, int64_t C,
                      int64_t HW, Layout layout, const Geometry& g, cudaStream_t stream) {
  const int Ci = static_cast<int>(C);
  const int64_t S0 = plan_splits(N, C, HW, layout);
  const int64_t units = layout == Layout::NCHW ? N * g.HWv : N * HW;  // vectors / rows per channel
  const int64_t chunk = ceil_div(units, S0);
  const int64_t S = ceil_div(units, chunk);  // <= S0: no empty split
  with_vec<T>(g.V, [&](auto v) {
    constexpr int V = decltype(v)::value;
    if (layout == Layout::NCHW) {
      const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(S), 1);
      stats_nchw_kernel<T, V><<<grid, kBlock, 0, stream>>>(x, Ci, g.HWv, units, chunk, w.partial, so);
    } else {
      const dim3 grid(static_cast<unsigned>(ceil_div(g.Cv, g.tile.x)), static_cast<unsigned>(S), 1);
      stats_nhwc_kernel<T, V><<<grid, g.tile, 0, stream>>>(x, Ci, g.Cv, units, chunk, w.partial, so);
    }
  });
  GF_LAUNCH_CHECK();
  if (S > 1) {
    const int64_t mult = layout == Layout::NCHW ? g.V : 1;
    const int64_t cstride = layout == Layout::NCHW ? HW : 1;
    stats_finalize_kernel<T><<<static_cast<unsigned>(ceil_div(C, kWarps)), kBlock, 0, stream>>>(
        w.partial, x, cstride, Ci, static_cast<int>(S), chunk, units, mult, so);
    GF_LAUNCH_CHECK();
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t run_apply(const T* x, T* out, const Workspace& w, int64_t N, int64_t C, int64_t HW,
                      Layout layout, const Geometry& g, float slope, cudaStream_t stream) {
  const int Ci = static_cast<int>(C);
  with_vec<T>(g.V, [&](auto v) {
    constexpr int V = decltype(v)::value;
    if (layout == Layout::NCHW) {
      const int64_t totalv = N * C * g.HWv;
      apply_nchw_kernel<T, V><<<nchw_elem_grid(totalv), kBlock, 0, stream>>>(
          x, out, w.coef, Ci, g.HWv, totalv, slope);
    } else {
      const int64_t R = N * HW;
      apply_nhwc_kernel<T, V><<<nhwc_elem_grid(g, R), g.tile, 0, stream>>>(
          x, out, w.coef, Ci, g.Cv, R, slope);
    }
  });
  GF_LAUNCH_CHECK();
  return cudaSuccess;
}

template <typename T>
cudaError_t train_fwd_t(const T* x, T* out, const Workspace& w, const StatsOut& so, int64_t N,
                        int64_t C, int64_t HW, Layout layout, float slope, cudaStream_t stream) {
  const Geometry g = geometry<T>(C, HW, layout, x, out, x);
  cudaError_t e = run_stats<T>(x, w, so, N, C, HW, layout, g, stream);
  if (e != cudaSuccess) return e;
  return run_apply<T>(x, out, w, N, C, HW, layout, g, slope, stream);
}

template <typename T>
cudaError_t bwd_t(const T* g, const T* x, T* gx, const Workspace& w, const BwdOut& bo, int64_t N,
                  int64_t C, int64_t HW, Layout layout, float slope, bool batch_stats,
                  cudaStream_t stream) {
  const Geometry geo = geometry<T>(C, HW, layout, g, x, gx);
  const int Ci = static_cast<int>(C);
  const int64_t S0 = plan_splits(N, C, HW, layout);
  const int64_t units = layout == Layout::NCHW ? N * geo.HWv : N * HW;
  const int64_t chunk = ceil_div(units, S0);
  const int64_t S = ceil_div(units, chunk);
  with_vec<T>(geo.V, [&](auto v) {
    constexpr int V = decltype(v)::value;
    if (layout == Layout::NCHW) {
      const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(S), 1);
      bwd_reduce_nchw_kernel<T, V><<<grid, kBlock, 0, stream>>>(g, x, Ci, geo.HWv, units, chunk,
                                                                slope, w.partial, bo);
    } else {
      const dim3 grid(static_cast<unsigned>(ceil_div(geo.Cv, geo.tile.x)), static_cast<unsigned>(S), 1);
      bwd_reduce_nhwc_kernel<T, V><<<grid, geo.tile, 0, stream>>>(g, x, Ci, geo.Cv, units, chunk,
                                                                  slope, w.partial, bo);
    }
  });
  GF_LAUNCH_CHECK();
  if (S > 1) {
    bwd_finalize_kernel<<<static_cast<unsigned>(ceil_div(C, kWarps)), kBlock, 0, stream>>>(
        w.partial, Ci, static_cast<int>(S), bo);
    GF_LAUNCH_CHECK();
  }
  with_vec<T>(geo.V, [&](auto v) {
    with_flag(batch_stats, [&](auto train) {
      constexpr int V = decltype(v)::value;
      constexpr bool kTrain = decltype(train)::value;
      if (layout == Layout::NCHW) {
        const int64_t totalv = N * C * geo.HWv;
        bwd_elem_nchw_kernel<T, V, kTrain><<<nchw_elem_grid(totalv), kBlock, 0, stream>>>(
            g, x, gx, w.coef, w.coef2, Ci, geo.HWv, totalv, slope);
      } else {
        const int64_t R = N * HW;
        bwd_elem_nhwc_kernel<T, V, kTrain><<<nhwc_elem_grid(geo, R), geo.tile, 0, stream>>>(
            g, x, gx, w.coef, w.coef2, Ci, geo.Cv, R, slope);
      }
    });
  });
  GF_LAUNCH_CHECK();
  return cudaSuccess;
}

}  // namespace

// ------------------------------------------------------------------- launchers
size_t bn_act_workspace_bytes(int64_t N, int64_t C, int64_t HW, Layout layout) {
  if (C <= 0) return kAlign;
  const int64_t S = plan_splits(N, C, HW, effective_layout(HW, layout));
  return align_up(sizeof(float4) * C) + align_up(sizeof(float2) * C) +
         align_up(sizeof(float2) * static_cast<size_t>(S) * C);
}

cudaError_t bn_act_train_fwd(const void* x, const void* weight, DType weight_dtype,
                             const void* bias, DType bias_dtype, void* out, float* mean,
                             float* var, void* workspace, int64_t N, int64_t C, int64_t HW,
                             Layout layout, DType dtype, float eps, float negative_slope,
                             bool has_affine, cudaStream_t stream) {
  if (!valid_args(N, C, HW, layout, dtype)) return cudaErrorInvalidValue;
  if (C == 0) return cudaSuccess;
  const int64_t M = N * HW;
  if (mean == nullptr || var == nullptr || workspace == nullptr) return cudaErrorInvalidValue;
  if (M > 0 && (x == nullptr || out == nullptr)) return cudaErrorInvalidValue;
  StatsOut so;
  if (!affine_of(weight, weight_dtype, bias, bias_dtype, has_affine, eps, so.af))
    return cudaErrorInvalidValue;
  const Workspace w = carve(workspace, C);
  so.mean = mean;
  so.var = var;
  so.coef = w.coef;
  so.count = static_cast<double>(M);
  if (M == 0) {  // NaN statistics, nothing to apply
    stats_finalize_kernel<float><<<static_cast<unsigned>(ceil_div(C, kWarps)), kBlock, 0, stream>>>(
        w.partial, nullptr, 0, static_cast<int>(C), 0, 1, 0, 1, so);
    GF_LAUNCH_CHECK();
    return cudaSuccess;
  }
  return with_dtype(dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    return train_fwd_t<T>(static_cast<const T*>(x), static_cast<T*>(out), w, so, N, C, HW, layout,
                          negative_slope, stream);
  });
}

cudaError_t bn_act_eval_fwd(const void* x, const void* weight, DType weight_dtype,
                            const void* bias, DType bias_dtype, const float* mean,
                            const float* var, void* out, void* workspace, int64_t N, int64_t C,
                            int64_t HW, Layout layout, DType dtype, float eps,
                            float negative_slope, bool has_affine, cudaStream_t stream) {
  if (!valid_args(N, C, HW, layout, dtype)) return cudaErrorInvalidValue;
  if (C == 0 || N * HW == 0) return cudaSuccess;
  if (x == nullptr || out == nullptr || mean == nullptr || var == nullptr || workspace == nullptr)
    return cudaErrorInvalidValue;
  Workspace w{};
  const cudaError_t e = given_stats_coef(weight, weight_dtype, bias, bias_dtype, has_affine, eps,
                                         mean, var, workspace, C, stream, w);
  if (e != cudaSuccess) return e;
  return with_dtype(dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    const Geometry g = geometry<T>(C, HW, layout, x, out, x);
    return run_apply<T>(static_cast<const T*>(x), static_cast<T*>(out), w, N, C, HW, layout, g,
                        negative_slope, stream);
  });
}

cudaError_t bn_act_bwd(const void* grad_out, const void* x, const void* weight,
                       DType weight_dtype, const void* bias, DType bias_dtype, const float* mean,
                       const float* var, void* grad_x, void* grad_weight, DType gw_dtype,
                       void* grad_bias, DType gb_dtype, void* workspace, int64_t N, int64_t C,
                       int64_t HW, Layout layout, DType dtype, float eps, float negative_slope,
                       bool has_affine, bool batch_stats, cudaStream_t stream) {
  if (!valid_args(N, C, HW, layout, dtype)) return cudaErrorInvalidValue;
  if (C == 0) return cudaSuccess;
  const int64_t M = N * HW;
  if (mean == nullptr || var == nullptr || workspace == nullptr) return cudaErrorInvalidValue;
  if (M > 0 && (x == nullptr || grad_out == nullptr || grad_x == nullptr))
    return cudaErrorInvalidValue;
  Workspace w{};
  const cudaError_t e = given_stats_coef(weight, weight_dtype, bias, bias_dtype, has_affine, eps,
                                         mean, var, workspace, C, stream, w);
  if (e != cudaSuccess) return e;
  BwdOut bo;
  bo.coef = w.coef;
  bo.coef2 = w.coef2;
  bo.grad_weight = grad_weight;
  bo.grad_bias = grad_bias;
  bo.gwdt = gw_dtype;
  bo.gbdt = gb_dtype;
  bo.n = static_cast<float>(M);
  bo.batch_stats = batch_stats ? 1 : 0;
  if (M == 0) {  // sums over nothing: grad_weight = invstd * 0, grad_bias = 0
    bwd_finalize_kernel<<<static_cast<unsigned>(ceil_div(C, kWarps)), kBlock, 0, stream>>>(
        w.partial, static_cast<int>(C), 0, bo);
    GF_LAUNCH_CHECK();
    return cudaSuccess;
  }
  return with_dtype(dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    return bwd_t<T>(static_cast<const T*>(grad_out), static_cast<const T*>(x),
                    static_cast<T*>(grad_x), w, bo, N, C, HW, layout, negative_slope, batch_stats,
                    stream);
  });
}

}  // namespace cuda
}  // namespace gan_fast

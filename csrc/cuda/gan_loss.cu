// Fused GAN loss: CUDA kernel and launcher (see gan_loss.h for the math).
//
// One kernel computes every per-element loss term and gradient of both inputs
// (D: real and fake; G: fake), writes the gradients, and reduces the loss:
//   * n_real + n_fake <= kSingleMax: one block (<= 1024 threads) grid-strides
//     over both inputs, reduces in a fixed tree order and writes the loss itself
//     (one launch; GAN logits are usually 64..2048 values);
//   * larger: up to kMaxBlocks blocks write per-block (sum_real, sum_fake)
//     partials to the workspace and a one-block finalize kernel combines them
//     in block order (two launches, still deterministic).
// 16-byte vector loads/stores when a tensor and its gradient are both 16-byte
// aligned, with a scalar tail; scalar otherwise.
#include "gan_loss.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

#include <algorithm>

#include "common.cuh"

namespace gan_fast {
namespace cuda {
namespace {

constexpr int kMaxThreads = 512;  // single-block kernel; at 1024 ptxas caps it at 32 registers and spills
constexpr int64_t kSingleMax = 16384;        // largest n_real + n_fake done by one block
constexpr int kMultiThreads = 256;           // multi-block kernel
constexpr int64_t kElemsPerBlock = 256 * 16;
constexpr int64_t kMaxBlocks = 1024;

// (ceil_div, to_float, from_float, Pack, block_sum2, aligned16: common.cuh)

// Which term of the loss a tensor feeds.
enum Part : int { kDReal = 0, kDFake = 1, kGen = 2 };

// log(sigmoid(x)) as PyTorch computes it: min(x, 0) - log1p(exp(-|x|)).
// (x < 0 ? x : 0) rather than fminf, which would drop a NaN; here NaN flows
// through exp/log1p anyway.
__host__ __device__ __forceinline__ float log_sigmoid(float x) {
  const float mn = x < 0.f ? x : 0.f;
  return mn - log1pf(expf(-fabsf(x)));
}

__host__ __device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// Loss term l and d l / d x of one logit. t / omt: bce target and 1 - target.
template <LossKind K, int P>
__host__ __device__ __forceinline__ void term(float x, float t, float omt, float& l, float& g) {
  if constexpr (K == LossKind::BCE) {
    l = omt * x - log_sigmoid(x);
    g = sigmoid(x) - t;
  } else if constexpr (K == LossKind::Hinge) {
    if constexpr (P == kGen) {
      l = -x;
      g = -1.f;
    } else {
      // relu(u): u for u > 0, 0 for u <= 0, NaN for NaN (no fmaxf: it drops NaN);
      // the gradient is zero only where u <= 0 (NaN passes it, like relu's backward).
      const float u = P == kDReal ? 1.f - x : 1.f + x;
      const bool dead = u <= 0.f;
      l = dead ? 0.f : u;
      // (-0 for a dead real logit: the reference negates a 0/1 mask.)
      g = P == kDReal ? (dead ? -0.f : -1.f) : (dead ? 0.f : 1.f);
    }
  } else if constexpr (K == LossKind::LSGAN) {
    const float d = P == kDFake ? x : x - 1.f;
    l = d * d;
    g = 2.f * d;
  } else {  // WGAN
    if constexpr (P == kDFake) {
      l = x;
      g = 1.f;
    } else {
      l = -x;
      g = -1.f;
    }
  }
}

// g / div for a div shared by every element: the reciprocal once, then one fma
// correction, which rounds as the division does for finite, normal quotients.
// (A division per element calls ptxas's slow-path subroutine, and the unrolled
// vector loop spilled around that call.)
struct Divider {
  float div, inv;
  __device__ explicit Divider(float d) : div(d), inv(1.f / d) {}
  __device__ __forceinline__ float operator()(float g) const {
    const float q = g * inv;
    return fmaf(fmaf(-q, div, g), inv, q);
  }
};

// Loss terms of one input: accumulates into acc, writes gradient / div.
template <typename T, LossKind K, int P>
__device__ __forceinline__ void process(const T* __restrict__ in, T* __restrict__ grad, int64_t n,
                                        int vec, float t, float omt, float div, int64_t tid,
                                        int64_t nthreads, float& acc) {
  constexpr int V = 16 / sizeof(T);
  const Divider divide(div);
  int64_t start = 0;
  if (vec) {
    const int64_t nv = n / V;
    for (int64_t i = tid; i < nv; i += nthreads) {
      const Pack<T, V> pk = reinterpret_cast<const Pack<T, V>*>(in)[i];
      Pack<T, V> out;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float l, g;
        term<K, P>(to_float(pk.v[j]), t, omt, l, g);
        acc += l;
        out.v[j] = from_float<T>(divide(g));
      }
      reinterpret_cast<Pack<T, V>*>(grad)[i] = out;
    }
    start = nv * V;
  }
  for (int64_t i = start + tid; i < n; i += nthreads) {
    float l, g;
    term<K, P>(to_float(in[i]), t, omt, l, g);
    acc += l;
    grad[i] = from_float<T>(divide(g));
  }
}

struct LossParams {
  const void* real;
  const void* fake;
  void* grad_real;
  void* grad_fake;
  int64_t n_real, n_fake;
  float div_real, div_fake;  // the counts (mean) or 1 (sum)
  float t_real, omt_real;    // bce target of D on real and 1 - target
  int vec_real, vec_fake;
  float2* partial;           // multi-block: (sum_real, sum_fake) per block
  void* loss;
};

template <typename T>
__device__ __forceinline__ void write_loss(void* loss, bool side_d, float sum_real, float sum_fake,
                                           float div_real, float div_fake) {
  float total = 0.f;
  if (side_d) total = total + sum_real / div_real;
  total = total + sum_fake / div_fake;
  *static_cast<T*>(loss) = from_float<T>(total);
}

template <typename T, LossKind K, LossSide S>
__global__ void __launch_bounds__(kMaxThreads) gan_loss_kernel(LossParams p) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float acc_r = 0.f, acc_f = 0.f;
  if constexpr (S == LossSide::D) {
    process<T, K, kDReal>(static_cast<const T*>(p.real), static_cast<T*>(p.grad_real), p.n_real,
                          p.vec_real, p.t_real, p.omt_real, p.div_real, tid, nthreads, acc_r);
    process<T, K, kDFake>(static_cast<const T*>(p.fake), static_cast<T*>(p.grad_fake), p.n_fake,
                          p.vec_fake, 0.f, 1.f, p.div_fake, tid, nthreads, acc_f);
  } else {
    process<T, K, kGen>(static_cast<const T*>(p.fake), static_cast<T*>(p.grad_fake), p.n_fake,
                        p.vec_fake, 1.f, 0.f, p.div_fake, tid, nthreads, acc_f);
  }
  block_sum2(acc_r, acc_f);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1) write_loss<T>(p.loss, S == LossSide::D, acc_r, acc_f, p.div_real, p.div_fake);
    else p.partial[blockIdx.x] = make_float2(acc_r, acc_f);
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
gan_loss_finalize_kernel(const float2* __restrict__ partial, int nblocks, int side_d,
                         float div_real, float div_fake, void* loss) {
  float a = 0.f, b = 0.f;
  for (int i = threadIdx.x; i < nblocks; i += blockDim.x) {
    const float2 v = partial[i];
    a += v.x;
    b += v.y;
  }
  block_sum2(a, b);
  if (threadIdx.x == 0) write_loss<T>(loss, side_d != 0, a, b, div_real, div_fake);
}

// Blocks of the main kernel for n values in all (1 = single-block path).
int64_t plan_blocks(int64_t n) {
  if (n <= kSingleMax) return 1;
  return std::min(ceil_div(n, kElemsPerBlock), kMaxBlocks);
}

template <typename T, LossKind K>
cudaError_t launch(const LossParams& p, LossSide side, int64_t blocks, int threads,
                   cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(blocks);
  if (side == LossSide::D) gan_loss_kernel<T, K, LossSide::D><<<grid, threads, 0, stream>>>(p);
  else gan_loss_kernel<T, K, LossSide::G><<<grid, threads, 0, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || blocks == 1) return e;
  gan_loss_finalize_kernel<T><<<1, kMaxThreads, 0, stream>>>(
      p.partial, static_cast<int>(blocks), side == LossSide::D ? 1 : 0, p.div_real, p.div_fake,
      p.loss);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_kind(const LossParams& p, LossKind kind, LossSide side, int64_t blocks,
                        int threads, cudaStream_t stream) {
  switch (kind) {
    case LossKind::BCE: return launch<T, LossKind::BCE>(p, side, blocks, threads, stream);
    case LossKind::Hinge: return launch<T, LossKind::Hinge>(p, side, blocks, threads, stream);
    case LossKind::LSGAN: return launch<T, LossKind::LSGAN>(p, side, blocks, threads, stream);
    case LossKind::WGAN: return launch<T, LossKind::WGAN>(p, side, blocks, threads, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

size_t gan_loss_workspace_bytes(int64_t n_real, int64_t n_fake) {
  const int64_t blocks = plan_blocks(std::max<int64_t>(n_real, 0) + std::max<int64_t>(n_fake, 0));
  return blocks > 1 ? sizeof(float2) * static_cast<size_t>(blocks) : 0;
}

cudaError_t gan_loss_fwd(const void* real, int64_t n_real, const void* fake, int64_t n_fake,
                         void* loss, void* grad_real, void* grad_fake, void* workspace,
                         DType dtype, LossKind kind, LossSide side, LossReduction reduction,
                         double label_smoothing, cudaStream_t stream) {
  if (side != LossSide::D && side != LossSide::G) return cudaErrorInvalidValue;
  if (reduction != LossReduction::Mean && reduction != LossReduction::Sum)
    return cudaErrorInvalidValue;
  if (side == LossSide::G) {
    real = nullptr;
    grad_real = nullptr;
    n_real = 0;
  }
  if (n_real < 0 || n_fake < 0 || loss == nullptr) return cudaErrorInvalidValue;
  if (n_real > 0 && (real == nullptr || grad_real == nullptr)) return cudaErrorInvalidValue;
  if (n_fake > 0 && (fake == nullptr || grad_fake == nullptr)) return cudaErrorInvalidValue;

  const int64_t n = n_real + n_fake;
  const int64_t blocks = plan_blocks(n);
  if (blocks > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  int threads = kMultiThreads;
  if (blocks == 1) {  // enough threads for ~4 values each, whole warps, at most 1024
    threads = static_cast<int>(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, ceil_div(ceil_div(n, 4), 32) * 32)));
  }

  LossParams p;
  p.real = real;
  p.fake = fake;
  p.grad_real = grad_real;
  p.grad_fake = grad_fake;
  p.n_real = n_real;
  p.n_fake = n_fake;
  // The reference divides by the count as a float32 scalar (n / 0 -> NaN loss for
  // an empty input under mean, like torch.mean).
  const bool mean = reduction == LossReduction::Mean;
  p.div_real = mean ? static_cast<float>(n_real) : 1.f;
  p.div_fake = mean ? static_cast<float>(n_fake) : 1.f;
  // t = 1 - label_smoothing and 1 - t in double, then float, as Python computes them.
  const double t = 1.0 - label_smoothing;
  p.t_real = static_cast<float>(t);
  p.omt_real = static_cast<float>(1.0 - t);
  p.vec_real = (aligned16(real) && aligned16(grad_real)) ? 1 : 0;
  p.vec_fake = (aligned16(fake) && aligned16(grad_fake)) ? 1 : 0;
  p.partial = static_cast<float2*>(workspace);
  p.loss = loss;

  switch (dtype) {
    case DType::Float32: return launch_kind<float>(p, kind, side, blocks, threads, stream);
    case DType::Float16: return launch_kind<__half>(p, kind, side, blocks, threads, stream);
    case DType::BFloat16: return launch_kind<__nv_bfloat16>(p, kind, side, blocks, threads, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace gan_fast

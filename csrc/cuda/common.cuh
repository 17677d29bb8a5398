// What the CUDA kernel files (bn_act.cu, gan_loss.cu) share: the element type of the
// launchers' arguments, and the device helpers for those types.
//
// No torch headers. The part outside __CUDACC__ is plain C++: the launchers' headers
// (bn_act.h, gan_loss.h) include this file, and bindings_cuda.cpp, compiled by the host
// compiler, includes them.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace gan_fast {
namespace cuda {

// Element type of a tensor argument.
enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

#ifdef __CUDACC__
__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ------------------------------------------------------------------ element access
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// V elements, aligned to their size, so V * sizeof(T) == 16 compiles to one 128-bit access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Sums (a, b) down a warp in a fixed tree order; the result is in lane 0.
template <typename F>
__device__ __forceinline__ void warp_sum2(F& a, F& b) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
}

// Sums (a, b) over a 1-D block (blockDim.x a multiple of 32, <= 1024) in a fixed tree
// order (deterministic); the result is in thread 0.
__device__ __forceinline__ void block_sum2(float& a, float& b) {
  __shared__ float sh[2][32];
  warp_sum2(a, b);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (lane == 0) {
    sh[0][warp] = a;
    sh[1][warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < nwarps ? sh[0][lane] : 0.f;
    b = lane < nwarps ? sh[1][lane] : 0.f;
    warp_sum2(a, b);
  }
}
#endif  // __CUDACC__

}  // namespace cuda
}  // namespace gan_fast

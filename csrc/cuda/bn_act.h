// Fused BatchNorm2d + LeakyReLU on CUDA: kernels and launchers over raw pointers.
//
// No torch headers: this header and bn_act.cu need only the CUDA runtime, so
// `nvcc -c csrc/cuda/bn_act.cu` checks them without torch (.ci/check_cuda.sh).
// csrc/cuda/bindings_cuda.cpp checks tensors, allocates outputs and the
// workspace, and calls these launchers. The math is gan_fast/reference.py.
//
// Tensor x is (N, C, H, W) with HW = H * W, dense in one of two layouts:
//   Layout::NCHW  element (n, c, hw) at ((n * C + c) * HW + hw)
//   Layout::NHWC  element (n, c, hw) at ((n * HW + hw) * C + c)   (channels_last)
// grad_out / out / grad_x have the same layout as x. All offsets are 64-bit.
// Element types: float32, float16, bfloat16; everything accumulates in float32
// (the cross-block combines in float64). Per-channel tensors (mean, var) are
// float32 (C,), var is the biased variance. weight / bias are (C,) each in
// float32 or x's dtype (given separately), or absent (has_affine = false).
//
// Every launcher is asynchronous on `stream`, launches nothing for empty inputs
// (see each one), and returns the first error (cudaErrorInvalidValue for bad
// arguments, else cudaGetLastError() after each launch). Results are
// deterministic: every reduction combines partial results in a fixed order.
//
// Workspace: every launcher takes a device buffer of at least
// bn_act_workspace_bytes(N, C, HW, layout) bytes, 16-byte aligned, contents
// irrelevant (no zeroing needed), not shared with a concurrent launch.
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "common.cuh"  // DType

namespace gan_fast {
namespace cuda {

enum class Layout : int { NCHW = 0, NHWC = 1 };

// Bytes of workspace every bn_act launcher needs for these sizes (>= 16 for C > 0;
// independent of the dtype and the pointers, so the caller can allocate first).
size_t bn_act_workspace_bytes(int64_t N, int64_t C, int64_t HW, Layout layout);

// Training forward: mean/var = per-channel batch statistics of x (biased var),
// out = leaky((x - mean) * w * invstd + b), invstd = 1 / sqrt(var + eps).
// N*HW == 0: writes NaN to mean and var (like torch.var_mean of nothing).
cudaError_t bn_act_train_fwd(const void* x, const void* weight, DType weight_dtype,
                             const void* bias, DType bias_dtype, void* out, float* mean,
                             float* var, void* workspace, int64_t N, int64_t C, int64_t HW,
                             Layout layout, DType dtype, float eps, float negative_slope,
                             bool has_affine, cudaStream_t stream);

// Eval forward: the same output with the given statistics mean/var (float32 (C,)).
cudaError_t bn_act_eval_fwd(const void* x, const void* weight, DType weight_dtype,
                            const void* bias, DType bias_dtype, const float* mean,
                            const float* var, void* out, void* workspace, int64_t N, int64_t C,
                            int64_t HW, Layout layout, DType dtype, float eps,
                            float negative_slope, bool has_affine, cudaStream_t stream);

// Backward. With z = (x - mean) * a + b, a = w * invstd (invstd when no affine),
// dz = grad_out * (z > 0 ? 1 : slope), S1 = sum dz, S2 = sum dz * (x - mean) per channel:
//   grad_x      = a*dz - a*S1/n - (x - mean) * a*invstd^2*S2/n   (batch_stats, n = N*HW)
//               = a*dz                                          (!batch_stats)
//   grad_weight = invstd * S2 in gw_dtype, grad_bias = S1 in gb_dtype (each may be null).
// Without affine the caller passes float32 for gw_dtype/gb_dtype (or null pointers).
cudaError_t bn_act_bwd(const void* grad_out, const void* x, const void* weight,
                       DType weight_dtype, const void* bias, DType bias_dtype, const float* mean,
                       const float* var, void* grad_x, void* grad_weight, DType gw_dtype,
                       void* grad_bias, DType gb_dtype, void* workspace, int64_t N, int64_t C,
                       int64_t HW, Layout layout, DType dtype, float eps, float negative_slope,
                       bool has_affine, bool batch_stats, cudaStream_t stream);

}  // namespace cuda
}  // namespace gan_fast

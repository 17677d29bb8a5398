// Fused GAN loss on CUDA: the loss and d(loss)/d(logits) in one pass (see gan_loss.cu).
//
// No torch headers (compile-checked alone with nvcc). The math is
// gan_fast/reference.py (gan_loss_fwd); per element x, in float32:
//
//   kind   D on real (t = 1 - label_smoothing)   D on fake              G on fake
//   bce    (1-t)*x - logsigmoid(x), sigmoid(x)-t  x - logsigmoid(x),     -logsigmoid(x) [0*x],
//                                                 sigmoid(x)             sigmoid(x) - 1
//   hinge  relu(1-x), (1-x <= 0 ? 0 : -1)         relu(1+x),             -x, -1
//                                                 (1+x <= 0 ? 0 : 1)
//   lsgan  (x-1)^2, 2(x-1)                         x^2, 2x                (x-1)^2, 2(x-1)
//   wgan   -x, -1                                  x, 1                   -x, -1
//
// relu keeps NaN (NaN in, NaN out), and its gradient is passed for NaN like
// PyTorch's relu backward. bce computes (1-t)*x literally (0 * inf = NaN, as the
// reference does). label_smoothing applies to D-on-real bce only.
// reduction mean: loss = sum(real terms)/n_real + sum(fake terms)/n_fake and each
// gradient is divided by its own count; sum: plain sums. The loss accumulates in
// float32 and is stored in the logits' dtype; an empty input gives NaN (mean) or
// 0 (sum) for its part, like torch.mean / torch.sum.
//
// Deterministic: the summation order depends only on (n_real, n_fake).
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "common.cuh"  // DType

namespace gan_fast {
namespace cuda {

enum class LossKind : int { BCE = 0, Hinge = 1, LSGAN = 2, WGAN = 3 };
enum class LossSide : int { D = 0, G = 1 };
enum class LossReduction : int { Mean = 0, Sum = 1 };

// Bytes of workspace gan_loss_fwd needs (0 for inputs small enough for one block;
// then `workspace` may be null). Contents irrelevant; 16-byte aligned.
size_t gan_loss_workspace_bytes(int64_t n_real, int64_t n_fake);

// real: n_real logits (side D; ignored and may be null for side G, where n_real
// is treated as 0); fake: n_fake logits; both contiguous, of `dtype`.
// loss: one element of `dtype`; grad_real (side D) / grad_fake: like the inputs.
// One kernel launch (two for inputs larger than one block handles).
cudaError_t gan_loss_fwd(const void* real, int64_t n_real, const void* fake, int64_t n_fake,
                         void* loss, void* grad_real, void* grad_fake, void* workspace,
                         DType dtype, LossKind kind, LossSide side, LossReduction reduction,
                         double label_smoothing, cudaStream_t stream);

}  // namespace cuda
}  // namespace gan_fast

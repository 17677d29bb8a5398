// What the CPU and CUDA bindings and the eager autograd ops must agree on, written once:
// the memory format of the ops' outputs, and the loss arguments the kernels take.
//
// Torch-side (ATen headers), included by csrc/bindings.cpp, csrc/eager_common.h,
// csrc/cpu/bn_act.cpp and cuda/bindings_cuda.cpp. It lives in cuda/ because the CUDA
// JIT build (gan_fast/_cuda_jit.py) compiles this folder alone, and the wheel ships
// only this folder of csrc/ for it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

namespace gan_fast {

// The memory format of act(BN(x)) and of its gradient, stock's rule (ATen's batch_norm,
// TensorIterator; gan_fast/_formats.py memory_format): channels_last iff x is
// channels_last-contiguous and not NCHW-contiguous. A tensor that is both (C == 1 or
// H == W == 1) has the same element order either way and gives NCHW strides.
inline bool channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format(const at::Tensor& x) {
  return channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Whether x is contiguous NCHW or channels_last: the two layouts the kernels take.
inline bool is_dense(const at::Tensor& x) {
  return x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// gan_loss_fwd's arguments (csrc/README.md): the canonical names only. The Python API
// resolves aliases ('nonsaturating', 'ns') to 'bce' before it calls an op.
// kind: an index into kLossKinds, the order of the kernels' LossKind enums.
constexpr const char* kLossKinds[] = {"bce", "hinge", "lsgan", "wgan"};
constexpr int kNumLossKinds = 4;

inline int loss_kind(c10::string_view kind, const char* op) {
  for (int i = 0; i < kNumLossKinds; ++i) {
    if (kind == kLossKinds[i]) return i;
  }
  TORCH_CHECK_VALUE(false, op, ": kind must be one of bce, hinge, lsgan, wgan, got '",
                    std::string(kind), "'");
  return 0;  // unreachable
}

// side 'g' (true) or 'd' (false).
inline bool loss_side_g(c10::string_view side, const char* op) {
  TORCH_CHECK_VALUE(side == "d" || side == "g", op, ": side must be 'd' or 'g', got '",
                    std::string(side), "'");
  return side == "g";
}

// reduction 'mean' (true) or 'sum' (false).
inline bool loss_mean(c10::string_view reduction, const char* op) {
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum", op,
                    ": reduction must be 'mean' or 'sum', got '", std::string(reduction), "'");
  return reduction == "mean";
}

}  // namespace gan_fast

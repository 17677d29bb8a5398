// CPU entry points of gan_fast's ops, called by csrc/bindings.cpp after it has
// checked the inputs. The kernels themselves live in bn_act.cpp / gan_loss.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <optional>
#include <string>
#include <tuple>

namespace gan_fast::cpu {

// x: 4-D contiguous NCHW or channels_last; weight/bias: (C,) or absent.
// Returns (out like x, mean (C,), biased var (C,)); stats are float32
// (float64 when x is float64).
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_fwd(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, double negative_slope);

at::Tensor bn_act_eval_fwd(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean,
    const at::Tensor& var, double eps, double negative_slope);

// grad_out must have x's shape and memory format.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_bwd(
    const at::Tensor& grad_out, const at::Tensor& x,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean,
    const at::Tensor& var, double eps, double negative_slope, bool batch_stats);

enum class LossKind { bce, hinge, lsgan, wgan };  // the order of kLossKinds (cuda/contract.h)

// real may be absent (side g). Returns (loss 0-dim in fake's dtype,
// grad_real (empty when side g), grad_fake); grads are contiguous.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_fwd(
    const std::optional<at::Tensor>& real, const at::Tensor& fake,
    LossKind kind, bool side_g, bool reduction_mean, double label_smoothing);

// "default" or "avx2": the instruction set the bn_act kernels run with.
const char* bn_act_isa();

}  // namespace gan_fast::cpu

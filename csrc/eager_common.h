// What the eager autograd ops (bn_act_autograd.cpp, conv_bn_act_autograd.cpp,
// gan_loss_autograd.cpp) share: handles on the kernel ops, the layout rule,
// BatchNorm's argument checks and running-statistics update, and the
// differentiable backward used when a backward runs with create_graph=True.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include "cuda/contract.h"

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace gan_fast::eager {

using at::Tensor;
using std::optional;
using Stats3 = std::tuple<Tensor, Tensor, Tensor>;

inline auto& train_fwd_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gan_fast_C::bn_act_train_fwd", "")
                       .typed<Stats3(const Tensor&, const optional<Tensor>&,
                                     const optional<Tensor>&, double, double)>();
  return op;
}

inline auto& eval_fwd_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gan_fast_C::bn_act_eval_fwd", "")
                       .typed<Tensor(const Tensor&, const optional<Tensor>&,
                                     const optional<Tensor>&, const Tensor&, const Tensor&,
                                     double, double)>();
  return op;
}

inline auto& bwd_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gan_fast_C::bn_act_bwd", "")
                       .typed<Stats3(const Tensor&, const Tensor&, const optional<Tensor>&,
                                     const optional<Tensor>&, const Tensor&, const Tensor&,
                                     double, double, bool)>();
  return op;
}

// The layout of x's outputs and gradients (stock's rule, cuda/contract.h).
inline at::MemoryFormat format_of(const Tensor& x) { return gan_fast::memory_format(x); }

// The stock convolution of a block, as nn.Conv2d / nn.ConvTranspose2d run it: at::conv2d /
// at::conv_transpose2d (their input checks and messages, e.g. an input/bias dtype
// mismatch), for a 4-D x (op_name: the caller, named in the error otherwise).
inline Tensor stock_conv(const char* op_name, const Tensor& x, const Tensor& w,
                         const optional<Tensor>& b, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef output_padding,
                         at::IntArrayRef dilation, int64_t groups, bool transposed) {
  TORCH_CHECK_VALUE(x.dim() == 4, op_name, ": expected a 4-D (N, C, H, W) input, got ",
                    x.dim(), "-D of size ", x.sizes());
  return transposed ? at::conv_transpose2d(x, w, b, stride, padding, output_padding, groups,
                                           dilation)
                    : at::conv2d(x, w, b, stride, padding, dilation, groups);
}

// x as contiguous NCHW or channels_last, the two layouts the kernels take
inline Tensor dense(const Tensor& x) { return gan_fast::is_dense(x) ? x : x.contiguous(); }

inline at::ScalarType stat_dtype(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline optional<Tensor> opt(const Tensor& t) {
  return t.defined() ? optional<Tensor>(t) : std::nullopt;
}

// needs_input_grad for each of a node's leading tensor inputs, given which are
// present: an absent optional tensor has no edge, so the edges of the ones
// after it shift down (AutogradContext::needs_input_grad counts edges).
template <size_t K>
std::array<bool, K> input_needs(torch::autograd::AutogradContext* ctx,
                                const std::array<bool, K>& present) {
  std::array<bool, K> needs{};
  size_t edge = 0;
  for (size_t i = 0; i < K; ++i) {
    if (present[i]) needs[i] = ctx->needs_input_grad(edge++);
  }
  return needs;
}

inline c10::List<bool> bool_list(const bool* begin, const bool* end) {
  c10::List<bool> list;
  for (const bool* p = begin; p != end; ++p) list.push_back(*p);
  return list;
}

// torch.nn.functional.batch_norm's checks, with its messages: values per
// channel (n of them; n == 0 is allowed, as stock) and eps.
inline void check_bn_args(int64_t n, at::IntArrayRef sizes, bool batch_stats, double eps) {
  TORCH_CHECK_VALUE(!batch_stats || n != 1,
                    "Expected more than 1 value per channel when training, got input size ",
                    sizes);
  TORCH_CHECK_VALUE(!batch_stats || eps > 0.0,
                    "batch_norm eps must be positive during training, but got ", eps);
  TORCH_CHECK_VALUE(batch_stats || eps >= 0.0, "batch_norm eps must be non-negative, but got ",
                    eps);
}

// act(BN(x)) for a batch with no values per channel, as BatchNorm2d + the
// activation give it (an empty tensor; num_batches_tracked still counts it).
inline Tensor empty_batch(const Tensor& x, const optional<Tensor>& weight,
                          const optional<Tensor>& bias, const optional<Tensor>& running_mean,
                          const optional<Tensor>& num_batches_tracked, double eps,
                          double negative_slope) {
  if (running_mean && num_batches_tracked) {
    at::NoGradGuard no_grad;
    num_batches_tracked->add_(1);
  }
  return at::leaky_relu(at::batch_norm(x, weight, bias, {}, {}, true, 0.0, eps, false),
                        negative_slope);
}

// BatchNorm2d's update of the running statistics (C,) and num_batches_tracked
// from the biased batch mean/var of n > 1 values per channel, op for op as
// gan_fast.ops.bn_act.update_running_stats (the torch.compile path).
void update_running_stats(Tensor& running_mean, Tensor& running_var,
                          const optional<Tensor>& num_batches_tracked,
                          const optional<double>& momentum, const Tensor& mean,
                          const Tensor& var, int64_t n);

// Gradients through the differentiable formulas of gan_fast.ops.double_backward
// (op `name`, Python, CompositeImplicitAutograd): what a backward returns when it
// runs with create_graph=True, so that differentiating it again is exact.
// Empty results (gradients not asked for) come back undefined.
inline torch::autograd::variable_list differentiable_grads(const char* name,
                                                           std::vector<c10::IValue> args) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  torch::jit::Stack stack(std::make_move_iterator(args.begin()),
                          std::make_move_iterator(args.end()));
  op.callBoxed(&stack);
  torch::autograd::variable_list grads = stack.at(0).toTensorVector();
  for (auto& g : grads) {
    if (g.numel() == 0 && g.dim() == 1) g = Tensor();
  }
  return grads;
}

}  // namespace gan_fast::eager

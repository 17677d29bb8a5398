// The whole fused block in one eager op with one C++ autograd node, for the cpu
// and cuda backends: a module call crosses from Python into C++ once.
//
//   conv_bn_act_eager(x, weight, bias?, bn_weight?, bn_bias?, running_mean?,
//                     running_var?, num_batches_tracked?, stride, padding,
//                     output_padding, dilation, groups, transposed, batch_stats,
//                     momentum?, eps, negative_slope) -> out
//
// Forward: y = the stock ATen convolution (oneDNN / cuDNN, as nn.Conv2d and
// nn.ConvTranspose2d run it), then one fused BatchNorm+activation op
// (gan_fast_C::bn_act_train_fwd with batch statistics, which also gives the
// running-statistics update; bn_act_eval_fwd with the running statistics).
// Saved: x, the weights, y and two per-channel vectors (never the output).
// Backward: gan_fast_C::bn_act_bwd gives dL/dy and the BatchNorm parameter
// gradients, then at::convolution_backward. Under create_graph=True the
// gradients come from differentiable ATen ops (gan_fast.ops.double_backward).
#include <ATen/ATen.h>
#include <ATen/FuncTorchTLS.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <array>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "eager_common.h"
#include "eager_ops.h"

namespace {

using namespace gan_fast::eager;
using torch::autograd::variable_list;
using IntVec = std::vector<int64_t>;

struct Geometry {
  IntVec stride, padding, output_padding, dilation;
  int64_t groups;
  bool transposed;
};

Tensor convolution(const Tensor& x, const Tensor& w, const optional<Tensor>& b,
                   const Geometry& g) {
  return stock_conv("gan_fast conv_bn_act", x, w, b, g.stride, g.padding, g.output_padding,
                    g.dilation, g.groups, g.transposed);
}

struct Forward {
  Tensor out, y, mean, var;
};

// The forward of the block: y = conv(x) (dense), then act(BN(y)) with batch
// statistics (mean, biased var of y) or the given ones (stats_*, eval).
Forward forward_of(const Tensor& x, const Tensor& w, const optional<Tensor>& b,
                   const optional<Tensor>& bn_w, const optional<Tensor>& bn_b,
                   const optional<Tensor>& stats_mean, const optional<Tensor>& stats_var,
                   const Geometry& g, bool batch_stats, double eps, double slope) {
  Forward f;
  f.y = dense(convolution(x, w, b, g));
  const Tensor& y = f.y;
  const int64_t n = y.size(1) > 0 ? y.numel() / y.size(1) : 0;
  check_bn_args(n, y.sizes(), batch_stats, eps);
  if (y.numel() == 0) {  // as stock: an empty output, no statistics to take
    f.out = y.clone();
    f.mean = at::zeros({y.size(1)}, y.options().dtype(stat_dtype(y)));
    f.var = at::ones_like(f.mean);
  } else if (batch_stats) {
    std::tie(f.out, f.mean, f.var) = train_fwd_op().call(y, bn_w, bn_b, eps, slope);
  } else {
    f.mean = stats_mean->to(stat_dtype(y));
    f.var = stats_var->to(stat_dtype(y));
    f.out = eval_fwd_op().call(y, bn_w, bn_b, f.mean, f.var, eps, slope);
  }
  return f;
}

// The block's autograd node, written as PyTorch's generated nodes are (fields, not a
// custom Function's context map: a block call is host-bound at GAN sizes). Edges:
// x, weight, bias, bn_weight, bn_bias (an absent one has an invalid edge).
struct BlockBackward : torch::autograd::Node {
  torch::autograd::SavedVariable x_, w_, b_, bn_w_, bn_b_, y_, mean_, var_;
  Geometry g_;
  bool batch_stats_ = true;
  double eps_ = 0.0, slope_ = 0.0;

  std::string name() const override { return "ConvBNActBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto* v : {&x_, &w_, &b_, &bn_w_, &bn_b_, &y_, &mean_, &var_}) v->reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Tensor x = x_.unpack(), w = w_.unpack();
    Tensor y = y_.unpack();
    const Tensor mean = mean_.unpack(), var = var_.unpack();
    const optional<Tensor> b = opt(b_.unpack()), bn_w = opt(bn_w_.unpack()),
                           bn_b = opt(bn_b_.unpack());
    std::array<bool, 5> need{};
    for (size_t i = 0; i < need.size(); ++i) need[i] = task_should_compute_output(i);
    variable_list out(5);
    if (!grads[0].defined() || !(need[0] || need[1] || need[2] || need[3] || need[4])) {
      return out;
    }
    if (at::GradMode::is_enabled()) {  // create_graph=True: exact double backward
      const Geometry& g = g_;
      return differentiable_grads(
          "gan_fast::conv_bn_act_grads",
          {grads[0], x, w, b, bn_w, bn_b, mean, var, g.stride, g.padding, g.output_padding,
           g.dilation, g.groups, g.transposed, batch_stats_, eps_, slope_,
           bool_list(need.data(), need.data() + need.size())});
    }
    Tensor gy, gbw, gbb;
    if (y.numel() == 0) {
      gy = at::zeros_like(y);
      if (bn_w) gbw = at::zeros_like(*bn_w), gbb = at::zeros_like(*bn_b);
    } else {
      std::tie(gy, gbw, gbb) = bwd_op().call(grads[0].contiguous(format_of(y)), y, bn_w, bn_b,
                                             mean, var, eps_, slope_, batch_stats_);
    }
    // y and grad_out are dead now: free them before the convolution's backward allocates
    // grad_x, as the engine frees a stock BatchNorm node's before the conv node runs
    // (the peak memory of a training step would otherwise hold two more full tensors).
    const int64_t c_out = y.size(1);
    y.reset();
    grads[0].reset();
    if (!torch::autograd::get_current_graph_task_keep_graph()) y_.reset_data();
    if (need[0] || need[1] || need[2]) {
      const Geometry& g = g_;
      auto [gx, gw, gb] = at::convolution_backward(
          gy, x, w, b ? at::OptionalIntArrayRef(at::IntArrayRef(&c_out, 1)) : std::nullopt,
          g.stride, g.padding, g.dilation, g.transposed, g.output_padding, g.groups,
          {need[0], need[1], need[2]});
      out[0] = need[0] ? gx : Tensor();
      out[1] = need[1] ? gw : Tensor();
      out[2] = need[2] ? gb : Tensor();
    }
    if (need[3]) out[3] = gbw;
    if (need[4]) out[4] = gbb;
    return out;
  }
};

// out = act(BN(conv(x))) with its BlockBackward node as grad_fn.
Tensor forward_with_graph(const Tensor& x, const Tensor& w, const optional<Tensor>& b,
                          const optional<Tensor>& bn_w, const optional<Tensor>& bn_b,
                          const optional<Tensor>& stats_mean, const optional<Tensor>& stats_var,
                          Geometry g, bool batch_stats, double eps, double slope,
                          Tensor& mean, Tensor& var) {
  Forward f;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    f = forward_of(x, w, b, bn_w, bn_b, stats_mean, stats_var, g, batch_stats, eps, slope);
  }
  // (the checks a C++ custom Function makes: torch.func transforms and forward-mode AD
  // are refused rather than given gradients without tangents)
  if (const auto& functorch_tls = at::functorch::functorchTLSAccessor()) {
    functorch_tls->checkSupportsCppAutogradFunction();
  }
  TORCH_CHECK(!torch::autograd::isFwGradDefined(x) && !torch::autograd::isFwGradDefined(w),
              "gan_fast conv_bn_act: forward-mode AD is not supported; use the stock layers");
  using torch::autograd::SavedVariable;
  auto node = c10::make_intrusive<BlockBackward>();
  const Tensor undefined;
  node->set_next_edges(torch::autograd::collect_next_edges(
      x, w, b ? *b : undefined, bn_w ? *bn_w : undefined, bn_b ? *bn_b : undefined));
  node->x_ = SavedVariable(x, false);
  node->w_ = SavedVariable(w, false);
  node->b_ = SavedVariable(b ? *b : undefined, false);
  node->bn_w_ = SavedVariable(bn_w ? *bn_w : undefined, false);
  node->bn_b_ = SavedVariable(bn_b ? *bn_b : undefined, false);
  node->y_ = SavedVariable(f.y, false);
  node->mean_ = SavedVariable(f.mean, false);
  node->var_ = SavedVariable(f.var, false);
  node->g_ = std::move(g);
  node->batch_stats_ = batch_stats;
  node->eps_ = eps;
  node->slope_ = slope;
  torch::autograd::set_history(f.out, node);
  mean = f.mean;
  var = f.var;
  return f.out;
}

bool requires_grad(const optional<Tensor>& t) { return t.has_value() && t->requires_grad(); }

}  // namespace

// (declared in eager_ops.h: gan_fast._C binds them for direct calls from Python)
namespace gan_fast::eager {

Tensor conv_bn_act_eager(const Tensor& x, const Tensor& weight, const optional<Tensor>& bias,
                         const optional<Tensor>& bn_weight, const optional<Tensor>& bn_bias,
                         const optional<Tensor>& running_mean,
                         const optional<Tensor>& running_var,
                         const optional<Tensor>& num_batches_tracked, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef output_padding,
                         at::IntArrayRef dilation, int64_t groups, bool transposed,
                         bool batch_stats, optional<double> momentum, double eps,
                         double negative_slope) {
  GAN_FAST_RECORD("gan_fast_C::conv_bn_act_eager");
  TORCH_CHECK_VALUE(running_mean.has_value() == running_var.has_value(),
                    "gan_fast conv_bn_act: running_mean and running_var must both be given or "
                    "both be None");
  TORCH_CHECK_VALUE(batch_stats || running_mean.has_value(),
                    "gan_fast conv_bn_act: running statistics are needed when batch_stats is "
                    "false");
  const Geometry g{stride.vec(), padding.vec(), output_padding.vec(), dilation.vec(), groups,
                   transposed};
  const optional<Tensor> stats_mean = batch_stats ? std::nullopt : running_mean;
  const optional<Tensor> stats_var = batch_stats ? std::nullopt : running_var;
  Tensor out, mean, var;
  // an autograd node only when grad mode is on and some input requires grad
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || requires_grad(bias) ||
       requires_grad(bn_weight) || requires_grad(bn_bias))) {
    out = forward_with_graph(x, weight, bias, bn_weight, bn_bias, stats_mean, stats_var, g,
                             batch_stats, eps, negative_slope, mean, var);
  } else {  // no_grad / frozen weights: the kernels alone, nothing saved
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Forward f = forward_of(x, weight, bias, bn_weight, bn_bias, stats_mean, stats_var, g,
                           batch_stats, eps, negative_slope);
    out = f.out, mean = f.mean, var = f.var;
  }
  if (batch_stats && running_mean) {
    const int64_t n = out.size(1) > 0 ? out.numel() / out.size(1) : 0;
    Tensor rm = *running_mean, rv = *running_var;
    if (n > 0) {
      update_running_stats(rm, rv, num_batches_tracked, momentum, mean, var, n);
    } else if (num_batches_tracked) {  // an empty batch counts, as in BatchNorm2d
      at::NoGradGuard no_grad;
      num_batches_tracked->add_(1);
    }
  }
  return out;
}

}  // namespace gan_fast::eager

TORCH_LIBRARY_FRAGMENT(gan_fast_C, m) {
  m.def(
      "conv_bn_act_eager(Tensor x, Tensor weight, Tensor? bias, Tensor? bn_weight,"
      " Tensor? bn_bias, Tensor(a!)? running_mean, Tensor(b!)? running_var,"
      " Tensor(c!)? num_batches_tracked, int[] stride, int[] padding, int[] output_padding,"
      " int[] dilation, int groups, bool transposed, bool batch_stats, float? momentum,"
      " float eps, float negative_slope) -> Tensor");
}

// CompositeImplicitAutograd: the function builds its own autograd node, so it
// serves every device and grad mode.
TORCH_LIBRARY_IMPL(gan_fast_C, CompositeImplicitAutograd, m) {
  m.impl("conv_bn_act_eager", &gan_fast::eager::conv_bn_act_eager);
}

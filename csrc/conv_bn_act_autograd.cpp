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
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <vector>

#include "eager_common.h"

namespace {

using namespace gan_fast::eager;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using IntVec = std::vector<int64_t>;

struct Geometry {
  IntVec stride, padding, output_padding, dilation;
  int64_t groups;
  bool transposed;
};

void save_geometry(AutogradContext* ctx, const Geometry& g) {
  ctx->saved_data["stride"] = g.stride;
  ctx->saved_data["padding"] = g.padding;
  ctx->saved_data["output_padding"] = g.output_padding;
  ctx->saved_data["dilation"] = g.dilation;
  ctx->saved_data["groups"] = g.groups;
  ctx->saved_data["transposed"] = g.transposed;
}

Geometry load_geometry(AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  return {d["stride"].toIntVector(), d["padding"].toIntVector(),
          d["output_padding"].toIntVector(), d["dilation"].toIntVector(), d["groups"].toInt(),
          d["transposed"].toBool()};
}

Tensor convolution(const Tensor& x, const Tensor& w, const optional<Tensor>& b,
                   const Geometry& g) {
  return at::convolution(x, w, b, g.stride, g.padding, g.dilation, g.transposed,
                         g.output_padding, g.groups);
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

// Slots: x, weight, bias, bn_weight, bn_bias, stats_mean, stats_var, then the
// non-tensor arguments. stats_*: the running statistics (eval) or undefined.
struct BlockFn : torch::autograd::Function<BlockFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w,
                               const optional<Tensor>& b, const optional<Tensor>& bn_w,
                               const optional<Tensor>& bn_b, const optional<Tensor>& stats_mean,
                               const optional<Tensor>& stats_var, const Geometry& g,
                               bool batch_stats, double eps, double slope) {
    Forward f = forward_of(x, w, b, bn_w, bn_b, stats_mean, stats_var, g, batch_stats, eps,
                           slope);
    ctx->save_for_backward({x, w, b.value_or(Tensor()), bn_w.value_or(Tensor()),
                            bn_b.value_or(Tensor()), f.y, f.mean, f.var});
    save_geometry(ctx, g);
    ctx->saved_data["batch_stats"] = batch_stats;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["slope"] = slope;
    ctx->mark_non_differentiable({f.mean, f.var});
    return {f.out, f.mean, f.var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const Tensor &x = s[0], &w = s[1], &y = s[5], &mean = s[6], &var = s[7];
    const optional<Tensor> b = opt(s[2]), bn_w = opt(s[3]), bn_b = opt(s[4]);
    const Geometry g = load_geometry(ctx);
    const bool batch_stats = ctx->saved_data["batch_stats"].toBool();
    const double eps = ctx->saved_data["eps"].toDouble();
    const double slope = ctx->saved_data["slope"].toDouble();
    const auto need = input_needs<5>(ctx, {true, true, b.has_value(), bn_w.has_value(),
                                           bn_b.has_value()});
    variable_list out(11);
    if (at::GradMode::is_enabled()) {  // create_graph=True: exact double backward
      const c10::List<bool> needs = bool_list(need.data(), need.data() + need.size());
      auto gr = differentiable_grads(
          "gan_fast::conv_bn_act_grads",
          {grads[0], x, w, b, bn_w, bn_b, mean, var, g.stride, g.padding, g.output_padding,
           g.dilation, g.groups, g.transposed, batch_stats, eps, slope, needs});
      for (size_t i = 0; i < gr.size(); ++i) out[i] = gr[i];
      return out;
    }
    Tensor gy, gbw, gbb;
    if (y.numel() == 0) {
      gy = at::zeros_like(y);
      if (bn_w) gbw = at::zeros_like(*bn_w), gbb = at::zeros_like(*bn_b);
    } else {
      std::tie(gy, gbw, gbb) = bwd_op().call(grads[0].contiguous(format_of(y)), y, bn_w, bn_b,
                                             mean, var, eps, slope, batch_stats);
    }
    if (need[0] || need[1] || need[2]) {
      const int64_t c_out = y.size(1);
      auto [gx, gw, gb] = at::convolution_backward(
          gy, x, w, b ? at::OptionalIntArrayRef(at::IntArrayRef(&c_out, 1)) : std::nullopt,
          g.stride, g.padding, g.dilation, g.transposed, g.output_padding, g.groups,
          {need[0], need[1], need[2]});
      out[0] = gx, out[1] = gw, out[2] = gb;
    }
    if (need[3]) out[3] = gbw;
    if (need[4]) out[4] = gbb;
    return out;
  }
};

bool requires_grad(const optional<Tensor>& t) { return t.has_value() && t->requires_grad(); }

Tensor conv_bn_act_eager(const Tensor& x, const Tensor& weight, const optional<Tensor>& bias,
                         const optional<Tensor>& bn_weight, const optional<Tensor>& bn_bias,
                         const optional<Tensor>& running_mean,
                         const optional<Tensor>& running_var,
                         const optional<Tensor>& num_batches_tracked, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef output_padding,
                         at::IntArrayRef dilation, int64_t groups, bool transposed,
                         bool batch_stats, optional<double> momentum, double eps,
                         double negative_slope) {
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
  variable_list outs;
  // an autograd node only when grad mode is on and some input requires grad
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || requires_grad(bias) ||
       requires_grad(bn_weight) || requires_grad(bn_bias))) {
    outs = BlockFn::apply(x, weight, bias, bn_weight, bn_bias, stats_mean, stats_var, g,
                          batch_stats, eps, negative_slope);
  } else {  // no_grad / frozen weights: the kernels alone, nothing saved
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Forward f = forward_of(x, weight, bias, bn_weight, bn_bias, stats_mean, stats_var, g,
                           batch_stats, eps, negative_slope);
    outs = {f.out, f.mean, f.var};
  }
  const Tensor& out = outs[0];
  if (batch_stats && running_mean) {
    const int64_t n = out.size(1) > 0 ? out.numel() / out.size(1) : 0;
    Tensor rm = *running_mean, rv = *running_var;
    if (n > 0) {
      update_running_stats(rm, rv, num_batches_tracked, momentum, outs[1], outs[2], n);
    } else if (num_batches_tracked) {  // an empty batch counts, as in BatchNorm2d
      at::NoGradGuard no_grad;
      num_batches_tracked->add_(1);
    }
  }
  return out;
}

}  // namespace

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
  m.impl("conv_bn_act_eager", &conv_bn_act_eager);
}

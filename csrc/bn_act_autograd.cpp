// Eager-mode bn_act with its autograd in C++: the entry points that
// gan_fast.ops.bn_act (train_update, eval_mode; through gan_fast.kernels.cpp)
// calls on the cpu and cuda backends.
//
//   bn_act_train_eager(x, weight?, bias?, running_mean?, running_var?,
//                      num_batches_tracked?, momentum?, eps, negative_slope) -> out
//   bn_act_eval_eager(x, weight?, bias?, mean, var, eps, negative_slope) -> out
//
// They run the same kernels as the Python path (gan_fast_C::bn_act_train_fwd,
// bn_act_eval_fwd, bn_act_bwd, through the dispatcher: CPU or CUDA by x's
// device), but the autograd node and the running-statistics update are C++:
// a Python autograd.Function plus the update in Python cost ~150 us a call,
// ten times the kernels for small maps. The train op updates the running
// statistics in place exactly as BatchNorm2d does (and as
// gan_fast.ops.bn_act.update_running_stats, the torch.compile path).
// Under create_graph=True the backward is built from differentiable ATen ops
// (gan_fast.ops.double_backward), so double backward is exact.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>

#include "eager_common.h"
#include "eager_ops.h"

namespace gan_fast::eager {

// (definition; declared in eager_common.h)
void update_running_stats(Tensor& running_mean, Tensor& running_var,
                          const optional<Tensor>& num_batches_tracked,
                          const optional<double>& momentum, const Tensor& mean, const Tensor& var,
                          int64_t n) {
  at::NoGradGuard no_grad;
  if (num_batches_tracked) num_batches_tracked->add_(1);
  const double bessel = static_cast<double>(n) / static_cast<double>(n - 1);
  if (!momentum && num_batches_tracked) {  // cumulative moving average: a tensor factor
    const Tensor f = (1.0 / num_batches_tracked->to(at::kDouble)).to(running_mean.scalar_type());
    running_mean.mul_(1 - f).add_(mean.to(running_mean.scalar_type()) * f);
    running_var.mul_(1 - f).add_((var * bessel).to(running_var.scalar_type()) * f);
    return;
  }
  const double f = momentum.value_or(0.0);  // no momentum and no counter: no update
  const bool plain = running_mean.device().is_cpu() && running_var.device().is_cpu() &&
                     running_mean.scalar_type() == at::kFloat &&
                     running_var.scalar_type() == at::kFloat && mean.scalar_type() == at::kFloat &&
                     var.scalar_type() == at::kFloat && running_mean.is_contiguous() &&
                     running_var.is_contiguous();
  if (!plain) {
    running_mean.mul_(1 - f).add_(mean.to(running_mean.scalar_type()) * f);
    running_var.mul_(1 - f).add_((var * bessel).to(running_var.scalar_type()) * f);
    return;
  }
  // The common case (float32 CPU statistics) in one loop instead of eight ATen
  // calls, with the roundings of those calls: float products and sums
  // (the build has -ffp-contract=off: no fused multiply-add).
  const float keep = static_cast<float>(1 - f), take = static_cast<float>(f);
  const float b = static_cast<float>(bessel);
  float* rm = running_mean.data_ptr<float>();
  float* rv = running_var.data_ptr<float>();
  const float* m = mean.const_data_ptr<float>();
  const float* v = var.const_data_ptr<float>();
  for (int64_t c = 0; c < running_mean.numel(); ++c) {
    rm[c] = rm[c] * keep + m[c] * take;
    rv[c] = rv[c] * keep + (v[c] * b) * take;
  }
  running_mean.unsafeGetTensorImpl()->bump_version();  // as an in-place ATen op would
  running_var.unsafeGetTensorImpl()->bump_version();
}

}  // namespace gan_fast::eager

namespace {

using namespace gan_fast::eager;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves what the backward needs: x as given (the differentiable backward
// recomputes from it), the affine parameters and the statistics (never the output).
void save(AutogradContext* ctx, const Tensor& x, const optional<Tensor>& w,
          const optional<Tensor>& b, const Tensor& mean, const Tensor& var, double eps,
          double slope) {
  ctx->save_for_backward({x, w.value_or(Tensor()), b.value_or(Tensor()), mean, var});
  ctx->saved_data["eps"] = eps;
  ctx->saved_data["slope"] = slope;
}

// (grad x, grad weight, grad bias) for the saved tensors. With create_graph=True
// (grad mode on here) they come from the differentiable formulas instead of the
// kernels, so a gradient penalty through the op gets every second-order term.
variable_list backward_of(AutogradContext* ctx, const Tensor& grad_out, bool batch_stats) {
  const auto saved = ctx->get_saved_variables();
  const Tensor& x = saved[0];
  const optional<Tensor> w = opt(saved[1]), b = opt(saved[2]);
  const double eps = ctx->saved_data["eps"].toDouble();
  const double slope = ctx->saved_data["slope"].toDouble();
  if (at::GradMode::is_enabled()) {
    const auto need = input_needs<3>(ctx, {true, w.has_value(), b.has_value()});
    const c10::List<bool> needs = bool_list(need.data(), need.data() + need.size());
    return differentiable_grads("gan_fast::bn_act_grads",
                                {grad_out, x, w, b, saved[3], saved[4], batch_stats, eps, slope,
                                 needs});
  }
  const Tensor xd = dense(x);
  auto [gx, gw, gb] =
      bwd_op().call(grad_out.contiguous(format_of(xd)), xd, w, b, saved[3], saved[4], eps, slope,
                    batch_stats);
  return {gx, w ? gw : Tensor(), b ? gb : Tensor()};
}

struct TrainFn : torch::autograd::Function<TrainFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x,
                               const optional<Tensor>& w, const optional<Tensor>& b, double eps,
                               double slope) {
    auto [out, mean, var] = train_fwd_op().call(dense(x), w, b, eps, slope);
    save(ctx, x, w, b, mean, var, eps, slope);
    ctx->mark_non_differentiable({mean, var});
    return {out, mean, var};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto g = backward_of(ctx, grads[0], true);
    return {g[0], g[1], g[2], Tensor(), Tensor()};
  }
};

struct EvalFn : torch::autograd::Function<EvalFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x,
                               const optional<Tensor>& w, const optional<Tensor>& b,
                               const Tensor& mean_in, const Tensor& var_in, double eps,
                               double slope) {
    const Tensor mean = mean_in.to(stat_dtype(x)), var = var_in.to(stat_dtype(x));
    Tensor out = eval_fwd_op().call(dense(x), w, b, mean, var, eps, slope);
    save(ctx, x, w, b, mean, var, eps, slope);
    return {out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto g = backward_of(ctx, grads[0], false);
    return {g[0], g[1], g[2], Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

// (declared in eager_ops.h: gan_fast._C binds them for direct calls from Python)
namespace gan_fast::eager {

Tensor bn_act_train_eager(const Tensor& x, const optional<Tensor>& weight,
                          const optional<Tensor>& bias, const optional<Tensor>& running_mean,
                          const optional<Tensor>& running_var,
                          const optional<Tensor>& num_batches_tracked,
                          optional<double> momentum, double eps, double negative_slope) {
  GAN_FAST_RECORD("gan_fast_C::bn_act_train_eager");
  TORCH_CHECK_VALUE(running_mean.has_value() == running_var.has_value(),
                    "gan_fast bn_act: running_mean and running_var must both be given or both "
                    "be None");
  const int64_t n = x.size(1) > 0 ? x.numel() / x.size(1) : 0;
  check_bn_args(n, x.sizes(), true, eps);
  if (n == 0) return empty_batch(x, weight, bias, running_mean, num_batches_tracked, eps,
                                 negative_slope);
  auto outs = TrainFn::apply(x, weight, bias, eps, negative_slope);
  if (running_mean) {
    Tensor rm = *running_mean, rv = *running_var;
    update_running_stats(rm, rv, num_batches_tracked, momentum, outs[1], outs[2], n);
  }
  return outs[0];
}

Tensor bn_act_eval_eager(const Tensor& x, const optional<Tensor>& weight,
                         const optional<Tensor>& bias, const Tensor& mean, const Tensor& var,
                         double eps, double negative_slope) {
  GAN_FAST_RECORD("gan_fast_C::bn_act_eval_eager");
  check_bn_args(1, x.sizes(), false, eps);
  return EvalFn::apply(x, weight, bias, mean, var, eps, negative_slope)[0];
}

}  // namespace gan_fast::eager

TORCH_LIBRARY_FRAGMENT(gan_fast_C, m) {
  m.def(
      "bn_act_train_eager(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean,"
      " Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, float? momentum, float eps,"
      " float negative_slope) -> Tensor");
  m.def(
      "bn_act_eval_eager(Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor var,"
      " float eps, float negative_slope) -> Tensor");
}

// CompositeImplicitAutograd: the functions above build their own autograd
// node, so they serve every device and grad mode.
TORCH_LIBRARY_IMPL(gan_fast_C, CompositeImplicitAutograd, m) {
  m.impl("bn_act_train_eager", &gan_fast::eager::bn_act_train_eager);
  m.impl("bn_act_eval_eager", &gan_fast::eager::bn_act_eval_eager);
}

// Eager-mode gan_loss with its autograd node in C++: the entry point the
// Python functional API calls on the cpu and cuda backends.
//
//   gan_loss_eager(Tensor? real, Tensor fake, str kind, str side, str reduction,
//                  float label_smoothing) -> Tensor loss
//
// It runs gan_fast_C::gan_loss_fwd (through the dispatcher: CPU or CUDA by
// fake's device), which returns the loss and d(loss)/d(logits); the node saves
// only those gradients and its backward scales them by the incoming gradient
// (on CPU, a gradient of exactly 1 returns them as they are: no second pass).
// At DCGAN sizes the loss is a few microseconds of kernel: a Python
// autograd.Function around it costs several times that, forward and backward.
// Under create_graph=True the backward recomputes the loss's gradient from
// differentiable ATen ops (gan_fast.ops.double_backward): double backward is exact.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>

#include "eager_common.h"
#include "eager_ops.h"

namespace {

using at::Tensor;
using std::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

auto& loss_fwd_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gan_fast_C::gan_loss_fwd", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor>(
                           const optional<Tensor>&, const Tensor&, c10::string_view,
                           c10::string_view, c10::string_view, double)>();
  return op;
}

// Whether the incoming gradient is known to be exactly 1 without a device sync: on CPU
// its value is read; on CUDA reading it would wait for the stream, so it is scaled.
bool is_one(const Tensor& grad_loss) {
  return grad_loss.device().is_cpu() && grad_loss.numel() == 1 && grad_loss.item<double>() == 1.0;
}

struct LossFn : torch::autograd::Function<LossFn> {
  static Tensor forward(AutogradContext* ctx, const optional<Tensor>& real, const Tensor& fake,
                        c10::string_view kind, c10::string_view side,
                        c10::string_view reduction, double label_smoothing) {
    const bool side_g = side == "g";
    const optional<Tensor> r =
        side_g || !real ? std::nullopt : optional<Tensor>(real->contiguous());
    auto [loss, grad_real, grad_fake] =
        loss_fwd_op().call(r, fake.contiguous(), kind, side, reduction, label_smoothing);
    // the logits only for a backward with create_graph=True (references, no copies)
    ctx->save_for_backward({side_g ? Tensor() : grad_real, grad_fake,
                            side_g || !real ? Tensor() : *real, fake});
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["side"] = std::string(side);
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->saved_data["real_given"] = real.has_value() && real->defined();  // an input edge
    return loss;
  }

  // Slots: real, fake, then the four non-tensor arguments.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& grad_loss = grads[0];
    variable_list out;
    if (at::GradMode::is_enabled()) {  // create_graph=True: exact double backward
      const auto& d = ctx->saved_data;
      const auto need =
          gan_fast::eager::input_needs<2>(ctx, {d.at("real_given").toBool(), true});
      const c10::List<bool> needs = gan_fast::eager::bool_list(need.data(), need.data() + 2);
      out = gan_fast::eager::differentiable_grads(
          "gan_fast::gan_loss_grads",
          {grad_loss, gan_fast::eager::opt(saved[2]), saved[3], d.at("kind"), d.at("side"),
           d.at("reduction"), d.at("label_smoothing"), needs});
    } else if (is_one(grad_loss)) {  // loss.backward(): the saved gradients are the answer
      out = {saved[0], saved[1]};
    } else {
      at::NoGradGuard no_grad;
      const Tensor scale = grad_loss.to(saved[1].scalar_type());
      out = {saved[0].defined() ? saved[0] * scale : Tensor(), saved[1] * scale};
    }
    out.resize(6);  // no gradients for kind, side, reduction, label_smoothing
    return out;
  }
};

}  // namespace

// (declared in eager_ops.h: gan_fast._C binds them for direct calls from Python)
namespace gan_fast::eager {

Tensor gan_loss_eager(const optional<Tensor>& real, const Tensor& fake, c10::string_view kind,
                      c10::string_view side, c10::string_view reduction,
                      double label_smoothing) {
  GAN_FAST_RECORD("gan_fast_C::gan_loss_eager");
  return LossFn::apply(real, fake, kind, side, reduction, label_smoothing);
}

}  // namespace gan_fast::eager

TORCH_LIBRARY_FRAGMENT(gan_fast_C, m) {
  m.def(
      "gan_loss_eager(Tensor? real, Tensor fake, str kind, str side, str reduction,"
      " float label_smoothing) -> Tensor");
}

// CompositeImplicitAutograd: the function builds its own autograd node, so it
// serves every device and grad mode.
TORCH_LIBRARY_IMPL(gan_fast_C, CompositeImplicitAutograd, m) {
  m.impl("gan_loss_eager", &gan_fast::eager::gan_loss_eager);
}

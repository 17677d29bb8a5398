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
// Once-differentiable: double backward raises (the kernels have no second
// derivative), as the bn_act eager ops do.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>

#include "once_differentiable.h"

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
    ctx->save_for_backward({side_g ? Tensor() : grad_real, grad_fake});
    return loss;
  }

  // Slots: real, fake, then the four non-tensor arguments.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& grad_loss = grads[0];
    variable_list out;
    if (is_one(grad_loss)) {  // loss.backward(): the saved gradients are the answer
      out = {saved[0], saved[1]};
    } else {
      at::NoGradGuard no_grad;
      const Tensor scale = grad_loss.to(saved[1].scalar_type());
      out = {saved[0].defined() ? saved[0] * scale : Tensor(), saved[1] * scale};
    }
    out = gan_fast::once_differentiable(
        std::move(out), "gan_loss",
        "use the plain PyTorch loss where a second-order gradient goes through the loss");
    out.resize(6);  // no gradients for kind, side, reduction, label_smoothing
    return out;
  }
};

Tensor gan_loss_eager(const optional<Tensor>& real, const Tensor& fake, c10::string_view kind,
                      c10::string_view side, c10::string_view reduction,
                      double label_smoothing) {
  return LossFn::apply(real, fake, kind, side, reduction, label_smoothing);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_fast_C, m) {
  m.def(
      "gan_loss_eager(Tensor? real, Tensor fake, str kind, str side, str reduction,"
      " float label_smoothing) -> Tensor");
}

// CompositeImplicitAutograd: the function builds its own autograd node, so it
// serves every device and grad mode.
TORCH_LIBRARY_IMPL(gan_fast_C, CompositeImplicitAutograd, m) {
  m.impl("gan_loss_eager", &gan_loss_eager);
}

// The fused GAN loss on CPU: the op-level function (outputs, the final sum)
// and the at::vec DEFAULT build of the kernel (gan_loss_impl.h holds the
// formulas and the contract). Inputs were checked by csrc/bindings.cpp.
#define GAN_FAST_ISA base
#include "gan_loss_impl.h"
#undef GAN_FAST_ISA

#include <ATen/ops/empty.h>

#include "cpu_ops.h"

namespace gan_fast::cpu {
namespace {

const LossKernels& K() {
  static const LossKernels* table = [] {
    const LossKernels* avx2 = loss_kernels_avx2();
    return avx2 != nullptr ? avx2 : &base::loss_kernels();
  }();
  return *table;
}

// The reduced loss of one logits tensor (double); writes its gradient.
double loss_pass(LossMode mode, LossKind kind, const at::Tensor& x, at::Tensor& grad, bool mean,
                 double t) {
  const int64_t n = x.numel();
  const double s = K().pass(x.scalar_type(), mode, kind, x.const_data_ptr(), grad.data_ptr(), n,
                            mean, t);
  return mean ? s / static_cast<double>(n) : s;
}

template <typename A>
void write_loss(at::Tensor& loss, double total_real, double total_fake, bool has_real) {
  // terms are reduced separately and added in the accumulation type, as the reference does
  A v = static_cast<A>(total_fake);
  if (has_real) v = static_cast<A>(total_real) + v;
  switch (loss.scalar_type()) {
    case at::kFloat: *loss.data_ptr<float>() = static_cast<float>(v); break;
    case at::kDouble: *loss.data_ptr<double>() = static_cast<double>(v); break;
    case at::kHalf: *loss.data_ptr<c10::Half>() = c10::Half(static_cast<float>(v)); break;
    case at::kBFloat16:
      *loss.data_ptr<c10::BFloat16>() = c10::BFloat16(static_cast<float>(v));
      break;
    default: TORCH_CHECK(false, "gan_fast gan_loss: unsupported dtype ", loss.scalar_type());
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_fwd(
    const std::optional<at::Tensor>& real_opt, const at::Tensor& fake_in, LossKind kind,
    bool side_g, bool reduction_mean, double label_smoothing) {
  const at::Tensor fake = fake_in.contiguous();
  const double t_real = 1.0 - label_smoothing;  // target of the real-target term
  at::Tensor loss = at::empty({}, fake.options());
  at::Tensor grad_fake = at::empty(fake.sizes(), fake.options());
  at::Tensor grad_real;
  double total_real = 0, total_fake;
  if (side_g) {
    const bool neg = kind == LossKind::hinge || kind == LossKind::wgan;
    total_fake = loss_pass(neg ? kGenNeg : kRealTarget, kind, fake, grad_fake, reduction_mean,
                           t_real);
    grad_real = at::empty({0}, fake.options());
  } else {
    const at::Tensor real = real_opt->contiguous();
    grad_real = at::empty(real.sizes(), real.options());
    total_real = loss_pass(kRealTarget, kind, real, grad_real, reduction_mean, t_real);
    total_fake = loss_pass(kFakeTarget, kind, fake, grad_fake, reduction_mean, 0.0);
  }
  if (fake.scalar_type() == at::kDouble) {
    write_loss<double>(loss, total_real, total_fake, !side_g);
  } else {
    write_loss<float>(loss, total_real, total_fake, !side_g);
  }
  return {loss, grad_real, grad_fake};
}

}  // namespace gan_fast::cpu

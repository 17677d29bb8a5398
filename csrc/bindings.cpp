// Defines the schemas of the kernel ops (TORCH_LIBRARY(gan_fast_C): bn_act_train_fwd,
// bn_act_eval_fwd, bn_act_bwd, gan_loss_fwd), registers their CPU kernels, and exposes
// compiled_device_types() and the eager entry points (eager_ops.h) to Python as direct
// calls. The eager autograd ops add their own schemas next
// to their code (TORCH_LIBRARY_FRAGMENT in bn_act_autograd.cpp, conv_bn_act_autograd.cpp,
// gan_loss_autograd.cpp). The CUDA kernels are registered by csrc/cuda/bindings_cuda.cpp
// (TORCH_LIBRARY_IMPL(gan_fast_C, CUDA, m)) when the build has CUDA.
// Schemas and the contract: csrc/README.md and gan_fast/reference.py; what the CPU and
// CUDA bindings share (layouts, loss arguments): csrc/cuda/contract.h.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cuda/contract.h"
#include "eager_ops.h"

namespace {

using at::Tensor;
using std::optional;

bool is_supported_dtype(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_x(const Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 4, "gan_fast bn_act: ", name,
                    " must be a 4-D (N, C, H, W) tensor, got ", x.dim(), "-D with shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(is_supported_dtype(x.scalar_type()), "gan_fast bn_act: ", name,
                   " must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), "gan_fast bn_act (CPU kernel): ", name,
              " must be a CPU tensor, got ", x.device());
  TORCH_CHECK_VALUE(gan_fast::is_dense(x), "gan_fast bn_act: ", name,
                    " must be contiguous NCHW or channels_last, got strides ", x.strides());
  TORCH_CHECK_VALUE(x.size(1) > 0, "gan_fast bn_act: ", name, " must have at least one channel");
}

void check_affine(const Tensor& x, const optional<Tensor>& weight, const optional<Tensor>& bias) {
  TORCH_CHECK_VALUE(weight.has_value() == bias.has_value(),
                    "gan_fast bn_act: weight and bias must both be given or both be None");
  const int64_t C = x.size(1);
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!t->has_value()) continue;
    const Tensor& v = **t;
    TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == C, "gan_fast bn_act: ", name,
                      " must have shape (", C, ",) (the channels of x), got ", v.sizes());
    TORCH_CHECK_TYPE(v.scalar_type() == at::kFloat || v.scalar_type() == x.scalar_type(),
                     "gan_fast bn_act: ", name, " must be float32 or x's dtype (", x.scalar_type(),
                     "), got ", v.scalar_type());
    TORCH_CHECK(v.device().is_cpu(), "gan_fast bn_act (CPU kernel): ", name,
                " must be a CPU tensor, got ", v.device());
  }
}

void check_stat(const Tensor& x, const Tensor& t, const char* name) {
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == C, "gan_fast bn_act: ", name,
                    " must have shape (", C, ",) (the channels of x), got ", t.sizes());
  TORCH_CHECK_TYPE(is_supported_dtype(t.scalar_type()), "gan_fast bn_act: ", name,
                   " must be a floating-point tensor (float32, or float64 for float64 x), got ",
                   t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "gan_fast bn_act (CPU kernel): ", name,
              " must be a CPU tensor, got ", t.device());
}

// ------------------------------------------------------------ CPU wrappers
std::tuple<Tensor, Tensor, Tensor> bn_act_train_fwd_cpu(const Tensor& x,
                                                        const optional<Tensor>& weight,
                                                        const optional<Tensor>& bias, double eps,
                                                        double negative_slope) {
  check_x(x, "x");
  check_affine(x, weight, bias);
  return gan_fast::cpu::bn_act_train_fwd(x, weight, bias, eps, negative_slope);
}

Tensor bn_act_eval_fwd_cpu(const Tensor& x, const optional<Tensor>& weight,
                           const optional<Tensor>& bias, const Tensor& mean, const Tensor& var,
                           double eps, double negative_slope) {
  check_x(x, "x");
  check_affine(x, weight, bias);
  check_stat(x, mean, "mean");
  check_stat(x, var, "var");
  return gan_fast::cpu::bn_act_eval_fwd(x, weight, bias, mean, var, eps, negative_slope);
}

std::tuple<Tensor, Tensor, Tensor> bn_act_bwd_cpu(const Tensor& grad_out, const Tensor& x,
                                                  const optional<Tensor>& weight,
                                                  const optional<Tensor>& bias,
                                                  const Tensor& mean, const Tensor& var,
                                                  double eps, double negative_slope,
                                                  bool batch_stats) {
  check_x(x, "x");
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "gan_fast bn_act: grad_out must have x's shape ",
                    x.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(),
                   "gan_fast bn_act: grad_out must have x's dtype (", x.scalar_type(), "), got ",
                   grad_out.scalar_type());
  TORCH_CHECK(grad_out.device().is_cpu(), "gan_fast bn_act (CPU kernel): grad_out must be a CPU "
              "tensor, got ", grad_out.device());
  // grad_out in another layout than x is accepted and copied into x's layout
  check_affine(x, weight, bias);
  check_stat(x, mean, "mean");
  check_stat(x, var, "var");
  return gan_fast::cpu::bn_act_bwd(grad_out, x, weight, bias, mean, var, eps, negative_slope,
                                   batch_stats);
}

static_assert(static_cast<int>(gan_fast::cpu::LossKind::wgan) == gan_fast::kNumLossKinds - 1,
              "cpu::LossKind follows the order of gan_fast::kLossKinds");

void check_logits(const Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_supported_dtype(t.scalar_type()), "gan_fast gan_loss: ", name,
                   " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "gan_fast gan_loss (CPU kernel): ", name,
              " must be a CPU tensor, got ", t.device());
}

std::tuple<Tensor, Tensor, Tensor> gan_loss_fwd_cpu(const optional<Tensor>& real,
                                                    const Tensor& fake, c10::string_view kind,
                                                    c10::string_view side,
                                                    c10::string_view reduction,
                                                    double label_smoothing) {
  constexpr const char* op = "gan_fast gan_loss";
  const auto k = static_cast<gan_fast::cpu::LossKind>(gan_fast::loss_kind(kind, op));
  const bool side_g = gan_fast::loss_side_g(side, op);
  const bool mean = gan_fast::loss_mean(reduction, op);
  check_logits(fake, "fake");
  if (!side_g) {
    TORCH_CHECK_VALUE(real.has_value(), "gan_fast gan_loss: side 'd' needs real logits, got None");
    check_logits(*real, "real");
  }
  return gan_fast::cpu::gan_loss_fwd(side_g ? std::nullopt : real, fake, k, side_g, mean,
                                     label_smoothing);
}

std::vector<std::string> compiled_device_types() {
  std::vector<std::string> types{"cpu"};
#ifdef WITH_CUDA
  types.emplace_back("cuda");
#endif
  return types;
}

}  // namespace

TORCH_LIBRARY(gan_fast_C, m) {
  m.def(
      "bn_act_train_fwd(Tensor x, Tensor? weight, Tensor? bias, float eps, float negative_slope)"
      " -> (Tensor out, Tensor mean, Tensor var)");
  m.def(
      "bn_act_eval_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor var,"
      " float eps, float negative_slope) -> Tensor out");
  m.def(
      "bn_act_bwd(Tensor grad_out, Tensor x, Tensor? weight, Tensor? bias, Tensor mean,"
      " Tensor var, float eps, float negative_slope, bool batch_stats)"
      " -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "gan_loss_fwd(Tensor? real, Tensor fake, str kind, str side, str reduction,"
      " float label_smoothing) -> (Tensor loss, Tensor grad_real, Tensor grad_fake)");
}

TORCH_LIBRARY_IMPL(gan_fast_C, CPU, m) {
  m.impl("bn_act_train_fwd", &bn_act_train_fwd_cpu);
  m.impl("bn_act_eval_fwd", &bn_act_eval_fwd_cpu);
  m.impl("bn_act_bwd", &bn_act_bwd_cpu);
  m.impl("gan_loss_fwd", &gan_loss_fwd_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gan_fast compiled kernels; the ops are torch.ops.gan_fast_C.*";
  m.def("compiled_device_types", &compiled_device_types,
        "Device types with compiled kernels, e.g. ['cpu'] or ['cpu', 'cuda'].");
  m.def("cpu_isa", &gan_fast::cpu::bn_act_isa,
        "Instruction set of the CPU bn_act kernels in use: 'default' or 'avx2'.");
  // The eager ops as plain functions: the same C++ as torch.ops.gan_fast_C.<name>, called
  // without the dispatcher's boxed Python binding (gan_fast.kernels.cpp.eager_entry).
  namespace py = pybind11;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  namespace e = gan_fast::eager;
  m.def("bn_act_train_eager", &e::bn_act_train_eager, nogil);
  m.def("bn_act_eval_eager", &e::bn_act_eval_eager, nogil);
  m.def("gan_loss_eager", &e::gan_loss_eager, nogil);
  m.def("conv_bn_act_eager", &e::conv_bn_act_eager, nogil);
  m.def("conv_in_act_eager", &e::conv_in_act_eager, nogil);
  m.def("conv_act_eager", &e::conv_act_eager, nogil);
}

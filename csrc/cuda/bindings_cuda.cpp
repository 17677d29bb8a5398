// CUDA implementations of the gan_fast_C ops (schemas: csrc/bindings.cpp, csrc/README.md).
//
// Thin torch-side wrappers: check the inputs (device, dtype, layout, shapes; the
// messages name the argument), allocate the outputs in x's memory format and the
// workspace from PyTorch's caching allocator, launch the raw-pointer kernels of
// bn_act.cu / gan_loss.cu on the current stream of x's device, and turn a
// launch error into a c10::Error. Built with -DWITH_CUDA into gan_fast._C by setup.py,
// or on its own by the JIT fallback (gan_fast/_cuda_jit.py), loaded next to a
// gan_fast._C without CUDA kernels: so this file only adds kernels
// (TORCH_LIBRARY_IMPL), never TORCH_LIBRARY or a PYBIND11_MODULE.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include <optional>
#include <string>
#include <tuple>

#include "bn_act.h"
#include "contract.h"
#include "gan_loss.h"

namespace {

namespace gf = gan_fast::cuda;

// ------------------------------------------------------------------ helpers
std::string dtype_name(at::ScalarType t) { return std::string(c10::toString(t)); }

gf::DType kernel_dtype(at::ScalarType t, const char* op, const char* arg) {
  switch (t) {
    case at::kFloat: return gf::DType::Float32;
    case at::kHalf: return gf::DType::Float16;
    case at::kBFloat16: return gf::DType::BFloat16;
    default:
      TORCH_CHECK(false, op, ": ", arg, " must be float32, float16 or bfloat16 on CUDA, got ",
                  dtype_name(t),
                  (t == at::kDouble ? " (the CUDA kernels have no float64: use the reference backend)" : ""));
  }
  return gf::DType::Float32;  // unreachable
}

void check_launch(cudaError_t e, const char* op) {
  TORCH_CHECK(e == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(e));
}

// x: 4-D, CUDA, float32/float16/bfloat16, dense NCHW or channels_last.
struct XInfo {
  int64_t N, C, HW;
  gf::Layout layout;
  at::MemoryFormat fmt;
  gf::DType dtype;
};

XInfo check_x(const at::Tensor& x, const char* op, const char* arg = "x") {
  TORCH_CHECK(x.is_cuda(), op, ": ", arg, " must be a CUDA tensor, got one on ", x.device());
  TORCH_CHECK(x.dim() == 4, op, ": ", arg, " must be 4-D (N, C, H, W), got ", x.dim(),
              "-D with shape ", x.sizes());
  XInfo xi;
  xi.dtype = kernel_dtype(x.scalar_type(), op, arg);
  xi.N = x.size(0);
  xi.C = x.size(1);
  xi.HW = x.size(2) * x.size(3);
  TORCH_CHECK(gan_fast::is_dense(x), op, ": ", arg,
              " must be contiguous in NCHW or channels_last memory format, got strides ",
              x.strides(), " for shape ", x.sizes(), " (call .contiguous())");
  // the outputs' layout (contract.h): a tensor that is both (size-1 dims) is NCHW
  xi.fmt = gan_fast::memory_format(x);
  xi.layout = xi.fmt == at::MemoryFormat::ChannelsLast ? gf::Layout::NHWC : gf::Layout::NCHW;
  TORCH_CHECK(xi.C <= (int64_t(1) << 30), op, ": ", arg, " has too many channels (", xi.C, ")");
  return xi;
}

// A per-channel tensor: (C,) on x's device.
void check_channels(const at::Tensor& t, const at::Tensor& x, const XInfo& xi, const char* op,
                    const char* arg) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", arg, " is on ", t.device(), " but x is on ",
              x.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == xi.C, op, ": ", arg, " must have shape (", xi.C,
              ",) to match the channels of x, got ", t.sizes());
}

// weight / bias: (C,) float32 or x's dtype on x's device; returns a contiguous tensor.
at::Tensor check_param(const at::Tensor& t, const at::Tensor& x, const XInfo& xi, const char* op,
                       const char* arg) {
  check_channels(t, x, xi, op, arg);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == x.scalar_type(), op, ": ", arg,
              " must be float32 or x's dtype ", dtype_name(x.scalar_type()), ", got ",
              dtype_name(t.scalar_type()));
  return t.contiguous();
}

struct Params {
  at::Tensor weight, bias;  // undefined when absent
  bool has_affine = false;
  gf::DType wdt = gf::DType::Float32, bdt = gf::DType::Float32;
  const void* wptr() const { return has_affine ? weight.data_ptr() : nullptr; }
  const void* bptr() const { return has_affine ? bias.data_ptr() : nullptr; }
};

Params check_affine(const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                    const at::Tensor& x, const XInfo& xi, const char* op) {
  const bool hw = weight.has_value() && weight->defined();
  const bool hb = bias.has_value() && bias->defined();
  TORCH_CHECK(hw == hb, op, ": weight and bias must be both given or both None (got weight ",
              hw ? "given" : "None", ", bias ", hb ? "given" : "None", ")");
  Params p;
  if (!hw) return p;
  p.has_affine = true;
  p.weight = check_param(*weight, x, xi, op, "weight");
  p.bias = check_param(*bias, x, xi, op, "bias");
  p.wdt = kernel_dtype(p.weight.scalar_type(), op, "weight");
  p.bdt = kernel_dtype(p.bias.scalar_type(), op, "bias");
  return p;
}

// mean / var: (C,) float32 on x's device; returns a contiguous tensor.
at::Tensor check_stat(const at::Tensor& t, const at::Tensor& x, const XInfo& xi, const char* op,
                      const char* arg) {
  check_channels(t, x, xi, op, arg);
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", arg, " must be float32, got ",
              dtype_name(t.scalar_type()));
  return t.contiguous();
}

at::Tensor bn_workspace(const at::Tensor& x, const XInfo& xi) {
  const size_t bytes = gf::bn_act_workspace_bytes(xi.N, xi.C, xi.HW, xi.layout);
  return at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}

cudaStream_t current_stream(const at::Tensor& x) {
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
}

// -------------------------------------------------------------------- bn_act
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_fwd_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, double negative_slope) {
  constexpr const char* op = "gan_fast_C::bn_act_train_fwd";
  const XInfo xi = check_x(x, op);
  const Params p = check_affine(weight, bias, x, xi, op);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(xi.fmt));
  at::Tensor mean = at::empty({xi.C}, x.options().dtype(at::kFloat));
  at::Tensor var = at::empty({xi.C}, x.options().dtype(at::kFloat));
  at::Tensor ws = bn_workspace(x, xi);
  check_launch(gf::bn_act_train_fwd(x.data_ptr(), p.wptr(), p.wdt, p.bptr(), p.bdt,
                                    out.data_ptr(), mean.data_ptr<float>(),
                                    var.data_ptr<float>(), ws.data_ptr(), xi.N, xi.C, xi.HW,
                                    xi.layout, xi.dtype, static_cast<float>(eps),
                                    static_cast<float>(negative_slope), p.has_affine,
                                    current_stream(x)),
               op);
  return {out, mean, var};
}

at::Tensor bn_act_eval_fwd_cuda(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                                const at::Tensor& var, double eps, double negative_slope) {
  constexpr const char* op = "gan_fast_C::bn_act_eval_fwd";
  const XInfo xi = check_x(x, op);
  const Params p = check_affine(weight, bias, x, xi, op);
  const at::Tensor m = check_stat(mean, x, xi, op, "mean");
  const at::Tensor v = check_stat(var, x, xi, op, "var");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(xi.fmt));
  at::Tensor ws = bn_workspace(x, xi);
  check_launch(gf::bn_act_eval_fwd(x.data_ptr(), p.wptr(), p.wdt, p.bptr(), p.bdt,
                                   m.data_ptr<float>(), v.data_ptr<float>(), out.data_ptr(),
                                   ws.data_ptr(), xi.N, xi.C, xi.HW, xi.layout, xi.dtype,
                                   static_cast<float>(eps), static_cast<float>(negative_slope),
                                   p.has_affine, current_stream(x)),
               op);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& var,
    double eps, double negative_slope, bool batch_stats) {
  constexpr const char* op = "gan_fast_C::bn_act_bwd";
  const XInfo xi = check_x(x, op);
  TORCH_CHECK(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(),
              " but x is on ", x.device());
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out must have x's shape ", x.sizes(),
              ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out must have x's dtype ",
              dtype_name(x.scalar_type()), ", got ", dtype_name(grad_out.scalar_type()));
  // The kernels read grad_out with x's strides: bring it into x's layout (a no-op
  // when it already is, which is what gan_fast's autograd passes).
  const at::Tensor g = grad_out.contiguous(xi.fmt);
  const Params p = check_affine(weight, bias, x, xi, op);
  const at::Tensor m = check_stat(mean, x, xi, op, "mean");
  const at::Tensor v = check_stat(var, x, xi, op, "var");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(xi.fmt));
  // grad_weight / grad_bias in weight's / bias's dtype, float32 without affine.
  at::Tensor gw = at::empty({xi.C}, x.options().dtype(p.has_affine ? p.weight.scalar_type() : at::kFloat));
  at::Tensor gb = at::empty({xi.C}, x.options().dtype(p.has_affine ? p.bias.scalar_type() : at::kFloat));
  const gf::DType gwdt = kernel_dtype(gw.scalar_type(), op, "grad_weight");
  const gf::DType gbdt = kernel_dtype(gb.scalar_type(), op, "grad_bias");
  at::Tensor ws = bn_workspace(x, xi);
  check_launch(gf::bn_act_bwd(g.data_ptr(), x.data_ptr(), p.wptr(), p.wdt, p.bptr(), p.bdt,
                              m.data_ptr<float>(), v.data_ptr<float>(), gx.data_ptr(),
                              gw.data_ptr(), gwdt, gb.data_ptr(), gbdt, ws.data_ptr(), xi.N,
                              xi.C, xi.HW, xi.layout, xi.dtype, static_cast<float>(eps),
                              static_cast<float>(negative_slope), p.has_affine, batch_stats,
                              current_stream(x)),
               op);
  return {gx, gw, gb};
}

// ------------------------------------------------------------------ gan_loss
static_assert(static_cast<int>(gf::LossKind::WGAN) == gan_fast::kNumLossKinds - 1,
              "cuda::LossKind follows the order of gan_fast::kLossKinds");

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_fwd_cuda(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, c10::string_view kind,
    c10::string_view side, c10::string_view reduction, double label_smoothing) {
  constexpr const char* op = "gan_fast_C::gan_loss_fwd";
  const auto k = static_cast<gf::LossKind>(gan_fast::loss_kind(kind, op));
  const bool side_d = !gan_fast::loss_side_g(side, op);
  const bool mean = gan_fast::loss_mean(reduction, op);
  TORCH_CHECK(fake.is_cuda(), op, ": fake must be a CUDA tensor, got one on ", fake.device());
  const gf::DType dt = kernel_dtype(fake.scalar_type(), op, "fake");
  const at::Tensor f = fake.contiguous();
  at::Tensor r;
  if (side_d) {  // side 'g' ignores real, like the reference
    TORCH_CHECK(real.has_value() && real->defined(), op,
                ": side 'd' needs the logits of real images (real is None)");
    TORCH_CHECK(real->device() == fake.device(), op, ": real is on ", real->device(),
                " but fake is on ", fake.device());
    TORCH_CHECK(real->scalar_type() == fake.scalar_type(), op,
                ": real and fake must have the same dtype, got ", dtype_name(real->scalar_type()),
                " and ", dtype_name(fake.scalar_type()));
    r = real->contiguous();
  }
  const c10::cuda::CUDAGuard guard(fake.device());
  at::Tensor loss = at::empty({}, fake.options());
  at::Tensor grad_fake = at::empty(f.sizes(), f.options());
  at::Tensor grad_real = side_d ? at::empty(r.sizes(), r.options()) : at::empty({0}, fake.options());
  const int64_t n_real = side_d ? r.numel() : 0;
  const size_t bytes = gf::gan_loss_workspace_bytes(n_real, f.numel());
  at::Tensor ws;
  if (bytes > 0) ws = at::empty({static_cast<int64_t>(bytes)}, fake.options().dtype(at::kByte));
  check_launch(gf::gan_loss_fwd(side_d ? r.data_ptr() : nullptr, n_real, f.data_ptr(), f.numel(),
                                loss.data_ptr(), side_d ? grad_real.data_ptr() : nullptr,
                                grad_fake.data_ptr(), bytes > 0 ? ws.data_ptr() : nullptr, dt, k,
                                side_d ? gf::LossSide::D : gf::LossSide::G,
                                mean ? gf::LossReduction::Mean : gf::LossReduction::Sum,
                                label_smoothing, current_stream(fake)),
               op);
  return {loss, grad_real, grad_fake};
}

}  // namespace

TORCH_LIBRARY_IMPL(gan_fast_C, CUDA, m) {
  m.impl("bn_act_train_fwd", TORCH_FN(bn_act_train_fwd_cuda));
  m.impl("bn_act_eval_fwd", TORCH_FN(bn_act_eval_fwd_cuda));
  m.impl("bn_act_bwd", TORCH_FN(bn_act_bwd_cuda));
  m.impl("gan_loss_fwd", TORCH_FN(gan_loss_fwd_cuda));
}

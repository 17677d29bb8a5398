// The fused GAN loss on CPU: one pass per logits tensor computes the reduced
// loss and writes d(loss)/d(logits). Contract: gan_loss_fwd in
// gan_fast/reference.py, including its NaN/inf behaviour (which mirrors
// PyTorch's autograd):
//   bce    term(x, t) = (1 - t) * x - logsigmoid(x)   grad sigmoid(x) - t
//          (t = 1 - label_smoothing for the real-target term, 0 for D's fakes)
//   hinge  D real relu(1 - x), grad (1 - x <= 0) ? 0 : -1 (NaN passes -1)
//          D fake relu(1 + x), grad (1 + x <= 0) ? 0 : 1
//   lsgan  real-target (x - 1)^2, D fake x^2
//   wgan   D real -x, D fake x;  G side hinge/wgan: -x, grad -1
// mean reduction divides each tensor's sum and gradient by its own numel.
// Logits are usually tiny (one per image), so this is launch-bound: it runs
// inline below kParallelMin elements and in fixed chunks (deterministic sums)
// above.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <vector>

#include "cpu_ops.h"

namespace gan_fast::cpu {
namespace {

constexpr int64_t kChunk = 16384;
constexpr int64_t kParallelMin = 65536;

enum Mode { kRealTarget = 0, kFakeTarget = 1, kGenNeg = 2 };  // kGenNeg: G side -x

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

// relu that lets NaN through (like torch.relu)
template <typename A>
inline A relu_nan(A v) { return v <= A(0) ? A(0) : v; }

template <LossKind kKind, int kMode, typename A>
inline void term(A x, A c1, A t, A& val, A& grad) {
  if constexpr (kMode == kGenNeg) {
    val = -x;
    grad = A(-1);
  } else if constexpr (kKind == LossKind::bce) {
    // logsigmoid(x) = min(x, 0) - log1p(exp(-|x|)); NaN propagates via exp
    const A ls = (x < A(0) ? x : A(0)) - std::log1p(std::exp(-std::abs(x)));
    val = c1 * x - ls;
    grad = A(1) / (A(1) + std::exp(-x)) - t;
  } else if constexpr (kKind == LossKind::hinge) {
    if constexpr (kMode == kRealTarget) {
      const A v = A(1) - x;
      val = relu_nan(v);
      grad = v <= A(0) ? A(0) : A(-1);
    } else {
      const A v = A(1) + x;
      val = relu_nan(v);
      grad = v <= A(0) ? A(0) : A(1);
    }
  } else if constexpr (kKind == LossKind::lsgan) {
    const A d = kMode == kRealTarget ? x - A(1) : x;
    val = d * d;
    grad = A(2) * d;
  } else {  // wgan
    if constexpr (kMode == kRealTarget) {
      val = -x;
      grad = A(-1);
    } else {
      val = x;
      grad = A(1);
    }
  }
}

// Sum of the loss terms over x[0, n); writes grad[i] (divided by n if mean).
template <LossKind kKind, int kMode, typename T>
double loss_pass_t(const T* x, T* grad, int64_t n, bool mean, double t_d) {
  using A = typename AccOf<T>::type;
  const A t = static_cast<A>(t_d);
  const A c1 = static_cast<A>(1.0 - t_d);
  const A denom = static_cast<A>(n);
  auto run = [&](int64_t b, int64_t e) {
    double s = 0;
    for (int64_t i = b; i < e; ++i) {
      A val, g;
      term<kKind, kMode, A>(static_cast<A>(x[i]), c1, t, val, g);
      s += static_cast<double>(val);
      grad[i] = static_cast<T>(mean ? g / denom : g);
    }
    return s;
  };
  if (n < kParallelMin) return run(0, n);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) part[c] = run(c * kChunk, std::min(n, (c + 1) * kChunk));
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}

template <int kMode, typename T>
double loss_pass_k(LossKind kind, const T* x, T* grad, int64_t n, bool mean, double t) {
  switch (kind) {
    case LossKind::bce: return loss_pass_t<LossKind::bce, kMode, T>(x, grad, n, mean, t);
    case LossKind::hinge: return loss_pass_t<LossKind::hinge, kMode, T>(x, grad, n, mean, t);
    case LossKind::lsgan: return loss_pass_t<LossKind::lsgan, kMode, T>(x, grad, n, mean, t);
    case LossKind::wgan: return loss_pass_t<LossKind::wgan, kMode, T>(x, grad, n, mean, t);
  }
  return 0;
}

template <typename T>
double loss_pass_m(int mode, LossKind kind, const T* x, T* grad, int64_t n, bool mean, double t) {
  switch (mode) {
    case kRealTarget: return loss_pass_k<kRealTarget, T>(kind, x, grad, n, mean, t);
    case kFakeTarget: return loss_pass_k<kFakeTarget, T>(kind, x, grad, n, mean, t);
    default: return loss_pass_k<kGenNeg, T>(kind, x, grad, n, mean, t);
  }
}

// Returns the reduced loss of one logits tensor (double), writing its gradient.
double loss_pass(int mode, LossKind kind, const at::Tensor& x, at::Tensor& grad, bool mean,
                 double t) {
  const int64_t n = x.numel();
  double s;
  switch (x.scalar_type()) {
    case at::kFloat:
      s = loss_pass_m<float>(mode, kind, x.const_data_ptr<float>(), grad.data_ptr<float>(), n,
                             mean, t);
      break;
    case at::kDouble:
      s = loss_pass_m<double>(mode, kind, x.const_data_ptr<double>(), grad.data_ptr<double>(), n,
                              mean, t);
      break;
    case at::kHalf:
      s = loss_pass_m<c10::Half>(mode, kind, x.const_data_ptr<c10::Half>(),
                                 grad.data_ptr<c10::Half>(), n, mean, t);
      break;
    case at::kBFloat16:
      s = loss_pass_m<c10::BFloat16>(mode, kind, x.const_data_ptr<c10::BFloat16>(),
                                     grad.data_ptr<c10::BFloat16>(), n, mean, t);
      break;
    default:
      TORCH_CHECK(false, "gan_fast gan_loss: unsupported dtype ", x.scalar_type());
  }
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

// BatchNorm2d + LeakyReLU on CPU: the op-level functions (allocate outputs,
// per-channel parameters) and the at::vec DEFAULT build of the kernels.
// The contract is gan_fast/reference.py (bn_act_train_fwd, bn_act_eval_fwd,
// bn_act_bwd); inputs were checked by csrc/bindings.cpp.
//
// Passes over the data: training forward = stats + apply (2 reads, 1 write);
// backward = reduce + apply (4 reads, 1 write). For NCHW channels that fit in
// cache (channel_local) both run per channel in one task, so the second read
// comes from cache: 1 read + 1 write forward, 2 reads + 1 write backward.
#define GAN_FAST_ISA base
#include "bn_act_impl.h"
#undef GAN_FAST_ISA

#include <ATen/ops/empty.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "../cuda/contract.h"
#include "cpu_ops.h"

namespace gan_fast::cpu {
namespace {

const BnKernels& K() {
  static const BnKernels* table = [] {
    const BnKernels* avx2 = bn_kernels_avx2();
    return avx2 != nullptr ? avx2 : &base::kernels();
  }();
  return *table;
}

// channels_last with C not a multiple of the vector width (e.g. C = 3): the
// kernels would run the leftover channels of every row as scalars. Instead
// view the data as rows of P = lcm(C, 16) values (P / C pixels each) with the
// per-channel arrays tiled to length P, so the vector path covers it; the
// last pixels that do not fill a P-row go through the plain C-channel shape.
struct Split {
  bool tiled = false;
  int64_t P = 0;
  BnShape main{}, tail{};
  int64_t tail_offset = 0;  // elements
};

Split split_of(const BnShape& s) {
  Split sp;
  constexpr int64_t kVec = 16;  // float lanes per step (also a multiple of the double step)
  if (!s.channels_last || s.C % kVec == 0) return sp;
  const int64_t P = std::lcm(s.C, kVec);
  const int64_t total = s.N * s.HW * s.C, rows = total / P;
  if (P > 1024 || rows == 0) return sp;
  sp.tiled = true;
  sp.P = P;
  sp.main = BnShape{1, P, rows, true};
  sp.tail = BnShape{1, s.C, (total - rows * P) / s.C, true};
  sp.tail_offset = rows * P;
  return sp;
}

template <typename T>
std::vector<T> tiled(const T* v, int64_t C, int64_t P) {
  std::vector<T> out(P);
  for (int64_t p = 0; p < P; ++p) out[p] = v[p % C];
  return out;
}

const void* offset(const void* p, int64_t elems, int64_t elem_size) {
  return static_cast<const char*>(p) + elems * elem_size;
}
void* offset(void* p, int64_t elems, int64_t elem_size) {
  return static_cast<char*>(p) + elems * elem_size;
}

// The kernel calls, with the small-C channels_last split applied.
template <typename acc_t>
void run_reduce(bool stats, c10::ScalarType dt, int64_t es, const void* g, const void* x,
                const BnShape& s, const acc_t* K_or_mean, const acc_t* scale, const acc_t* bias,
                double slope, double* U, double* W) {
  auto call = [&](const BnShape& sh, int64_t off, const acc_t* a0, const acc_t* a1,
                  const acc_t* a2, double* u, double* w) {
    if (stats) {
      K().stats(dt, offset(x, off, es), sh, a0, u, w);
    } else {
      K().bwd_reduce(dt, offset(g, off, es), offset(x, off, es), sh, a0, a1, a2, slope, u, w);
    }
  };
  const Split sp = split_of(s);
  if (!sp.tiled) {
    call(s, 0, K_or_mean, scale, bias, U, W);
    return;
  }
  const int64_t C = s.C, P = sp.P;
  const std::vector<acc_t> t0 = tiled(K_or_mean, C, P);
  const std::vector<acc_t> t1 = stats ? std::vector<acc_t>() : tiled(scale, C, P);
  const std::vector<acc_t> t2 = stats ? std::vector<acc_t>() : tiled(bias, C, P);
  std::vector<double> u(P, 0.0), w(P, 0.0);
  call(sp.main, 0, t0.data(), t1.data(), t2.data(), u.data(), w.data());
  for (int64_t c = 0; c < C; ++c) U[c] = W[c] = 0.0;
  for (int64_t p = 0; p < P; ++p) {
    U[p % C] += u[p];
    W[p % C] += w[p];
  }
  if (sp.tail.HW > 0) {
    std::vector<double> tu(C, 0.0), tw(C, 0.0);
    call(sp.tail, sp.tail_offset, K_or_mean, scale, bias, tu.data(), tw.data());
    for (int64_t c = 0; c < C; ++c) {
      U[c] += tu[c];
      W[c] += tw[c];
    }
  }
}

// apply (B == nullptr) or bwd_apply
template <typename acc_t>
void run_map(c10::ScalarType dt, int64_t es, const void* g, const void* x, void* out,
             const BnShape& s, const acc_t* mean, const acc_t* scale, const acc_t* bias,
             const acc_t* B, const acc_t* K2, double slope, bool batch_stats) {
  auto call = [&](const BnShape& sh, int64_t off, const acc_t* m, const acc_t* sc,
                  const acc_t* b, const acc_t* bb, const acc_t* k2) {
    if (g == nullptr) {
      K().apply(dt, offset(x, off, es), offset(out, off, es), sh, m, sc, b, slope);
    } else {
      K().bwd_apply(dt, offset(g, off, es), offset(x, off, es), offset(out, off, es), sh, m, sc,
                    b, bb, k2, slope, batch_stats);
    }
  };
  const Split sp = split_of(s);
  if (!sp.tiled) {
    call(s, 0, mean, scale, bias, B, K2);
    return;
  }
  const int64_t C = s.C, P = sp.P;
  const std::vector<acc_t> tm = tiled(mean, C, P), ts = tiled(scale, C, P), tb = tiled(bias, C, P);
  const std::vector<acc_t> tB = B ? tiled(B, C, P) : std::vector<acc_t>();
  const std::vector<acc_t> tK = K2 ? tiled(K2, C, P) : std::vector<acc_t>();
  call(sp.main, 0, tm.data(), ts.data(), tb.data(), B ? tB.data() : nullptr,
       K2 ? tK.data() : nullptr);
  if (sp.tail.HW > 0) call(sp.tail, sp.tail_offset, mean, scale, bias, B, K2);
}

// channel_local, unless GAN_FAST_CPU_CHANNEL_LOCAL=0 (read per call: for A/B
// timings and the test that both paths give the same bits).
bool use_local(const BnShape& s, int64_t elem_size) {
  const char* env = std::getenv("GAN_FAST_CPU_CHANNEL_LOCAL");
  return channel_local(s, elem_size) && !(env != nullptr && std::strcmp(env, "0") == 0);
}

BnShape shape_of(const at::Tensor& x) {
  return BnShape{x.size(0), x.size(1), x.size(2) * x.size(3), gan_fast::channels_last(x)};
}

at::MemoryFormat format_of(const BnShape& s) {
  return s.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// A 1-D float tensor of any float dtype as a vector of acc_t.
template <typename acc_t>
std::vector<acc_t> to_acc(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const int64_t n = c.numel();
  std::vector<acc_t> v(n);
  switch (c.scalar_type()) {
    case at::kFloat: {
      const float* p = c.const_data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) v[i] = static_cast<acc_t>(p[i]);
      break;
    }
    case at::kDouble: {
      const double* p = c.const_data_ptr<double>();
      for (int64_t i = 0; i < n; ++i) v[i] = static_cast<acc_t>(p[i]);
      break;
    }
    case at::kHalf: {
      const c10::Half* p = c.const_data_ptr<c10::Half>();
      for (int64_t i = 0; i < n; ++i) v[i] = static_cast<acc_t>(static_cast<float>(p[i]));
      break;
    }
    case at::kBFloat16: {
      const c10::BFloat16* p = c.const_data_ptr<c10::BFloat16>();
      for (int64_t i = 0; i < n; ++i) v[i] = static_cast<acc_t>(static_cast<float>(p[i]));
      break;
    }
    default:
      TORCH_CHECK(false, "gan_fast: unsupported dtype ", c.scalar_type());
  }
  return v;
}

// Writes double values into a 1-D tensor of any float dtype.
void fill_from(at::Tensor& t, const std::vector<double>& v) {
  const int64_t n = t.numel();
  switch (t.scalar_type()) {
    case at::kFloat: {
      float* p = t.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(v[i]);
      break;
    }
    case at::kDouble: {
      double* p = t.data_ptr<double>();
      for (int64_t i = 0; i < n; ++i) p[i] = v[i];
      break;
    }
    case at::kHalf: {
      c10::Half* p = t.data_ptr<c10::Half>();
      for (int64_t i = 0; i < n; ++i) p[i] = c10::Half(static_cast<float>(v[i]));
      break;
    }
    case at::kBFloat16: {
      c10::BFloat16* p = t.data_ptr<c10::BFloat16>();
      for (int64_t i = 0; i < n; ++i) p[i] = c10::BFloat16(static_cast<float>(v[i]));
      break;
    }
    default:
      TORCH_CHECK(false, "gan_fast: unsupported dtype ", t.scalar_type());
  }
}

// x's element at flat offset `off`, converted to acc_t.
template <typename acc_t>
acc_t element(const at::Tensor& x, int64_t off) {
  switch (x.scalar_type()) {
    case at::kFloat: return static_cast<acc_t>(x.const_data_ptr<float>()[off]);
    case at::kDouble: return static_cast<acc_t>(x.const_data_ptr<double>()[off]);
    case at::kHalf:
      return static_cast<acc_t>(static_cast<float>(x.const_data_ptr<c10::Half>()[off]));
    case at::kBFloat16:
      return static_cast<acc_t>(static_cast<float>(x.const_data_ptr<c10::BFloat16>()[off]));
    default: TORCH_CHECK(false, "gan_fast: unsupported dtype ", x.scalar_type());
  }
}

// 1 / sqrt(var + eps) in acc_t, rounded as torch.rsqrt(var + eps) rounds it (a
// correctly rounded add, sqrt and division), so that z = (x - mean) * scale +
// bias matches the reference bit for bit (and so does the side of the
// activation's kink an element falls on).
template <typename acc_t>
acc_t invstd_of(acc_t var, double eps) {
  return acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
}

// Per-channel parameters of z = (x - mean) * scale + bias for given
// statistics (eval forward, backward): invstd_of(var) and scale = weight *
// invstd in acc_t, as the training forward's FwdFinish computes them.
template <typename acc_t>
struct ChannelParams {
  std::vector<acc_t> invstd, scale, bias;
};

template <typename acc_t>
ChannelParams<acc_t> channel_params(const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias, const at::Tensor& var,
                                    double eps) {
  ChannelParams<acc_t> p;
  p.invstd = to_acc<acc_t>(var);
  for (acc_t& v : p.invstd) v = invstd_of(v, eps);
  const size_t C = p.invstd.size();
  if (weight.has_value()) {
    const std::vector<acc_t> w = to_acc<acc_t>(*weight);
    p.scale.resize(C);
    for (size_t c = 0; c < C; ++c) p.scale[c] = w[c] * p.invstd[c];
    p.bias = to_acc<acc_t>(*bias);
  } else {
    p.scale = p.invstd;
    p.bias.assign(C, acc_t(0));
  }
  return p;
}

// Training forward, per channel once its sums X, Q are known: the batch mean and
// biased variance (into the outputs) and z's parameters mean/scale/bias.
template <typename acc_t>
struct FwdFinish {
  const acc_t *K, *weight, *bias;  // weight/bias null without affine
  acc_t *mean_out, *var_out, *mean, *scale, *shift;
  double n, eps;

  static void call(void* self, int64_t c, double X, double Q) {
    auto& f = *static_cast<FwdFinish*>(self);
    const double k = static_cast<double>(f.K[c]);
    // mean, and mean - K for the shifted variance
    const double m = std::is_same_v<acc_t, double> ? k + X / f.n : X / f.n;
    const double d = std::is_same_v<acc_t, double> ? X / f.n : m - k;
    const double v = Q / f.n - d * d;  // biased variance (NaN stays NaN)
    f.mean[c] = f.mean_out[c] = static_cast<acc_t>(m);
    const acc_t var = f.var_out[c] = static_cast<acc_t>(v < 0 ? 0.0 : v);
    const acc_t invstd = invstd_of(var, f.eps);
    f.scale[c] = f.weight ? f.weight[c] * invstd : invstd;
    f.shift[c] = f.bias ? f.bias[c] : acc_t(0);
  }
};

template <typename acc_t>
void train_fwd_impl(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                    const std::optional<at::Tensor>& bias, double eps, double slope,
                    at::Tensor& out, at::Tensor& mean_t, at::Tensor& var_t) {
  const BnShape s = shape_of(x);
  const int64_t C = s.C, count = s.N * s.HW;
  std::vector<acc_t> shift_k(C, acc_t(0)), mean(C), scale(C), shift(C);
  const std::vector<acc_t> w = weight ? to_acc<acc_t>(*weight) : std::vector<acc_t>();
  const std::vector<acc_t> b = bias ? to_acc<acc_t>(*bias) : std::vector<acc_t>();
  FwdFinish<acc_t> fin{shift_k.data(), weight ? w.data() : nullptr, bias ? b.data() : nullptr,
                       mean_t.data_ptr<acc_t>(), var_t.data_ptr<acc_t>(), mean.data(),
                       scale.data(), shift.data(), static_cast<double>(count), eps};
  if (count == 0) {  // NaN statistics, as the reference's 0/0
    for (int64_t c = 0; c < C; ++c) FwdFinish<acc_t>::call(&fin, c, 0.0, 0.0);
    return;
  }
  for (int64_t c = 0; c < C; ++c) shift_k[c] = element<acc_t>(x, s.channels_last ? c : c * s.HW);
  const auto dt = x.scalar_type();
  if (use_local(s, x.element_size())) {
    K().train_local(dt, x.const_data_ptr(), out.data_ptr(), s, shift_k.data(),
                    &FwdFinish<acc_t>::call, &fin, mean.data(), scale.data(), shift.data(), slope);
    return;
  }
  std::vector<double> X(C, 0.0), Q(C, 0.0);
  run_reduce<acc_t>(true, dt, x.element_size(), nullptr, x.const_data_ptr(), s, shift_k.data(),
                    nullptr, nullptr, 0.0, X.data(), Q.data());
  for (int64_t c = 0; c < C; ++c) FwdFinish<acc_t>::call(&fin, c, X[c], Q[c]);
  run_map<acc_t>(dt, x.element_size(), nullptr, x.const_data_ptr(), out.data_ptr(), s,
                 mean.data(), scale.data(), shift.data(), nullptr, nullptr, slope, false);
}

}  // namespace

const char* bn_act_isa() { return &K() == &base::kernels() ? "default" : "avx2"; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_fwd(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, double negative_slope) {
  const BnShape s = shape_of(x);
  const bool f64 = x.scalar_type() == at::kDouble;
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(format_of(s)));
  const auto stat_opts = x.options().dtype(f64 ? at::kDouble : at::kFloat);
  at::Tensor mean = at::empty({s.C}, stat_opts), var = at::empty({s.C}, stat_opts);
  if (f64) {
    train_fwd_impl<double>(x, weight, bias, eps, negative_slope, out, mean, var);
  } else {
    train_fwd_impl<float>(x, weight, bias, eps, negative_slope, out, mean, var);
  }
  return {out, mean, var};
}

namespace {
template <typename acc_t>
void eval_fwd_impl(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                   const std::optional<at::Tensor>& bias, const at::Tensor& mean_t,
                   const at::Tensor& var_t, double eps, double slope, at::Tensor& out) {
  const BnShape s = shape_of(x);
  if (x.numel() == 0) return;
  const std::vector<acc_t> mean = to_acc<acc_t>(mean_t);
  const ChannelParams<acc_t> p = channel_params<acc_t>(weight, bias, var_t, eps);
  run_map<acc_t>(x.scalar_type(), x.element_size(), nullptr, x.const_data_ptr(), out.data_ptr(), s,
                 mean.data(), p.scale.data(), p.bias.data(), nullptr, nullptr, slope, false);
}

// Backward, per channel once sum_dz and sum_dz_xc are known: a = weight * invstd
// (= scale); gx = a*dz - a*sum_dz/n - (x - mean) * a*invstd^2*sum_dz_xc/n, so
// B = a*sum_dz/n, K2 = a*invstd^2*sum_dz_xc/n; grad weight = sum_dz_xc*invstd.
template <typename acc_t>
struct BwdFinish {
  const acc_t *scale, *invstd;
  acc_t *B, *K2;
  double *sum_dz, *grad_w;
  double n;

  static void call(void* self, int64_t c, double sum_dz, double sum_dz_xc) {
    auto& f = *static_cast<BwdFinish*>(self);
    const double a = f.scale[c], inv = f.invstd[c];
    f.B[c] = static_cast<acc_t>(a * sum_dz / f.n);
    f.K2[c] = static_cast<acc_t>(a * inv * inv * sum_dz_xc / f.n);
    f.sum_dz[c] = sum_dz;
    f.grad_w[c] = sum_dz_xc * inv;
  }
};

template <typename acc_t>
void bwd_impl(const at::Tensor& g, const at::Tensor& x, const std::optional<at::Tensor>& weight,
              const std::optional<at::Tensor>& bias, const at::Tensor& mean_t,
              const at::Tensor& var_t, double eps, double slope, bool batch_stats, at::Tensor& gx,
              at::Tensor& gw, at::Tensor& gb) {
  const BnShape s = shape_of(x);
  const int64_t C = s.C, count = s.N * s.HW;
  const std::vector<acc_t> mean = to_acc<acc_t>(mean_t);
  const ChannelParams<acc_t> p = channel_params<acc_t>(weight, bias, var_t, eps);
  std::vector<double> sum_dz(C, 0.0), grad_w(C, 0.0);
  std::vector<acc_t> B(C), K2(C);
  BwdFinish<acc_t> fin{p.scale.data(), p.invstd.data(), B.data(), K2.data(),
                       sum_dz.data(),  grad_w.data(),   static_cast<double>(count)};
  const auto dt = x.scalar_type();
  if (use_local(s, x.element_size())) {
    K().bwd_local(dt, g.const_data_ptr(), x.const_data_ptr(), gx.data_ptr(), s, mean.data(),
                  p.scale.data(), p.bias.data(), slope, &BwdFinish<acc_t>::call, &fin, B.data(),
                  K2.data(), batch_stats);
  } else {
    std::vector<double> sum_dz_xc(C, 0.0);
    if (count > 0) {
      run_reduce<acc_t>(false, dt, x.element_size(), g.const_data_ptr(), x.const_data_ptr(), s,
                        mean.data(), p.scale.data(), p.bias.data(), slope, sum_dz.data(),
                        sum_dz_xc.data());
    }
    for (int64_t c = 0; c < C; ++c) BwdFinish<acc_t>::call(&fin, c, sum_dz[c], sum_dz_xc[c]);
    if (count > 0) {
      run_map<acc_t>(dt, x.element_size(), g.const_data_ptr(), x.const_data_ptr(), gx.data_ptr(),
                     s, mean.data(), p.scale.data(), p.bias.data(), B.data(), K2.data(), slope,
                     batch_stats);
    }
  }
  fill_from(gw, grad_w);
  fill_from(gb, sum_dz);
}
}  // namespace

at::Tensor bn_act_eval_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                           const at::Tensor& var, double eps, double negative_slope) {
  const BnShape s = shape_of(x);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(format_of(s)));
  if (x.scalar_type() == at::kDouble) {
    eval_fwd_impl<double>(x, weight, bias, mean, var, eps, negative_slope, out);
  } else {
    eval_fwd_impl<float>(x, weight, bias, mean, var, eps, negative_slope, out);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_bwd(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& var,
    double eps, double negative_slope, bool batch_stats) {
  const BnShape s = shape_of(x);
  const at::Tensor g = grad_out.contiguous(format_of(s));
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(format_of(s)));
  const auto wopts = weight.has_value() ? weight->options() : x.options().dtype(at::kFloat);
  at::Tensor gw = at::empty({s.C}, wopts);
  at::Tensor gb = at::empty({s.C}, bias.has_value() ? bias->options() : wopts);
  if (x.scalar_type() == at::kDouble) {
    bwd_impl<double>(g, x, weight, bias, mean, var, eps, negative_slope, batch_stats, gx, gw, gb);
  } else {
    bwd_impl<float>(g, x, weight, bias, mean, var, eps, negative_slope, batch_stats, gx, gw, gb);
  }
  return {gx, gw, gb};
}

}  // namespace gan_fast::cpu

// The chains gan_fast.fuse makes without a BatchNorm, each in one eager op, for
// the cpu and cuda backends: a fused conv's call crosses from Python into C++ once
// (the Python composition they replace cost 1.05-1.2x the stock layers' host time).
//
//   conv_in_act_eager(x, weight, bias?, norm_weight?, norm_bias?, running_mean?,
//                     running_var?, stride, padding, output_padding, dilation, groups,
//                     transposed, use_input_stats, momentum, eps, negative_slope) -> out
//   conv_act_eager(x, weight, bias?, stride, padding, output_padding, dilation, groups,
//                  transposed, negative_slope) -> out
//
// Both are compositions of differentiable ops (CompositeImplicitAutograd), so autograd,
// double backward and the errors are those of the ops they call:
// * the stock ATen convolution (oneDNN / cuDNN, as nn.Conv2d / nn.ConvTranspose2d);
// * conv_in_act_eager: InstanceNorm2d + activation as at::instance_norm computes it
//   (the (1, N*C, H, W) view of the NCHW-contiguous output, per-channel tensors repeated
//   N times, running statistics averaged back over the batch), on gan_fast's fused
//   bn_act eager ops instead of batch_norm + the activation (gan_fast.ops.in_act is the
//   same in Python);
// * conv_act_eager: the activation in place on the convolution's fresh output, as
//   gan_fast.ops.conv_act.stock (not in place for a negative slope).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "eager_common.h"
#include "eager_ops.h"

namespace {

using at::Tensor;
using std::optional;

optional<Tensor> repeated(const optional<Tensor>& t, int64_t n) {
  return t ? optional<Tensor>(t->repeat({n})) : std::nullopt;
}

}  // namespace

// (declared in eager_ops.h: gan_fast._C binds them for direct calls from Python)
namespace gan_fast::eager {

Tensor conv_in_act_eager(const Tensor& x, const Tensor& weight, const optional<Tensor>& bias,
                         const optional<Tensor>& norm_weight, const optional<Tensor>& norm_bias,
                         const optional<Tensor>& running_mean,
                         const optional<Tensor>& running_var, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef output_padding,
                         at::IntArrayRef dilation, int64_t groups, bool transposed,
                         bool use_input_stats, double momentum, double eps,
                         double negative_slope) {
  GAN_FAST_RECORD("gan_fast_C::conv_in_act_eager");
  TORCH_CHECK_VALUE(running_mean.has_value() == running_var.has_value(),
                    "gan_fast conv_in_act: running_mean and running_var must both be given or "
                    "both be None");
  TORCH_CHECK_VALUE(use_input_stats || running_mean.has_value(),
                    "gan_fast conv_in_act: running statistics are needed when use_input_stats "
                    "is false");
  const Tensor y = stock_conv("gan_fast conv_in_act", x, weight, bias, stride, padding,
                              output_padding, dilation, groups, transposed);
  const int64_t n = y.size(0), c = y.size(1), h = y.size(2), w = y.size(3);
  // the check and message of F.instance_norm (InstanceNorm2d's)
  TORCH_CHECK_VALUE(!use_input_stats || h * w != 1,
                    "Expected more than 1 spatial element when training, got input size "
                    "torch.Size(", y.sizes(), ")");
  // InstanceNorm2d(affine=True, bias=False): the missing half is the identity
  optional<Tensor> nw = norm_weight, nb = norm_bias;
  if (nw && !nb) nb = at::zeros_like(*nw);
  if (nb && !nw) nw = at::ones_like(*nb);
  const Tensor planes = y.contiguous().view({1, n * c, h, w});
  const optional<Tensor> weight_n = repeated(nw, n), bias_n = repeated(nb, n);
  Tensor out;
  if (use_input_stats) {
    const optional<Tensor> mean_n = repeated(running_mean, n), var_n = repeated(running_var, n);
    out = bn_act_train_eager(planes, weight_n, bias_n, mean_n, var_n, std::nullopt, momentum,
                             eps, negative_slope);
    if (running_mean) {  // the batch's average of the per-plane updates, as stock
      at::NoGradGuard no_grad;
      running_mean->copy_(mean_n->view({n, c}).mean(0));
      running_var->copy_(var_n->view({n, c}).mean(0));
    }
  } else {
    out = bn_act_eval_eager(planes, weight_n, bias_n, running_mean->repeat({n}),
                            running_var->repeat({n}), eps, negative_slope);
  }
  return out.view({n, c, h, w});
}

Tensor conv_act_eager(const Tensor& x, const Tensor& weight, const optional<Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef output_padding, at::IntArrayRef dilation, int64_t groups,
                      bool transposed, double negative_slope) {
  GAN_FAST_RECORD("gan_fast_C::conv_act_eager");
  Tensor y = stock_conv("gan_fast conv_act", x, weight, bias, stride, padding, output_padding,
                        dilation, groups, transposed);
  if (negative_slope == 0.0) return at::relu_(y);
  if (negative_slope > 0.0) return at::leaky_relu_(y, negative_slope);
  return at::leaky_relu(y, negative_slope);  // in place refuses a negative slope's backward
}

}  // namespace gan_fast::eager

TORCH_LIBRARY_FRAGMENT(gan_fast_C, m) {
  m.def(
      "conv_in_act_eager(Tensor x, Tensor weight, Tensor? bias, Tensor? norm_weight,"
      " Tensor? norm_bias, Tensor(a!)? running_mean, Tensor(b!)? running_var, int[] stride,"
      " int[] padding, int[] output_padding, int[] dilation, int groups, bool transposed,"
      " bool use_input_stats, float momentum, float eps, float negative_slope) -> Tensor");
  m.def(
      "conv_act_eager(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding,"
      " int[] output_padding, int[] dilation, int groups, bool transposed,"
      " float negative_slope) -> Tensor");
}

// CompositeImplicitAutograd: compositions of differentiable ops, for every device.
TORCH_LIBRARY_IMPL(gan_fast_C, CompositeImplicitAutograd, m) {
  m.impl("conv_in_act_eager", &gan_fast::eager::conv_in_act_eager);
  m.impl("conv_act_eager", &gan_fast::eager::conv_act_eager);
}

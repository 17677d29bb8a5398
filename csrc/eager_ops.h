// The eager entry points, each registered as a torch.ops.gan_fast_C op
// (CompositeImplicitAutograd, defined next to its code) and also bound in
// gan_fast._C (bindings.cpp) so that Python can call it without the
// dispatcher's boxed Python binding (about 3.5 us a call; see
// gan_fast/kernels/cpp.py eager_entry). Schemas: csrc/README.md.
#pragma once

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/util/string_view.h>

#include <optional>

// Each entry point names itself to the profiler (torch.profiler shows it as the
// dispatcher's op would be shown) also when called directly.
#define GAN_FAST_RECORD(name) RECORD_FUNCTION(name, std::vector<c10::IValue>())

namespace gan_fast::eager {

at::Tensor bn_act_train_eager(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& running_mean,
                              const std::optional<at::Tensor>& running_var,
                              const std::optional<at::Tensor>& num_batches_tracked,
                              std::optional<double> momentum, double eps, double negative_slope);

at::Tensor bn_act_eval_eager(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                             const at::Tensor& var, double eps, double negative_slope);

at::Tensor gan_loss_eager(const std::optional<at::Tensor>& real, const at::Tensor& fake,
                          c10::string_view kind, c10::string_view side,
                          c10::string_view reduction, double label_smoothing);

at::Tensor conv_bn_act_eager(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& bn_weight,
                             const std::optional<at::Tensor>& bn_bias,
                             const std::optional<at::Tensor>& running_mean,
                             const std::optional<at::Tensor>& running_var,
                             const std::optional<at::Tensor>& num_batches_tracked,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef output_padding, at::IntArrayRef dilation,
                             int64_t groups, bool transposed, bool batch_stats,
                             std::optional<double> momentum, double eps, double negative_slope);

at::Tensor conv_in_act_eager(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& norm_weight,
                             const std::optional<at::Tensor>& norm_bias,
                             const std::optional<at::Tensor>& running_mean,
                             const std::optional<at::Tensor>& running_var,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef output_padding, at::IntArrayRef dilation,
                             int64_t groups, bool transposed, bool use_input_stats,
                             double momentum, double eps, double negative_slope);

at::Tensor conv_act_eager(const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef output_padding,
                          at::IntArrayRef dilation, int64_t groups, bool transposed,
                          double negative_slope);

}  // namespace gan_fast::eager

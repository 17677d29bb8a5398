// The eager autograd nodes (bn_act_autograd.cpp, gan_loss_autograd.cpp) are
// once-differentiable, like torch.autograd.function.once_differentiable but
// stricter: whenever grad mode is on in their backward (create_graph=True),
// the gradients come back behind a DelayedError node, even when the incoming
// gradient needs no grad, since they depend on the saved inputs all the same.
// The first-order gradients are usable; differentiating them again raises.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <string>
#include <utility>

namespace gan_fast {

// `grads` as they are, or (grad mode on) behind a node that raises naming `op`,
// with `advice` on what to use instead.
inline torch::autograd::variable_list once_differentiable(torch::autograd::variable_list grads,
                                                          const char* op, const char* advice) {
  if (!at::GradMode::is_enabled()) return grads;
  for (auto& g : grads) {
    if (g.defined()) g = g.detach().requires_grad_(true);
  }
  torch::autograd::DelayedError err(
      std::string("gan_fast ") + op +
          ": double backward is not supported (the fused kernels have no second derivative); " +
          advice + " (trying to differentiate twice)",
      static_cast<int>(grads.size()));
  return err.apply(std::move(grads));
}

}  // namespace gan_fast

// What the gradient attacks share beyond include/parry/attack/attack.hpp.
// Internal: not installed.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <string>

#include "parry/attack/attack.hpp"
#include "parry/detail/require.hpp"

namespace parry::attack::detail {

using parry::detail::require;

inline void check_settings(const char* where, const GradientSettings& s) {
  require(std::isfinite(s.clip_min) && std::isfinite(s.clip_max) && s.clip_min < s.clip_max, where,
          "clip range must be finite with clip_min < clip_max", s.clip_max - s.clip_min);
  require(s.eot_samples >= 1, where, "eot_samples must be at least 1", s.eot_samples);
}

// The per-sample view of a batch for reductions: N × (everything else).
inline torch::Tensor flat(const torch::Tensor& t) {
  return t.reshape({t.size(0), -1});
}

// Gradient of loss_of(logits) (a scalar) with respect to x only, averaged
// over eot_samples draws of f; no parameter gradients are computed or stored.
// Returns {gradient, logits of the last draw (detached)}.
template <class Loss>
std::pair<torch::Tensor, torch::Tensor> objective_gradient(const LogitsFn& f, const torch::Tensor& x,
                                                           int64_t eot_samples, Loss&& loss_of) {
  torch::AutoGradMode enable_grad(true);
  const torch::Tensor input = x.detach().requires_grad_(true);
  torch::Tensor total;
  torch::Tensor logits;
  for (int64_t k = 0; k < eot_samples; ++k) {
    logits = f(input);
    const torch::Tensor loss = loss_of(logits);
    total = k == 0 ? loss : total + loss;
  }
  if (eot_samples > 1) total = total / static_cast<double>(eot_samples);
  torch::Tensor grad = torch::autograd::grad({total}, {input}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                             /*create_graph=*/false, /*allow_unused=*/true)[0];
  if (!grad.defined()) grad = torch::zeros_like(input);
  return {grad.detach(), logits.detach()};
}

inline torch::Tensor evaluate(const LogitsFn& f, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return f(x);
}

inline void check_labels(const char* attack, const torch::Tensor& logits, const torch::Tensor& y) {
  if (logits.dim() != 2 || logits.size(0) != y.size(0)) {
    throw OptionError(std::string(attack) + ": the model returned logits of shape " + c10::str(logits.sizes()) +
                      " for a batch of " + std::to_string(y.size(0)));
  }
  require(y.max().item<int64_t>() < logits.size(1), attack,
          "labels must be below the class count " + std::to_string(logits.size(1)), y.max().item<int64_t>());
}

}  // namespace parry::attack::detail

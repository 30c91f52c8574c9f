// What every attack shares: batch checks, the loss gradient (with EOT), projection.
#include "parry/attack/attack.hpp"

#include "attack/support.hpp"

namespace parry::attack {

using detail::check_labels;
using detail::check_settings;
using detail::flat;
using detail::require;

const char* to_string(Norm norm) {
  return norm == Norm::Linf ? "linf" : "l2";
}

LogitsFn differentiable(const Guard& guard) {
  return [&guard](const torch::Tensor& x) { return guard.differentiable_logits(x); };
}

LogitsFn differentiable(const Model& model) {
  return [model](const torch::Tensor& x) { return model.logits(x); };
}

void check_batch(const char* attack, const torch::Tensor& x, const torch::Tensor& y, const GradientSettings& s) {
  check_settings(attack, s);
  if (!x.defined() || x.dim() != 4 || x.size(0) == 0 || !x.is_floating_point()) {
    throw OptionError(std::string(attack) + ": x must be a non-empty floating N×C×H×W batch");
  }
  if (!y.defined() || y.dim() != 1 || y.scalar_type() != torch::kInt64 || y.size(0) != x.size(0)) {
    throw OptionError(std::string(attack) + ": y must be int64 labels of length N = " + std::to_string(x.size(0)));
  }
  require(y.min().item<int64_t>() >= 0, attack, "labels must be non-negative", y.min().item<int64_t>());
  const auto [lo, hi] = torch::aminmax(x.detach());
  if (!(lo.item<double>() >= s.clip_min && hi.item<double>() <= s.clip_max)) {
    throw OptionError(std::string(attack) + ": x must lie in the clip range [" + std::to_string(s.clip_min) + ", " +
                      std::to_string(s.clip_max) + "] and be finite");
  }
}

std::pair<torch::Tensor, torch::Tensor> loss_gradient(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                                                      const GradientSettings& s) {
  auto [grad, logits] = detail::objective_gradient(f, x, s.eot_samples, [&y](const torch::Tensor& z) {
    try {
      return torch::nn::functional::cross_entropy(
          z, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    } catch (const c10::Error&) {
      check_labels("attack", z, y);  // names the bad labels or shape
      throw;
    }
  });
  if (s.targeted) grad = -grad;
  return {grad, logits};
}

torch::Tensor is_success(const torch::Tensor& logits, const torch::Tensor& y, bool targeted) {
  const torch::Tensor predicted = logits.argmax(1);
  return targeted ? predicted.eq(y) : predicted.ne(y);
}

torch::Tensor perturbation_norm(const torch::Tensor& delta, Norm norm) {
  const torch::Tensor d = flat(delta.detach()).to(torch::kFloat32);
  return norm == Norm::Linf ? std::get<0>(d.abs().max(1)) : d.norm(2, 1);
}

torch::Tensor project(const torch::Tensor& x_adv, const torch::Tensor& x, double epsilon, Norm norm, double clip_min,
                      double clip_max) {
  torch::Tensor delta = x_adv - x;
  if (norm == Norm::Linf) {
    delta = delta.clamp(-epsilon, epsilon);
  } else {
    const torch::Tensor n = flat(delta).norm(2, 1).clamp_min(1e-12);
    const torch::Tensor factor = (epsilon / n).clamp_max(1.0);
    delta = delta * factor.view({-1, 1, 1, 1});
  }
  // Clipping to the pixel range moves every coordinate towards x (which lies
  // inside the range), so it never leaves the ε-ball.
  return (x + delta).clamp(clip_min, clip_max);
}

}  // namespace parry::attack

// parry::attack: what every attack shares.
//
// White-box attacks differentiate through a LogitsFn: Guard::
// differentiable_logits (the whole defended model, each preprocessor with its
// gradient policy: BPDA for the non-differentiable ones) or a bare Model.
// Only the input's gradient is computed (torch::autograd::grad with the input
// as the only target): no parameter gradients are built or accumulated, so
// attacking a shared, served model does not touch its state.
//
// Every result stays inside its threat model: ||x_adv − x|| <= ε in the
// attack's norm and every value in [clip_min, clip_max]. Attacks are seeded
// and reproducible.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>

#include "parry/core/guard.hpp"
#include "parry/core/model.hpp"

namespace parry::attack {

/// The perturbation norm of an attack's threat model.
enum class Norm { Linf, L2 };

/// "linf" or "l2".
const char* to_string(Norm norm);

/// A differentiable function from a batch N×C×H×W to logits N×K.
using LogitsFn = std::function<torch::Tensor(const torch::Tensor&)>;

/// The attack path of a Guard (preprocessors with their gradient policies, then the model).
LogitsFn differentiable(const Guard& guard);
/// A bare model's logits.
LogitsFn differentiable(const Model& model);

/// Outcome of an attack on a batch.
struct AttackResult {
  torch::Tensor adversarial;        ///< N×C×H×W, inside the threat model
  torch::Tensor success;            ///< bool N: misclassified (untargeted) or classified as the target
  torch::Tensor norm;               ///< float N: ||x_adv − x|| in the attack's norm
  torch::Tensor queries;            ///< int64 N: model evaluations spent per sample (forward passes)
  torch::Tensor start_norm;         ///< decision-based attacks: norm of the first adversarial point (else undefined)
  bool stopped_by_defense = false;  ///< black-box: the Guard rejected a query
  std::string stop_reason;          ///< its public reason code, if so
  /// Black-box: answers (requests to Guard::predict) with verdict Flagged,
  /// by a gate (query monitor) or a detector; the attack uses them as any answer.
  int64_t flagged_answers = 0;

  /// Fraction of samples attacked successfully.
  double success_rate() const { return success.to(torch::kFloat64).mean().item<double>(); }
};

/// Settings shared by the gradient attacks.
struct GradientSettings {
  /// Valid pixel range.
  double clip_min = 0.0;
  double clip_max = 1.0;
  /// Targeted: y holds target classes and the attack seeks them.
  bool targeted = false;
  /// Expectation over Transformation (Athalye, Engstrom, Ilyas, Kwok 2018):
  /// average the loss gradient over this many evaluations of a randomised
  /// defense (dropout-active model, random transforms). 1 = plain gradient.
  int64_t eot_samples = 1;
  /// Seed for random starts and any randomness inside the attack.
  uint64_t seed = 0;
};

/// Checks the common arguments: x N×C×H×W float inside [clip_min, clip_max],
/// y int64 of length N with class indices. @throws parry::OptionError.
void check_batch(const char* attack, const torch::Tensor& x, const torch::Tensor& y, const GradientSettings& s);

/// Gradient of the summed cross-entropy loss with respect to x (averaged over
/// s.eot_samples draws), computed without parameter gradients. For targeted
/// attacks the sign is flipped so that ascending it approaches the target.
/// @return {gradient, logits of the last draw (detached)}.
std::pair<torch::Tensor, torch::Tensor> loss_gradient(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                                                      const GradientSettings& s);

/// Per-sample success from logits: argmax != y (untargeted) or == y (targeted).
torch::Tensor is_success(const torch::Tensor& logits, const torch::Tensor& y, bool targeted);

/// Per-sample norm of a perturbation N×…: max |δ| (L∞) or sqrt(Σ δ²) (L2).
torch::Tensor perturbation_norm(const torch::Tensor& delta, Norm norm);

/// Projects x_adv onto the ε-ball around x in `norm` and the pixel range.
torch::Tensor project(const torch::Tensor& x_adv, const torch::Tensor& x, double epsilon, Norm norm, double clip_min,
                      double clip_max);

}  // namespace parry::attack

// attack::CarliniWagnerL2: the L2 attack of Carlini & Wagner, "Towards
// Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
//
// Change of variables x_adv = ½(tanh(w) + 1) (scaled to [clip_min, clip_max]),
// minimise with Adam  ||x_adv − x||₂² + c · f(x_adv)  where
//     f = max(Z_y − max_{i≠y} Z_i, −κ)        (untargeted, Z = logits)
//     f = max(max_{i≠t} Z_i − Z_t, −κ)        (targeted)
// and binary-search the constant c per sample: halve the interval towards
// smaller c after a success, grow c tenfold (while no upper bound is known)
// after a failure. Returns the smallest-L2 successful example found; samples
// never fooled keep x.
//
// Threat model: a white-box minimum-distortion attack. It is the attack that
// showed defensive distillation masks gradients rather than removing
// adversarial examples (Carlini & Wagner 2016): it works on logits, so
// softmax saturation at high temperature does not stop it.
#pragma once

#include "parry/attack/attack.hpp"

namespace parry::attack {

struct CarliniWagnerOptions {
  CarliniWagnerOptions();
  /// Confidence margin κ >= 0 (default 0).
  CarliniWagnerOptions& confidence(double v);
  /// Initial constant c > 0 (default 0.1).
  CarliniWagnerOptions& initial_const(double v);
  /// Binary-search rounds over c, >= 1 (default 6).
  CarliniWagnerOptions& binary_search_steps(int64_t v);
  /// Adam iterations per round, >= 1 (default 100).
  CarliniWagnerOptions& max_iterations(int64_t v);
  /// Adam learning rate > 0 (default 0.01).
  CarliniWagnerOptions& learning_rate(double v);
  CarliniWagnerOptions& settings(GradientSettings s);

  double confidence() const { return confidence_; }
  double initial_const() const { return initial_const_; }
  int64_t binary_search_steps() const { return binary_search_steps_; }
  int64_t max_iterations() const { return max_iterations_; }
  double learning_rate() const { return learning_rate_; }
  const GradientSettings& settings() const { return settings_; }

 private:
  double confidence_ = 0.0;
  double initial_const_ = 0.1;
  int64_t binary_search_steps_ = 6;
  int64_t max_iterations_ = 100;
  double learning_rate_ = 0.01;
  GradientSettings settings_;
};

/// Runs C&W-L2 on (x, y). The result's norm is the L2 distance.
/// @throws parry::OptionError on bad arguments.
AttackResult carlini_wagner_l2(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                               const CarliniWagnerOptions& options = CarliniWagnerOptions());

}  // namespace parry::attack

// attack::Fgsm: the Fast Gradient Sign Method (Goodfellow, Shlens, Szegedy,
// "Explaining and Harnessing Adversarial Examples", ICLR 2015):
//     x_adv = clip(x + ε · sign(∇_x L(f(x), y)))          (untargeted)
//     x_adv = clip(x − ε · sign(∇_x L(f(x), t)))          (targeted)
// with L the cross-entropy. One gradient, L∞ threat model.
//
// Use: a cheap baseline and the generator of fast adversarial training. A
// defense that stops FGSM but not PGD is masking gradients, not robust.
#pragma once

#include "parry/attack/attack.hpp"

namespace parry::attack {

struct FgsmOptions {
  /// @param epsilon L∞ radius in pixel units (e.g. 0.1 on [0, 1] images), >= 0.
  explicit FgsmOptions(double epsilon = 0.1);
  FgsmOptions& epsilon(double v);
  FgsmOptions& settings(GradientSettings s);
  double epsilon() const { return epsilon_; }
  const GradientSettings& settings() const { return settings_; }

 private:
  double epsilon_ = 0.1;
  GradientSettings settings_;
};

/// Runs FGSM on (x, y); y are true labels, or targets if settings().targeted.
/// @throws parry::OptionError on mismatched or out-of-range arguments.
AttackResult fgsm(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                  const FgsmOptions& options = FgsmOptions());

}  // namespace parry::attack

// attack::Pgd: Projected Gradient Descent (Madry, Makelov, Schmidt, Tsipras,
// Vladu, "Towards Deep Learning Models Resistant to Adversarial Attacks",
// ICLR 2018); with no random start and one restart it is BIM (Kurakin et al.
// 2017). Each step ascends the cross-entropy loss and projects back:
//     L∞: x ← Π(x + α · sign(g))            L2: x ← Π(x + α · g / ||g||₂)
// Random start: uniform in the L∞ ball, or uniform direction × radius
// ε·U^(1/d) in the L2 ball. Restarts re-run from new random starts for the
// samples not yet fooled, keeping the first success.
//
// Threat model of the evaluation: a white-box attacker with gradients of the
// defended model (through Guard::differentiable_logits: BPDA for
// non-differentiable preprocessors, EOT for randomised ones).
#pragma once

#include "parry/attack/attack.hpp"

namespace parry::attack {

struct PgdOptions {
  /// @param epsilon radius (L∞: max pixel change; L2: Euclidean length), >= 0.
  explicit PgdOptions(double epsilon = 0.1, Norm norm = Norm::Linf);
  PgdOptions& epsilon(double v);
  PgdOptions& norm(Norm n);
  /// Step size α (default: 2.5 · ε / steps, Madry et al.'s rule).
  PgdOptions& step_size(double v);
  /// Iterations per restart, >= 1 (default 40).
  PgdOptions& steps(int64_t v);
  /// Random starts, >= 1 (default 1).
  PgdOptions& restarts(int64_t v);
  /// Start from a random point in the ball (default true); false gives BIM.
  PgdOptions& random_start(bool on);
  PgdOptions& settings(GradientSettings s);

  double epsilon() const { return epsilon_; }
  Norm norm() const { return norm_; }
  double step_size() const;
  int64_t steps() const { return steps_; }
  int64_t restarts() const { return restarts_; }
  bool random_start() const { return random_start_; }
  const GradientSettings& settings() const { return settings_; }

 private:
  double epsilon_ = 0.1;
  Norm norm_ = Norm::Linf;
  double step_size_ = -1;  // < 0: the default rule
  int64_t steps_ = 40;
  int64_t restarts_ = 1;
  bool random_start_ = true;
  GradientSettings settings_;
};

/// Runs PGD on (x, y). @throws parry::OptionError on bad arguments.
AttackResult pgd(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                 const PgdOptions& options = PgdOptions());

}  // namespace parry::attack

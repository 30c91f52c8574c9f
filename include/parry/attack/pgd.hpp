// attack::Pgd: Projected Gradient Descent (Madry, Makelov, Schmidt, Tsipras,
// Vladu, "Towards Deep Learning Models Resistant to Adversarial Attacks",
// ICLR 2018); with no random start and one restart it is BIM (Kurakin et al.
// 2017). Each step ascends the cross-entropy loss and projects back:
//     L∞: x ← Π(x + α · sign(g))            L2: x ← Π(x + α · g / ||g||₂)
// Random start: uniform in the L∞ ball, or uniform direction × radius
// ε·U^(1/d) in the L2 ball; or x + σ·N(0, I) projected (TRADES' start). The
// draws come from a generator seeded with settings().seed, or from a
// caller's generator (a trainer that checkpoints its random state).
// Restarts re-run from new random starts for the samples not yet fooled,
// keeping the first success; last_iterate() returns the single run's last
// point instead, as adversarial training does (Madry et al.).
//
// Losses: the cross-entropy of the labels y (the attack of Madry et al.), or
// KL(p(x) ‖ p(x')) from the clean prediction p(x) = softmax(f(x)) to the
// candidate's, the inner maximisation of TRADES (Zhang, Yu, Jiao, Xing,
// El Ghaoui, Jordan, "Theoretically Principled Trade-off between Robustness
// and Accuracy", ICML 2019), which needs no labels for its gradient.
//
// Threat model of the evaluation: a white-box attacker with gradients of the
// defended model (through Guard::differentiable_logits: BPDA for
// non-differentiable preprocessors, EOT for randomised ones).
#pragma once

#include "parry/attack/attack.hpp"

namespace parry::attack {

/// The loss that PGD ascends.
enum class PgdLoss {
  /// Summed cross-entropy of y (for targeted attacks its negative, so the
  /// attack approaches the target class).
  CrossEntropy,
  /// Summed KL(p(x) ‖ p(x')) = Σ p(x) · (log p(x) − log p(x')), p = softmax of
  /// the logits, p(x) computed once on the clean batch (averaged over the
  /// eot_samples draws of a randomised model). Untargeted only.
  KlToClean,
};

/// Where each run of PGD starts.
enum class PgdStart {
  None,      ///< at x (BIM)
  Uniform,   ///< uniform in the ε-ball (L∞: per pixel; L2: uniform direction × ε·U^(1/d))
  Gaussian,  ///< x + σ·N(0, I), projected onto the ball and the pixel range (TRADES: σ = 0.001)
};

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
  /// Start from a random point in the ball (default true: PgdStart::Uniform);
  /// false starts at x (PgdStart::None), which gives BIM.
  PgdOptions& random_start(bool on);
  /// Start at x + σ·N(0, I) projected (PgdStart::Gaussian); σ > 0 in pixel
  /// units (Zhang et al. use 0.001 on [0, 1] images).
  PgdOptions& gaussian_start(double sigma);
  /// Start at x + δ projected onto the ball and the pixel range, for a
  /// caller that drew δ (same shape as x) itself: a data-parallel trainer
  /// draws the starts of a whole global batch and passes each rank its rows.
  /// Overrides the random start; needs restarts = 1 (checked by pgd()).
  /// Default: none (undefined).
  PgdOptions& start_perturbation(torch::Tensor delta);
  /// The loss to ascend (default PgdLoss::CrossEntropy).
  PgdOptions& loss(PgdLoss l);
  /// Draw the random starts from `g` instead of a fresh generator seeded
  /// with settings().seed. torch::Generator is a handle: the draws advance
  /// the caller's generator, so successive calls continue its stream and a
  /// caller that saves and restores its state reproduces them bit for bit.
  /// Not thread-safe with other users of `g`. Default: none (undefined).
  PgdOptions& generator(torch::Generator g);
  /// true: return the last iterate of a single run (restarts must be 1), as
  /// adversarial training uses it (Madry et al.), without the final forward
  /// pass that judges success: AttackResult::success is left undefined and
  /// `queries` counts the gradient evaluations only. false (default): every
  /// sample is judged, and with restarts the first successful run is kept.
  PgdOptions& last_iterate(bool on);
  PgdOptions& settings(GradientSettings s);

  double epsilon() const { return epsilon_; }
  Norm norm() const { return norm_; }
  double step_size() const;
  int64_t steps() const { return steps_; }
  int64_t restarts() const { return restarts_; }
  /// Whether a run starts away from x (Uniform or Gaussian).
  bool random_start() const { return start_ != PgdStart::None; }
  PgdStart start() const { return start_; }
  /// σ of the Gaussian start (0 unless gaussian_start() was called).
  double gaussian_sigma() const { return gaussian_sigma_; }
  PgdLoss loss() const { return loss_; }
  const torch::Tensor& start_perturbation() const { return start_perturbation_; }
  const torch::Generator& generator() const { return generator_; }
  bool last_iterate() const { return last_iterate_; }
  const GradientSettings& settings() const { return settings_; }

 private:
  double epsilon_ = 0.1;
  Norm norm_ = Norm::Linf;
  double step_size_ = -1;  // < 0: the default rule
  int64_t steps_ = 40;
  int64_t restarts_ = 1;
  PgdStart start_ = PgdStart::Uniform;
  double gaussian_sigma_ = 0;
  PgdLoss loss_ = PgdLoss::CrossEntropy;
  torch::Tensor start_perturbation_;  // undefined: the start() rule
  torch::Generator generator_;        // undefined: a fresh one from settings_.seed per call
  bool last_iterate_ = false;
  GradientSettings settings_;
};

/// Runs PGD on (x, y): x N×C×H×W inside [clip_min, clip_max], y int64 N
/// (true labels, or target classes when settings().targeted). Every result
/// lies within ε of x in options.norm() and inside the pixel range.
/// @throws parry::OptionError on bad arguments, on last_iterate with
///         restarts > 1, or on PgdLoss::KlToClean with a targeted attack.
AttackResult pgd(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                 const PgdOptions& options = PgdOptions());

}  // namespace parry::attack

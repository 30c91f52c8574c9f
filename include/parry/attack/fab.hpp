// attack::fab: the Fast Adaptive Boundary attack (Croce, Hein, "Minimally
// distorted adversarial examples with a fast adaptive boundary attack", ICML
// 2020), L∞ and L2, untargeted and targeted (FAB-T, the version AutoAttack
// runs: Croce, Hein, "Reliable evaluation of adversarial robustness with an
// ensemble of diverse parameter-free attacks", ICML 2020).
//
// A white-box minimum-norm attack. Each iteration linearises the model at the
// current iterate x⁽ⁱ⁾: the logit difference f_j − f_y ≈ w·z − b. Untargeted,
// j is the class whose linearised boundary is closest,
//     j = argmin_{j≠y} |f_j − f_y| / ‖∇f_j − ∇f_y‖_q   (q = 1 for L∞, 2 for L2),
// which needs the whole Jacobian (one backward pass per class); targeted, j
// is the target (one backward pass). Both x⁽ⁱ⁾ and the clean x are projected
// onto that hyperplane intersected with the box [clip_min, clip_max]
// (δ = argmin ‖δ‖ s.t. w·(p+δ) = b, p+δ in the box), and the step is a
// convex combination biased towards the clean point:
//     α = min(‖δ_i‖ / (‖δ_i‖ + ‖δ_0‖), α_max)
//     x⁽ⁱ⁺¹⁾ = clip((1−α)(x⁽ⁱ⁾ + η δ_i) + α (x + η δ_0))
// with overshoot η; whenever x⁽ⁱ⁺¹⁾ is adversarial it is kept if it is the
// closest so far, and the iterate is pulled back, x⁽ⁱ⁺¹⁾ ← x + β (x⁽ⁱ⁺¹⁾ − x).
// Constants of the paper and of the reference implementation
// (fra31/auto-attack, FABAttack_PT): α_max = 0.1, η = 1.05, β = 0.9, 100
// iterations; the first run starts at x, further restarts at a random point
// at distance ε/2 (exactly: L∞ a uniform draw scaled to max-norm ε/2, L2 a
// Gaussian direction of length ε/2), clipped to the box.
//
// Two modes:
//  - ε-bounded (epsilon() > 0), as AutoAttack uses it: a sample counts as
//    fooled only by a point within ε; restarts and further targets run only
//    on the samples not yet fooled within ε. Samples not fooled within ε
//    return x itself (the reference does the same), never a point beyond ε.
//  - minimum norm (epsilon() = 0): every restart (and, for FAB-T, every
//    target) runs on every sample and the smallest adversarial perturbation
//    found is returned; samples never fooled return x. Restarts start at
//    distance min(best found, r₀)/2, r₀ the reference's default radius (0.3
//    for L∞, 1.0 for L2, on [0, 1] images; scaled by clip_max − clip_min).
//
// Targets. FabOptions::targeted (FAB-T): y are true labels; the targets are
// the classes ranked 2, …, n+1 by the clean logits, one after another, each
// run on the samples not yet fooled; as in the reference, any
// misclassification counts as success (AutoAttack's robust accuracy).
// GradientSettings::targeted instead: y hold target classes, the linearised
// boundary is the one between the clean prediction and the target, and
// success means argmax = target. The two cannot be combined.
//
// Samples the model already gets wrong (untargeted, FAB-T) or already
// classifies as the target are not attacked: they succeed with x itself.
//
// Threat model of the evaluation: a white-box attacker with gradients of the
// defended model (through Guard::differentiable_logits: BPDA for
// non-differentiable preprocessors). FAB linearises a deterministic model: it
// has no EOT, and randomised defenses should be attacked with PGD + EOT.
#pragma once

#include "parry/attack/attack.hpp"

namespace parry::attack {

struct FabOptions {
  explicit FabOptions(Norm norm = Norm::Linf);
  FabOptions& norm(Norm n);
  /// ε > 0: ε-bounded attack (success only within ε; the reference's eps,
  /// also the radius of its random restarts). 0 (default): minimum-norm mode.
  FabOptions& epsilon(double v);
  /// Iterations per run, >= 1 (default 100).
  FabOptions& steps(int64_t v);
  /// Runs per sample (and per target for FAB-T), >= 1 (default 1); every
  /// run after the first starts at a random point.
  FabOptions& restarts(int64_t v);
  /// Largest weight of the clean point's projection in a step, in (0, 1] (default 0.1).
  FabOptions& alpha_max(double v);
  /// Overshoot of the projections, >= 1 (default 1.05).
  FabOptions& eta(double v);
  /// Pull-back towards x after an adversarial iterate, in (0, 1) (default 0.9).
  FabOptions& beta(double v);
  /// FAB-T: attack the classes ranked 2..n_target_classes+1 by the clean logits (default false).
  FabOptions& targeted(bool on);
  /// Targets tried by FAB-T, >= 1 and at most K − 1 for K classes (checked when the attack runs; default 9).
  FabOptions& n_target_classes(int64_t v);
  /// Steps of the final search along the segment from x to the adversarial
  /// point (regula falsi on the logit difference, the original FAB
  /// repository's "linear approximation search", 3 steps when enabled there),
  /// >= 0 (default 0: AutoAttack's FAB has none). Never increases a norm.
  FabOptions& final_search_steps(int64_t v);
  /// Clip range and seed; eot_samples must be 1; targeted: y are targets (see above).
  FabOptions& settings(GradientSettings s);

  Norm norm() const { return norm_; }
  double epsilon() const { return epsilon_; }
  int64_t steps() const { return steps_; }
  int64_t restarts() const { return restarts_; }
  double alpha_max() const { return alpha_max_; }
  double eta() const { return eta_; }
  double beta() const { return beta_; }
  bool targeted() const { return targeted_; }
  int64_t n_target_classes() const { return n_target_classes_; }
  int64_t final_search_steps() const { return final_search_steps_; }
  const GradientSettings& settings() const { return settings_; }

 private:
  Norm norm_ = Norm::Linf;
  double epsilon_ = 0;
  int64_t steps_ = 100;
  int64_t restarts_ = 1;
  double alpha_max_ = 0.1;
  double eta_ = 1.05;
  double beta_ = 0.9;
  bool targeted_ = false;
  int64_t n_target_classes_ = 9;
  int64_t final_search_steps_ = 0;
  GradientSettings settings_;
};

/// Runs FAB on (x, y): x N×C×H×W inside [clip_min, clip_max], y int64 N (true
/// labels; target classes when settings().targeted). Returns, per sample, the
/// closest adversarial point found (within ε when epsilon() > 0) or x itself;
/// `success` is checked by a final forward pass on the returned batch;
/// `norm` is ‖x_adv − x‖ in options.norm().
///
/// Queries per sample (one gradient = one forward and one backward pass, as
/// PGD counts): 1 clean forward pass; per iteration K gradients (untargeted:
/// the Jacobian of K logits, one shared forward and K backward passes) or 1
/// (targeted), plus 1 forward pass to test the new iterate; 1 + steps for the
/// final search; 1 final check.
/// @throws parry::OptionError on bad arguments, eot_samples > 1, both
///         targeted modes, fewer than 2 classes, or n_target_classes > K − 1.
AttackResult fab(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                 const FabOptions& options = FabOptions());

}  // namespace parry::attack

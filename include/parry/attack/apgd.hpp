// attack::apgd: Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial
// robustness with an ensemble of diverse parameter-free attacks", ICML 2020,
// Algorithm 1), L∞ and L2: the white-box core of AutoAttack.
//
// PGD with a step size it adapts itself and momentum:
//     z      = Π(x_k + η·s(∇L(x_k)))          s = sign (L∞) or g/‖g‖₂ (L2)
//     x_k+1  = Π(x_k + α·(z − x_k) + (1 − α)·(x_k − x_k−1))    α = 0.75 (1 at k = 0)
// where Π projects onto the ε-ball and the pixel range. η starts at 2ε. At
// the checkpoints w_0 = 0, w_1 = ⌊0.22·N⌋ and
//     w_j+1 = w_j + max(w_j − w_j−1 − ⌊0.03·N⌋, ⌊0.06·N⌋)
// (floors with a minimum of 1, as the authors' implementation computes them;
// for N = 100: 22, 41, 57, 70, 80, 87, 93, 99), a sample's η is halved and its
// iterate restarts from its best point when
//   1. at most ρ = 0.75 of the steps since the last checkpoint raised the
//      loss (the authors' implementation tests ≤, the paper <), or
//   2. its η was not halved at the last checkpoint and its best loss has not
//      risen since.
// Each sample keeps its best point; the first misclassified iterate is its
// adversarial example. Restarts rerun from new random starts (L∞: a point
// on the ε-sphere of the max norm, uniform direction; L2: a Gaussian direction
// scaled to ε) for the samples not yet fooled.
//
// Losses: cross-entropy; the Difference of Logits Ratio
//     DLR(z, y) = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)
// (π orders the logits decreasingly), and its targeted version
//     DLR_t(z, y, t) = −(z_y − z_t) / (z_π1 − ½(z_π3 + z_π4) + 1e-12)
// run once per target class t, the classes ranked 2..n_targets+1 by the clean
// logits (APGD-T). Both DLRs are invariant to shifting and to positive scaling
// of the logits, so a defense that only rescales its logits (defensive
// distillation, a saturated softmax) does not stall them as it stalls the
// cross-entropy.
//
// Where this differs from the authors' code (fra31/auto-attack,
// autopgd_base.py), each without changing which images count as broken:
//   - the first fooling iterate is returned (theirs: the last one);
//   - the first period's count of loss rises compares iteration 0 with the
//     start point's loss (theirs compares with a zero row, so it counts
//     iteration 0 as a rise for the cross-entropy and never for DLR);
//   - APGD-T ranks its targets once, on the clean logits (theirs re-ranks the
//     still-robust images per target, which differs for randomised models);
//   - with EOT the per-sample loss that steers the step is averaged over the
//     draws (theirs uses the last draw's).
//
// Threat model: a white-box attacker with gradients of the attacked function
// (Guard::differentiable_logits: BPDA for non-differentiable preprocessors,
// EOT over a randomised defense's draws with settings().eot_samples).
#pragma once

#include <vector>

#include "parry/attack/attack.hpp"

namespace parry::attack {

/// The loss that APGD ascends.
enum class ApgdLoss {
  CrossEntropy,  ///< APGD-CE (targeted when settings().targeted: −CE of the target in y)
  Dlr,           ///< APGD-DLR, untargeted; needs at least 3 classes
  TargetedDlr,   ///< APGD-T: targeted DLR over target_classes() targets; y are true labels; needs 4 classes
};

/// "ce", "dlr", "dlr-targeted".
const char* to_string(ApgdLoss loss);

/// Iteration counts of one APGD run at which the step size is reviewed:
/// 0, w_1, w_2, … up to `steps` (exclusive of any beyond it).
/// For steps = 100: {0, 22, 41, 57, 70, 80, 87, 93, 99}. @throws parry::OptionError if steps < 1.
std::vector<int64_t> apgd_checkpoints(int64_t steps);

/// Per-sample DLR loss of logits N×K (K >= 3) for labels y. @throws parry::OptionError.
torch::Tensor dlr_loss(const torch::Tensor& logits, const torch::Tensor& y);
/// Per-sample targeted DLR loss of logits N×K (K >= 4) for labels y and targets t.
/// @throws parry::OptionError.
torch::Tensor targeted_dlr_loss(const torch::Tensor& logits, const torch::Tensor& y, const torch::Tensor& target);

/// One APGD update from `current` (with `previous`, the iterate before it):
/// z = Π(current + step·s(grad)), then Π(current + momentum·(z − current) +
/// (1 − momentum)·(current − previous)); `step` holds one step size per sample
/// (N), in pixel units. Π is project() onto the ε-ball around `origin` and the range.
torch::Tensor apgd_update(const torch::Tensor& current, const torch::Tensor& previous, const torch::Tensor& grad,
                          const torch::Tensor& origin, const torch::Tensor& step, double momentum, double epsilon,
                          Norm norm, double clip_min, double clip_max);

/// What one APGD run did to its first sample, iteration by iteration (for
/// tests and for looking inside a run).
struct ApgdTrace {
  std::vector<double> step_size;  ///< η used by iteration k (k = 0 … steps−1)
  std::vector<double> loss;       ///< loss at the iterate after iteration k
};

struct ApgdOptions {
  /// @param epsilon radius (L∞: max pixel change; L2: Euclidean length), >= 0.
  explicit ApgdOptions(double epsilon = 0.1, Norm norm = Norm::Linf);
  ApgdOptions& epsilon(double v);
  ApgdOptions& norm(Norm n);
  /// Iterations per run N_iter, >= 1 (default 100).
  ApgdOptions& steps(int64_t v);
  /// Runs from random starts per target (default 1).
  ApgdOptions& restarts(int64_t v);
  ApgdOptions& loss(ApgdLoss l);
  /// Target classes of ApgdLoss::TargetedDlr, >= 1 (default 9); at most K − 1 at run time.
  ApgdOptions& target_classes(int64_t v);
  /// ρ, the share of loss-raising steps below which the step is halved, in (0, 1] (default 0.75).
  ApgdOptions& rho(double v);
  /// α, the weight of the new step against the previous move, in (0, 1] (default 0.75).
  ApgdOptions& momentum(double v);
  /// The initial step η_0 as a multiple of ε, > 0 (default 2).
  ApgdOptions& initial_step(double multiple_of_epsilon);
  /// Record the first run's first sample into `trace` (not owned; may be null).
  ApgdOptions& trace(ApgdTrace* trace);
  ApgdOptions& settings(GradientSettings s);

  double epsilon() const { return epsilon_; }
  Norm norm() const { return norm_; }
  int64_t steps() const { return steps_; }
  int64_t restarts() const { return restarts_; }
  ApgdLoss loss() const { return loss_; }
  int64_t target_classes() const { return target_classes_; }
  double rho() const { return rho_; }
  double momentum() const { return momentum_; }
  double initial_step() const { return initial_step_; }
  ApgdTrace* trace() const { return trace_; }
  const GradientSettings& settings() const { return settings_; }

 private:
  double epsilon_ = 0.1;
  Norm norm_ = Norm::Linf;
  int64_t steps_ = 100;
  int64_t restarts_ = 1;
  ApgdLoss loss_ = ApgdLoss::CrossEntropy;
  int64_t target_classes_ = 9;
  double rho_ = 0.75;
  double momentum_ = 0.75;
  double initial_step_ = 2.0;
  ApgdTrace* trace_ = nullptr;
  GradientSettings settings_;
};

/// Runs APGD on (x, y): x N×C×H×W inside [clip_min, clip_max], y int64 N (true
/// labels; target classes for a targeted cross-entropy run). Samples the model
/// already gets wrong are returned unchanged and counted as successes. Every
/// result lies within ε of x in options.norm() and inside the pixel range.
/// `queries` counts forward passes per sample: one clean pass, then
/// (steps + 1) · eot_samples per run (a gradient evaluation is one forward
/// and one backward).
/// @throws parry::OptionError on bad arguments, too few classes for a DLR
///   loss, more target classes than K − 1, or a targeted DLR run with settings().targeted.
AttackResult apgd(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                  const ApgdOptions& options = ApgdOptions());

}  // namespace parry::attack

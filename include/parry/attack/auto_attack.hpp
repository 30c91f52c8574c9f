// attack::auto_attack: AutoAttack (Croce & Hein, "Reliable evaluation of
// adversarial robustness with an ensemble of diverse parameter-free attacks",
// ICML 2020), the evaluation RobustBench ranks models by.
//
// An ensemble run in sequence, each attack on the images every earlier one
// failed to break, keeping per image the first adversarial example found
// (the worst case over the ensemble):
//   standard: APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR,
//             9 targets, 100 iterations), FAB-T (9 targets, 100 iterations),
//             Square (5,000 queries, p_init 0.8, the unscaled schedule);
//   plus:     APGD-CE and APGD-DLR with 5 restarts, FAB (untargeted, 5
//             restarts), Square, APGD-T, FAB-T;
//   rand:     APGD-CE and APGD-DLR with EOT over 20 draws, for randomised
//             defenses.
// The constants are those of the authors' implementation
// (fra31/auto-attack, autoattack.py set_version).
//
// Threat model: the white-box components differentiate the LogitsFn (for a
// Guard, its attack path: BPDA through non-differentiable preprocessors).
// Square is black-box and score-based: it queries the Guard through
// Guard::predict like a client (its queries are counted, and a throttle or a
// query monitor of that Guard meets them); it is skipped, and the stage says
// why, when no Guard is given, the Guard answers without every class score, or
// the norm is L2 (Parry's Square is the L∞ attack).
//
// The sanity checks AutoAttack users rely on (checks.py of the authors'
// implementation) come back as warnings with the result: a randomised model, a
// probability output, zero gradients, a model that runs backward passes while
// answering (a defense that optimises at inference time), and Square breaking
// images that every white-box component missed (gradient masking).
#pragma once

#include <string>
#include <vector>

#include "parry/attack/attack.hpp"

namespace parry::attack {

/// The published AutoAttack ensembles; Custom runs AutoAttackOptions::components.
enum class AutoAttackVersion { Standard, Plus, Rand, Custom };

/// "standard", "plus", "rand", "custom".
const char* to_string(AutoAttackVersion version);
/// Inverse of to_string. @throws parry::OptionError naming the accepted values.
AutoAttackVersion auto_attack_version(const std::string& name);

/// One attack of the ensemble.
enum class AutoAttackComponent { ApgdCe, ApgdDlr, ApgdT, Fab, FabT, Square };

/// "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square" (the authors' names).
const char* to_string(AutoAttackComponent component);
/// Inverse of to_string. @throws parry::OptionError naming the accepted values.
AutoAttackComponent auto_attack_component(const std::string& name);

/// The components a version runs, in order (Custom: none; give them).
std::vector<AutoAttackComponent> auto_attack_components(AutoAttackVersion version);

struct AutoAttackOptions {
  /// @param epsilon radius in pixel units (L∞ or L2), >= 0.
  explicit AutoAttackOptions(double epsilon = 0.1, Norm norm = Norm::Linf,
                             AutoAttackVersion version = AutoAttackVersion::Standard);
  AutoAttackOptions& epsilon(double v);
  AutoAttackOptions& norm(Norm n);
  /// Sets the version and its components.
  AutoAttackOptions& version(AutoAttackVersion v);
  /// The ensemble, in order, for AutoAttackVersion::Custom (each at most once).
  /// Sets the version to Custom.
  AutoAttackOptions& components(std::vector<AutoAttackComponent> c);
  /// Iterations of APGD and FAB, >= 1 (default 100).
  AutoAttackOptions& steps(int64_t v);
  /// Queries of Square per image, >= 1 (default 5,000).
  AutoAttackOptions& square_queries(int64_t v);
  /// Target classes of APGD-T and FAB-T, >= 1 (default 9; capped at K − 1 for K classes).
  AutoAttackOptions& target_classes(int64_t v);
  /// EOT draws of the white-box components, >= 1 (default 1; 20 for rand).
  AutoAttackOptions& eot_samples(int64_t v);
  /// Pixel range and seed (targeted and eot_samples of `s` are ignored: use eot_samples()).
  AutoAttackOptions& settings(GradientSettings s);
  /// Client id of Square's queries (default "auto-attack").
  AutoAttackOptions& client_id(std::string id);

  double epsilon() const { return epsilon_; }
  Norm norm() const { return norm_; }
  AutoAttackVersion version() const { return version_; }
  const std::vector<AutoAttackComponent>& components() const { return components_; }
  int64_t steps() const { return steps_; }
  int64_t square_queries() const { return square_queries_; }
  int64_t target_classes() const { return target_classes_; }
  int64_t eot_samples() const { return eot_samples_; }
  const GradientSettings& settings() const { return settings_; }
  const std::string& client_id() const { return client_id_; }
  /// Restarts of APGD-CE, APGD-DLR and untargeted FAB in this version (5 for plus, else 1).
  int64_t restarts() const { return version_ == AutoAttackVersion::Plus ? 5 : 1; }

 private:
  double epsilon_ = 0.1;
  Norm norm_ = Norm::Linf;
  AutoAttackVersion version_ = AutoAttackVersion::Standard;
  std::vector<AutoAttackComponent> components_;
  int64_t steps_ = 100;
  int64_t square_queries_ = 5000;
  int64_t target_classes_ = 9;
  int64_t eot_samples_ = 1;
  GradientSettings settings_;
  std::string client_id_ = "auto-attack";
};

/// What one component did.
struct AutoAttackStage {
  AutoAttackComponent component = AutoAttackComponent::ApgdCe;
  int64_t attacked = 0;        ///< images it ran on (those still robust)
  int64_t broken = 0;          ///< of those, newly misclassified
  int64_t robust_after = 0;    ///< images still correctly classified after it
  int64_t forward_passes = 0;  ///< model evaluations it spent, summed over images
  double seconds = 0.0;
  bool skipped = false;
  std::string skip_reason;  ///< why it did not run
};

struct AutoAttackResult {
  /// Per image: the adversarial example (x where none was found), success =
  /// misclassified, its norm, and the forward passes spent on it.
  AttackResult attack;
  int64_t clean_correct = 0;  ///< images correctly classified before any attack
  std::vector<AutoAttackStage> stages;
  /// Sanity-check warnings, each a sentence (empty when every check passed).
  std::vector<std::string> warnings;
  /// Robust accuracy after the whole ensemble: images neither misclassified clean nor broken.
  double robust_accuracy() const;
};

/// The sanity checks AutoAttack runs before attacking, on a batch: the
/// model is randomised (5 forwards differ by more than 1e-4 in normalised
/// logits, or in accuracy), its output is a probability distribution, some
/// inputs have a zero DLR gradient (cross-entropy below 3 classes), and the
/// forward pass runs autograd backward functions on the calling thread (a
/// defense that optimises at inference time; CUDA backward passes run on the
/// engine's device threads and are not seen).
/// `expect_randomised` (the rand version) silences the first.
std::vector<std::string> auto_attack_checks(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                                            bool expect_randomised);

/// The gradient-masking check of the authors' checks.py on stages summed
/// over `images` images: Square ran after at least one white-box component and
/// broke more than 0.2% of the images. The warning's sentence, or "" if none.
std::string square_masking_warning(const std::vector<AutoAttackStage>& stages, int64_t images);

/// AutoAttack run batch by batch (an evaluation larger than one call), summed:
/// per stage the images attacked, broken and still robust, the forward passes
/// and the seconds are added, and a stage skipped on every batch stays
/// skipped with its reason. Warnings are kept once per kind (the counts in a
/// kept sentence are its first batch's), except Square's gradient-masking
/// check, which is judged again on all the images at once (checks.py judges
/// the whole evaluation, and 0.2% of one batch is not 0.2% of all).
class AutoAttackTally {
 public:
  /// Adds one batch's result (stages in the same order on every batch).
  void add(const AutoAttackResult& batch);
  const std::vector<AutoAttackStage>& stages() const { return stages_; }
  int64_t images() const { return images_; }
  int64_t clean_correct() const { return clean_correct_; }
  /// Images correctly classified after the whole ensemble.
  int64_t robust() const { return robust_; }
  /// The batches' warnings, each kind once, then the whole-evaluation masking check's.
  std::vector<std::string> warnings() const;

 private:
  std::vector<AutoAttackStage> stages_;
  std::vector<std::string> warnings_;
  int64_t images_ = 0;
  int64_t clean_correct_ = 0;
  int64_t robust_ = 0;
};

/// Runs the ensemble on (x, y): x N×C×H×W inside the pixel range, y int64 N
/// true labels. `guard`, if not null, answers Square's queries (it should be
/// the defense that `f` differentiates). Every result lies within ε of x and
/// inside the pixel range.
/// @throws parry::OptionError on bad arguments (as the components check them).
AutoAttackResult auto_attack(const LogitsFn& f, const Guard* guard, const torch::Tensor& x, const torch::Tensor& y,
                             const AutoAttackOptions& options = AutoAttackOptions());

}  // namespace parry::attack

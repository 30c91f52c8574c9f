// eval::evaluate: the evaluation behind `parry eval` and `parry demo`
// (eval/report.hpp writes its report: report.html, report.md, metrics.json, plots).
//
// For every defense of a config, on the first `images` test images:
//   - clean accuracy and the fraction of clean inputs flagged;
//   - for each attack and budget ε, accuracy under attack, where an input
//     counts as defended if the Guard's label is right or the input is
//     flagged, for two attackers:
//       non-adaptive: the attack is computed on the bare model (it does not
//         know the defense) and then sent through the Guard;
//       adaptive: the attack runs on the Guard's attack path (BPDA through
//         non-differentiable preprocessors, EOT over randomness) and, when the
//         defense has detectors, on the detector-aware classifier of Carlini &
//         Wagner 2017, targeted at a random wrong class;
//   - for each detector, the ROC curve on clean vs PGD examples at roc_epsilon;
//   - latency of Guard::predict at batch 1 and throughput at the evaluation's
//     batch_size (at most 256 and what every Guard accepts).
//   - certified rows (eval/certified.hpp): randomized smoothing of the bare
//     model at each σ of evaluation.certified, its certified accuracy
//     against L2 radius next to its accuracy under attacks at those radii;
//   - black-box rows (eval/black_box.hpp): Square at each ε (where the
//     output policy shows scores) and HopSkipJump (labels only) through the
//     defense's full Guard, gates included, on the first black_box.images
//     images, each run meeting fresh gates.
// Gates (throttling, query monitoring) are left out of the white-box
// accuracy runs; they meet the black-box rows, and their cost is in the
// latency figures (measured on fresh gates, so the config's gates keep no
// state from the evaluation).
//
// Every rate is a proportion of a stated number of images (the `images` and
// `*_images` fields), from which the report gives its 95% Wilson interval
// (eval::wilson_interval).
//
// The data streams: attacked images are read, attacked and scored one batch
// at a time (EvaluationSpec::batch_size, at most every Guard's max_batch), and
// calibration and detector fitting read their images in batches too, so the
// memory needed is that of a batch, not of the data set.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "parry/attack/auto_attack.hpp"
#include "parry/config/defense_config.hpp"
#include "parry/core/model.hpp"
#include "parry/data/image_source.hpp"
#include "parry/eval/black_box.hpp"
#include "parry/eval/certified.hpp"

namespace parry::eval {

/// One attack at one budget against one defense.
struct AttackOutcome {
  std::string attack;     ///< "FGSM", "PGD-40", "C&W-L2"
  double epsilon = 0.0;   ///< L∞ budget; 0 for C&W (unbounded, minimum distortion)
  double accuracy = 0.0;  ///< non-adaptive: label right or flagged
  /// Adaptive attacker, worst case per image: defended only if the image
  /// withstands both the adaptive attack and the transferred one.
  double adaptive_accuracy = 0.0;
  double mean_l2 = 0.0;  ///< mean L2 of the adaptive perturbations
  int64_t images = 0;    ///< n: the images both accuracies rest on
  /// Model evaluations the adaptive attack spent, summed over the images.
  int64_t forward_passes = 0;
  /// AutoAttack only (empty otherwise): the adaptive ensemble's stages, their
  /// counts summed over the batches. Its robust accuracy after a stage is
  /// stage.robust_after / images, judged as the authors' code judges it (the
  /// classifier's label; a detector's flag does not count).
  std::vector<attack::AutoAttackStage> stages;
  /// AutoAttack: images the classifier got right before any attack (RobustBench's clean_acc · images).
  int64_t clean_correct = 0;
  /// AutoAttack: its sanity-check warnings on any batch, each once. Non-empty
  /// means RobustBench's "unreliable".
  std::vector<std::string> warnings;
  bool is_auto_attack() const { return !stages.empty(); }
};

struct DetectorOutcome {
  std::string name;
  double auc = 0.0;
  double detection_rate = 0.0;     ///< on PGD at roc_epsilon, at the calibrated threshold
  double clean_fpr = 0.0;          ///< on the evaluation images
  int64_t adversarial_images = 0;  ///< n of detection_rate (the PGD examples)
  int64_t clean_images = 0;        ///< n of clean_fpr
  std::vector<double> roc_fpr, roc_tpr;
};

struct DefenseOutcome {
  std::string name;
  std::string description;
  double clean_accuracy = 0.0;
  double clean_flagged = 0.0;
  int64_t images = 0;              ///< n: the images clean_accuracy and clean_flagged rest on
  double latency_ms = 0.0;         ///< Guard::predict, batch 1, mean
  double images_per_second = 0.0;  ///< Guard::predict at Evaluation::throughput_batch
  std::vector<AttackOutcome> attacks;
  std::vector<DetectorOutcome> detectors;
  /// Square at each ε, then HopSkipJump; empty when black_box.images is 0.
  std::vector<BlackBoxOutcome> black_box;
  /// Clean accuracy per class (index = label; NaN for a class absent from
  /// the evaluated images).
  std::vector<double> class_accuracy;
  /// The images of each class among them: the n of each class_accuracy.
  std::vector<int64_t> class_images;
};

struct Evaluation {
  std::string model_description;
  std::string data_name;         ///< the test source's name ("pets-test")
  std::string data_description;  ///< its one-line description
  std::vector<std::string> classes;
  int64_t images = 0;
  std::vector<DefenseOutcome> defenses;
  torch::Tensor example_clean, example_adversarial;  ///< up to 8 images each (N×C×H×W), for the grid
  std::vector<int64_t> example_labels;
  double example_epsilon = 0.0;
  /// The black-box settings as run: images = min(black_box.images, images).
  config::BlackBoxSpec black_box;
  int64_t throughput_batch = 0;  ///< images per call of the throughput figures: min(batch_size, 256, max_batch)
  /// The undefended model's forward pass (Config::model_for, no Guard), timed
  /// in the same run and the same way as every defense's latency_ms (batch 1,
  /// mean of latency_repeats calls) and images_per_second (throughput_batch):
  /// the reference of the report's cost ratios.
  double forward_latency_ms = 0.0;
  double forward_images_per_second = 0.0;
  /// Randomized smoothing of the bare model, one per σ of
  /// evaluation.certified (eval/certified.hpp); empty when none is asked.
  std::vector<CertifiedOutcome> certified;
  double seconds = 0.0;
};

/// Data the evaluation needs: training images (to fit densities and
/// combiners; may be null when no detector needs fitting) and the test set.
/// Both are read in a random order fixed by EvaluationSpec::seed
/// (data::shuffled): the first `images` of the test set are attacked and the
/// last `calibration_images` set the thresholds, each holding every class. Both must have the
/// shape of the defenses' input and the model's class count.
struct EvaluationData {
  std::shared_ptr<const data::ImageSource> train;
  std::shared_ptr<const data::ImageSource> test;
};

/// Runs the evaluation. `model` is the bare model: the config's model_input
/// is applied to it (Config::model_for). `progress` receives one line per step (may be empty).
/// Detectors of the config are fitted and calibrated in place unless
/// `detectors_ready` (they were loaded by `parry calibrate`).
/// @throws parry::OptionError if the data is too small for the config, has
///   another image shape than a defense's input, or another class count than
///   the model's logits; parry::IoError from the data source.
Evaluation evaluate(config::Config& config, const Model& model, const EvaluationData& data,
                    const std::function<void(const std::string&)>& progress = {}, bool detectors_ready = false);

/// Fits (kernel densities, combiners) and calibrates every detector of a
/// defense, on the bare `model` with the defense's model_input applied.
void prepare_detectors(config::DefenseSpec& defense, const Model& model, const EvaluationData& data,
                       const config::EvaluationSpec& settings, const std::function<void(const std::string&)>& progress);

}  // namespace parry::eval

// train::DetectorTrainer: "label adversarial examples and train on them".
// Adversarial examples are generated against the protected classifier with a
// configurable set of attacks, labelled, and a network is trained to tell
// them apart from clean inputs. Two variants:
//  - ExtraClass: Grosse, Manoharan, Papernot, Backes, McDaniel, "On the
//    (Statistical) Detection of Adversarial Examples", arXiv:1702.06280, 2017.
//    A network with K + 1 outputs learns the K classes on clean inputs and
//    the extra class K on adversarial ones; score = softmax(·)_K.
//  - Binary: a separate binary detector network (Metzen, Genewein, Fischer,
//    Bischoff, "On Detecting Adversarial Perturbations", ICLR 2017, with the
//    detector on the input): two outputs, clean = 0, adversarial = 1;
//    score = softmax(·)_1.
// The result is a LearnedDetector, a parry::Detector for a Guard.
//
// Threat model, honestly: the detector learns the artefacts of the attacks
// it was trained on. It does not generalise reliably to other attacks or
// other budgets (trained on FGSM, PGD examples get through; docs/training.md
// measures this per attack), and an attacker who knows the detector optimises
// against it as well (Carlini & Wagner, "Adversarial Examples Are Not Easily
// Detected: Bypassing Ten Detection Methods", AISec 2017): its
// differentiable_score() serves attack::detector_aware for exactly that
// evaluation.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parry/attack/attack.hpp"
#include "parry/attack/carlini_wagner.hpp"
#include "parry/attack/fgsm.hpp"
#include "parry/attack/pgd.hpp"
#include "parry/core/detector.hpp"
#include "parry/core/model.hpp"
#include "parry/data/idx.hpp"
#include "parry/detect/learned_detector.hpp"
#include "parry/train/classifier_trainer.hpp"

namespace parry::train {

using detect::DetectorKind;
using detect::LearnedDetector;
using detect::to_string;

/// An attack used to make labelled adversarial examples: a name for reports
/// and a function (target logits, x, y) -> attack result.
struct TrainingAttack {
  std::string name;
  std::function<attack::AttackResult(const attack::LogitsFn&, const torch::Tensor&, const torch::Tensor&)> run;
};

/// FGSM with these options, named "fgsm".
TrainingAttack fgsm_attack(attack::FgsmOptions options = attack::FgsmOptions());
/// PGD with these options, named "pgd" (L∞) or "pgd_l2".
TrainingAttack pgd_attack(attack::PgdOptions options = attack::PgdOptions());
/// Carlini & Wagner L2 with these options, named "cw_l2".
TrainingAttack carlini_wagner_attack(attack::CarliniWagnerOptions options = attack::CarliniWagnerOptions());

struct DetectorTrainerOptions {
  DetectorTrainerOptions& kind(DetectorKind k);
  /// Adds an attack to the training set of attacks (at least one is needed).
  DetectorTrainerOptions& add_attack(TrainingAttack a);
  /// Keep adversarial examples the attack failed with, labelled adversarial
  /// too (default false: only successful ones, as Grosse et al.).
  DetectorTrainerOptions& keep_failed(bool on);
  /// Training epochs of the detector network, >= 1 (default 5).
  DetectorTrainerOptions& epochs(int64_t v);
  /// Mini-batch size, >= 1 (default 128).
  DetectorTrainerOptions& batch_size(int64_t v);
  /// Adam learning rate > 0 (default 1e-3, cosine-decayed to 5%).
  DetectorTrainerOptions& learning_rate(double v);
  /// Images per attack call, >= 1 (default 500).
  DetectorTrainerOptions& attack_batch_size(int64_t v);
  /// Seed of shuffling and dropout (attacks carry their own seeds) (default 0).
  DetectorTrainerOptions& seed(uint64_t v);
  /// Called after every training batch (default none).
  DetectorTrainerOptions& on_progress(std::function<void(const StepProgress&)> f);
  /// Data-parallel training over `group` (default none: one process). Every
  /// rank calls fit() with the same data and options; each trains on its
  /// shard of every batch (docs/training.md, "Several processes").
  DetectorTrainerOptions& process_group(std::shared_ptr<ProcessGroup> group);

  DetectorKind kind() const { return kind_; }
  const std::vector<TrainingAttack>& attacks() const { return attacks_; }
  bool keep_failed() const { return keep_failed_; }
  int64_t epochs() const { return epochs_; }
  int64_t batch_size() const { return batch_size_; }
  double learning_rate() const { return learning_rate_; }
  int64_t attack_batch_size() const { return attack_batch_size_; }
  uint64_t seed() const { return seed_; }
  const std::function<void(const StepProgress&)>& on_progress() const { return on_progress_; }
  const std::shared_ptr<ProcessGroup>& process_group() const { return process_group_; }

 private:
  DetectorKind kind_ = DetectorKind::Binary;
  std::vector<TrainingAttack> attacks_;
  bool keep_failed_ = false;
  int64_t epochs_ = 5;
  int64_t batch_size_ = 128;
  double learning_rate_ = 1e-3;
  int64_t attack_batch_size_ = 500;
  uint64_t seed_ = 0;
  std::function<void(const StepProgress&)> on_progress_;
  std::shared_ptr<ProcessGroup> process_group_;
};

class DetectorTrainer {
 public:
  /// @throws parry::OptionError if no attack was added.
  explicit DetectorTrainer(DetectorTrainerOptions options);

  /// The labelled training set: the clean images with label y (ExtraClass)
  /// or 0 (Binary), followed by each attack's adversarial examples against
  /// `target` with label K (ExtraClass, K = the target's class count) or 1.
  /// @throws parry::OptionError on bad data.
  data::LabeledImages make_training_set(const Model& target, const data::LabeledImages& clean) const;

  /// Generates the training set on `clean` and trains `network` (a fresh
  /// Model made from a torch::nn module with K+1 or 2 outputs) on it; the
  /// network is trained in place and left in eval mode. The returned
  /// detector is not calibrated: call calibrate() on held-out clean data.
  /// @throws parry::OptionError on bad data or a network with the wrong number of outputs.
  std::shared_ptr<LearnedDetector> fit(const Model& target, Model& network, const data::LabeledImages& clean) const;

  const DetectorTrainerOptions& options() const { return options_; }

 private:
  DetectorTrainerOptions options_;
};

}  // namespace parry::train

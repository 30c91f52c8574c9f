// detect::LearnedDetector: a detector network trained on labelled adversarial
// examples (train::DetectorTrainer makes one).
//  - ExtraClass: Grosse, Manoharan, Papernot, Backes, McDaniel, "On the
//    (Statistical) Detection of Adversarial Examples", arXiv:1702.06280, 2017.
//    A network with K + 1 outputs; score = softmax(·)_K.
//  - Binary: a separate binary detector network (Metzen, Genewein, Fischer,
//    Bischoff, "On Detecting Adversarial Perturbations", ICLR 2017, with the
//    detector on the input); score = softmax(·)_1.
//
// Threat model: the detector learns the artefacts of the attacks it was
// trained on; it does not generalise reliably to other attacks or budgets
// (docs/training.md), and an attacker who knows it optimises against it too
// (its differentiable_score() serves attack::detector_aware for that).
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "parry/core/detector.hpp"
#include "parry/core/model.hpp"

namespace parry::detect {

enum class DetectorKind {
  ExtraClass,  ///< Grosse et al.: a K+1-class network, class K = adversarial
  Binary,      ///< a separate two-output network, output 1 = adversarial
};
/// "extra_class" or "binary".
const char* to_string(DetectorKind kind);

/// The trained detector. Score = P(adversarial) under its own network, in
/// [0, 1]; it looks only at the (preprocessed) input, not at the protected
/// model's logits. Keeps its own copy of the network in eval mode; safe to
/// score from many threads.
class LearnedDetector final : public Detector {
 public:
  /// @param network a Model with K+1 (ExtraClass) or 2 (Binary) outputs; the
  ///        detector keeps a deep copy in eval mode.
  /// @param trained_on names of the attacks it was trained with (for reports).
  /// @throws parry::OptionError if the network has no parameters (to load or train).
  LearnedDetector(const Model& network, DetectorKind kind, std::vector<std::string> trained_on = {});

  std::string name() const override { return "learned_detector"; }
  std::string describe() const override;
  /// P(adversarial) per sample, float32 N, from input.batch.
  torch::Tensor score(const DetectorInput& input) const override;
  using Detector::score;
  /// The same probability, differentiable in `batch` (for detector-aware attacks).
  torch::Tensor differentiable_score(const torch::Tensor& batch, const Model& model) const override;

  DetectorKind kind() const { return kind_; }
  std::vector<std::string> trained_on() const { return std::atomic_load(&state_)->trained_on; }
  /// The detector's network (eval mode). Do not switch it to train mode while serving.
  Model network() const { return std::atomic_load(&state_)->network; }

 protected:
  /// Kind, attack names and the network's parameters and buffers.
  void save_state(torch::serialize::OutputArchive& archive) const override;
  /// Needs a network of the same architecture; a mismatch is a parry::IoError.
  void load_state(torch::serialize::InputArchive& archive) override;

 private:
  torch::Tensor probability(const torch::Tensor& logits) const;

  /// The network and what it was trained on, replaced whole by load()
  /// (std::atomic_store) so that scoring threads never see a half-loaded one.
  struct State {
    Model network;
    std::vector<std::string> trained_on;
  };
  std::shared_ptr<const State> state_;
  DetectorKind kind_;
};

}  // namespace parry::detect

// detect::SoftmaxConfidence: the maximum-softmax-probability baseline of
// Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
// Out-of-Distribution Examples in Neural Networks", ICLR 2017.
//
// Score = 1 - max_k softmax(logits)_k: low confidence is suspicious.
//
// Threat model: catches low-confidence adversarial examples (minimal
// perturbations that barely cross a decision boundary, e.g. C&W with κ=0,
// DeepFool) and out-of-distribution inputs. It is trivially evaded by an
// attacker who keeps going until the wrong class is confident (PGD to high
// confidence, C&W with a margin κ): report it only next to such an attack.
#pragma once

#include <torch/torch.h>

#include "parry/core/detector.hpp"

namespace parry::detect {

class SoftmaxConfidence final : public Detector {
 public:
  std::string name() const override { return "softmax_confidence"; }
  std::string describe() const override {
    return is_calibrated() ? "SoftmaxConfidence(threshold=" + std::to_string(threshold()) + ")"
                           : "SoftmaxConfidence(uncalibrated)";
  }
  /// 1 - max softmax probability, per sample, in [0, 1 - 1/K].
  torch::Tensor score(const DetectorInput& input) const override {
    return 1.0 - std::get<0>(torch::softmax(input.logits.to(torch::kFloat32), 1).max(1));
  }
  using Detector::score;
  /// The same score as a differentiable function of the (preprocessed) batch.
  torch::Tensor differentiable_score(const torch::Tensor& batch, const Model& model) const override {
    return 1.0 - std::get<0>(torch::softmax(model.logits(batch).to(torch::kFloat32), 1).max(1));
  }
};

}  // namespace parry::detect

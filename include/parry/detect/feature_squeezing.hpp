// detect::FeatureSqueezing: Xu, Evans, Qi, "Feature Squeezing: Detecting
// Adversarial Examples in Deep Neural Networks", NDSS 2018.
//
// Each squeezer (a preprocessor that removes detail: bit-depth reduction,
// median smoothing) is applied to the input, and the score is the largest L1
// distance between the model's softmax on the input and on a squeezed copy:
//     score(x) = max_s ‖softmax(f(x)) − softmax(f(s(x)))‖₁,   in [0, 2].
// An adversarial perturbation is fragile: squeezing often undoes it and the
// prediction jumps. for_grayscale() is the paper's best joint detector for
// MNIST: 1-bit depth and 2×2 median smoothing.
//
// Threat model: catches small-perturbation attacks that do not expect the
// squeezers. An adaptive attacker adds the score to the loss (BPDA through
// the squeezers); He et al. 2017 ("Adversarial example defenses: ensembles of
// weak defenses are not strong") defeated it that way. Parry measures the
// adaptive attack too (docs/detectors.md).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "parry/core/detector.hpp"
#include "parry/core/preprocessor.hpp"

namespace parry::detect {

class FeatureSqueezing final : public Detector {
 public:
  /// @throws parry::OptionError if `squeezers` is empty or holds a null.
  explicit FeatureSqueezing(std::vector<std::shared_ptr<const Preprocessor>> squeezers);
  /// Xu et al.'s MNIST configuration: BitDepth(1) and MedianSmoothing(2×2),
  /// both with straight-through gradients for adaptive attacks.
  static FeatureSqueezing for_grayscale();

  std::string name() const override { return "feature_squeezing"; }
  std::string describe() const override;

  /// Max L1 softmax distance per sample, float32, N, in [0, 2].
  torch::Tensor score(const DetectorInput& input) const override;
  using Detector::score;
  /// Same, differentiable through each squeezer's gradient policy.
  torch::Tensor differentiable_score(const torch::Tensor& batch, const Model& model) const override;

  const std::vector<std::shared_ptr<const Preprocessor>>& squeezers() const { return squeezers_; }

 private:
  std::vector<std::shared_ptr<const Preprocessor>> squeezers_;
};

}  // namespace parry::detect

// detect::FeatureSqueezing: Xu, Evans, Qi, "Feature Squeezing: Detecting
// Adversarial Examples in Deep Neural Networks", NDSS 2018.
//
// Each squeezer (a preprocessor that removes detail: bit-depth reduction,
// median smoothing) is applied to the input, and the score is the largest L1
// distance between the model's softmax on the input and on a squeezed copy:
//     score(x) = max_s ‖softmax(f(x)) − softmax(f(s(x)))‖₁,   in [0, 2].
// An adversarial perturbation is fragile: squeezing often undoes it and the
// prediction jumps. The paper's best joint detectors (Section V, Table IV),
// as the authors' code (EvadeML-Zoo) configures them, are
//   MNIST (grayscale):   1-bit depth, 2×2 median smoothing      (for_grayscale)
//   CIFAR-10 (colour):   5-bit depth, 2×2 median smoothing and
//                        non-local means "13-3-2"               (for_color)
//   ImageNet (colour):   5-bit depth, 2×2 median smoothing and
//                        non-local means "11-3-4"
// where "s-p-h" is OpenCV's fastNlMeansDenoisingColored with search window
// s, patch size p and filter strength h = hColor (0..255 scale). Parry's
// colour default is the CIFAR-10 configuration (32×32 inputs);
// NonLocalMeansOptions' defaults are the ImageNet one. for_channels() picks
// by channel count.
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
  /// Xu et al.'s CIFAR-10 configuration for colour images: BitDepth(5),
  /// MedianSmoothing(2×2) and NonLocalMeans(search window 13, patch 3,
  /// strength 2), all with straight-through gradients.
  static FeatureSqueezing for_color();
  /// for_grayscale() for 1 channel, for_color() for 3 channels (the channel
  /// count of the defense's input, C of N×C×H×W).
  /// @throws parry::OptionError for other channel counts (no published configuration).
  static FeatureSqueezing for_channels(int64_t channels);

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

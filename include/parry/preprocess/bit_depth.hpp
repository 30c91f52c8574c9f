// preprocess::BitDepth: colour-depth reduction, the first squeezer of
// feature squeezing (Xu, Evans, Qi, "Feature Squeezing: Detecting Adversarial
// Examples in Deep Neural Networks", NDSS 2018):
//     x' = round(x · (2^bits − 1)) / (2^bits − 1)     for x in [0, 1]
// (round half to even, as numpy's rint used by the reference implementation).
//
// Threat model: removes perturbations smaller than half a quantisation step
// (ε < 1/(2(2^bits − 1))); at 1 bit on MNIST-like data it stops small L∞
// attacks. An adaptive attacker uses BPDA (the default StraightThrough policy)
// and simply pushes pixels across quantisation boundaries: Athalye et al. 2018
// report it offers no robustness then.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <string>

#include "parry/core/preprocessor.hpp"
#include "parry/detail/arg.hpp"

namespace parry::preprocess {

struct BitDepthOptions {
  PARRY_OPTIONS(BitDepthOptions);
  /// @param bits bits per channel kept, in 1..8.
  explicit BitDepthOptions(int bits = 4) { this->bits(bits); }
  /// Bits per channel kept.
  PARRY_CHECKED_ARG(int, bits, 4, v >= 1 && v <= 8, "must be in 1..8");
  /// Attack-path gradient: StraightThrough (BPDA, default) or Blocked.
  PARRY_ARG(GradientPolicy, gradient_policy) = GradientPolicy::StraightThrough;
};

class BitDepth final : public Preprocessor {
 public:
  explicit BitDepth(BitDepthOptions options = BitDepthOptions())
      : Preprocessor(options.gradient_policy()), options_(options) {
    check_policy("BitDepth");
  }
  /// Quantises every value of `x` (expected in [0, 1]) to 2^bits levels.
  torch::Tensor apply(const torch::Tensor& x) const override {
    const double levels = std::ldexp(1.0, options_.bits()) - 1.0;
    return torch::round(x * levels) / levels;
  }
  bool is_differentiable() const override { return false; }
  std::string describe() const override {
    return "BitDepth(bits=" + std::to_string(options_.bits()) + ", grad=" + to_string(gradient_policy()) + ")";
  }
  const BitDepthOptions& options() const { return options_; }

 private:
  BitDepthOptions options_;
};

}  // namespace parry::preprocess

// preprocess::Jpeg: JPEG compression and decompression of every image
// (OpenCV's libjpeg codec), as in Dziugaite et al. 2016 and Das et al. 2017
// ("Keeping the Bad Guys Out"). Values are rounded to 8 bits before encoding.
//
// Threat model: JPEG discards high-frequency content that many small
// perturbations live in, so it degrades attacks made without knowing it. It
// is not differentiable; an adaptive attacker uses BPDA (the default
// StraightThrough policy), which defeats it (Athalye et al. 2018), or a
// differentiable JPEG approximation. Report it only next to BPDA numbers.
#pragma once

#include <torch/torch.h>

#include <string>

#include "parry/core/preprocessor.hpp"
#include "parry/detail/arg.hpp"

namespace parry::preprocess {

struct JpegOptions {
  PARRY_OPTIONS(JpegOptions);
  /// @param quality libjpeg quality, 1 (smallest) .. 100 (best).
  explicit JpegOptions(int quality = 75) { this->quality(quality); }
  /// libjpeg quality, 1 (smallest) .. 100 (best).
  PARRY_CHECKED_ARG(int, quality, 75, v >= 1 && v <= 100, "must be in 1..100");
  /// Attack-path gradient: StraightThrough (BPDA, default) or Blocked.
  PARRY_ARG(GradientPolicy, gradient_policy) = GradientPolicy::StraightThrough;
};

class Jpeg final : public Preprocessor {
 public:
  explicit Jpeg(JpegOptions options = JpegOptions()) : Preprocessor(options.gradient_policy()), options_(options) {
    check_policy("Jpeg");
  }
  /// Encodes and decodes every image of `x` (N×C×H×W, C = 1 or 3 (RGB),
  /// values in [0, 1]); images are processed in parallel.
  /// @throws parry::InputError for other channel counts.
  torch::Tensor apply(const torch::Tensor& x) const override;
  bool is_differentiable() const override { return false; }
  std::string describe() const override {
    return "Jpeg(quality=" + std::to_string(options_.quality()) + ", grad=" + to_string(gradient_policy()) + ")";
  }
  const JpegOptions& options() const { return options_; }

 private:
  JpegOptions options_;
};

}  // namespace parry::preprocess

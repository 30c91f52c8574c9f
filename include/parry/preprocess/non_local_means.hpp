// preprocess::NonLocalMeans: non-local means denoising (Buades, Coll, Morel,
// "A non-local algorithm for image denoising", CVPR 2005) with OpenCV's
// fastNlMeansDenoisingColored (3 channels, RGB) or fastNlMeansDenoising
// (1 channel), the third squeezer of feature squeezing for colour images
// (Xu, Evans, Qi, NDSS 2018; parry/detect/feature_squeezing.hpp).
//
// Every pixel becomes a weighted mean of the pixels in its search window
// whose surrounding patch looks alike; the filter strength h sets how alike
// (larger h: smoother). OpenCV works on 8-bit images: values in [0, 1] are
// quantised to round(255·x) clamped to 0..255 before filtering and the
// result is divided by 255, so the output holds multiples of 1/255 even
// where the filter changes nothing. The colour variant converts to CIELAB
// and filters luminance with h and colour with hColor; Parry passes
// h = hColor = strength, as the authors' code does.
//
// Threat model: removes small, high-frequency perturbations while keeping
// edges. It is not differentiable; an adaptive attacker uses BPDA (the
// default StraightThrough policy) or adds the squeezer to the attacked
// model, which defeats it (He et al. 2017). Report it only next to BPDA numbers.
#pragma once

#include <torch/torch.h>

#include <string>

#include "parry/core/preprocessor.hpp"
#include "parry/detail/arg.hpp"

namespace parry::preprocess {

struct NonLocalMeansOptions {
  PARRY_OPTIONS(NonLocalMeansOptions);
  /// Side of the square search window in pixels (odd), OpenCV's
  /// searchWindowSize; default 11 (Xu et al.'s "11-3-4").
  PARRY_CHECKED_ARG(int, search_window, 11, v >= 1 && v <= 63 && v % 2 == 1, "must be odd and in 1..63");
  /// Side of the square patch compared in pixels (odd), OpenCV's
  /// templateWindowSize; default 3. At most the search window.
  PARRY_CHECKED_ARG(int, patch_size, 3, v >= 1 && v <= 31 && v % 2 == 1, "must be odd and in 1..31");
  /// Filter strength h (= hColor for colour images) on the 0..255 scale;
  /// default 4 (0 is not allowed: OpenCV's weights divide by h²).
  PARRY_CHECKED_ARG(double, strength, 4.0, std::isfinite(v) && v > 0 && v <= 255, "must be in (0, 255]");
  /// Attack-path gradient: StraightThrough (BPDA, default) or Blocked.
  PARRY_ARG(GradientPolicy, gradient_policy) = GradientPolicy::StraightThrough;
};

class NonLocalMeans final : public Preprocessor {
 public:
  /// @throws parry::OptionError if patch_size exceeds search_window or the
  ///   gradient policy is Exact (the filter has no gradient).
  explicit NonLocalMeans(NonLocalMeansOptions options = NonLocalMeansOptions());
  /// Denoises every image of `x` (N×C×H×W, C = 1 or 3 (RGB), values in
  /// [0, 1]; quantised to 8 bits, see above); images are processed in
  /// parallel. Returns the same shape and dtype, values in [0, 1].
  /// @throws parry::InputError for other ranks or channel counts.
  torch::Tensor apply(const torch::Tensor& x) const override;
  bool is_differentiable() const override { return false; }
  std::string describe() const override;
  const NonLocalMeansOptions& options() const { return options_; }

 private:
  NonLocalMeansOptions options_;
};

}  // namespace parry::preprocess

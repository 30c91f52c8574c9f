// parry::InputSpec: what a Guard accepts from a caller.
//
// Threat model: every tensor that reaches a Guard comes from an untrusted
// caller. InputSpec is the boundary check: it rejects anything that is not a
// finite float32 batch of the declared image shape inside the declared value
// range, before any preprocessing or model code runs.
#pragma once

#include <torch/torch.h>

#include <string>

#include "parry/core/errors.hpp"

namespace parry {

/// Expected input: float32 images of shape C×H×W (one image) or N×C×H×W (a
/// batch with 1 <= N <= max_batch), finite, with values in [min_value,
/// max_value] (default [0, 1]).
class InputSpec {
 public:
  /// @param channels C (1 for grayscale, 3 for RGB); @param height H and
  /// @param width W in pixels. All must be positive.
  InputSpec(int64_t channels, int64_t height, int64_t width);

  /// Inclusive range of valid pixel values (default [0, 1]).
  InputSpec& value_range(double min_value, double max_value);
  /// Largest batch a single request may carry (default 256).
  InputSpec& max_batch(int64_t max_batch);

  int64_t channels() const { return channels_; }
  int64_t height() const { return height_; }
  int64_t width() const { return width_; }
  double min_value() const { return min_value_; }
  double max_value() const { return max_value_; }
  int64_t max_batch() const { return max_batch_; }

  /// Checks `x` and returns it as an N×C×H×W batch (a C×H×W image gets a
  /// leading batch dimension; no data is copied).
  /// @throws parry::InputError naming what was expected: wrong rank, shape,
  /// dtype or device (CPU and CUDA are accepted); an empty or oversized batch;
  /// NaN/Inf; out-of-range values.
  torch::Tensor validate(const torch::Tensor& x) const;

  /// "float32 N×C×H×W in [lo, hi], N <= max" for messages and reports.
  std::string describe() const;

 private:
  int64_t channels_;
  int64_t height_;
  int64_t width_;
  double min_value_ = 0.0;
  double max_value_ = 1.0;
  int64_t max_batch_ = 256;
};

}  // namespace parry

// preprocess::Resize: spatial down-scaling, optionally back up to the input
// size: the seed article's "compression to a smaller size".
//
// Modes:
//  - Area: along each shrinking axis, each output pixel is the average of the
//    input span it covers, with fractional weights at the edges: OpenCV's
//    INTER_AREA when both axes shrink (A_h · X · A_wᵀ with exact overlap
//    matrices, differentiable). A growing axis is interpolated bilinearly,
//    which differs from OpenCV's INTER_AREA (nearest-like) for enlargement.
//  - Bilinear: half-pixel bilinear interpolation (OpenCV INTER_LINEAR, torch
//    align_corners=false), with optional antialiasing when shrinking (torch's
//    antialiased kernel, as PIL's BILINEAR).
// With restore(true) (default) the image is brought back to its input size
// with bilinear interpolation, so the model's input shape is unchanged.
//
// Threat model: discards detail finer than the intermediate resolution, so a
// perturbation that lives in high frequencies loses much of its effect. It is
// differentiable (Exact policy by default): an attacker who knows the scale
// attacks through it (Athalye et al. 2018). Useful against unaware attackers
// and transferred examples, at a cost in clean accuracy.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <sstream>
#include <string>

#include "parry/core/preprocessor.hpp"
#include "parry/detail/arg.hpp"

namespace parry::preprocess {

enum class ResizeMode { Area, Bilinear };

struct ResizeOptions {
  PARRY_OPTIONS(ResizeOptions);
  /// @param height, @param width intermediate size in pixels (>= 1).
  ResizeOptions(int64_t height, int64_t width) {
    this->height(height);
    this->width(width);
  }
  /// Intermediate height in pixels.
  PARRY_CHECKED_ARG(int64_t, height, 1, v >= 1, "must be at least 1");
  /// Intermediate width in pixels.
  PARRY_CHECKED_ARG(int64_t, width, 1, v >= 1, "must be at least 1");
  /// Area (default) or Bilinear.
  PARRY_ARG(ResizeMode, mode) = ResizeMode::Area;
  /// Bilinear mode only: antialias when shrinking (default true).
  PARRY_ARG(bool, antialias) = true;
  /// Resize back to the input size afterwards (default true).
  PARRY_ARG(bool, restore) = true;
  /// Attack-path gradient: Exact (default), StraightThrough or Blocked.
  PARRY_ARG(GradientPolicy, gradient_policy) = GradientPolicy::Exact;
};

}  // namespace parry::preprocess

namespace parry::detail {

/// Row-stochastic (out×in) matrix of INTER_AREA weights for shrinking `in` to `out`.
inline torch::Tensor area_matrix(int64_t in, int64_t out) {
  auto m = torch::zeros({out, in}, torch::kFloat64);
  auto acc = m.accessor<double, 2>();
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  for (int64_t o = 0; o < out; ++o) {
    const double start = static_cast<double>(o) * scale;
    const double end = start + scale;
    for (auto i = static_cast<int64_t>(start); i < in && static_cast<double>(i) < end; ++i) {
      const double overlap = std::min(end, static_cast<double>(i + 1)) - std::max(start, static_cast<double>(i));
      if (overlap > 0) acc[o][i] = overlap / scale;
    }
  }
  return m;
}

inline torch::Tensor resize_bilinear(const torch::Tensor& x, int64_t h, int64_t w, bool antialias) {
  namespace F = torch::nn::functional;
  const bool shrinking = h < x.size(2) || w < x.size(3);
  return F::interpolate(x, F::InterpolateFuncOptions()
                               .size(std::vector<int64_t>{h, w})
                               .mode(torch::kBilinear)
                               .align_corners(false)
                               .antialias(antialias && shrinking));
}

}  // namespace parry::detail

namespace parry::preprocess {

class Resize final : public Preprocessor {
 public:
  explicit Resize(ResizeOptions options) : Preprocessor(options.gradient_policy()), options_(options) {
    check_policy("Resize");
  }
  /// Resizes `x` (N×C×H×W) to the configured size, and back if restore().
  torch::Tensor apply(const torch::Tensor& x) const override {
    const int64_t h = x.size(2), w = x.size(3);
    const int64_t th = options_.height(), tw = options_.width();
    torch::Tensor y = x;
    if (options_.mode() == ResizeMode::Area) {
      // Each shrinking axis gets INTER_AREA's exact overlap weights (a block
      // average for integer factors); a growing axis is interpolated below.
      if (th < h) {
        y = h % th == 0 && tw >= w ? torch::avg_pool2d(y, {h / th, 1})
                                   : torch::matmul(parry::detail::area_matrix(h, th).to(x.dtype()), y);
      }
      if (tw < w) {
        y = w % tw == 0 ? torch::avg_pool2d(y, {1, w / tw})
                        : torch::matmul(y, parry::detail::area_matrix(w, tw).to(x.dtype()).t());
      }
      if (th > h || tw > w) y = parry::detail::resize_bilinear(y, th, tw, /*antialias=*/false);
    } else {
      y = parry::detail::resize_bilinear(x, th, tw, options_.antialias());
    }
    if (options_.restore() && (th != h || tw != w)) y = parry::detail::resize_bilinear(y, h, w, /*antialias=*/false);
    return y;
  }
  bool is_differentiable() const override { return true; }
  /// With restore() the image keeps its size and, being a non-negative
  /// weighted average of pixels, its value range: a pixel-space defense.
  /// Without, it resizes to the network's size: a model input transform.
  bool works_in_pixel_space() const override { return options_.restore(); }
  std::string describe() const override {
    std::ostringstream out;
    out << "Resize(" << options_.height() << "x" << options_.width() << ", "
        << (options_.mode() == ResizeMode::Area ? "area" : (options_.antialias() ? "bilinear+antialias" : "bilinear"))
        << (options_.restore() ? ", restore" : "") << ", grad=" << to_string(gradient_policy()) << ")";
    return out.str();
  }
  const ResizeOptions& options() const { return options_; }

 private:
  ResizeOptions options_;
};

}  // namespace parry::preprocess

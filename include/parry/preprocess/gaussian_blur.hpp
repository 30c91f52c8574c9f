// preprocess::GaussianBlur: separable Gaussian smoothing, the seed article's
// "noise reduction" step.
//
// Kernel: g[i] ∝ exp(−(i − r)² / (2σ²)), i = 0..2r, normalised to sum 1
// (OpenCV's getGaussianKernel for σ > 0); borders reflect without repeating
// the edge pixel (OpenCV's default BORDER_REFLECT_101). Output equals
// cv::GaussianBlur(x, Size(k, k), σ, σ) per channel.
//
// Threat model: attenuates high-frequency perturbations; it is linear and
// differentiable, so a white-box attacker simply differentiates through it
// (Exact policy, the default) and finds perturbations that survive blurring.
// It buys robustness only against attackers unaware of it, at a cost in clean
// accuracy (see docs/preprocessing.md).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <string>

#include "parry/core/preprocessor.hpp"
#include "parry/detail/arg.hpp"
#include "parry/detail/padding.hpp"

namespace parry::preprocess {

struct GaussianBlurOptions {
  PARRY_OPTIONS(GaussianBlurOptions);
  /// @param kernel_size odd side of the kernel in pixels (1..31);
  /// @param sigma standard deviation in pixels (> 0).
  GaussianBlurOptions(int kernel_size = 3, double sigma = 1.0) {
    this->kernel_size(kernel_size);
    this->sigma(sigma);
  }
  /// Side of the square kernel in pixels.
  PARRY_CHECKED_ARG(int, kernel_size, 3, v >= 1 && v <= 31 && v % 2 == 1, "must be odd and in 1..31");
  /// Standard deviation of the Gaussian in pixels.
  PARRY_CHECKED_ARG(double, sigma, 1.0, v > 0 && std::isfinite(v), "must be positive and finite");
  /// Attack-path gradient: Exact (default), StraightThrough or Blocked.
  PARRY_ARG(GradientPolicy, gradient_policy) = GradientPolicy::Exact;
};

class GaussianBlur final : public Preprocessor {
 public:
  explicit GaussianBlur(GaussianBlurOptions options = GaussianBlurOptions())
      : Preprocessor(options.gradient_policy()), options_(options), kernel_(make_kernel(options)) {
    check_policy("GaussianBlur");
  }
  /// Blurs every channel of `x` (N×C×H×W).
  torch::Tensor apply(const torch::Tensor& x) const override {
    const int64_t r = options_.kernel_size() / 2;
    if (r == 0) return x;
    // Separable: a weighted sum of 2r+1 shifted views along W, then along H.
    // (A single-channel conv2d was 40x slower on 224x224 images here.)
    const auto* taps = kernel_.data_ptr<double>();
    auto pass = [&](const torch::Tensor& in, int64_t dim) {
      const int64_t size = in.size(dim);
      const torch::Tensor padded = dim == 3 ? parry::detail::pad_2d(in, 0, 0, r, r, parry::detail::Border::Reflect101)
                                            : parry::detail::pad_2d(in, r, r, 0, 0, parry::detail::Border::Reflect101);
      torch::Tensor out = padded.narrow(dim, 0, size) * taps[0];
      for (int64_t i = 1; i <= 2 * r; ++i) out.add_(padded.narrow(dim, i, size), taps[i]);
      return out;
    };
    return pass(pass(x, 3), 2);
  }
  bool is_differentiable() const override { return true; }
  std::string describe() const override {
    std::ostringstream out;
    out << "GaussianBlur(kernel=" << options_.kernel_size() << "x" << options_.kernel_size()
        << ", sigma=" << options_.sigma() << ", grad=" << to_string(gradient_policy()) << ")";
    return out.str();
  }
  const GaussianBlurOptions& options() const { return options_; }

  /// The normalised 1-D kernel (float64), length kernel_size.
  static torch::Tensor make_kernel(const GaussianBlurOptions& o) {
    const int64_t r = o.kernel_size() / 2;
    auto i = torch::arange(-r, r + 1, torch::kFloat64);
    auto g = torch::exp(-(i * i) / (2.0 * o.sigma() * o.sigma()));
    return g / g.sum();
  }

 private:
  GaussianBlurOptions options_;
  torch::Tensor kernel_;
};

}  // namespace parry::preprocess

// preprocess::Normalize: per-channel (x - mean) / std.
//
// Threat model: none by itself. Normalisation is part of most deployed
// pipelines; it is here so the attack path sees the exact same arithmetic
// (it is differentiable, so its gradient policy is Exact by default).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "parry/core/preprocessor.hpp"
#include "parry/detail/arg.hpp"

namespace parry::preprocess {

struct NormalizeOptions {
  PARRY_OPTIONS(NormalizeOptions);
  /// What the constructor requires of `mean` and of `std`, as its errors state it.
  static constexpr const char* mean_rule() { return "every mean must be finite"; }
  static constexpr const char* std_rule() { return "every std must be positive and finite"; }
  /// @param mean per-channel means, @param std per-channel standard deviations
  ///   (positive), both of length C (the input's channel count).
  NormalizeOptions(std::vector<double> mean, std::vector<double> std) : mean_(std::move(mean)), std_(std::move(std)) {
    if (mean_.empty() || mean_.size() != std_.size()) {
      throw OptionError("NormalizeOptions: mean and std need the same non-zero length, but got " +
                        std::to_string(mean_.size()) + " and " + std::to_string(std_.size()));
    }
    for (double s : std_) {
      if (!(s > 0) || !std::isfinite(s)) {
        throw OptionError(std::string("NormalizeOptions: ") + std_rule() + ", but got " + std::to_string(s));
      }
    }
    for (double m : mean_) {
      if (!std::isfinite(m))
        throw OptionError(std::string("NormalizeOptions: ") + mean_rule() + ", but got " + std::to_string(m));
    }
  }
  /// Per-channel means.
  const std::vector<double>& mean() const { return mean_; }
  /// Per-channel standard deviations.
  const std::vector<double>& std() const { return std_; }
  /// Gradient policy on the attack path (default Exact).
  PARRY_ARG(GradientPolicy, gradient_policy) = GradientPolicy::Exact;

 private:
  std::vector<double> mean_;
  std::vector<double> std_;
};

class Normalize final : public Preprocessor {
 public:
  explicit Normalize(NormalizeOptions options)
      : Preprocessor(options.gradient_policy()),
        options_(std::move(options)),
        inv_std_(torch::tensor(options_.std(), torch::kFloat32).reciprocal().view({1, -1, 1, 1})),
        shift_(-torch::tensor(options_.mean(), torch::kFloat32).view({1, -1, 1, 1}) * inv_std_) {
    // The serving path uses the same float32 constants as the attack path,
    // so both compute bit-identical values.
    for (int64_t c = 0; c < inv_std_.size(1); ++c) {
      scale_.push_back(inv_std_.flatten()[c].item<float>());
      offset_.push_back(shift_.flatten()[c].item<float>());
    }
  }

  /// (x - mean[c]) / std[c] for x of shape N×C×H×W.
  /// @throws parry::OptionError if C differs from the configured channel count.
  torch::Tensor apply(const torch::Tensor& x) const override {
    if (x.dim() != 4 || x.size(1) != inv_std_.size(1)) {
      throw OptionError("Normalize: configured for " + std::to_string(inv_std_.size(1)) +
                        " channels, but the input has shape " + c10::str(x.sizes()));
    }
    // x · (1/std) + (−mean/std): a multiply, then an add, on both paths. With
    // autograd recording, broadcast ops; otherwise per-channel scalar ops,
    // which are 2x faster here.
    if (x.requires_grad()) return x * inv_std_.to(x.dtype()) + shift_.to(x.dtype());
    const int64_t channels = inv_std_.size(1);
    if (channels == 1) return x.mul(scale_[0]).add_(offset_[0]);
    torch::Tensor y = torch::empty_like(x);
    for (int64_t c = 0; c < channels; ++c) {
      torch::Tensor plane = y.select(1, c);
      torch::mul_out(plane, x.select(1, c), torch::scalar_tensor(scale_[static_cast<size_t>(c)], x.options()));
      plane.add_(offset_[static_cast<size_t>(c)]);
    }
    return y;
  }

  bool is_differentiable() const override { return true; }
  /// Normalised values are model space: use Normalize as the model's input
  /// transform (Model::with_input_transform), not as a Guard preprocessor.
  bool works_in_pixel_space() const override { return false; }

  std::string describe() const override {
    std::ostringstream out;
    out << "Normalize(mean=[";
    for (size_t i = 0; i < options_.mean().size(); ++i) out << (i ? ", " : "") << options_.mean()[i];
    out << "], std=[";
    for (size_t i = 0; i < options_.std().size(); ++i) out << (i ? ", " : "") << options_.std()[i];
    out << "], grad=" << to_string(gradient_policy()) << ")";
    return out.str();
  }

  const NormalizeOptions& options() const { return options_; }

 private:
  NormalizeOptions options_;
  torch::Tensor inv_std_;
  torch::Tensor shift_;
  std::vector<double> scale_;
  std::vector<double> offset_;
};

}  // namespace parry::preprocess

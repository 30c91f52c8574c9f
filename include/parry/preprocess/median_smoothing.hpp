// preprocess::MedianSmoothing: 2-D median filter per channel, the second
// squeezer of feature squeezing (Xu, Evans, Qi, NDSS 2018).
//
// Semantics are those of scipy.ndimage.median_filter with size (1, 1, k, k),
// which the paper's code and IBM's ART use: the k×k window at (i, j) covers
// rows i − k/2 .. i − k/2 + k − 1 (integer division; for even k such as the
// paper's 2×2 it extends up and left), borders are extended symmetrically
// (scipy "reflect": ...cba|abc...), and the result is the element of rank
// k²/2 in the sorted window (for even k² the upper of the two middle values).
// For odd k ≤ 3 this equals OpenCV's medianBlur.
//
// Threat model: removes sparse, large perturbations (L0 attacks such as JSMA,
// salt-and-pepper noise) and blunts small dense ones. An adaptive attacker
// uses BPDA (the default StraightThrough policy) or the exact subgradient
// (Exact is allowed: the median routes the gradient to the selected pixel).
#pragma once

#include <torch/torch.h>

#include <string>

#include "parry/core/preprocessor.hpp"
#include "parry/detail/arg.hpp"
#include "parry/detail/padding.hpp"

namespace parry::preprocess {

struct MedianSmoothingOptions {
  PARRY_OPTIONS(MedianSmoothingOptions);
  /// @param window side k of the square window, in 1..15 (even sizes allowed).
  explicit MedianSmoothingOptions(int window = 2) { this->window(window); }
  /// Side k of the square window in pixels (even sizes allowed).
  PARRY_CHECKED_ARG(int, window, 2, v >= 1 && v <= 15, "must be in 1..15");
  /// Attack-path gradient: StraightThrough (BPDA, default), Exact or Blocked.
  PARRY_ARG(GradientPolicy, gradient_policy) = GradientPolicy::StraightThrough;
};

class MedianSmoothing final : public Preprocessor {
 public:
  explicit MedianSmoothing(MedianSmoothingOptions options = MedianSmoothingOptions())
      : Preprocessor(options.gradient_policy()), options_(options) {
    check_policy("MedianSmoothing");
  }
  /// Median filter of every channel of `x` (N×C×H×W).
  torch::Tensor apply(const torch::Tensor& x) const override {
    const int64_t k = options_.window();
    if (k == 1) return x;
    const int64_t before = k / 2;
    const int64_t after = k - 1 - before;
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    const torch::Tensor padded =
        parry::detail::pad_2d(x, before, after, before, after, parry::detail::Border::Symmetric);
    // The k² neighbours of every pixel, as strided views.
    std::vector<torch::Tensor> shifted;
    shifted.reserve(static_cast<size_t>(k * k));
    for (int64_t dy = 0; dy < k; ++dy) {
      for (int64_t dx = 0; dx < k; ++dx) shifted.push_back(padded.narrow(2, dy, h).narrow(3, dx, w));
    }
    if (k == 2) return upper_median_of_4(shifted);
    if (k == 3) return median_of_9(shifted);
    const torch::Tensor windows = torch::stack(shifted, -1);
    return std::get<0>(windows.kthvalue(k * k / 2 + 1, -1)).view({n, c, h, w});
  }
  bool is_differentiable() const override { return true; }
  std::string describe() const override {
    const auto k = std::to_string(options_.window());
    return "MedianSmoothing(window=" + k + "x" + k + ", grad=" + to_string(gradient_policy()) + ")";
  }
  const MedianSmoothingOptions& options() const { return options_; }

 private:
  // Compare-exchange: a <- min, b <- max.
  static void sort_pair(torch::Tensor& a, torch::Tensor& b) {
    torch::Tensor lo = torch::minimum(a, b);
    b = torch::maximum(a, b);
    a = std::move(lo);
  }
  // Rank 2 of 4 (the upper median): max(min of the pair maxima, max of the pair minima).
  static torch::Tensor upper_median_of_4(std::vector<torch::Tensor> p) {
    sort_pair(p[0], p[1]);
    sort_pair(p[2], p[3]);
    return torch::maximum(torch::minimum(p[1], p[3]), torch::maximum(p[0], p[2]));
  }
  // Paeth's 19-comparator median-of-9 network (Graphics Gems, 1990).
  static torch::Tensor median_of_9(std::vector<torch::Tensor> p) {
    static constexpr int kNetwork[19][2] = {{1, 2}, {4, 5}, {7, 8}, {0, 1}, {3, 4}, {6, 7}, {1, 2},
                                            {4, 5}, {7, 8}, {0, 3}, {5, 8}, {4, 7}, {3, 6}, {1, 4},
                                            {2, 5}, {4, 7}, {4, 2}, {6, 4}, {4, 2}};
    for (const auto& pair : kNetwork) sort_pair(p[static_cast<size_t>(pair[0])], p[static_cast<size_t>(pair[1])]);
    return p[4].contiguous();
  }

  MedianSmoothingOptions options_;
};

}  // namespace parry::preprocess

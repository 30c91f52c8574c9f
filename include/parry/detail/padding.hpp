// Border extension for image filters, by index gathering (differentiable, any
// pad size, batch N×C×H×W).
#pragma once

#include <torch/torch.h>

#include <algorithm>

namespace parry::detail {

enum class Border {
  Reflect101,  ///< gfedcb|abcdefgh|gfedcba (OpenCV BORDER_REFLECT_101, torch "reflect")
  Symmetric,   ///< fedcba|abcdefgh|hgfedcb (OpenCV BORDER_REFLECT, scipy.ndimage "reflect")
  Replicate,   ///< aaaaaa|abcdefgh|hhhhhhh
};

/// Source index along one axis of length n for padded positions -before .. n+after-1.
inline torch::Tensor border_indices(int64_t n, int64_t before, int64_t after, Border border) {
  auto i = torch::arange(-before, n + after, torch::kInt64);
  switch (border) {
    case Border::Replicate:
      return i.clamp(0, n - 1);
    case Border::Symmetric: {
      auto j = torch::remainder(i, 2 * n);
      return torch::where(j >= n, 2 * n - 1 - j, j);
    }
    case Border::Reflect101: {
      if (n == 1) return torch::zeros_like(i);
      auto j = torch::remainder(i, 2 * n - 2);
      return torch::where(j >= n, 2 * n - 2 - j, j);
    }
  }
  return i;
}

/// Pads the last two dimensions of `x`.
inline torch::Tensor pad_2d(const torch::Tensor& x, int64_t top, int64_t bottom, int64_t left, int64_t right,
                            Border border) {
  if (top == 0 && bottom == 0 && left == 0 && right == 0) return x;
  const int64_t h = x.size(-2), w = x.size(-1);
  // LibTorch's own kernels are much faster than gathering, where they apply.
  const int64_t largest = std::max(std::max(top, bottom), std::max(left, right));
  if (x.dim() == 4 && border == Border::Reflect101 && top < h && bottom < h && left < w && right < w) {
    return torch::reflection_pad2d(x, {left, right, top, bottom});
  }
  if (x.dim() == 4 && (border == Border::Replicate || (border == Border::Symmetric && largest <= 1))) {
    return torch::replication_pad2d(x, {left, right, top, bottom});  // symmetric = replicate for 1 pixel
  }
  auto rows = border_indices(h, top, bottom, border).to(x.device());
  auto cols = border_indices(w, left, right, border).to(x.device());
  return x.index_select(-2, rows).index_select(-1, cols);
}

}  // namespace parry::detail

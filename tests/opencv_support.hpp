// Tensor <-> cv::Mat helpers for tests that use OpenCV as the reference.
#pragma once

#include <torch/torch.h>
#include <opencv2/core.hpp>

namespace parry::testing {

/// One H×W float32 plane as a cv::Mat (copied).
inline cv::Mat to_mat(const torch::Tensor& plane) {
  auto p = plane.to(torch::kFloat32).contiguous();
  return cv::Mat(static_cast<int>(p.size(0)), static_cast<int>(p.size(1)), CV_32F, p.data_ptr<float>()).clone();
}

/// A float32 cv::Mat as an H×W tensor (copied).
inline torch::Tensor from_mat(const cv::Mat& m) {
  cv::Mat f;
  m.convertTo(f, CV_32F);
  return torch::from_blob(f.data, {f.rows, f.cols}, torch::kFloat32).clone();
}

}  // namespace parry::testing

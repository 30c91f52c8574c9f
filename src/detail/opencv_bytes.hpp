// Tensors <-> OpenCV 8-bit images, shared by the code that encodes or decodes
// images (preprocess::Jpeg, data::decode_image/encode_*). Internal: not installed.
#pragma once

#include <torch/torch.h>
#include <opencv2/core.hpp>

namespace parry::detail {

// N×C×H×W float in [0,1] (C = 1 or RGB 3) -> N×H×W×C uint8 in OpenCV's
// channel order (BGR), contiguous.
inline torch::Tensor to_opencv_bytes(const torch::Tensor& x) {
  torch::Tensor u8 = (x.detach().to(torch::kFloat32) * 255.0).round_().clamp_(0, 255).to(torch::kUInt8);
  if (u8.size(1) == 3) u8 = u8.flip({1});
  return u8.permute({0, 2, 3, 1}).contiguous();
}

// Inverse of to_opencv_bytes.
inline torch::Tensor from_opencv_bytes(const torch::Tensor& nhwc) {
  torch::Tensor x = nhwc.permute({0, 3, 1, 2}).to(torch::kFloat32).div_(255.0);
  if (x.size(1) == 3) x = x.flip({1});
  return x.contiguous();
}

inline int opencv_type(int64_t channels) {
  return channels == 1 ? CV_8UC1 : CV_8UC3;
}

}  // namespace parry::detail

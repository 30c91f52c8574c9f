// Internal: the in-memory source behind from_tensors, open_tensor_file and
// open_idx, and the checks and description they share.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "parry/data/image_source.hpp"

namespace parry::detail {

using data::ImageShape;
using data::ImageSource;

/// "1,234": n with a comma every three digits.
std::string thousands(int64_t n);

/// "<kind> <where>: 1,234 images of 3×32×32, 10 classes".
std::string describe_source(const std::string& kind, const std::string& where, int64_t size, const ImageShape& shape,
                            size_t classes);

/// Last component of a path, ignoring trailing slashes ("/a/b/" -> "b").
std::string last_component(const std::string& path);

/// What is wrong with images (N×C×H×W, uint8 or float32 in [0, 1], finite),
/// labels (N int64, >= 0) and classes (longer than the largest label), or ""
/// when nothing is. Empty `classes` are filled with "0" … "K-1" for the
/// largest label K-1 (at least `min_default_classes` names) unless there are
/// no labels. `image_channels_only` restricts C to 1 or 3.
std::string check_tensors(const torch::Tensor& images, const torch::Tensor& labels, std::vector<std::string>& classes,
                          bool image_channels_only, int64_t min_default_classes = 0);

/// A source over checked tensors held in memory (uint8 images are converted
/// to float32 / 255 batch by batch by read()).
std::shared_ptr<const ImageSource> tensor_source(torch::Tensor images, torch::Tensor labels,
                                                 std::vector<std::string> classes, std::string name,
                                                 std::string description);

/// Throws parry::OptionError unless 0 <= begin <= end <= size.
void check_range(const char* where, int64_t begin, int64_t end, int64_t size);

}  // namespace parry::detail

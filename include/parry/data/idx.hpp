// Readers for IDX files (the MNIST / Fashion-MNIST format), plain or gzip.
#pragma once

#include <torch/torch.h>

#include <array>
#include <string>

#include "parry/core/errors.hpp"

namespace parry::data {

/// Reads an IDX file (http://yann.lecun.com/exdb/mnist/ format: magic 0x0000TTRR,
/// TT = element type, RR = rank, then RR big-endian uint32 sizes, then data),
/// gzip-compressed or not. Element types: uint8, int8, int16, int32, float32,
/// float64 (multi-byte values are big-endian).
/// @param max_bytes refuse files declaring more data than this many bytes
///   (default 1 GiB; guards against a corrupt header asking for gigabytes). An
///   uncompressed file must also be as long as its header declares.
/// @return a tensor of the file's shape and type (uint8 for images/labels).
/// @throws parry::IoError if the file is missing, truncated, has a bad magic
///   number, a zero-rank header, trailing data, or too many elements.
torch::Tensor read_idx(const std::string& path, int64_t max_bytes = int64_t{1} << 30);

/// Images and labels of one split.
struct LabeledImages {
  torch::Tensor images;  ///< N×1×28×28 float32 in [0,1]
  torch::Tensor labels;  ///< N int64 in [0, 9]
};

/// Where Debian's dataset-fashion-mnist package installs the files.
inline constexpr const char* kDebianFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST class names, index = label.
const std::array<const char*, 10>& fashion_mnist_classes();

/// Loads Fashion-MNIST from `dir` (files train-images-idx3-ubyte[.gz] etc.).
/// @param train true for the 60,000 training images, false for the 10,000 test images.
/// @param limit keep only the first `limit` samples (0 = all).
/// @throws parry::IoError if files are missing, corrupt, or images and labels disagree.
LabeledImages load_fashion_mnist(const std::string& dir, bool train, int64_t limit = 0);

}  // namespace parry::data

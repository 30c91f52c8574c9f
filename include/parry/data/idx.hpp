// Readers for IDX files (the MNIST / Fashion-MNIST format), plain or gzip:
// raw tensors (read_idx), a data source (open_idx) and Fashion-MNIST in memory.
#pragma once

#include <torch/torch.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "parry/core/errors.hpp"
#include "parry/data/image_source.hpp"

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

/// Where Debian's dataset-fashion-mnist package installs the files.
inline constexpr const char* kDebianFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST class names, index = label.
const std::array<const char*, 10>& fashion_mnist_classes();

/// Opens an IDX image file and its label file as a source, loaded into memory
/// whole (uint8, converted to float32 in [0, 1] batch by batch by read()).
/// @param images_path uint8 N×H×W (one channel) or N×C×H×W (C = 1 or 3).
/// @param labels_path N labels of any integer IDX type, all >= 0.
/// @param classes class names, index = label; empty: "0" … "9" when every
///   label is at most 9 (the MNIST family), else "0" … "K-1" for the largest
///   label K-1.
/// @throws parry::IoError naming the file: missing, corrupt, wrong type or
///   rank, images and labels of different counts, a label without a name.
std::shared_ptr<const ImageSource> open_idx(const std::string& images_path, const std::string& labels_path,
                                            std::vector<std::string> classes = {});

/// Loads Fashion-MNIST from `dir` (files train-images-idx3-ubyte[.gz] etc.)
/// into memory as N×1×28×28 float32 in [0, 1] with int64 labels in [0, 9].
/// @param train true for the 60,000 training images, false for the 10,000 test images.
/// @param limit keep only the first `limit` samples (0 = all).
/// @throws parry::IoError if files are missing, corrupt, or images and labels disagree.
LabeledImages load_fashion_mnist(const std::string& dir, bool train, int64_t limit = 0);

}  // namespace parry::data

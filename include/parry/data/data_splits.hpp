// parry::data::open_data: what a `--data PATH` of the command line names.
#pragma once

#include <memory>
#include <string>

#include "parry/data/image.hpp"
#include "parry/data/image_source.hpp"

namespace parry::data {

/// How image files are turned into tensors (image folders; other sources
/// must already have the model's shape).
struct DecodeOptions {
  /// Channels to decode to: 3 (RGB, what torchvision's default loader gives)
  /// or 1 (grayscale).
  DecodeOptions& channels(int64_t v);
  /// Resize every image to height × width (OpenCV INTER_AREA when shrinking,
  /// bilinear when enlarging, as decode_image_for). 0 × 0 keeps each image's
  /// own size, and then every image of the folder must have the same size.
  DecodeOptions& resize(int64_t height, int64_t width);
  /// Limits for every image file (the same as predict_image's).
  DecodeOptions& limits(const ImageLimits& v);
  int64_t channels() const { return channels_; }
  int64_t height() const { return height_; }
  int64_t width() const { return width_; }
  const ImageLimits& limits() const { return limits_; }

 private:
  int64_t channels_ = 3;
  int64_t height_ = 0;
  int64_t width_ = 0;
  ImageLimits limits_;
};

/// A training and a test split; `train` is null when the path has only one set.
struct DataSplits {
  std::shared_ptr<const ImageSource> train;
  std::shared_ptr<const ImageSource> test;
};

/// Opens what `path` contains, in this order:
///   1. a directory of IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
///      t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each plain or .gz):
///      both splits (open_idx);
///   2. a directory with a `train` and a `test` (or `val`) entry, each an
///      image folder or a tensor file `train.pt` / `test.pt` (`val.pt`): both splits;
///   3. an image folder (subfolders of images) or a tensor file (.pt): the
///      test split only.
/// Commands that need a training split take it from case 1 or 2 or from a
/// second path (open_source).
/// @throws parry::IoError naming the path when it is none of these, or when a
///   file in it is corrupt.
DataSplits open_data(const std::string& path, const DecodeOptions& options = {});

/// Opens one set: an image folder, a tensor file or an IDX image file (its
/// labels beside it: "-images-" replaced by "-labels-", idx3 by idx1).
/// @throws parry::IoError naming the path.
std::shared_ptr<const ImageSource> open_source(const std::string& path, const DecodeOptions& options = {});

}  // namespace parry::data

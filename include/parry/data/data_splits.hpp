// parry::data::open_data: what a `--data PATH` of the command line names.
#pragma once

#include <memory>
#include <string>

#include "parry/data/image.hpp"
#include "parry/data/image_source.hpp"

namespace parry::data {

/// How image files are turned into tensors. Image folders decode to
/// channels() and, with a resize, to height × width. Tensor files and IDX are
/// never converted: when a resize is asked (the command line's --resize HxW
/// with --channels), their shape must be channels() × height × width or
/// open_data / open_source throw parry::IoError ("… has 1×28×28 images but
/// 3×32×32 were asked"); without a resize their shape is not checked.
struct DecodeOptions {
  /// Channels to decode to: 3 (RGB, what torchvision's default loader gives)
  /// or 1 (grayscale). @throws parry::OptionError otherwise.
  DecodeOptions& channels(int64_t v);
  /// Resize every image to height × width (OpenCV INTER_AREA when shrinking,
  /// bilinear when enlarging, as decode_image_for). 0 × 0 keeps each image's
  /// own size, and then every image of the folder must have the same size.
  /// @throws parry::OptionError for a negative size or only one of the two 0.
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
///      both splits (open_idx; the train pair may be absent: test only).
///      Class names: the directory's `classes.txt` (one name a line) if
///      present, else Fashion-MNIST's when the directory's name contains
///      "fashion" (any case; Debian's /usr/share/datasets/fashion-mnist),
///      else "0" … "9" (more if a label is above 9);
///   2. a directory with a `test` (or else `val`) entry, and optionally a
///      `train` one, each an image folder or a tensor file `test.pt`
///      (`val.pt`, `train.pt`): both splits, or the test split alone;
///   3. an image folder (subfolders of images) or any file open_source takes:
///      the test split only.
/// When both splits are found their class names must be the same (a test
/// folder missing a class would shift every label).
/// Commands that need a training split take it from case 1 or 2 or from a
/// second path (open_source).
/// @throws parry::IoError naming the path when it is none of these, when the
///   splits' classes differ, when a file in it is corrupt, or when a tensor
///   or IDX set does not have the shape `options` asks (see DecodeOptions).
DataSplits open_data(const std::string& path, const DecodeOptions& options = {});

/// Opens one set: a directory is an image folder (open_image_folder); a file
/// named *.pt or *.pth, or any zip file, is a tensor file (open_tensor_file);
/// a file whose name holds "-images-", "idx3" or "idx4" is an IDX image file,
/// its labels beside it ("-images-" replaced by "-labels-", idx3/idx4 by
/// idx1, with or without .gz) and its class names found as in open_data.
/// @throws parry::IoError naming the path: missing, none of these, corrupt,
///   or not of the shape `options` asks (see DecodeOptions).
std::shared_ptr<const ImageSource> open_source(const std::string& path, const DecodeOptions& options = {});

}  // namespace parry::data

// parry::data::ImageSource: a labelled image data set read in batches.
//
// Every `--data` of the command line and every evaluation reads through this
// interface, so that a data set larger than memory costs memory for one batch:
//   - an image folder in torchvision's ImageFolder layout (image_folder.hpp),
//     decoded batch by batch;
//   - a tensor file saved by Python's torch.save (tensor_file.hpp);
//   - IDX files, the MNIST family (idx.hpp: open_idx).
// data_splits.hpp (open_data) picks one from what a path contains.
//
// Threat model: data sets are files the user chose, not network input, but
// they are still parsed defensively: every image is decoded with ImageLimits,
// and a corrupt, truncated or mis-shaped entry is a parry::IoError whose
// message names the file, never a crash. Naming the path in the public
// message is deliberate here: these errors reach the operator who chose the
// file (the command line, a training program), never a served caller.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parry/core/errors.hpp"

namespace parry::data {

/// Images and labels of one split or one batch.
struct LabeledImages {
  torch::Tensor images;  ///< N×C×H×W float32 in [0, 1]
  torch::Tensor labels;  ///< N int64 in [0, classes)
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

/// Channels × height × width of every image of a source.
struct ImageShape {
  int64_t channels = 0;
  int64_t height = 0;
  int64_t width = 0;
};

/// A labelled image data set of fixed size, shape and classes.
/// read() is const and may be called from several threads at once.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  /// Number of images.
  virtual int64_t size() const = 0;
  /// Shape of every image (after any resize the source was opened with).
  virtual ImageShape shape() const = 0;
  /// Class names, index = label. Never empty.
  virtual const std::vector<std::string>& classes() const = 0;
  /// Short name for reports: the folder's or file's name ("pets-test", "test.pt").
  virtual std::string name() const = 0;
  /// One line: kind, path, images and classes
  /// ("image folder /data/pets/test: 1,234 images of 3×32×32, 10 classes").
  virtual std::string description() const = 0;
  /// Every label, in order, without decoding any image. N int64.
  virtual torch::Tensor labels() const = 0;
  /// Images [begin, end) as float32 N×C×H×W in [0, 1] with their labels.
  /// @throws parry::OptionError unless 0 <= begin <= end <= size();
  ///   parry::IoError naming the file of an image that cannot be decoded.
  virtual LabeledImages read(int64_t begin, int64_t end) const = 0;
};

/// Calls `visit(batch, begin)` for [begin, end) of `source` in consecutive
/// batches of at most `batch_size` images (end < 0: to the end). Only one
/// batch is in memory at a time.
/// @throws parry::OptionError for batch_size < 1 or a range outside the source.
void for_each_batch(const ImageSource& source, int64_t batch_size,
                    const std::function<void(const LabeledImages& batch, int64_t begin)>& visit, int64_t begin = 0,
                    int64_t end = -1);

/// The images [begin, end) of `source` as one source (no copy of the data).
/// @throws parry::OptionError unless 0 <= begin <= end <= source->size().
std::shared_ptr<const ImageSource> subset(std::shared_ptr<const ImageSource> source, int64_t begin, int64_t end);

/// `source` in a random order fixed by `seed` (a permutation view; no copy of
/// the data). Image folders list their images class by class, so any
/// contiguous range of one (the first N attacked, the last N for calibration)
/// would hold a few classes only; the evaluation reads through this view.
/// read() gathers its images one by one from `source`.
/// @throws parry::OptionError for a null source.
std::shared_ptr<const ImageSource> shuffled(std::shared_ptr<const ImageSource> source, uint64_t seed);

/// An in-memory source over tensors (images N×C×H×W float32 in [0, 1] or
/// uint8 in [0, 255], labels N int64 >= 0), e.g. what a test or a caller
/// built. The tensors are kept (moved to the CPU); uint8 images are converted
/// to float32 / 255 per read(), and every read() returns copies.
/// @param classes names, index = label; empty: "0", "1", … "K-1" for the
///   largest label K-1.
/// @throws parry::OptionError for wrong ranks, dtypes or counts, float values
///   outside [0, 1] or not finite, negative labels, fewer names than the
///   largest label + 1, or no images and no class names.
std::shared_ptr<const ImageSource> from_tensors(torch::Tensor images, torch::Tensor labels,
                                                std::vector<std::string> classes = {}, std::string name = "tensors");

}  // namespace parry::data

// ImageSource helpers: batches, subsets and in-memory sources over tensors.
#include "parry/data/image_source.hpp"

#include <algorithm>
#include <sstream>
#include <utility>

#include "data/tensor_source.hpp"
#include "parry/detail/generator.hpp"
#include "parry/detail/require.hpp"

namespace parry::detail {

std::string thousands(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return n < 0 ? "-" + out : out;
}

std::string describe_source(const std::string& kind, const std::string& where, int64_t size, const ImageShape& shape,
                            size_t classes) {
  std::ostringstream out;
  out << kind << ' ' << where << ": " << thousands(size) << (size == 1 ? " image" : " images") << " of "
      << shape.channels << "×" << shape.height << "×" << shape.width << ", " << classes
      << (classes == 1 ? " class" : " classes");
  return out.str();
}

std::string last_component(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string check_tensors(const torch::Tensor& images, const torch::Tensor& labels, std::vector<std::string>& classes,
                          bool image_channels_only, int64_t min_default_classes) {
  if (!images.defined() || !labels.defined()) return "images and labels must both be given";
  if (images.dim() != 4) return "images must be N×C×H×W (rank 4), but have shape " + c10::str(images.sizes());
  if (images.scalar_type() != torch::kUInt8 && images.scalar_type() != torch::kFloat32) {
    return std::string("images must be uint8 or float32, but are ") + c10::toString(images.scalar_type());
  }
  if (image_channels_only && images.size(1) != 1 && images.size(1) != 3) {
    return "images must have 1 or 3 channels, but have " + std::to_string(images.size(1));
  }
  if (images.size(1) < 1 || images.size(2) < 1 || images.size(3) < 1) {
    return "images must have at least one channel and pixel, but have shape " + c10::str(images.sizes());
  }
  if (labels.dim() != 1) return "labels must be a vector (rank 1), but have shape " + c10::str(labels.sizes());
  if (labels.scalar_type() != torch::kInt64) {
    return std::string("labels must be int64, but are ") + c10::toString(labels.scalar_type());
  }
  if (labels.size(0) != images.size(0)) {
    return std::to_string(labels.size(0)) + " labels for " + std::to_string(images.size(0)) + " images";
  }
  if (images.scalar_type() == torch::kFloat32 && images.numel() > 0) {
    if (!torch::isfinite(images).all().item<bool>()) return "float images hold NaN or infinite values";
    const double lo = images.min().item<double>(), hi = images.max().item<double>();
    if (lo < 0.0 || hi > 1.0) {
      std::ostringstream out;
      out << "float images must be in [0, 1], but range over [" << lo << ", " << hi << "]";
      return out.str();
    }
  }
  if (labels.numel() > 0) {
    const int64_t lo = labels.min().item<int64_t>();
    if (lo < 0) return "labels must be >= 0, but the smallest is " + std::to_string(lo);
  }
  const int64_t largest = labels.numel() > 0 ? labels.max().item<int64_t>() : -1;
  if (classes.empty()) {
    if (largest < 0 && min_default_classes == 0) return "no images and no class names";
    if (largest >= (int64_t{1} << 20)) return "label " + std::to_string(largest) + " is implausibly large";
    for (int64_t k = 0; k < std::max(largest + 1, min_default_classes); ++k) classes.push_back(std::to_string(k));
  } else if (largest >= static_cast<int64_t>(classes.size())) {
    return "label " + std::to_string(largest) + " is out of range for " + std::to_string(classes.size()) +
           " class names";
  }
  return "";
}

void check_range(const char* where, int64_t begin, int64_t end, int64_t size) {
  if (begin < 0 || begin > end || end > size) {
    std::ostringstream out;
    out << where << ": need 0 <= begin <= end <= " << size << ", but got [" << begin << ", " << end << ")";
    throw OptionError(out.str());
  }
}

namespace {

class TensorSource final : public ImageSource {
 public:
  TensorSource(torch::Tensor images, torch::Tensor labels, std::vector<std::string> classes, std::string name,
               std::string description)
      : images_(images.cpu().contiguous()),
        labels_(labels.cpu().contiguous()),
        classes_(std::move(classes)),
        name_(std::move(name)),
        description_(std::move(description)) {}
  int64_t size() const override { return images_.size(0); }
  ImageShape shape() const override { return {images_.size(1), images_.size(2), images_.size(3)}; }
  const std::vector<std::string>& classes() const override { return classes_; }
  std::string name() const override { return name_; }
  std::string description() const override { return description_; }
  torch::Tensor labels() const override { return labels_.clone(); }
  data::LabeledImages read(int64_t begin, int64_t end) const override {
    check_range("ImageSource::read", begin, end, size());
    const torch::Tensor slice = images_.slice(0, begin, end);
    // A copy either way, so that a caller writing into a batch cannot change the source.
    torch::Tensor images = slice.scalar_type() == torch::kUInt8 ? slice.to(torch::kFloat32).div_(255.0) : slice.clone();
    return {images, labels_.slice(0, begin, end).clone()};
  }

 private:
  torch::Tensor images_;
  torch::Tensor labels_;
  std::vector<std::string> classes_;
  std::string name_;
  std::string description_;
};

class SubsetSource final : public ImageSource {
 public:
  SubsetSource(std::shared_ptr<const ImageSource> source, int64_t begin, int64_t end)
      : source_(std::move(source)), begin_(begin), end_(end) {}
  int64_t size() const override { return end_ - begin_; }
  ImageShape shape() const override { return source_->shape(); }
  const std::vector<std::string>& classes() const override { return source_->classes(); }
  std::string name() const override { return source_->name(); }
  std::string description() const override {
    return "images [" + thousands(begin_) + ", " + thousands(end_) + ") of " + source_->description();
  }
  torch::Tensor labels() const override { return source_->labels().slice(0, begin_, end_).clone(); }
  data::LabeledImages read(int64_t begin, int64_t end) const override {
    check_range("ImageSource::read", begin, end, size());
    return source_->read(begin_ + begin, begin_ + end);
  }

 private:
  std::shared_ptr<const ImageSource> source_;
  int64_t begin_;
  int64_t end_;
};

}  // namespace

std::shared_ptr<const ImageSource> tensor_source(torch::Tensor images, torch::Tensor labels,
                                                 std::vector<std::string> classes, std::string name,
                                                 std::string description) {
  return std::make_shared<TensorSource>(std::move(images), std::move(labels), std::move(classes), std::move(name),
                                        std::move(description));
}

}  // namespace parry::detail

namespace parry::data {

void for_each_batch(const ImageSource& source, int64_t batch_size,
                    const std::function<void(const LabeledImages& batch, int64_t begin)>& visit, int64_t begin,
                    int64_t end) {
  parry::detail::require(batch_size >= 1, "for_each_batch", "batch_size must be at least 1", batch_size);
  if (end < 0) end = source.size();
  parry::detail::check_range("for_each_batch", begin, end, source.size());
  for (int64_t at = begin; at < end; at += batch_size) {
    const LabeledImages batch = source.read(at, std::min(end, at + batch_size));
    visit(batch, at);
  }
}

namespace {

// A fixed permutation of another source: image i is source image order[i].
class ShuffledSource final : public ImageSource {
 public:
  ShuffledSource(std::shared_ptr<const ImageSource> source, uint64_t seed) : source_(std::move(source)) {
    auto generator = parry::detail::make_generator(seed, torch::kCPU);
    order_ = torch::randperm(source_->size(), generator, torch::TensorOptions(torch::kInt64));
  }
  int64_t size() const override { return source_->size(); }
  ImageShape shape() const override { return source_->shape(); }
  const std::vector<std::string>& classes() const override { return source_->classes(); }
  std::string name() const override { return source_->name(); }
  std::string description() const override { return source_->description() + " (shuffled)"; }
  torch::Tensor labels() const override { return source_->labels().index_select(0, order_); }
  LabeledImages read(int64_t begin, int64_t end) const override {
    parry::detail::check_range("read", begin, end, size());
    std::vector<torch::Tensor> images, labels;
    const auto* order = order_.data_ptr<int64_t>();
    for (int64_t i = begin; i < end; ++i) {
      auto one = source_->read(order[i], order[i] + 1);
      images.push_back(std::move(one.images));
      labels.push_back(std::move(one.labels));
    }
    if (images.empty()) return source_->read(0, 0);
    return {torch::cat(images), torch::cat(labels)};
  }

 private:
  std::shared_ptr<const ImageSource> source_;
  torch::Tensor order_;  // int64, size()
};

}  // namespace

std::shared_ptr<const ImageSource> shuffled(std::shared_ptr<const ImageSource> source, uint64_t seed) {
  if (!source) throw OptionError("shuffled: the source is null");
  return std::make_shared<ShuffledSource>(std::move(source), seed);
}

std::shared_ptr<const ImageSource> subset(std::shared_ptr<const ImageSource> source, int64_t begin, int64_t end) {
  if (!source) throw OptionError("subset: the source is null");
  parry::detail::check_range("subset", begin, end, source->size());
  return std::make_shared<parry::detail::SubsetSource>(std::move(source), begin, end);
}

std::shared_ptr<const ImageSource> from_tensors(torch::Tensor images, torch::Tensor labels,
                                                std::vector<std::string> classes, std::string name) {
  const std::string problem = parry::detail::check_tensors(images, labels, classes, /*image_channels_only=*/false);
  if (!problem.empty()) throw OptionError("from_tensors: " + problem);
  const ImageShape shape{images.size(1), images.size(2), images.size(3)};
  std::string description = parry::detail::describe_source("tensors", name, images.size(0), shape, classes.size());
  return parry::detail::tensor_source(std::move(images), std::move(labels), std::move(classes), std::move(name),
                                      std::move(description));
}

}  // namespace parry::data

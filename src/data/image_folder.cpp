// open_image_folder: torchvision's ImageFolder layout, headers read at open, pixels decoded per batch.
#include "parry/data/image_folder.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <utility>
#include <vector>

#include "data/tensor_source.hpp"
#include "parry/data/image.hpp"

namespace parry::data {

namespace {

namespace fs = std::filesystem;

// Bytes read at open to find an image's size; a JPEG whose frame header lies
// further in (large EXIF or ICC segments) is read whole.
constexpr size_t kHeaderBytes = 4096;

bool hidden(const std::string& name) {
  return !name.empty() && name[0] == '.';
}

bool image_extension(const std::string& name) {
  const size_t dot = name.rfind('.');
  if (dot == std::string::npos) return false;
  std::string ext = name.substr(dot);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

std::string size_text(const ImageSize& s) {
  return std::to_string(s.width) + "×" + std::to_string(s.height) + " (width×height)";
}

// Up to `max_read` bytes of `path`; IoError naming the file if it cannot be
// read or is larger than `limit` bytes.
std::string read_bytes(const std::string& path, int64_t limit, size_t max_read = static_cast<size_t>(-1)) {
  std::error_code error;
  const auto size = fs::file_size(path, error);
  if (error) throw IoError("cannot read image file " + path + ": " + error.message());
  if (size == 0) throw IoError("image file is empty: " + path);
  if (size > static_cast<uintmax_t>(limit)) {
    throw IoError("image file " + path + " has " + std::to_string(size) + " bytes, over the limit of " +
                  std::to_string(limit) + " (ImageLimits::max_bytes)");
  }
  const size_t want = std::min(static_cast<size_t>(size), max_read);
  std::string bytes(want, '\0');
  std::ifstream in(path, std::ios::binary);
  if (!in.read(bytes.data(), static_cast<std::streamsize>(want))) {
    throw IoError("cannot read image file " + path);
  }
  return bytes;
}

// Width and height from the file's header, checked against the limits.
ImageSize peek_file(const std::string& path, const ImageLimits& limits) {
  std::string bytes = read_bytes(path, limits.max_bytes(), kHeaderBytes);
  ImageSize size;
  try {
    size = peek_image_size(bytes);
  } catch (const InputError&) {
    try {
      if (bytes.size() < kHeaderBytes) throw;
      size = peek_image_size(read_bytes(path, limits.max_bytes()));
    } catch (const InputError& e) {
      throw IoError("not a PNG or JPEG image: " + path, path + ": " + e.detail());
    }
  }
  if (size.width < 1 || size.height < 1) throw IoError("image has a zero width or height: " + path);
  if (size.width > limits.max_side() || size.height > limits.max_side() ||
      size.width > limits.max_pixels() / size.height) {
    throw IoError("image " + path + " is " + size_text(size) + ", over the limits of " +
                  std::to_string(limits.max_side()) + " pixels a side and " + std::to_string(limits.max_pixels()) +
                  " pixels (ImageLimits)");
  }
  return size;
}

struct Walked {
  std::string dir;
  std::vector<std::string> files;  // names, sorted
};

// os.walk(dir, followlinks=True): every folder under `dir` with its files.
void walk(const std::string& dir, std::vector<std::string>& ancestors, std::vector<Walked>& out) {
  std::error_code error;
  const std::string canonical = fs::canonical(dir, error).string();
  if (error) throw IoError("cannot read folder " + dir + ": " + error.message());
  if (std::find(ancestors.begin(), ancestors.end(), canonical) != ancestors.end()) {
    throw IoError("symbolic-link loop in the image folder at " + dir);
  }
  ancestors.push_back(canonical);
  Walked here{dir, {}};
  std::vector<std::string> subdirs;
  fs::directory_iterator it(dir, error);
  if (error) throw IoError("cannot read folder " + dir + ": " + error.message());
  for (const fs::directory_entry& entry : it) {
    const std::string name = entry.path().filename().string();
    if (hidden(name)) continue;
    const std::string path = dir + "/" + name;
    std::error_code status_error;
    if (entry.is_directory(status_error)) {
      subdirs.push_back(path);
    } else if (entry.is_regular_file(status_error)) {
      here.files.push_back(name);
    } else {
      throw IoError("not a PNG or JPEG image (nor a folder): " + path);
    }
  }
  std::sort(here.files.begin(), here.files.end());
  out.push_back(std::move(here));
  for (const std::string& sub : subdirs) walk(sub, ancestors, out);
  ancestors.pop_back();
}

class ImageFolderSource final : public ImageSource {
 public:
  ImageFolderSource(const std::string& root, const DecodeOptions& options) : root_(root), options_(options) {
    while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
    std::error_code error;
    if (!fs::is_directory(root_, error)) throw IoError("image folder not found: " + root);
    fs::directory_iterator it(root_, error);
    if (error) throw IoError("cannot read image folder " + root_ + ": " + error.message());
    for (const fs::directory_entry& entry : it) {
      const std::string name = entry.path().filename().string();
      std::error_code status_error;
      if (!hidden(name) && entry.is_directory(status_error)) classes_.push_back(name);
    }
    if (classes_.empty()) {
      throw IoError("image folder " + root_ + " has no class folders (expected " + root_ + "/<class>/<image>.png)");
    }
    std::sort(classes_.begin(), classes_.end());  // byte order, as Python's sorted() on str
    std::vector<int64_t> labels;
    ImageSize first_size;
    for (size_t label = 0; label < classes_.size(); ++label) {
      const std::string class_dir = root_ + "/" + classes_[label];
      std::vector<Walked> walked;
      std::vector<std::string> ancestors;
      walk(class_dir, ancestors, walked);
      std::stable_sort(walked.begin(), walked.end(), [](const Walked& a, const Walked& b) { return a.dir < b.dir; });
      const size_t before = files_.size();
      for (const Walked& w : walked) {
        for (const std::string& name : w.files) {
          const std::string path = w.dir + "/" + name;
          if (!image_extension(name)) throw IoError("not a PNG or JPEG image: " + path);
          const ImageSize size = peek_file(path, options_.limits());
          if (files_.empty()) {
            first_size = size;
          } else if (options_.height() == 0 && (size.width != first_size.width || size.height != first_size.height)) {
            throw IoError("images of different sizes in " + root_ + ": " + files_.front() + " is " +
                          size_text(first_size) + " but " + path + " is " + size_text(size) +
                          "; ask a resize (DecodeOptions::resize) to use them together");
          }
          files_.push_back(path);
          labels.push_back(static_cast<int64_t>(label));
        }
      }
      if (files_.size() == before) throw IoError("class folder has no images: " + class_dir);
    }
    shape_ = {options_.channels(), options_.height() > 0 ? options_.height() : first_size.height,
              options_.height() > 0 ? options_.width() : first_size.width};
    labels_ = torch::tensor(labels, torch::kInt64);
  }

  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  ImageShape shape() const override { return shape_; }
  const std::vector<std::string>& classes() const override { return classes_; }
  std::string name() const override { return parry::detail::last_component(root_); }
  std::string description() const override {
    return parry::detail::describe_source("image folder", root_, size(), shape_, classes_.size());
  }
  torch::Tensor labels() const override { return labels_.clone(); }

  LabeledImages read(int64_t begin, int64_t end) const override {
    parry::detail::check_range("ImageSource::read", begin, end, size());
    torch::Tensor images = torch::empty({end - begin, shape_.channels, shape_.height, shape_.width}, torch::kFloat32);
    const bool resize = options_.height() > 0;
    const InputSpec spec(shape_.channels, shape_.height, shape_.width);
    // Decoding is OpenCV, one image per task; exceptions reach the caller.
    at::parallel_for(begin, end, 1, [&](int64_t from, int64_t to) {
      for (int64_t i = from; i < to; ++i) {
        const std::string& path = files_[static_cast<size_t>(i)];
        const std::string bytes = read_bytes(path, options_.limits().max_bytes());
        torch::Tensor image;
        try {
          image = resize ? decode_image_for(bytes, spec, options_.limits())
                         : decode_image(bytes, shape_.channels, options_.limits());
        } catch (const InputError& e) {
          throw IoError("image cannot be decoded: " + path + " (" + e.what() + ")", path + ": " + e.detail());
        }
        if (image.size(1) != shape_.height || image.size(2) != shape_.width) {
          throw IoError("image " + path + " decodes to " + std::to_string(image.size(2)) + "×" +
                        std::to_string(image.size(1)) +
                        " (width×height; EXIF orientation?) but the folder's images are " +
                        std::to_string(shape_.width) + "×" + std::to_string(shape_.height));
        }
        images[i - begin].copy_(image);
      }
    });
    return {images, labels_.slice(0, begin, end).clone()};
  }

 private:
  std::string root_;
  DecodeOptions options_;
  std::vector<std::string> classes_;
  std::vector<std::string> files_;
  torch::Tensor labels_;
  ImageShape shape_;
};

}  // namespace

std::shared_ptr<const ImageSource> open_image_folder(const std::string& root, const DecodeOptions& options) {
  return std::make_shared<ImageFolderSource>(root, options);
}

}  // namespace parry::data

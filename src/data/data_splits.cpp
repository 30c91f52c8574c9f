// DecodeOptions, open_source and open_data: from a path to the sources it holds.
#include "parry/data/data_splits.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <utility>
#include <vector>

#include "data/tensor_source.hpp"
#include "parry/data/idx.hpp"
#include "parry/data/image_folder.hpp"
#include "parry/data/tensor_file.hpp"
#include "parry/detail/require.hpp"

namespace parry::data {

DecodeOptions& DecodeOptions::channels(int64_t v) {
  parry::detail::require(v == 1 || v == 3, "DecodeOptions::channels", "must be 1 or 3", v);
  channels_ = v;
  return *this;
}

DecodeOptions& DecodeOptions::resize(int64_t height, int64_t width) {
  const std::string got = std::to_string(height) + " × " + std::to_string(width);
  parry::detail::require(height >= 0 && width >= 0, "DecodeOptions::resize", "sizes must be >= 0", got);
  parry::detail::require((height == 0) == (width == 0), "DecodeOptions::resize",
                         "height and width must both be 0 (no resize) or both positive", got);
  height_ = height;
  width_ = width;
  return *this;
}

DecodeOptions& DecodeOptions::limits(const ImageLimits& v) {
  limits_ = v;
  return *this;
}

namespace {

namespace fs = std::filesystem;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_dir(const std::string& path) {
  std::error_code ignored;
  return fs::is_directory(path, ignored);
}

bool is_file(const std::string& path) {
  std::error_code ignored;
  return fs::is_regular_file(path, ignored);
}

std::string parent_dir(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

// `dir/stem.gz` or `dir/stem`, or "" when neither exists.
std::string find_idx(const std::string& dir, const std::string& stem) {
  for (const std::string& candidate : {dir + "/" + stem + ".gz", dir + "/" + stem}) {
    if (is_file(candidate)) return candidate;
  }
  return "";
}

// Class names of IDX files in `dir`: its classes.txt (one name a line), else
// Fashion-MNIST's when the folder's name says so, else none (open_idx's default).
std::vector<std::string> idx_classes(const std::string& dir) {
  const std::string file = dir + "/classes.txt";
  std::vector<std::string> names;
  if (is_file(file)) {
    std::ifstream in(file);
    if (!in) throw IoError("cannot read " + file);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      names.push_back(line);
    }
    while (!names.empty() && names.back().find_first_not_of(" \t") == std::string::npos) names.pop_back();
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i].empty())
        throw IoError(file + ": line " + std::to_string(i + 1) + " is empty (one class name a line)");
    }
    if (names.empty()) throw IoError(file + " holds no class names");
    return names;
  }
  std::string name = lower(parry::detail::last_component(fs::absolute(dir).lexically_normal().string()));
  if (name.find("fashion") != std::string::npos) {
    for (const char* c : fashion_mnist_classes()) names.emplace_back(c);
  }
  return names;
}

std::string shape_text(const ImageShape& s) {
  return std::to_string(s.channels) + "×" + std::to_string(s.height) + "×" + std::to_string(s.width);
}

// Sources that cannot decode (tensor files, IDX) must already have the shape a
// resize asks for; without a resize the channel count is not checked either.
std::shared_ptr<const ImageSource> check_shape(std::shared_ptr<const ImageSource> source, const std::string& path,
                                               const DecodeOptions& options) {
  if (options.height() == 0) return source;
  const ImageShape have = source->shape();
  const ImageShape asked{options.channels(), options.height(), options.width()};
  if (have.channels != asked.channels || have.height != asked.height || have.width != asked.width) {
    throw IoError(path + " has " + shape_text(have) + " images but " + shape_text(asked) +
                  " were asked (tensor and IDX files are not resized or converted; save them in the model's shape)");
  }
  return source;
}

bool is_tensor_file_name(const std::string& path) {
  const std::string name = lower(path);
  return ends_with(name, ".pt") || ends_with(name, ".pth");
}

bool starts_with_zip(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4;
}

std::shared_ptr<const ImageSource> open_idx_file(const std::string& images_path) {
  const std::string dir = parent_dir(images_path);
  std::string name = parry::detail::last_component(images_path);
  const std::string original = name;
  for (const auto& [from, to] :
       {std::pair<std::string, std::string>{"-images-", "-labels-"}, {"idx3", "idx1"}, {"idx4", "idx1"}}) {
    const size_t at = name.find(from);
    if (at != std::string::npos) name.replace(at, from.size(), to);
  }
  if (name == original) {
    throw IoError("cannot tell where the labels of IDX file " + images_path +
                  " are (expected a name with \"-images-\", labels beside it with \"-labels-\")");
  }
  std::string labels_path = dir + "/" + name;
  if (!is_file(labels_path)) {
    const std::string other =
        ends_with(name, ".gz") ? labels_path.substr(0, labels_path.size() - 3) : labels_path + ".gz";
    if (!is_file(other)) throw IoError("labels of IDX file " + images_path + " not found: " + labels_path);
    labels_path = other;
  }
  return open_idx(images_path, labels_path, idx_classes(dir));
}

// Train and test of one data set must agree on what each label means.
void check_same_classes(const DataSplits& splits, const std::string& path) {
  if (!splits.train || splits.train->classes() == splits.test->classes()) return;
  const auto& a = splits.train->classes();
  const auto& b = splits.test->classes();
  std::string why = std::to_string(a.size()) + " and " + std::to_string(b.size()) + " classes";
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (a[i] != b[i]) {
      why = "label " + std::to_string(i) + " is \"" + a[i] + "\" in one and \"" + b[i] + "\" in the other";
      break;
    }
  }
  throw IoError("the train and test sets of " + path + " have different classes (" + why + ")");
}

// `dir/<name>` as a folder or `dir/<name>.pt`, or "".
std::string split_entry(const std::string& dir, const std::string& name) {
  if (is_dir(dir + "/" + name)) return dir + "/" + name;
  if (is_file(dir + "/" + name + ".pt")) return dir + "/" + name + ".pt";
  return "";
}

}  // namespace

std::shared_ptr<const ImageSource> open_source(const std::string& path, const DecodeOptions& options) {
  if (is_dir(path)) return open_image_folder(path, options);
  if (!is_file(path)) throw IoError("data not found: " + path);
  if (is_tensor_file_name(path)) return check_shape(open_tensor_file(path), path, options);
  const std::string name = parry::detail::last_component(path);
  if (name.find("-images-") != std::string::npos || name.find("idx3") != std::string::npos ||
      name.find("idx4") != std::string::npos) {
    return check_shape(open_idx_file(path), path, options);
  }
  if (starts_with_zip(path)) return check_shape(open_tensor_file(path), path, options);
  throw IoError("not an image folder, a tensor file (.pt) or an IDX image file (*-images-idx3-ubyte[.gz]): " + path);
}

DataSplits open_data(const std::string& path, const DecodeOptions& options) {
  if (!is_dir(path)) {
    if (!is_file(path)) throw IoError("data not found: " + path);
    return {nullptr, open_source(path, options)};
  }
  std::string dir = path;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();

  // 1. IDX files.
  const std::string test_images = find_idx(dir, "t10k-images-idx3-ubyte");
  const std::string train_images = find_idx(dir, "train-images-idx3-ubyte");
  if (!test_images.empty() || !train_images.empty()) {
    if (test_images.empty()) throw IoError("IDX folder " + dir + " has no t10k-images-idx3-ubyte[.gz]");
    auto labels_of = [&](const std::string& stem) {
      const std::string found = find_idx(dir, stem);
      if (found.empty()) throw IoError("IDX folder " + dir + " has no " + stem + "[.gz]");
      return found;
    };
    std::vector<std::string> classes = idx_classes(dir);
    DataSplits splits;
    splits.test = open_idx(test_images, labels_of("t10k-labels-idx1-ubyte"), classes);
    if (!train_images.empty()) {
      const std::string train_labels = labels_of("train-labels-idx1-ubyte");
      splits.train = open_idx(train_images, train_labels, classes);
      // Default names ("0" … "K-1") come from each split's own labels: give
      // both the longer list when a split lacks the largest label.
      if (classes.empty() && splits.train->classes().size() != splits.test->classes().size()) {
        if (splits.train->classes().size() < splits.test->classes().size()) {
          splits.train = open_idx(train_images, train_labels, splits.test->classes());
        } else {
          splits.test = open_idx(test_images, labels_of("t10k-labels-idx1-ubyte"), splits.train->classes());
        }
      }
      check_shape(splits.train, train_images, options);
    }
    check_shape(splits.test, test_images, options);
    check_same_classes(splits, dir);
    return splits;
  }

  // 2. train/ and test/ (or val/), folders or .pt files.
  const std::string train = split_entry(dir, "train");
  std::string test = split_entry(dir, "test");
  if (test.empty()) test = split_entry(dir, "val");
  if (!test.empty()) {
    DataSplits splits;
    splits.test = open_source(test, options);
    if (!train.empty()) splits.train = open_source(train, options);
    check_same_classes(splits, dir);
    return splits;
  }

  // 3. One image folder.
  bool has_subfolder = false;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    std::error_code status_error;
    const std::string name = entry.path().filename().string();
    if (!name.empty() && name[0] != '.' && entry.is_directory(status_error)) has_subfolder = true;
  }
  if (!has_subfolder) {
    throw IoError(dir +
                  " is not a data set: expected IDX files (t10k-images-idx3-ubyte[.gz] …), train and test (or val) "
                  "folders or .pt files, or an image folder (<class>/<image>.png)");
  }
  return {nullptr, open_image_folder(dir, options)};
}

}  // namespace parry::data

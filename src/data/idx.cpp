// IDX files (gzip or plain) and the Fashion-MNIST loader.
#include "parry/data/idx.hpp"

#include <unistd.h>
#include <zlib.h>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>

#include "data/tensor_source.hpp"
#include "parry/detail/files.hpp"

namespace parry::data {

namespace {

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};

// gzread reads both gzip-compressed and plain files transparently.
class ByteReader {
 public:
  explicit ByteReader(const std::string& path) : path_(path) {
    if (!detail::file_exists(path)) throw IoError("data file not found", "no such file '" + path + "'");
    file_.reset(gzopen(path.c_str(), "rb"));
    if (!file_) throw IoError("data file cannot be opened", "gzopen failed for '" + path + "'");
  }
  void read(void* out, size_t bytes, const char* what) {
    auto* dst = static_cast<char*>(out);
    while (bytes > 0) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(bytes, 1u << 30));
      const int got = gzread(file_.get(), dst, chunk);
      if (got <= 0) {
        int err = 0;
        const char* msg = gzerror(file_.get(), &err);
        throw IoError("data file is truncated or corrupt",
                      "'" + path_ + "': could not read " + what +
                          (err != Z_OK && msg ? std::string(" (") + msg + ")" : std::string(" (end of file)")));
      }
      dst += got;
      bytes -= static_cast<size_t>(got);
    }
  }
  bool at_end() {
    char probe;
    return gzread(file_.get(), &probe, 1) == 0;
  }

 private:
  std::string path_;
  std::unique_ptr<gzFile_s, GzCloser> file_;
};

uint32_t big_endian_u32(const unsigned char* b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

}  // namespace

torch::Tensor read_idx(const std::string& path, int64_t max_bytes) {
  ByteReader reader(path);
  unsigned char magic[4];
  reader.read(magic, 4, "the magic number");
  if (magic[0] != 0 || magic[1] != 0) {
    throw IoError("data file is not an IDX file", "'" + path + "': bad magic number");
  }
  torch::ScalarType type;
  size_t element_size;
  switch (magic[2]) {
    case 0x08:
      type = torch::kUInt8;
      element_size = 1;
      break;
    case 0x09:
      type = torch::kInt8;
      element_size = 1;
      break;
    case 0x0B:
      type = torch::kInt16;
      element_size = 2;
      break;
    case 0x0C:
      type = torch::kInt32;
      element_size = 4;
      break;
    case 0x0D:
      type = torch::kFloat32;
      element_size = 4;
      break;
    case 0x0E:
      type = torch::kFloat64;
      element_size = 8;
      break;
    default:
      throw IoError("data file is not an IDX file",
                    "'" + path + "': unknown element type code " + std::to_string(magic[2]));
  }
  const int rank = magic[3];
  if (rank < 1) throw IoError("data file is not an IDX file", "'" + path + "': rank 0");
  std::vector<int64_t> sizes(static_cast<size_t>(rank));
  int64_t elements = 1;
  // The product of the non-zero sizes, bounded too: with a zero size the data
  // is empty, but the strides of the tensor are still products of the other
  // sizes, and 0×4294967295×4294967295 overflowed them (found by fuzz_idx:
  // LibTorch then threw from as_strided on the negative strides).
  int64_t extent = 1;
  const auto max_elements = max_bytes / static_cast<int64_t>(element_size);
  for (int d = 0; d < rank; ++d) {
    unsigned char b[4];
    reader.read(b, 4, "the header");
    const int64_t size = big_endian_u32(b);
    sizes[static_cast<size_t>(d)] = size;
    if (size > 0 && extent > max_elements / size) {
      throw IoError("data file is too large",
                    "'" + path + "': header declares more than " + std::to_string(max_bytes) + " bytes of data");
    }
    if (size > 0) extent *= size;
    elements *= size;
  }
  const auto data_bytes = static_cast<uint64_t>(elements) * element_size;
  // An uncompressed file must actually hold the data its header declares.
  std::error_code ignored;
  const bool compressed = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
  if (!compressed && std::filesystem::file_size(path, ignored) < 4 + 4 * static_cast<uint64_t>(rank) + data_bytes) {
    throw IoError("data file is truncated or corrupt", "'" + path + "': shorter than its header declares");
  }
  torch::Tensor out;
  try {
    out = torch::empty(sizes, torch::TensorOptions().dtype(type));
  } catch (const std::exception& e) {
    throw IoError("data file is too large", "'" + path + "': " + e.what());
  }
  reader.read(out.data_ptr(), static_cast<size_t>(elements) * element_size, "the data");
  if (!reader.at_end()) {
    throw IoError("data file is corrupt", "'" + path + "': data continues past the declared size");
  }
  if (element_size > 1) {
    // IDX stores multi-byte values big-endian; x86/ARM Linux are little-endian.
    auto* bytes = static_cast<unsigned char*>(out.data_ptr());
    for (int64_t i = 0; i < elements; ++i) {
      std::reverse(bytes + i * static_cast<int64_t>(element_size),
                   bytes + (i + 1) * static_cast<int64_t>(element_size));
    }
  }
  return out;
}

const std::array<const char*, 10>& fashion_mnist_classes() {
  static const std::array<const char*, 10> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

namespace {

// read_idx with the file's path in the public message (data sets are the
// user's own files).
torch::Tensor read_named_idx(const std::string& path) {
  try {
    return read_idx(path);
  } catch (const IoError& e) {
    throw IoError("IDX file " + path + ": " + e.what(), e.detail());
  }
}

}  // namespace

std::shared_ptr<const ImageSource> open_idx(const std::string& images_path, const std::string& labels_path,
                                            std::vector<std::string> classes) {
  torch::Tensor images = read_named_idx(images_path);
  torch::Tensor labels = read_named_idx(labels_path);
  if (images.scalar_type() != torch::kUInt8 || (images.dim() != 3 && images.dim() != 4)) {
    throw IoError("IDX file " + images_path + ": images must be uint8 N×H×W or N×C×H×W, but are " +
                  c10::toString(images.scalar_type()) + " of shape " + c10::str(images.sizes()));
  }
  if (images.dim() == 3) images = images.unsqueeze(1);
  if (labels.dim() != 1 || !c10::isIntegralType(labels.scalar_type(), /*includeBool=*/false)) {
    throw IoError("IDX file " + labels_path + ": labels must be a vector of integers, but are " +
                  c10::toString(labels.scalar_type()) + " of shape " + c10::str(labels.sizes()));
  }
  labels = labels.to(torch::kInt64);
  const std::string problem = parry::detail::check_tensors(images, labels, classes, /*image_channels_only=*/true,
                                                           /*min_default_classes=*/10);
  if (!problem.empty()) throw IoError("IDX files " + images_path + " and " + labels_path + ": " + problem);
  const ImageShape shape{images.size(1), images.size(2), images.size(3)};
  std::string description = parry::detail::describe_source("IDX", images_path, images.size(0), shape, classes.size());
  return parry::detail::tensor_source(std::move(images), std::move(labels), std::move(classes),
                                      parry::detail::last_component(images_path), std::move(description));
}

namespace {

std::string find_split_file(const std::string& dir, const std::string& stem) {
  for (const std::string& candidate : {dir + "/" + stem + ".gz", dir + "/" + stem}) {
    if (detail::file_exists(candidate)) return candidate;
  }
  throw IoError("Fashion-MNIST files not found", "neither '" + dir + "/" + stem +
                                                     ".gz' nor the uncompressed file exists "
                                                     "(Debian: apt-get install dataset-fashion-mnist)");
}

}  // namespace

LabeledImages load_fashion_mnist(const std::string& dir, bool train, int64_t limit) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string image_path = find_split_file(dir, prefix + "-images-idx3-ubyte");
  const std::string label_path = find_split_file(dir, prefix + "-labels-idx1-ubyte");
  torch::Tensor images = read_idx(image_path);
  torch::Tensor labels = read_idx(label_path);
  if (images.scalar_type() != torch::kUInt8 || images.dim() != 3 || images.size(1) != 28 || images.size(2) != 28) {
    throw IoError("Fashion-MNIST image file has an unexpected layout",
                  "'" + image_path + "': expected uint8 N×28×28, got " + c10::str(images.sizes()));
  }
  if (labels.scalar_type() != torch::kUInt8 || labels.dim() != 1 || labels.size(0) != images.size(0)) {
    throw IoError("Fashion-MNIST label file does not match the images",
                  "'" + label_path + "': " + c10::str(labels.sizes()) + " labels for " +
                      std::to_string(images.size(0)) + " images");
  }
  if (labels.numel() == 0) {
    throw IoError("Fashion-MNIST files are empty", "'" + label_path + "' holds no labels");
  }
  if (labels.max().item<int64_t>() > 9) {
    throw IoError("Fashion-MNIST label file is corrupt", "'" + label_path + "': label above 9");
  }
  if (limit > 0 && limit < images.size(0)) {
    images = images.slice(0, 0, limit);
    labels = labels.slice(0, 0, limit);
  }
  LabeledImages out;
  out.images = images.to(torch::kFloat32).div_(255.0).unsqueeze(1).contiguous();
  out.labels = labels.to(torch::kInt64);
  return out;
}

}  // namespace parry::data

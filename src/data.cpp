// IDX / Fashion-MNIST reading, the reference CNN and the plain classifier trainer.
#include <zlib.h>

#include <unistd.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>

#include "parry/data/idx.hpp"
#include "parry/detail/files.hpp"
#include "parry/models/reference_cnn.hpp"
#include "parry/train/classifier_trainer.hpp"

namespace parry {
namespace data {

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
  const auto max_elements = max_bytes / static_cast<int64_t>(element_size);
  for (int d = 0; d < rank; ++d) {
    unsigned char b[4];
    reader.read(b, 4, "the header");
    const int64_t size = big_endian_u32(b);
    sizes[static_cast<size_t>(d)] = size;
    if (size > 0 && elements > max_elements / size) {
      throw IoError("data file is too large",
                    "'" + path + "': header declares more than " + std::to_string(max_bytes) + " bytes of data");
    }
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

}  // namespace data

// ---------------------------------------------------------------- reference CNN

namespace models {

ReferenceCnnOptions& ReferenceCnnOptions::dropout(double p) {
  if (!(p >= 0.0 && p < 1.0)) {
    throw OptionError("ReferenceCnnOptions::dropout: probability must be in [0, 1), but got " + std::to_string(p));
  }
  dropout_ = p;
  return *this;
}

ReferenceCnnOptions& ReferenceCnnOptions::classes(int64_t k) {
  if (k < 2) throw OptionError("ReferenceCnnOptions::classes: need at least 2, but got " + std::to_string(k));
  classes_ = k;
  return *this;
}

ReferenceCnnImpl::ReferenceCnnImpl(ReferenceCnnOptions options) : options_(options) {
  reset();
}

void ReferenceCnnImpl::reset() {
  conv1_ = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 3)));
  bn1_ = register_module("bn1", torch::nn::BatchNorm2d(32));
  conv2_ = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3)));
  bn2_ = register_module("bn2", torch::nn::BatchNorm2d(64));
  fc1_ = register_module("fc1", torch::nn::Linear(64 * 5 * 5, 128));
  dropout_ = register_module("dropout", torch::nn::Dropout(options_.dropout()));
  fc2_ = register_module("fc2", torch::nn::Linear(128, options_.classes()));
}

torch::Tensor ReferenceCnnImpl::features(const torch::Tensor& x) {
  torch::Tensor h = torch::max_pool2d(torch::relu(bn1_->forward(conv1_->forward(x))), 2);
  h = torch::max_pool2d(torch::relu(bn2_->forward(conv2_->forward(h))), 2);
  return torch::relu(fc1_->forward(h.flatten(1)));
}

torch::Tensor ReferenceCnnImpl::head(const torch::Tensor& f) {
  // The dropout module's mode decides (Model::with_active_dropout switches
  // it), but the mask is drawn as uniform < keep: the same Bernoulli(1 - p)
  // keep-and-rescale as torch::nn::Dropout, about 3× cheaper on CPU than its
  // bernoulli_ kernel. Monte-Carlo dropout's head runs T·N rows, so this is
  // most of its cost.
  const double p = options_.dropout();
  if (!dropout_->is_training() || p == 0.0) return fc2_->forward(f);
  const double keep = 1.0 - p;
  return fc2_->forward(f * torch::rand_like(f).lt_(keep).mul_(1.0 / keep));
}

torch::Tensor ReferenceCnnImpl::forward(const torch::Tensor& x) {
  return head(features(x));
}

ReferenceCnn load_reference_cnn(const std::string& path, ReferenceCnnOptions options) {
  ReferenceCnn net(options);
  Model(net).load(path);
  net->eval();
  return net;
}

}  // namespace models

// ---------------------------------------------------------------- trainer

namespace train {

namespace {
template <typename T>
void require(bool ok, const std::string& what, T got) {
  if (!ok) {
    std::ostringstream out;
    out << "ClassifierTrainerOptions::" << what << ", but got " << got;
    throw OptionError(out.str());
  }
}
}  // namespace

ClassifierTrainerOptions& ClassifierTrainerOptions::epochs(int64_t v) {
  require(v >= 1, "epochs: must be at least 1", v);
  epochs_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::batch_size(int64_t v) {
  require(v >= 1, "batch_size: must be at least 1", v);
  batch_size_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::learning_rate(double v) {
  require(v > 0 && std::isfinite(v), "learning_rate: must be positive", v);
  learning_rate_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::final_lr_fraction(double v) {
  require(v > 0 && v <= 1, "final_lr_fraction: must be in (0, 1]", v);
  final_lr_fraction_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::weight_decay(double v) {
  require(v >= 0 && std::isfinite(v), "weight_decay: must be non-negative", v);
  weight_decay_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::seed(uint64_t v) {
  seed_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::random_flip(bool on) {
  random_flip_ = on;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::random_shift(int64_t pixels) {
  require(pixels >= 0 && pixels <= 8, "random_shift: must be in [0, 8] pixels", pixels);
  random_shift_ = pixels;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::on_progress(std::function<void(const StepProgress&)> f) {
  on_progress_ = std::move(f);
  return *this;
}

std::function<void(const StepProgress&)> progress_printer() {
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  return [tty](const StepProgress& p) {
    const bool epoch_done = p.seen == p.total;
    if (!tty && !epoch_done) return;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * p.seen / std::max<int64_t>(p.total, 1));
    std::fprintf(stderr, "%sepoch %lld/%lld [%s%s] %lld/%lld loss %.4f %.0fs%s", tty ? "\r" : "",
                 static_cast<long long>(p.epoch), static_cast<long long>(p.epochs),
                 std::string(static_cast<size_t>(filled), '=').c_str(),
                 std::string(static_cast<size_t>(kWidth - filled), ' ').c_str(), static_cast<long long>(p.seen),
                 static_cast<long long>(p.total), p.running_loss, p.seconds, epoch_done ? "\n" : "");
    std::fflush(stderr);
  };
}

torch::Tensor augment_batch(const torch::Tensor& batch, bool random_flip, int64_t random_shift,
                            torch::Generator& generator) {
  torch::Tensor x = batch;
  const int64_t n = x.size(0);
  if (random_flip) {
    const torch::Tensor flip = torch::rand({n, 1, 1, 1}, generator) < 0.5;
    x = torch::where(flip, x.flip({3}), x);
  }
  if (random_shift > 0) {
    const int64_t s = random_shift;
    const torch::Tensor padded = torch::constant_pad_nd(x, {s, s, s, s}, 0.0);
    const torch::Tensor offsets = torch::randint(0, 2 * s + 1, {n, 2}, generator, torch::kInt64);
    const auto* o = offsets.data_ptr<int64_t>();
    std::vector<torch::Tensor> shifted;
    shifted.reserve(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      shifted.push_back(padded[i].narrow(1, o[2 * i], x.size(2)).narrow(2, o[2 * i + 1], x.size(3)));
    }
    x = torch::stack(shifted);
  }
  return x;
}

TrainingSummary fit_classifier(Model& model, const torch::Tensor& images, const torch::Tensor& labels,
                               const ClassifierTrainerOptions& options) {
  if (!images.defined() || images.dim() != 4 || images.size(0) == 0) {
    throw OptionError("fit_classifier: images must be a non-empty N×C×H×W tensor");
  }
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != images.size(0) ||
      labels.scalar_type() != torch::kInt64) {
    throw OptionError("fit_classifier: labels must be int64 of shape N matching the images");
  }
  auto parameters = model.parameters();
  if (parameters.empty()) throw OptionError("fit_classifier: the model has no trainable parameters");

  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  torch::Generator generator = at::detail::createCPUGenerator(options.seed());
  torch::manual_seed(options.seed());  // dropout masks draw from the default generator
  torch::optim::Adam optimizer(parameters,
                               torch::optim::AdamOptions(options.learning_rate()).weight_decay(options.weight_decay()));
  const int64_t n = images.size(0);
  const int64_t steps_per_epoch = (n + options.batch_size() - 1) / options.batch_size();
  const int64_t total_steps = steps_per_epoch * options.epochs();
  int64_t step = 0;
  TrainingSummary summary;
  model.set_training(true);
  for (int64_t epoch = 1; epoch <= options.epochs(); ++epoch) {
    const torch::Tensor order = torch::randperm(n, generator, torch::kInt64);
    double loss_sum = 0;
    int64_t seen = 0;
    for (int64_t begin = 0; begin < n; begin += options.batch_size(), ++step) {
      // Cosine annealing from lr to lr * final_lr_fraction.
      const double progress = static_cast<double>(step) / static_cast<double>(total_steps);
      const double lr =
          options.learning_rate() *
          (options.final_lr_fraction() + (1 - options.final_lr_fraction()) * 0.5 * (1 + std::cos(M_PI * progress)));
      for (auto& group : optimizer.param_groups()) {
        static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
      }
      const torch::Tensor index = order.slice(0, begin, begin + options.batch_size());
      const torch::Tensor x =
          augment_batch(images.index_select(0, index), options.random_flip(), options.random_shift(), generator);
      const torch::Tensor y = labels.index_select(0, index);
      optimizer.zero_grad();
      const torch::Tensor loss = torch::nn::functional::cross_entropy(model.logits(x), y);
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>() * static_cast<double>(x.size(0));
      seen += x.size(0);
      if (options.on_progress()) {
        options.on_progress()(
            StepProgress{epoch, options.epochs(), seen, n, loss_sum / static_cast<double>(seen), elapsed()});
      }
    }
    summary.final_loss = loss_sum / static_cast<double>(n);
  }
  model.set_training(false);
  summary.seconds = elapsed();
  return summary;
}

double accuracy(const Model& model, const torch::Tensor& images, const torch::Tensor& labels, int64_t batch_size) {
  if (!images.defined() || images.dim() != 4 || images.size(0) == 0 || !labels.defined() ||
      labels.size(0) != images.size(0)) {
    throw OptionError("accuracy: images N×C×H×W and labels N must be non-empty and match");
  }
  if (batch_size < 1) throw OptionError("accuracy: batch_size must be at least 1");
  c10::InferenceMode inference;
  int64_t correct = 0;
  for (int64_t begin = 0; begin < images.size(0); begin += batch_size) {
    const torch::Tensor pred = model.logits(images.slice(0, begin, begin + batch_size)).argmax(1);
    correct += pred.eq(labels.slice(0, begin, begin + batch_size)).sum().item<int64_t>();
  }
  return static_cast<double>(correct) / static_cast<double>(images.size(0));
}

}  // namespace train
}  // namespace parry

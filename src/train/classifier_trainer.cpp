// train::fit_classifier: plain supervised training (Adam, cosine decay, augmentation).
#include "parry/train/classifier_trainer.hpp"

#include <unistd.h>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "parry/detail/chunks.hpp"
#include "parry/detail/require.hpp"
#include "train/support.hpp"

namespace parry::train {

using parry::detail::require;

ClassifierTrainerOptions& ClassifierTrainerOptions::epochs(int64_t v) {
  require(v >= 1, "ClassifierTrainerOptions::epochs", "must be at least 1", v);
  epochs_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::batch_size(int64_t v) {
  require(v >= 1, "ClassifierTrainerOptions::batch_size", "must be at least 1", v);
  batch_size_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::learning_rate(double v) {
  require(v > 0 && std::isfinite(v), "ClassifierTrainerOptions::learning_rate", "must be positive", v);
  learning_rate_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::final_lr_fraction(double v) {
  require(v > 0 && v <= 1, "ClassifierTrainerOptions::final_lr_fraction", "must be in (0, 1]", v);
  final_lr_fraction_ = v;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::weight_decay(double v) {
  require(v >= 0 && std::isfinite(v), "ClassifierTrainerOptions::weight_decay", "must be non-negative", v);
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
ClassifierTrainerOptions& ClassifierTrainerOptions::gaussian_noise(double sigma) {
  require(sigma >= 0 && std::isfinite(sigma), "ClassifierTrainerOptions::gaussian_noise",
          "must be non-negative and finite", sigma);
  gaussian_noise_ = sigma;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::random_shift(int64_t pixels) {
  require(pixels >= 0 && pixels <= 8, "ClassifierTrainerOptions::random_shift", "must be in [0, 8] pixels", pixels);
  random_shift_ = pixels;
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::on_progress(std::function<void(const StepProgress&)> f) {
  on_progress_ = std::move(f);
  return *this;
}
ClassifierTrainerOptions& ClassifierTrainerOptions::process_group(std::shared_ptr<ProcessGroup> group) {
  process_group_ = std::move(group);
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
                            torch::Generator& generator, double gaussian_noise) {
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
  if (gaussian_noise > 0) x = x + gaussian_noise * torch::randn(x.sizes(), generator, x.options());
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
  if (model.parameters().empty()) throw OptionError("fit_classifier: the model has no trainable parameters");

  const auto start = std::chrono::steady_clock::now();
  const detail::LoopSettings settings{
      options.epochs(),       options.batch_size(), options.learning_rate(), options.final_lr_fraction(),
      options.weight_decay(), options.seed(),       &options.on_progress(),  options.process_group()};
  const bool augmenting = options.random_flip() || options.random_shift() > 0 || options.gaussian_noise() > 0;
  TrainingSummary summary;
  summary.final_loss = detail::run_training(model, images.size(0), settings, [&](const detail::BatchRows& rows) {
    // Augmentation draws for the whole global batch on every rank, so that
    // the generator streams stay in step and a row is augmented as it would
    // be in one process.
    torch::Tensor x;
    if (augmenting) {
      x = augment_batch(images.index_select(0, rows.index), options.random_flip(), options.random_shift(),
                        *rows.generator, options.gaussian_noise())
              .slice(0, rows.begin, rows.end);
    } else {
      x = images.index_select(0, rows.shard());
    }
    if (rows.rows() == 0) return torch::Tensor();
    return torch::nn::functional::cross_entropy(model.logits(x), labels.index_select(0, rows.shard()));
  });
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
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
  parry::detail::for_each_chunk(images.size(0), batch_size, [&](int64_t begin, int64_t end) {
    const torch::Tensor pred = model.logits(images.slice(0, begin, end)).argmax(1);
    correct += pred.eq(labels.slice(0, begin, end)).sum().item<int64_t>();
  });
  return static_cast<double>(correct) / static_cast<double>(images.size(0));
}

}  // namespace parry::train

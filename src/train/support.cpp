// What the trainers share (src/train/support.hpp).
#include "train/support.hpp"

#include <algorithm>
#include <cmath>

#include "parry/detail/chunks.hpp"
#include "parry/detail/require.hpp"

namespace parry::train::detail {

using parry::detail::require;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void check_images(const std::string& where, const torch::Tensor& images) {
  if (!images.defined() || images.dim() != 4 || images.size(0) == 0 || !images.is_floating_point()) {
    throw OptionError(where + ": images must be a non-empty floating N×C×H×W tensor");
  }
}

void check_data(const std::string& where, const torch::Tensor& images, const torch::Tensor& labels) {
  check_images(where, images);
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != images.size(0) ||
      labels.scalar_type() != torch::kInt64) {
    throw OptionError(where + ": labels must be int64 of shape N = " + std::to_string(images.size(0)) +
                      " matching the images");
  }
  require(labels.min().item<int64_t>() >= 0, where, "labels must be non-negative", labels.min().item<int64_t>());
}

void check_trainable(const std::string& where, const Model& model) {
  if (model.parameters().empty()) {
    throw OptionError(where + ": the model has no trainable parameters (make it from a torch::nn module)");
  }
}

/// The model in eval mode without touching the caller's: itself when it is
/// already in eval mode (a shared handle), else a deep copy.
Model eval_view(const Model& model) {
  if (!model.is_training()) return model;
  Model copy = model.clone();
  copy.set_training(false);
  return copy;
}

/// Number of classes the model outputs, from one row in eval mode.
int64_t class_count(const Model& model, const torch::Tensor& images) {
  c10::InferenceMode inference;
  return eval_view(model).logits(images.slice(0, 0, 1)).size(1);
}

void check_labels_below(const std::string& where, const torch::Tensor& labels, int64_t classes) {
  require(labels.max().item<int64_t>() < classes, where,
          "labels must be below the model's class count " + std::to_string(classes), labels.max().item<int64_t>());
}

void check_pixel_range(const std::string& where, const torch::Tensor& x, double lo_allowed, double hi_allowed) {
  const auto [lo, hi] = torch::aminmax(x.detach());
  if (!(lo.item<double>() >= lo_allowed && hi.item<double>() <= hi_allowed)) {
    throw OptionError(where + ": images must lie in the pixel range [" + std::to_string(lo_allowed) + ", " +
                      std::to_string(hi_allowed) + "] and be finite, but got values in [" +
                      std::to_string(lo.item<double>()) + ", " + std::to_string(hi.item<double>()) + "]");
  }
}

double cosine(double lr, double final_fraction, int64_t step, int64_t total_steps) {
  const double progress = static_cast<double>(step) / static_cast<double>(std::max<int64_t>(total_steps, 1));
  return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + std::cos(M_PI * progress)));
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

double run_training(Model& model, int64_t n, const LoopSettings& s,
                    const std::function<torch::Tensor(const torch::Tensor&)>& batch_loss) {
  const auto start = std::chrono::steady_clock::now();
  torch::Generator generator = at::detail::createCPUGenerator(s.seed);
  torch::manual_seed(s.seed);  // dropout masks draw from the default generator
  torch::optim::Adam optimizer(model.parameters(),
                               torch::optim::AdamOptions(s.learning_rate).weight_decay(s.weight_decay));
  const int64_t steps_per_epoch = (n + s.batch_size - 1) / s.batch_size;
  const int64_t total_steps = steps_per_epoch * s.epochs;
  int64_t step = 0;
  double last_loss = 0;
  EvalOnExit leave_in_eval_mode(model);
  model.set_training(true);
  for (int64_t epoch = 1; epoch <= s.epochs; ++epoch) {
    const torch::Tensor order = torch::randperm(n, generator, torch::kInt64);
    double loss_sum = 0;
    int64_t seen = 0;
    parry::detail::for_each_chunk(n, s.batch_size, [&](int64_t begin, int64_t end) {
      set_learning_rate(optimizer, cosine(s.learning_rate, s.final_lr_fraction, step, total_steps));
      const torch::Tensor index = order.slice(0, begin, end);
      optimizer.zero_grad();
      const torch::Tensor loss = batch_loss(index);
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>() * static_cast<double>(index.size(0));
      seen += index.size(0);
      if (s.on_progress && *s.on_progress) {
        (*s.on_progress)(
            StepProgress{epoch, s.epochs, seen, n, loss_sum / static_cast<double>(seen), seconds_since(start)});
      }
      ++step;
    });
    last_loss = loss_sum / static_cast<double>(n);
  }
  model.set_training(false);
  return last_loss;
}

}  // namespace parry::train::detail

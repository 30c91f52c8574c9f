// What the trainers share: argument checks, train/eval mode scopes, the
// learning-rate schedule and a generic Adam loop. Internal: not installed.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "parry/core/model.hpp"
#include "parry/train/classifier_trainer.hpp"

namespace parry::train::detail {

double seconds_since(std::chrono::steady_clock::time_point start);

/// @throws parry::OptionError unless images is a non-empty floating N×C×H×W tensor.
void check_images(const std::string& where, const torch::Tensor& images);
/// Images as above and int64 labels >= 0 of the same length.
void check_data(const std::string& where, const torch::Tensor& images, const torch::Tensor& labels);
/// @throws parry::OptionError if the model has no trainable parameters.
void check_trainable(const std::string& where, const Model& model);
void check_labels_below(const std::string& where, const torch::Tensor& labels, int64_t classes);
void check_pixel_range(const std::string& where, const torch::Tensor& x, double lo_allowed, double hi_allowed);

/// The model in eval mode without touching the caller's: itself when it is
/// already in eval mode (a shared handle), else a deep copy.
Model eval_view(const Model& model);
/// Number of classes the model outputs, from one row in eval mode.
int64_t class_count(const Model& model, const torch::Tensor& images);

/// Leaves the model in eval mode when the scope ends, also on an exception.
class EvalOnExit {
 public:
  explicit EvalOnExit(Model& model) : model_(model) {}
  ~EvalOnExit() { model_.set_training(false); }
  EvalOnExit(const EvalOnExit&) = delete;
  EvalOnExit& operator=(const EvalOnExit&) = delete;

 private:
  Model& model_;
};

/// Restores a model's train/eval mode when it goes out of scope.
class ModeGuard {
 public:
  ModeGuard(Model& model, bool training) : model_(model), previous_(model.is_training()) {
    model_.set_training(training);
  }
  ~ModeGuard() { model_.set_training(previous_); }
  ModeGuard(const ModeGuard&) = delete;
  ModeGuard& operator=(const ModeGuard&) = delete;

 private:
  Model& model_;
  bool previous_;
};

/// Cosine decay from lr to lr·final_fraction over total_steps.
double cosine(double lr, double final_fraction, int64_t step, int64_t total_steps);
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

struct LoopSettings {
  int64_t epochs, batch_size;
  double learning_rate, final_lr_fraction, weight_decay;
  uint64_t seed;
  const std::function<void(const StepProgress&)>* on_progress;
};

/// Adam with cosine decay over `n` samples; `batch_loss(index)` returns the
/// loss of the rows `index`. Returns the last epoch's mean loss. Leaves the
/// model in eval mode.
double run_training(Model& model, int64_t n, const LoopSettings& s,
                    const std::function<torch::Tensor(const torch::Tensor&)>& batch_loss);

}  // namespace parry::train::detail

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
#include "parry/train/process_group.hpp"

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

/// One global batch of a fit loop and this rank's shard of it.
struct BatchRows {
  torch::Tensor index;  ///< the global batch: row indices into the data, the same on every rank
  int64_t begin = 0;    ///< this rank's rows of it: [begin, end)
  int64_t end = 0;
  torch::Generator* generator = nullptr;  ///< the loop's generator (the same stream on every rank)
  /// This rank's row indices into the data.
  torch::Tensor shard() const { return index.slice(0, begin, end); }
  int64_t rows() const { return end - begin; }
};

/// The data-parallel side of a fit loop; without a group (one process) every
/// call is a no-op and the shard is the whole batch.
class DataParallel {
 public:
  explicit DataParallel(std::shared_ptr<ProcessGroup> group) : group_(std::move(group)) {}
  bool distributed() const { return group_ != nullptr; }
  int64_t rank() const { return group_ ? group_->rank() : 0; }
  int64_t world_size() const { return group_ ? group_->world_size() : 1; }
  ProcessGroup* group() const { return group_.get(); }
  /// Rank 0's parameters and buffers into every rank's model.
  void synchronise(Model& model) const;
  /// Seeds the default generator (dropout masks) per rank and epoch, so that
  /// ranks draw different masks and a resumed run draws the same ones.
  void begin_epoch(uint64_t seed, int64_t epoch) const;
  /// The global batch `index` with this rank's shard.
  BatchRows rows(const torch::Tensor& index, torch::Generator& generator) const;
  /// One optimizer step on `rows`: backward of this shard's mean loss, the
  /// gradients weighted by shard / batch and summed over ranks, the step,
  /// BatchNorm running statistics averaged. Returns the batch's loss summed
  /// over its rows (all ranks). batch_loss is called on every rank for
  /// every batch, also when this rank's shard is empty (rows() == 0): it
  /// then makes the batch's random draws, if any, and returns an undefined
  /// tensor.
  double step(Model& model, torch::optim::Optimizer& optimizer, const BatchRows& rows,
              const std::function<torch::Tensor(const BatchRows&)>& batch_loss) const;
  /// Sum over ranks of a count or a sum (its own value without a group).
  double sum(double value) const;
  /// The rows of `local` (N_r × ...) of every rank, concatenated in rank
  /// order; `local` itself without a group.
  torch::Tensor gather_rows(const torch::Tensor& local) const;

 private:
  std::shared_ptr<ProcessGroup> group_;
};

struct LoopSettings {
  int64_t epochs, batch_size;
  double learning_rate, final_lr_fraction, weight_decay;
  uint64_t seed;
  const std::function<void(const StepProgress&)>* on_progress;
  std::shared_ptr<ProcessGroup> group;  ///< null: one process
};

/// Adam with cosine decay over `n` samples, data-parallel over s.group;
/// `batch_loss(rows)` returns the mean loss of this rank's rows. Returns the
/// last epoch's mean loss (over all ranks). Leaves the model in eval mode.
double run_training(Model& model, int64_t n, const LoopSettings& s,
                    const std::function<torch::Tensor(const BatchRows&)>& batch_loss);

}  // namespace parry::train::detail

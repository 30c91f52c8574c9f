// Plain supervised training of a classifier (cross-entropy, Adam), with a
// progress display. The adversarial and distillation trainers build on it.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>

#include "parry/core/model.hpp"
#include "parry/train/process_group.hpp"

namespace parry::train {

/// Progress of one training step, for displays and logs.
struct StepProgress {
  int64_t epoch = 0;  ///< 1-based
  int64_t epochs = 0;
  int64_t seen = 0;         ///< samples seen in this epoch
  int64_t total = 0;        ///< samples per epoch
  double running_loss = 0;  ///< mean loss over the epoch so far
  double seconds = 0;       ///< since fit() started
};

struct ClassifierTrainerOptions {
  ClassifierTrainerOptions& epochs(int64_t v);
  ClassifierTrainerOptions& batch_size(int64_t v);
  /// Adam learning rate.
  ClassifierTrainerOptions& learning_rate(double v);
  /// The learning rate decays by cosine annealing to this fraction by the end.
  ClassifierTrainerOptions& final_lr_fraction(double v);
  ClassifierTrainerOptions& weight_decay(double v);
  /// Seed of shuffling, augmentation and dropout (default 0). Dropout masks
  /// come from LibTorch's default generator, which training seeds for the
  /// whole process: do not draw from it on other threads meanwhile.
  ClassifierTrainerOptions& seed(uint64_t v);
  /// Data augmentation per training sample: mirror left-right with
  /// probability 1/2 (default off).
  ClassifierTrainerOptions& random_flip(bool on);
  /// Data augmentation per training sample: shift by up to `pixels` in each
  /// direction, filling with zeros (default 0 = off).
  ClassifierTrainerOptions& random_shift(int64_t pixels);
  /// Gaussian data augmentation (Cohen, Rosenfeld, Kolter, ICML 2019): add
  /// N(0, σ²) noise, in pixel units and not clipped, to every training sample
  /// of every epoch, so that the model classifies well under the noise of a
  /// certify::SmoothedClassifier with the same σ. Default 0 (off); applied
  /// after flips and shifts.
  /// @throws parry::OptionError unless σ >= 0 and finite.
  ClassifierTrainerOptions& gaussian_noise(double sigma);
  /// Called after every batch; default: none. See progress_printer().
  ClassifierTrainerOptions& on_progress(std::function<void(const StepProgress&)> f);
  /// Data-parallel training over `group` (default none: one process). Every
  /// rank calls fit() with the same data and options; each trains on its
  /// shard of every batch (docs/training.md, "Several processes").
  ClassifierTrainerOptions& process_group(std::shared_ptr<ProcessGroup> group);

  int64_t epochs() const { return epochs_; }
  int64_t batch_size() const { return batch_size_; }
  double learning_rate() const { return learning_rate_; }
  double final_lr_fraction() const { return final_lr_fraction_; }
  double weight_decay() const { return weight_decay_; }
  uint64_t seed() const { return seed_; }
  bool random_flip() const { return random_flip_; }
  int64_t random_shift() const { return random_shift_; }
  double gaussian_noise() const { return gaussian_noise_; }
  const std::function<void(const StepProgress&)>& on_progress() const { return on_progress_; }
  const std::shared_ptr<ProcessGroup>& process_group() const { return process_group_; }

 private:
  int64_t epochs_ = 8;
  int64_t batch_size_ = 128;
  double learning_rate_ = 1e-3;
  double final_lr_fraction_ = 0.05;
  double weight_decay_ = 0.0;
  uint64_t seed_ = 0;
  bool random_flip_ = false;
  int64_t random_shift_ = 0;
  double gaussian_noise_ = 0.0;
  std::function<void(const StepProgress&)> on_progress_;
  std::shared_ptr<ProcessGroup> process_group_;
};

/// Result of fit().
struct TrainingSummary {
  double final_loss = 0;  ///< mean loss of the last epoch
  double seconds = 0;     ///< wall time
};

/// A progress bar on stderr (redrawn in place on a terminal, one line per
/// epoch otherwise).
std::function<void(const StepProgress&)> progress_printer();

/// Applies the trainer's augmentation to a batch N×C×H×W, drawing from
/// `generator`: flips, shifts, then additive Gaussian noise of standard
/// deviation `gaussian_noise` (pixel units; 0: none).
torch::Tensor augment_batch(const torch::Tensor& batch, bool random_flip, int64_t random_shift,
                            torch::Generator& generator, double gaussian_noise = 0.0);

/// Trains `model` (made from a torch::nn module) on images N×C×H×W float32 and
/// int64 labels N, shuffling with the seed. Leaves the model in eval mode.
/// @throws parry::OptionError on mismatched or empty data.
TrainingSummary fit_classifier(Model& model, const torch::Tensor& images, const torch::Tensor& labels,
                               const ClassifierTrainerOptions& options = {});

/// Top-1 accuracy in [0,1] of `model` on images/labels, in batches.
double accuracy(const Model& model, const torch::Tensor& images, const torch::Tensor& labels, int64_t batch_size = 512);

}  // namespace parry::train

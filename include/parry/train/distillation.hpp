// train::Distillation: defensive distillation (Papernot, McDaniel, Wu, Jha,
// Swami, "Distillation as a Defense to Adversarial Perturbations against Deep
// Neural Networks", IEEE S&P 2016).
//
//   1. train a teacher F on hard labels with softmax(F(x) / T), T the temperature;
//   2. label the training set with the teacher's soft labels softmax(F(x) / T);
//   3. train a student F_d of the same (or any) architecture at the same T on
//      those soft labels (cross-entropy with soft targets);
//   4. deploy the student at T = 1: its raw logits, softmax(F_d(x)).
//
// Training at T scales the logits the network learns by about T, so at T = 1
// the deployed softmax saturates: on most inputs it is exactly one-hot in
// float32 and the gradient of the cross-entropy with respect to the input is
// tiny or exactly zero.
//
// Threat model, honestly: distillation MASKS gradients, it does not remove
// adversarial examples. Attacks that ascend the softmax cross-entropy through
// the plain gradient (FGSM, PGD) fail because the gradient vanishes; attacks
// on the logits (Carlini & Wagner, "Defensive Distillation is Not Robust to
// Adversarial Examples", 2016, and "Towards Evaluating the Robustness of
// Neural Networks", IEEE S&P 2017) or on logits divided by T succeed about as
// often as on the undefended model. Report distillation only next to such an
// attack (docs/training.md does).
#pragma once

#include <torch/torch.h>

#include <functional>

#include "parry/core/model.hpp"
#include "parry/train/classifier_trainer.hpp"

namespace parry::train {

struct DistillationOptions {
  /// Temperature T > 0 used for the teacher, the soft labels and the student
  /// (default 20; Papernot et al. used up to 100).
  DistillationOptions& temperature(double t);
  /// Epochs for the teacher and for the student, >= 1 (default 5).
  DistillationOptions& epochs(int64_t v);
  /// Mini-batch size, >= 1 (default 128).
  DistillationOptions& batch_size(int64_t v);
  /// Adam learning rate > 0 (default 1e-3), decayed by cosine annealing to
  /// learning_rate · final_lr_fraction.
  DistillationOptions& learning_rate(double v);
  /// In (0, 1] (default 0.05).
  DistillationOptions& final_lr_fraction(double v);
  /// Adam L2 weight decay >= 0 (default 0).
  DistillationOptions& weight_decay(double v);
  /// Seed for shuffling and dropout (default 0).
  DistillationOptions& seed(uint64_t v);
  /// Called after every batch of either stage; default none (see progress_printer()).
  DistillationOptions& on_progress(std::function<void(const StepProgress&)> f);
  /// Data-parallel training over `group` (default none: one process). Every
  /// rank calls fit() with the same data and options; each trains on its
  /// shard of every batch (docs/training.md, "Several processes").
  DistillationOptions& process_group(std::shared_ptr<ProcessGroup> group);

  double temperature() const { return temperature_; }
  int64_t epochs() const { return epochs_; }
  int64_t batch_size() const { return batch_size_; }
  double learning_rate() const { return learning_rate_; }
  double final_lr_fraction() const { return final_lr_fraction_; }
  double weight_decay() const { return weight_decay_; }
  uint64_t seed() const { return seed_; }
  const std::function<void(const StepProgress&)>& on_progress() const { return on_progress_; }
  const std::shared_ptr<ProcessGroup>& process_group() const { return process_group_; }

 private:
  double temperature_ = 20.0;
  int64_t epochs_ = 5;
  int64_t batch_size_ = 128;
  double learning_rate_ = 1e-3;
  double final_lr_fraction_ = 0.05;
  double weight_decay_ = 0.0;
  uint64_t seed_ = 0;
  std::function<void(const StepProgress&)> on_progress_;
  std::shared_ptr<ProcessGroup> process_group_;
};

/// What Distillation::fit measured.
struct DistillationSummary {
  double teacher_loss = 0;     ///< mean cross-entropy at T of the teacher's last epoch
  double student_loss = 0;     ///< mean soft cross-entropy at T of the student's last epoch
  double label_agreement = 0;  ///< fraction of training images where student and teacher agree on the top label
  double seconds = 0;          ///< wall time of both stages
};

/// Softened teacher outputs softmax(teacher(x) / T), N×K float32, computed in
/// eval mode in batches of `batch_size`. @throws parry::OptionError on bad arguments.
torch::Tensor soft_labels(const Model& teacher, const torch::Tensor& images, double temperature,
                          int64_t batch_size = 512);

/// Cross-entropy with soft targets: mean over the batch of −Σ_k q_k log softmax(logits / T)_k.
/// `logits` N×K, `targets` N×K (rows summing to 1). Differentiable in `logits`.
torch::Tensor soft_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets, double temperature);

class Distillation {
 public:
  explicit Distillation(DistillationOptions options = {}) : options_(std::move(options)) {}

  /// Runs the whole procedure on images N×C×H×W (float, as the model
  /// expects) and int64 labels N: trains `teacher` at T on the labels, then
  /// `student` at T on the teacher's soft labels. Both must be Models made
  /// from torch::nn modules (trainable parameters), freshly initialised and
  /// distinct. Both are trained in place and left in eval mode.
  ///
  /// The deployed model is `student` itself: a normal parry::Model whose
  /// logits are the raw logits, i.e. the student at T = 1. Nothing divides by
  /// T at inference time.
  /// @throws parry::OptionError on mismatched data, a parameterless model or teacher == student.
  DistillationSummary fit(Model& teacher, Model& student, const torch::Tensor& images,
                          const torch::Tensor& labels) const;

  /// Stage 3 alone, for a teacher already trained at this temperature:
  /// trains `student` at T on softmax(teacher(x) / T). Returns the student's
  /// last-epoch mean soft cross-entropy. Leaves the student in eval mode.
  /// @throws parry::OptionError as fit() does.
  double train_student(const Model& teacher, Model& student, const torch::Tensor& images) const;

  const DistillationOptions& options() const { return options_; }

 private:
  DistillationOptions options_;
};

}  // namespace parry::train

// train::AdversarialTrainer: adversarial training, as a hook for a user's own
// training loop and as a complete fit() with checkpoints and resume.
//
// Methods (all L∞, pixel range [clip_min, clip_max]):
//  - Pgd: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning
//    Models Resistant to Adversarial Attacks", ICLR 2018. Train on PGD
//    examples: uniform random start in the ε-ball, `steps` signed-gradient
//    steps of size α (default 2.5ε/steps), projection after each step.
//  - FastFgsm: Wong, Rice, Kolter, "Fast is better than free: Revisiting
//    adversarial training", ICLR 2020. One FGSM step of α = 1.25ε from a
//    uniform random start in the ε-ball, then projection onto the ball and
//    the pixel range. About the cost of two plain steps.
//  - Trades: Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically
//    Principled Trade-off between Robustness and Accuracy", ICML 2019.
//    x' maximises KL(f(x) ‖ f(x')) by PGD from x + 0.001·N(0, 1); the loss
//    is CE(f(x), y) + β · KL(f(x) ‖ f(x')), β default 6.
// All three examples are made by attack::pgd (parry/attack/pgd.hpp): the
// cross-entropy or PgdLoss::KlToClean, L∞ sign steps projected onto the ball
// and the pixel range, the last iterate kept, the random start drawn from the
// trainer's own generator (checkpointed, so a resumed run continues exactly).
//
// Mode during the attack: the adversarial examples are generated with the
// model in eval mode (BatchNorm uses its running statistics, dropout is off)
// and the model's previous mode is restored afterwards. Eval mode keeps the
// attack's forward passes from updating the BatchNorm running statistics with
// half-finished adversarial batches (PGD-7 would update them 7 times per
// batch) and attacks the deterministic function that will be deployed, as
// the TRADES reference code does. Only the input's gradient is computed
// (torch::autograd::grad with the input as the only target): no parameter
// gradient is built or accumulated during the attack.
//
// Threat model: the robustness gained holds for the threat model trained
// against: L∞ perturbations up to ε in the pixel range. It says nothing about
// larger ε, other norms (L2, L0), spatial transformations or corruptions, and
// it must be measured with a stronger attack than the one trained with (PGD
// with more steps and restarts, docs/training.md). Fast FGSM training can
// suddenly lose its robustness to PGD ("catastrophic overfitting", Wong et
// al.): check the per-epoch PGD accuracy that fit() reports.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "parry/core/model.hpp"
#include "parry/data/idx.hpp"
#include "parry/train/classifier_trainer.hpp"

namespace parry::train {

enum class AdversarialMethod { Pgd, FastFgsm, Trades };
/// "pgd", "fast_fgsm" or "trades".
const char* to_string(AdversarialMethod method);
/// Parses what to_string() returns. @throws parry::OptionError naming the value.
AdversarialMethod adversarial_method_from_string(const std::string& name);

enum class OptimizerKind { Adam, Sgd };
/// Learning-rate schedule over the whole run, evaluated per step.
enum class LrSchedule {
  Cosine,    ///< cosine annealing from learning_rate to learning_rate · final_lr_fraction
  Step,      ///< learning_rate · gamma^(number of step_epochs milestones passed)
  Constant,  ///< learning_rate throughout
};

struct AdversarialTrainerOptions {
  AdversarialTrainerOptions& method(AdversarialMethod m);
  /// L∞ radius ε > 0 in pixel units (default 0.1 on [0, 1] images).
  AdversarialTrainerOptions& epsilon(double v);
  /// Attack iterations for Pgd and Trades, >= 1 (default 7). Ignored by FastFgsm.
  AdversarialTrainerOptions& steps(int64_t v);
  /// Step size α > 0 in pixel units. Default: 2.5ε/steps for Pgd and Trades
  /// (Madry et al.'s rule), 1.25ε for FastFgsm (Wong et al.).
  AdversarialTrainerOptions& step_size(double v);
  /// Fraction in [0, 1] of each batch replaced by adversarial examples
  /// (default 1: Madry et al. train on adversarial examples only; 0.5 is
  /// Goodfellow et al.'s mix). Must be 1 for Trades, whose loss uses both.
  AdversarialTrainerOptions& adversarial_fraction(double v);
  /// TRADES trade-off β >= 0 (default 6).
  AdversarialTrainerOptions& trades_beta(double v);
  /// Valid pixel range (default [0, 1]).
  AdversarialTrainerOptions& pixel_range(double clip_min, double clip_max);

  /// fit(): epochs >= 1 (default 10).
  AdversarialTrainerOptions& epochs(int64_t v);
  /// fit(): mini-batch size >= 1 (default 128).
  AdversarialTrainerOptions& batch_size(int64_t v);
  /// fit(): Adam (default) or SGD with momentum.
  AdversarialTrainerOptions& optimizer(OptimizerKind k);
  /// fit(): peak learning rate > 0 (default 1e-3).
  AdversarialTrainerOptions& learning_rate(double v);
  /// fit(): SGD momentum in [0, 1) (default 0.9; ignored by Adam).
  AdversarialTrainerOptions& momentum(double v);
  /// fit(): L2 weight decay >= 0 (default 0).
  AdversarialTrainerOptions& weight_decay(double v);
  /// fit(): learning-rate schedule (default Cosine).
  AdversarialTrainerOptions& schedule(LrSchedule s);
  /// Cosine: final fraction of the peak rate, in (0, 1] (default 0.05).
  AdversarialTrainerOptions& final_lr_fraction(double v);
  /// Step: 1-based epochs after which the rate is multiplied by gamma
  /// (default {}), each in [1, epochs], and gamma in (0, 1] (default 0.1).
  AdversarialTrainerOptions& step_epochs(std::vector<int64_t> epochs, double gamma = 0.1);
  /// Seed of every random choice: shuffling, random starts, mixing, dropout (default 0).
  /// Dropout masks come from LibTorch's default generator, which fit() seeds
  /// for the whole process: do not draw from it on other threads meanwhile.
  AdversarialTrainerOptions& seed(uint64_t v);
  /// fit(): held-out samples used for the per-epoch clean and PGD accuracy,
  /// >= 0 (default 1000; 0 turns the evaluation off).
  AdversarialTrainerOptions& eval_samples(int64_t v);
  /// fit(): PGD iterations of the per-epoch evaluation attack, >= 1 (default 20).
  AdversarialTrainerOptions& eval_steps(int64_t v);
  /// fit(): directory for `checkpoint.pt`, written atomically after every
  /// epoch (default empty: no checkpoints). Created if missing.
  AdversarialTrainerOptions& checkpoint_dir(std::string dir);
  /// fit(): continue from the checkpoint in checkpoint_dir if there is one
  /// (default true).
  AdversarialTrainerOptions& resume(bool on);
  /// fit(): called after every batch (default none; see progress_printer()).
  AdversarialTrainerOptions& on_progress(std::function<void(const StepProgress&)> f);
  /// Data-parallel training over `group` (default none: one process). Every
  /// rank calls fit() with the same data and options; each trains on its
  /// shard of every batch (docs/training.md, "Several processes").
  AdversarialTrainerOptions& process_group(std::shared_ptr<ProcessGroup> group);

  AdversarialMethod method() const { return method_; }
  double epsilon() const { return epsilon_; }
  int64_t steps() const { return steps_; }
  /// The step size in use (the explicit one, or the method's default).
  double step_size() const;
  double adversarial_fraction() const { return adversarial_fraction_; }
  double trades_beta() const { return trades_beta_; }
  double clip_min() const { return clip_min_; }
  double clip_max() const { return clip_max_; }
  int64_t epochs() const { return epochs_; }
  int64_t batch_size() const { return batch_size_; }
  OptimizerKind optimizer() const { return optimizer_; }
  double learning_rate() const { return learning_rate_; }
  double momentum() const { return momentum_; }
  double weight_decay() const { return weight_decay_; }
  LrSchedule schedule() const { return schedule_; }
  double final_lr_fraction() const { return final_lr_fraction_; }
  const std::vector<int64_t>& step_epochs() const { return step_epochs_; }
  double step_gamma() const { return step_gamma_; }
  uint64_t seed() const { return seed_; }
  int64_t eval_samples() const { return eval_samples_; }
  int64_t eval_steps() const { return eval_steps_; }
  const std::string& checkpoint_dir() const { return checkpoint_dir_; }
  bool resume() const { return resume_; }
  const std::function<void(const StepProgress&)>& on_progress() const { return on_progress_; }
  const std::shared_ptr<ProcessGroup>& process_group() const { return process_group_; }

  /// The learning rate at 0-based global step `step` of `total_steps`, at
  /// epoch `epoch` (1-based), under this schedule.
  double learning_rate_at(int64_t step, int64_t total_steps, int64_t epoch) const;

 private:
  AdversarialMethod method_ = AdversarialMethod::Pgd;
  double epsilon_ = 0.1;
  int64_t steps_ = 7;
  double step_size_ = -1;  // < 0: the method's default
  double adversarial_fraction_ = 1.0;
  double trades_beta_ = 6.0;
  double clip_min_ = 0.0;
  double clip_max_ = 1.0;
  int64_t epochs_ = 10;
  int64_t batch_size_ = 128;
  OptimizerKind optimizer_ = OptimizerKind::Adam;
  double learning_rate_ = 1e-3;
  double momentum_ = 0.9;
  double weight_decay_ = 0.0;
  LrSchedule schedule_ = LrSchedule::Cosine;
  double final_lr_fraction_ = 0.05;
  std::vector<int64_t> step_epochs_;
  double step_gamma_ = 0.1;
  uint64_t seed_ = 0;
  int64_t eval_samples_ = 1000;
  int64_t eval_steps_ = 20;
  std::string checkpoint_dir_;
  bool resume_ = true;
  std::function<void(const StepProgress&)> on_progress_;
  std::shared_ptr<ProcessGroup> process_group_;
};

/// What adversarial_batch() returns: the batch to train on.
struct TrainingBatch {
  torch::Tensor images;       ///< N×C×H×W: adversarial where `adversarial` is true, else clean
  torch::Tensor labels;       ///< N int64: the true labels (unchanged)
  torch::Tensor adversarial;  ///< bool N: which rows were replaced
};

/// One epoch of fit(), as reported and stored in checkpoints.
struct EpochReport {
  int64_t epoch = 0;                 ///< 1-based
  double train_loss = 0;             ///< mean training loss (the method's objective)
  double clean_accuracy = -1;        ///< on the held-out subset, in [0, 1]; −1 when evaluation is off
  double adversarial_accuracy = -1;  ///< under PGD-eval_steps at ε on the same subset; −1 when off
  double learning_rate = 0;          ///< at the epoch's last step
  double seconds = 0;                ///< wall time of the epoch's training (without evaluation)
};

/// Result of fit().
struct AdversarialTrainingSummary {
  std::vector<EpochReport> epochs;  ///< every epoch, including those restored from a checkpoint
  int64_t resumed_from_epoch = 0;   ///< epochs restored from a checkpoint (0: fresh start)
  double seconds = 0;               ///< wall time of this call
};

/// A printer for per-epoch reports on stderr.
std::function<void(const EpochReport&)> epoch_printer();

class AdversarialTrainer {
 public:
  /// @throws parry::OptionError on an inconsistent combination (Trades with adversarial_fraction != 1).
  explicit AdversarialTrainer(AdversarialTrainerOptions options = {});

  /// The hook for a user's own loop. Given a clean batch x (N×C×H×W inside
  /// the pixel range) and labels y (int64 N), returns the batch to train on:
  /// a random adversarial_fraction of the rows replaced by adversarial
  /// examples of the configured method (Trades: every row replaced by the
  /// KL-maximising x'). Every returned image lies within ε (L∞) of its clean
  /// row and inside the pixel range. The attack runs with the model in eval
  /// mode, restores the previous mode, and computes no parameter gradients.
  /// Not thread-safe (it advances the trainer's random generator).
  /// @throws parry::OptionError on bad shapes, labels or pixel values.
  TrainingBatch adversarial_batch(Model& model, const torch::Tensor& x, const torch::Tensor& y);

  /// The method's training loss on a clean batch, differentiable in the
  /// model's parameters, evaluated in the model's current mode (set train
  /// mode in your loop): cross-entropy on adversarial_batch() for Pgd and
  /// FastFgsm; CE(f(x), y) + β · KL(f(x) ‖ f(x')) (mean over the batch) for Trades.
  torch::Tensor loss(Model& model, const torch::Tensor& x, const torch::Tensor& y);

  /// Trains `model` (made from a torch::nn module) on `train` with the
  /// configured method and schedule; after each epoch measures clean and
  /// PGD accuracy on the first eval_samples of `held_out` (may be empty when
  /// eval_samples is 0) and writes a checkpoint (model parameters and
  /// buffers, optimizer state, epoch, random generator states, seed and a
  /// fingerprint of the options and data) atomically. With resume() and an
  /// existing checkpoint it restores all of that and continues: the final
  /// parameters equal an uninterrupted run's bit for bit (same seed, same
  /// thread count). Leaves the model in eval mode.
  /// @throws parry::OptionError on bad data or a checkpoint written with other options/data;
  ///         parry::IoError on a corrupt or unreadable checkpoint.
  AdversarialTrainingSummary fit(Model& model, const data::LabeledImages& train, const data::LabeledImages& held_out,
                                 const std::function<void(const EpochReport&)>& on_epoch = {});

  /// Where fit() keeps its checkpoint inside `dir`.
  static std::string checkpoint_path(const std::string& dir);

  const AdversarialTrainerOptions& options() const { return options_; }

 private:
  // The method's examples for x, started at x + start (start drawn by start_noise()).
  torch::Tensor attack(Model& model, const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& start);
  // The method's random starts for `rows` images of x's shape, from generator_.
  torch::Tensor start_noise(int64_t rows, const torch::Tensor& x);
  // adversarial_batch() for the rows [begin, begin + x.size(0)) of a global
  // batch of `global_rows`: every random draw is made for the global batch,
  // so every rank's generator stays in step and each row gets the start it
  // would get in one process.
  TrainingBatch shard_batch(Model& model, const torch::Tensor& x, const torch::Tensor& y, int64_t global_rows,
                            int64_t begin);
  torch::Tensor batch_loss(Model& model, const TrainingBatch& batch, const torch::Tensor& x);

  AdversarialTrainerOptions options_;
  torch::Generator generator_;
};

}  // namespace parry::train

// train::AdversarialTrainer: PGD (Madry et al. 2018), fast FGSM (Wong et al. 2020) and TRADES (Zhang et al. 2019)
// adversarial training, as a hook and as a resumable fit().
#include "parry/train/adversarial_trainer.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <sstream>

#include "parry/attack/pgd.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detail/files.hpp"
#include "parry/detail/generator.hpp"
#include "parry/detail/require.hpp"
#include "train/checkpoint.hpp"
#include "train/support.hpp"

namespace parry::train {

using namespace detail;
using parry::detail::require;

const char* to_string(AdversarialMethod method) {
  switch (method) {
    case AdversarialMethod::Pgd:
      return "pgd";
    case AdversarialMethod::FastFgsm:
      return "fast_fgsm";
    case AdversarialMethod::Trades:
      return "trades";
  }
  return "?";
}

AdversarialMethod adversarial_method_from_string(const std::string& name) {
  if (name == "pgd") return AdversarialMethod::Pgd;
  if (name == "fast_fgsm") return AdversarialMethod::FastFgsm;
  if (name == "trades") return AdversarialMethod::Trades;
  throw OptionError("adversarial training method must be pgd, fast_fgsm or trades, but got '" + name + "'");
}

namespace {
constexpr const char* kOpt = "AdversarialTrainerOptions::";
}

AdversarialTrainerOptions& AdversarialTrainerOptions::method(AdversarialMethod m) {
  method_ = m;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::epsilon(double v) {
  require(std::isfinite(v) && v > 0, std::string(kOpt) + "epsilon", "must be positive and finite", v);
  epsilon_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::steps(int64_t v) {
  require(v >= 1, std::string(kOpt) + "steps", "must be at least 1", v);
  steps_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::step_size(double v) {
  require(std::isfinite(v) && v > 0, std::string(kOpt) + "step_size", "must be positive and finite", v);
  step_size_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::adversarial_fraction(double v) {
  require(v >= 0 && v <= 1, std::string(kOpt) + "adversarial_fraction", "must be in [0, 1]", v);
  adversarial_fraction_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::trades_beta(double v) {
  require(std::isfinite(v) && v >= 0, std::string(kOpt) + "trades_beta", "must be non-negative and finite", v);
  trades_beta_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::pixel_range(double clip_min, double clip_max) {
  require(std::isfinite(clip_min) && std::isfinite(clip_max) && clip_min < clip_max, std::string(kOpt) + "pixel_range",
          "must be finite with clip_min < clip_max", std::to_string(clip_min) + ".." + std::to_string(clip_max));
  clip_min_ = clip_min;
  clip_max_ = clip_max;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::epochs(int64_t v) {
  require(v >= 1, std::string(kOpt) + "epochs", "must be at least 1", v);
  epochs_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::batch_size(int64_t v) {
  require(v >= 1, std::string(kOpt) + "batch_size", "must be at least 1", v);
  batch_size_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::optimizer(OptimizerKind k) {
  optimizer_ = k;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::learning_rate(double v) {
  require(std::isfinite(v) && v > 0, std::string(kOpt) + "learning_rate", "must be positive", v);
  learning_rate_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::momentum(double v) {
  require(v >= 0 && v < 1, std::string(kOpt) + "momentum", "must be in [0, 1)", v);
  momentum_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::weight_decay(double v) {
  require(std::isfinite(v) && v >= 0, std::string(kOpt) + "weight_decay", "must be non-negative", v);
  weight_decay_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::schedule(LrSchedule s) {
  schedule_ = s;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::final_lr_fraction(double v) {
  require(v > 0 && v <= 1, std::string(kOpt) + "final_lr_fraction", "must be in (0, 1]", v);
  final_lr_fraction_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::step_epochs(std::vector<int64_t> epochs, double gamma) {
  for (const int64_t e : epochs) require(e >= 1, std::string(kOpt) + "step_epochs", "milestones must be >= 1", e);
  require(gamma > 0 && gamma <= 1, std::string(kOpt) + "step_epochs", "gamma must be in (0, 1]", gamma);
  step_epochs_ = std::move(epochs);
  step_gamma_ = gamma;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::seed(uint64_t v) {
  seed_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::eval_samples(int64_t v) {
  require(v >= 0, std::string(kOpt) + "eval_samples", "must be non-negative", v);
  eval_samples_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::eval_steps(int64_t v) {
  require(v >= 1, std::string(kOpt) + "eval_steps", "must be at least 1", v);
  eval_steps_ = v;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::checkpoint_dir(std::string dir) {
  checkpoint_dir_ = std::move(dir);
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::resume(bool on) {
  resume_ = on;
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::on_progress(std::function<void(const StepProgress&)> f) {
  on_progress_ = std::move(f);
  return *this;
}
AdversarialTrainerOptions& AdversarialTrainerOptions::process_group(std::shared_ptr<ProcessGroup> group) {
  process_group_ = std::move(group);
  return *this;
}

double AdversarialTrainerOptions::step_size() const {
  if (step_size_ > 0) return step_size_;
  if (method_ == AdversarialMethod::FastFgsm) return 1.25 * epsilon_;
  return 2.5 * epsilon_ / static_cast<double>(steps_);
}

double AdversarialTrainerOptions::learning_rate_at(int64_t step, int64_t total_steps, int64_t epoch) const {
  switch (schedule_) {
    case LrSchedule::Cosine:
      return cosine(learning_rate_, final_lr_fraction_, step, total_steps);
    case LrSchedule::Step: {
      double lr = learning_rate_;
      for (const int64_t milestone : step_epochs_) {
        if (epoch > milestone) lr *= step_gamma_;
      }
      return lr;
    }
    case LrSchedule::Constant:
      return learning_rate_;
  }
  return learning_rate_;
}

std::function<void(const EpochReport&)> epoch_printer() {
  return [](const EpochReport& r) {
    if (r.clean_accuracy >= 0) {
      std::fprintf(stderr, "epoch %lld: loss %.4f, lr %.2e, %.1f s; held-out clean %.2f%%, PGD %.2f%%\n",
                   static_cast<long long>(r.epoch), r.train_loss, r.learning_rate, r.seconds, 100 * r.clean_accuracy,
                   100 * r.adversarial_accuracy);
    } else {
      std::fprintf(stderr, "epoch %lld: loss %.4f, lr %.2e, %.1f s\n", static_cast<long long>(r.epoch), r.train_loss,
                   r.learning_rate, r.seconds);
    }
    std::fflush(stderr);
  };
}

AdversarialTrainer::AdversarialTrainer(AdversarialTrainerOptions options)
    : options_(std::move(options)), generator_(at::detail::createCPUGenerator(options_.seed())) {
  if (options_.method() == AdversarialMethod::Trades && options_.adversarial_fraction() != 1.0) {
    throw OptionError(std::string("AdversarialTrainer: TRADES uses clean and adversarial inputs in one loss; "
                                  "adversarial_fraction must be 1, but got ") +
                      std::to_string(options_.adversarial_fraction()));
  }
  for (const int64_t milestone : options_.step_epochs()) {
    require(milestone <= options_.epochs(), "AdversarialTrainer",
            "step_epochs milestones must not exceed epochs = " + std::to_string(options_.epochs()), milestone);
  }
}

torch::Tensor AdversarialTrainer::start_noise(int64_t rows, const torch::Tensor& x) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = rows;
  const auto dtype = torch::TensorOptions().dtype(x.scalar_type());
  // Drawn on the CPU from the checkpointed generator (then moved to x's
  // device by pgd), so a resumed run continues its stream.
  if (options_.method() == AdversarialMethod::Trades) {
    return 0.001 * torch::randn(shape, generator_, dtype);  // Zhang et al.: x + 0.001·N(0, I)
  }
  return (torch::rand(shape, generator_, dtype) * 2 - 1) * options_.epsilon();  // uniform in the ε-ball
}

torch::Tensor AdversarialTrainer::attack(Model& model, const torch::Tensor& x, const torch::Tensor& y,
                                         const torch::Tensor& start) {
  const auto& o = options_;
  attack::GradientSettings settings;
  settings.clip_min = o.clip_min();
  settings.clip_max = o.clip_max();
  auto pgd_options = attack::PgdOptions(o.epsilon())
                         .step_size(o.step_size())
                         .settings(settings)
                         .start_perturbation(start)
                         .last_iterate(true);
  switch (o.method()) {
    case AdversarialMethod::Pgd:  // Madry et al.: uniform start, `steps` sign steps
      pgd_options.steps(o.steps());
      break;
    case AdversarialMethod::FastFgsm:  // Wong et al.: uniform start, one sign step of α
      pgd_options.steps(1);
      break;
    case AdversarialMethod::Trades:  // Zhang et al.: start at x + 0.001·N(0, I), ascend KL(p(x) ‖ p(x'))
      pgd_options.steps(o.steps()).loss(attack::PgdLoss::KlToClean);
      break;
  }
  return attack::pgd(attack::differentiable(model), x, y, pgd_options).adversarial;
}

TrainingBatch AdversarialTrainer::adversarial_batch(Model& model, const torch::Tensor& x, const torch::Tensor& y) {
  check_data("AdversarialTrainer::adversarial_batch", x, y);
  check_pixel_range("AdversarialTrainer::adversarial_batch", x, options_.clip_min(), options_.clip_max());
  ModeGuard eval_mode(model, /*training=*/false);
  check_labels_below("AdversarialTrainer::adversarial_batch", y, class_count(model, x));  // eval mode: no copy
  return shard_batch(model, x, y, x.size(0), 0);
}

TrainingBatch AdversarialTrainer::shard_batch(Model& model, const torch::Tensor& x, const torch::Tensor& y,
                                              int64_t global_rows, int64_t begin) {
  ModeGuard eval_mode(model, /*training=*/false);
  const int64_t n = x.size(0);
  const int64_t end = begin + n;
  const auto k = static_cast<int64_t>(std::llround(options_.adversarial_fraction() * static_cast<double>(global_rows)));
  TrainingBatch batch;
  batch.labels = y;
  if (k == 0) {
    batch.images = x.detach();
    batch.adversarial = torch::zeros({n}, torch::kBool);
    return batch;
  }
  if (k == global_rows) {
    const torch::Tensor start = start_noise(global_rows, x).slice(0, begin, end);
    batch.images = n > 0 ? attack(model, x, y, start) : x.detach();
    batch.adversarial = torch::ones({n}, torch::kBool);
    return batch;
  }
  // The k adversarial rows of the global batch (sorted), then their starts;
  // this shard takes the rows inside [begin, end).
  const torch::Tensor rows = std::get<0>(torch::randperm(global_rows, generator_, torch::kInt64).slice(0, 0, k).sort());
  const torch::Tensor starts = start_noise(k, x);
  const torch::Tensor mine = (rows >= begin).logical_and(rows < end).nonzero().flatten();
  const torch::Tensor local_rows = (rows.index_select(0, mine) - begin).to(x.device());
  batch.images = x.detach().clone();
  batch.adversarial = torch::zeros({n}, torch::kBool);
  if (local_rows.numel() > 0) {
    const torch::Tensor adv =
        attack(model, x.index_select(0, local_rows), y.index_select(0, local_rows), starts.index_select(0, mine));
    batch.images.index_copy_(0, local_rows, adv);
    batch.adversarial.index_fill_(0, local_rows.cpu(), true);
  }
  return batch;
}

torch::Tensor AdversarialTrainer::batch_loss(Model& model, const TrainingBatch& batch, const torch::Tensor& x) {
  if (options_.method() != AdversarialMethod::Trades) {
    return torch::nn::functional::cross_entropy(model.logits(batch.images), batch.labels);
  }
  const torch::Tensor clean_logits = model.logits(x);
  const torch::Tensor adv_logits = model.logits(batch.images);
  const torch::Tensor log_clean = torch::log_softmax(clean_logits, 1);
  const torch::Tensor kl = (log_clean.exp() * (log_clean - torch::log_softmax(adv_logits, 1))).sum(1).mean();
  return torch::nn::functional::cross_entropy(clean_logits, batch.labels) + options_.trades_beta() * kl;
}

torch::Tensor AdversarialTrainer::loss(Model& model, const torch::Tensor& x, const torch::Tensor& y) {
  return batch_loss(model, adversarial_batch(model, x, y), x);
}

std::string AdversarialTrainer::checkpoint_path(const std::string& dir) {
  return (std::filesystem::path(dir) / "checkpoint.pt").string();
}

AdversarialTrainingSummary AdversarialTrainer::fit(Model& model, const data::LabeledImages& train,
                                                   const data::LabeledImages& held_out,
                                                   const std::function<void(const EpochReport&)>& on_epoch) {
  const auto& o = options_;
  check_data("AdversarialTrainer::fit", train.images, train.labels);
  check_trainable("AdversarialTrainer::fit", model);
  check_pixel_range("AdversarialTrainer::fit", train.images, o.clip_min(), o.clip_max());
  const int64_t classes = class_count(model, train.images);
  check_labels_below("AdversarialTrainer::fit", train.labels, classes);
  int64_t eval_n = 0;
  if (o.eval_samples() > 0) {
    check_data("AdversarialTrainer::fit (held-out data)", held_out.images, held_out.labels);
    check_pixel_range("AdversarialTrainer::fit (held-out data)", held_out.images, o.clip_min(), o.clip_max());
    check_labels_below("AdversarialTrainer::fit (held-out data)", held_out.labels, classes);
    eval_n = std::min(o.eval_samples(), held_out.images.size(0));
  }
  EvalOnExit leave_in_eval_mode(model);
  const auto start = std::chrono::steady_clock::now();
  const OptimizerFactory make_optimizer =
      [&o](const std::vector<torch::Tensor>& parameters) -> std::unique_ptr<torch::optim::Optimizer> {
    if (o.optimizer() == OptimizerKind::Adam) {
      return std::make_unique<torch::optim::Adam>(
          parameters, torch::optim::AdamOptions(o.learning_rate()).weight_decay(o.weight_decay()));
    }
    return std::make_unique<torch::optim::SGD>(
        parameters, torch::optim::SGDOptions(o.learning_rate()).momentum(o.momentum()).weight_decay(o.weight_decay()));
  };
  const DataParallel parallel(o.process_group());
  parallel.synchronise(model);  // before the optimizer sees the parameters
  std::unique_ptr<torch::optim::Optimizer> optimizer = make_optimizer(model.parameters());
  generator_ = at::detail::createCPUGenerator(o.seed());
  torch::manual_seed(o.seed());  // dropout masks draw from the default generator

  AdversarialTrainingSummary summary;
  std::vector<EpochReport> history;
  std::string checkpoint;
  std::string signature;
  double previous_seconds = 0;
  if (!o.checkpoint_dir().empty()) {
    std::error_code ec;
    std::filesystem::create_directories(o.checkpoint_dir(), ec);
    if (ec) {
      throw IoError("could not create the checkpoint directory", o.checkpoint_dir() + ": " + ec.message());
    }
    checkpoint = checkpoint_path(o.checkpoint_dir());
    signature = training_signature(o, train);
    // A checkpoint continues only with the world size that wrote it: the
    // shards, and so the sums of floating-point gradients, depend on it.
    if (parallel.distributed()) signature += "\nworld_size=" + std::to_string(parallel.world_size());
    if (o.resume() && parry::detail::file_exists(checkpoint)) {
      const CheckpointContents restored =
          restore_checkpoint(checkpoint, signature, o.epochs(), model, make_optimizer, optimizer, generator_);
      history = restored.history;
      previous_seconds = restored.seconds;
      summary.resumed_from_epoch = restored.epoch;
    }
  }
  if (parallel.distributed()) {
    // Every rank must resume from the same epoch (the checkpoint directory
    // is shared, or copied to every machine).
    torch::Tensor epochs = torch::zeros({parallel.world_size()}, torch::kFloat64);
    epochs[parallel.rank()] = static_cast<double>(summary.resumed_from_epoch);
    parallel.group()->all_reduce_sum(epochs);
    const auto [lowest, highest] = torch::aminmax(epochs);
    if (lowest.item<double>() != highest.item<double>()) {
      throw DistributedError("AdversarialTrainer::fit: the ranks found different checkpoints in '" +
                             o.checkpoint_dir() + "' (resumed epochs " + c10::str(epochs.to(torch::kInt64)) +
                             "); the checkpoint directory must be shared by every rank or copied to each");
    }
  }

  const int64_t n = train.images.size(0);
  const int64_t steps_per_epoch = (n + o.batch_size() - 1) / o.batch_size();
  const int64_t total_steps = steps_per_epoch * o.epochs();
  for (int64_t epoch = summary.resumed_from_epoch + 1; epoch <= o.epochs(); ++epoch) {
    const auto epoch_start = std::chrono::steady_clock::now();
    model.set_training(true);
    parallel.begin_epoch(o.seed(), epoch);
    const torch::Tensor order = torch::randperm(n, generator_, torch::kInt64);
    double loss_sum = 0;
    int64_t seen = 0;
    double lr = o.learning_rate();
    int64_t step = (epoch - 1) * steps_per_epoch;
    parry::detail::for_each_chunk(n, o.batch_size(), [&](int64_t begin, int64_t end) {
      lr = o.learning_rate_at(step, total_steps, epoch);
      set_learning_rate(*optimizer, lr);
      const BatchRows rows = parallel.rows(order.slice(0, begin, end), generator_);
      loss_sum += parallel.step(model, *optimizer, rows, [&](const BatchRows& r) {
        const torch::Tensor x = train.images.index_select(0, r.shard());
        const torch::Tensor y = train.labels.index_select(0, r.shard());
        // Every rank draws the whole batch's random starts, also for an empty shard.
        const TrainingBatch batch = shard_batch(model, x, y, r.index.size(0), r.begin);
        return r.rows() > 0 ? batch_loss(model, batch, x) : torch::Tensor();
      });
      seen += end - begin;
      if (o.on_progress()) {
        o.on_progress()(StepProgress{epoch, o.epochs(), seen, n, loss_sum / static_cast<double>(seen),
                                     previous_seconds + seconds_since(start)});
      }
      ++step;
    });
    model.set_training(false);
    EpochReport report;
    report.epoch = epoch;
    report.train_loss = loss_sum / static_cast<double>(n);
    report.learning_rate = lr;
    report.seconds = seconds_since(epoch_start);
    if (eval_n > 0) {
      // Each rank evaluates its shard of the held-out subset.
      const auto [lo, hi] = shard_of_batch(eval_n, parallel.rank(), parallel.world_size());
      const torch::Tensor ex = held_out.images.slice(0, lo, hi);
      const torch::Tensor ey = held_out.labels.slice(0, lo, hi);
      const double correct =
          hi > lo ? static_cast<double>(std::llround(accuracy(model, ex, ey) * static_cast<double>(hi - lo))) : 0.0;
      report.clean_accuracy = parallel.sum(correct) / static_cast<double>(eval_n);
      attack::GradientSettings settings;
      settings.clip_min = o.clip_min();
      settings.clip_max = o.clip_max();
      settings.seed = o.seed() + static_cast<uint64_t>(epoch);
      const auto pgd_options = attack::PgdOptions(o.epsilon()).steps(o.eval_steps()).settings(settings);
      const auto f = attack::differentiable(model);
      int64_t robust = 0;
      parry::detail::for_each_chunk(hi - lo, 500, [&](int64_t begin, int64_t end) {
        const auto r = attack::pgd(f, ex.slice(0, begin, end), ey.slice(0, begin, end), pgd_options);
        robust += (~r.success).sum().item<int64_t>();
      });
      report.adversarial_accuracy = parallel.sum(static_cast<double>(robust)) / static_cast<double>(eval_n);
    }
    history.push_back(report);
    if (!checkpoint.empty() && parallel.rank() == 0) {  // rank 0 alone writes (atomically)
      save_checkpoint(checkpoint, signature, epoch, previous_seconds + seconds_since(start), model, *optimizer,
                      generator_, history);
    }
    if (on_epoch) on_epoch(report);
  }
  model.set_training(false);
  summary.epochs = history;
  summary.seconds = seconds_since(start);
  return summary;
}

}  // namespace parry::train

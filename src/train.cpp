// Model-improvement training: defensive distillation, adversarial training
// (PGD, fast FGSM, TRADES) with checkpoints and resume, and learned detectors.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>

#include "parry/attack/attack.hpp"
#include "parry/detail/files.hpp"
#include "parry/detail/require.hpp"
#include "parry/train/adversarial_trainer.hpp"
#include "parry/train/detector_trainer.hpp"
#include "parry/train/distillation.hpp"

namespace parry::train {

namespace {

using detail::require;

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

double cosine(double lr, double final_fraction, int64_t step, int64_t total_steps) {
  const double progress = static_cast<double>(step) / static_cast<double>(std::max<int64_t>(total_steps, 1));
  return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + std::cos(M_PI * progress)));
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

// ------------------------------------------------ model state as bytes

/// A temporary file path that is removed when the object goes away.
class TempFile {
 public:
  TempFile() {
    std::string pattern = (std::filesystem::temp_directory_path() / "parry-state-XXXXXX").string();
    const int fd = ::mkstemp(pattern.data());
    if (fd < 0) throw IoError("could not create a temporary file", "mkstemp failed for " + pattern);
    ::close(fd);
    path_ = pattern;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

/// The bytes Model::save writes (parameters and buffers), as a uint8 tensor.
torch::Tensor model_state_tensor(const Model& model) {
  TempFile tmp;
  model.save(tmp.path());
  std::ifstream in(tmp.path(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw IoError("could not read back the model state", "reading " + tmp.path());
  torch::Tensor out = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(out.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  return out;
}

/// Loads what model_state_tensor() produced into `model` (unchanged on error).
void load_model_state_tensor(Model& model, const torch::Tensor& state, const std::string& public_message,
                             const std::string& where) {
  if (!state.defined() || state.dim() != 1 || state.scalar_type() != torch::kUInt8 || state.numel() == 0) {
    throw IoError(public_message, where + ": the model state is missing or malformed");
  }
  TempFile tmp;
  {
    const torch::Tensor bytes = state.contiguous();
    std::ofstream out(tmp.path(), std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), static_cast<std::streamsize>(bytes.numel()));
    if (!out) throw IoError("could not write a temporary file", "writing " + tmp.path());
  }
  try {
    model.load(tmp.path());
  } catch (const Error& e) {
    throw IoError(public_message, where + ": " + e.detail());
  }
}

// ------------------------------------------------ a generic training loop

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
    for (int64_t begin = 0; begin < n; begin += s.batch_size, ++step) {
      set_learning_rate(optimizer, cosine(s.learning_rate, s.final_lr_fraction, step, total_steps));
      const torch::Tensor index = order.slice(0, begin, begin + s.batch_size);
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
    }
    last_loss = loss_sum / static_cast<double>(n);
  }
  model.set_training(false);
  return last_loss;
}

}  // namespace

// ================================================================ Distillation

DistillationOptions& DistillationOptions::temperature(double t) {
  require(std::isfinite(t) && t > 0, "DistillationOptions::temperature", "must be positive and finite", t);
  temperature_ = t;
  return *this;
}
DistillationOptions& DistillationOptions::epochs(int64_t v) {
  require(v >= 1, "DistillationOptions::epochs", "must be at least 1", v);
  epochs_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::batch_size(int64_t v) {
  require(v >= 1, "DistillationOptions::batch_size", "must be at least 1", v);
  batch_size_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::learning_rate(double v) {
  require(std::isfinite(v) && v > 0, "DistillationOptions::learning_rate", "must be positive", v);
  learning_rate_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::final_lr_fraction(double v) {
  require(v > 0 && v <= 1, "DistillationOptions::final_lr_fraction", "must be in (0, 1]", v);
  final_lr_fraction_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::weight_decay(double v) {
  require(std::isfinite(v) && v >= 0, "DistillationOptions::weight_decay", "must be non-negative", v);
  weight_decay_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::seed(uint64_t v) {
  seed_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::on_progress(std::function<void(const StepProgress&)> f) {
  on_progress_ = std::move(f);
  return *this;
}

torch::Tensor soft_labels(const Model& teacher, const torch::Tensor& images, double temperature, int64_t batch_size) {
  check_images("soft_labels", images);
  require(std::isfinite(temperature) && temperature > 0, "soft_labels", "temperature must be positive", temperature);
  require(batch_size >= 1, "soft_labels", "batch_size must be at least 1", batch_size);
  // A teacher in train mode is copied, not switched: it may be serving.
  const Model eval_teacher = eval_view(teacher);
  c10::InferenceMode inference;
  std::vector<torch::Tensor> parts;
  for (int64_t begin = 0; begin < images.size(0); begin += batch_size) {
    parts.push_back(torch::softmax(eval_teacher.logits(images.slice(0, begin, begin + batch_size)) / temperature, 1));
  }
  return torch::cat(parts).to(torch::kFloat32);
}

torch::Tensor soft_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets, double temperature) {
  if (!logits.defined() || logits.dim() != 2 || !targets.defined() || targets.sizes() != logits.sizes()) {
    throw OptionError("soft_cross_entropy: logits and targets must both be N×K of the same shape");
  }
  return -(targets * torch::log_softmax(logits / temperature, 1)).sum(1).mean();
}

namespace {

bool share_parameters(const Model& a, const Model& b) {
  const auto pa = a.parameters();
  const auto pb = b.parameters();
  for (const auto& x : pa) {
    for (const auto& y : pb) {
      if (x.is_same(y)) return true;
    }
  }
  return false;
}

LoopSettings loop_settings(const DistillationOptions& o) {
  return LoopSettings{o.epochs(),       o.batch_size(), o.learning_rate(), o.final_lr_fraction(),
                      o.weight_decay(), o.seed(),       &o.on_progress()};
}

}  // namespace

double Distillation::train_student(const Model& teacher, Model& student, const torch::Tensor& images) const {
  check_images("Distillation::train_student", images);
  check_trainable("Distillation::train_student", student);
  if (share_parameters(teacher, student)) {
    throw OptionError("Distillation: teacher and student must be different modules");
  }
  const double t = options_.temperature();
  const torch::Tensor targets = soft_labels(teacher, images, t);
  return run_training(student, images.size(0), loop_settings(options_), [&](const torch::Tensor& index) {
    return soft_cross_entropy(student.logits(images.index_select(0, index)), targets.index_select(0, index), t);
  });
}

DistillationSummary Distillation::fit(Model& teacher, Model& student, const torch::Tensor& images,
                                      const torch::Tensor& labels) const {
  check_data("Distillation::fit", images, labels);
  check_trainable("Distillation::fit (teacher)", teacher);
  check_trainable("Distillation::fit (student)", student);
  if (share_parameters(teacher, student)) {
    throw OptionError("Distillation: teacher and student must be different modules");
  }
  check_labels_below("Distillation::fit", labels, class_count(teacher, images));
  const auto start = std::chrono::steady_clock::now();
  const double t = options_.temperature();
  DistillationSummary summary;
  // Stage 1: the teacher learns the hard labels through softmax(F(x) / T).
  summary.teacher_loss =
      run_training(teacher, images.size(0), loop_settings(options_), [&](const torch::Tensor& index) {
        return torch::nn::functional::cross_entropy(teacher.logits(images.index_select(0, index)) / t,
                                                    labels.index_select(0, index));
      });
  // Stages 2 and 3: soft labels at T, the student learns them at T.
  summary.student_loss = train_student(teacher, student, images);
  {
    c10::InferenceMode inference;
    int64_t agree = 0;
    for (int64_t begin = 0; begin < images.size(0); begin += 512) {
      const torch::Tensor x = images.slice(0, begin, begin + 512);
      agree += teacher.logits(x).argmax(1).eq(student.logits(x).argmax(1)).sum().item<int64_t>();
    }
    summary.label_agreement = static_cast<double>(agree) / static_cast<double>(images.size(0));
  }
  summary.seconds = seconds_since(start);
  return summary;
}

// ================================================================ AdversarialTrainer options

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

// ================================================================ AdversarialTrainer

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

namespace {

/// Gradient of `loss_of(input)` with respect to the input only.
torch::Tensor input_gradient(const std::function<torch::Tensor(const torch::Tensor&)>& loss_of,
                             const torch::Tensor& x) {
  torch::AutoGradMode enable_grad(true);
  const torch::Tensor input = x.detach().requires_grad_(true);
  const torch::Tensor loss = loss_of(input);
  return torch::autograd::grad({loss}, {input}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                               /*create_graph=*/false)[0];
}

/// The L∞ ball around x intersected with the pixel range, as per-pixel bounds.
struct Box {
  torch::Tensor lower, upper;
  Box(const torch::Tensor& x, double eps, double lo, double hi)
      : lower((x - eps).clamp_min(lo)), upper((x + eps).clamp_max(hi)) {}
  torch::Tensor project(const torch::Tensor& p) const { return torch::min(torch::max(p, lower), upper); }
};

}  // namespace

torch::Tensor AdversarialTrainer::attack(Model& model, const torch::Tensor& x, const torch::Tensor& y) {
  const auto& o = options_;
  const double eps = o.epsilon();
  const double alpha = o.step_size();
  const double lo = o.clip_min();
  const double hi = o.clip_max();
  const torch::Tensor x0 = x.detach();
  torch::NoGradGuard no_grad_outside_gradients;
  const Box box(x0, eps, lo, hi);
  auto ce_sum = [&](const torch::Tensor& input) {
    return torch::nn::functional::cross_entropy(
        model.logits(input), y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  };
  torch::Tensor adv;
  switch (o.method()) {
    case AdversarialMethod::Pgd:
    case AdversarialMethod::FastFgsm: {
      // Uniform random start in the ε-ball (both Madry et al. and Wong et al.).
      adv = box.project(x0 + (torch::rand(x0.sizes(), generator_, x0.options()) * 2 - 1) * eps);
      const int64_t steps = o.method() == AdversarialMethod::Pgd ? o.steps() : 1;
      for (int64_t s = 0; s < steps; ++s) {
        const torch::Tensor grad = input_gradient(ce_sum, adv);
        adv = box.project(adv + alpha * grad.sign());
      }
      break;
    }
    case AdversarialMethod::Trades: {
      const torch::Tensor clean_probability = torch::softmax(model.logits(x0), 1);
      // KL(p_clean ‖ p_adv) summed; its gradient in x' is that of −Σ p_clean log p_adv.
      auto kl = [&](const torch::Tensor& input) {
        const torch::Tensor log_adv = torch::log_softmax(model.logits(input), 1);
        return (clean_probability * (torch::log(clean_probability.clamp_min(1e-12)) - log_adv)).sum();
      };
      adv = box.project(x0 + 0.001 * torch::randn(x0.sizes(), generator_, x0.options()));
      for (int64_t s = 0; s < o.steps(); ++s) {
        const torch::Tensor grad = input_gradient(kl, adv);
        adv = box.project(adv + alpha * grad.sign());
      }
      break;
    }
  }
  return adv.detach();
}

TrainingBatch AdversarialTrainer::adversarial_batch(Model& model, const torch::Tensor& x, const torch::Tensor& y) {
  check_data("AdversarialTrainer::adversarial_batch", x, y);
  check_pixel_range("AdversarialTrainer::adversarial_batch", x, options_.clip_min(), options_.clip_max());
  ModeGuard eval_mode(model, /*training=*/false);
  check_labels_below("AdversarialTrainer::adversarial_batch", y, class_count(model, x));  // eval mode: no copy
  const int64_t n = x.size(0);
  const auto k = static_cast<int64_t>(std::llround(options_.adversarial_fraction() * static_cast<double>(n)));
  TrainingBatch batch;
  batch.labels = y;
  if (k == 0) {
    batch.images = x.detach();
    batch.adversarial = torch::zeros({n}, torch::kBool);
    return batch;
  }
  if (k == n) {
    batch.images = attack(model, x, y);
    batch.adversarial = torch::ones({n}, torch::kBool);
    return batch;
  }
  const torch::Tensor rows = std::get<0>(torch::randperm(n, generator_, torch::kInt64).slice(0, 0, k).sort());
  const torch::Tensor adv = attack(model, x.index_select(0, rows), y.index_select(0, rows));
  batch.images = x.detach().clone().index_copy_(0, rows, adv);
  batch.adversarial = torch::zeros({n}, torch::kBool).index_fill_(0, rows, true);
  return batch;
}

torch::Tensor AdversarialTrainer::loss(Model& model, const torch::Tensor& x, const torch::Tensor& y) {
  const TrainingBatch batch = adversarial_batch(model, x, y);
  if (options_.method() != AdversarialMethod::Trades) {
    return torch::nn::functional::cross_entropy(model.logits(batch.images), batch.labels);
  }
  const torch::Tensor clean_logits = model.logits(x);
  const torch::Tensor adv_logits = model.logits(batch.images);
  const torch::Tensor log_clean = torch::log_softmax(clean_logits, 1);
  const torch::Tensor kl = (log_clean.exp() * (log_clean - torch::log_softmax(adv_logits, 1))).sum(1).mean();
  return torch::nn::functional::cross_entropy(clean_logits, y) + options_.trades_beta() * kl;
}

std::string AdversarialTrainer::checkpoint_path(const std::string& dir) {
  return (std::filesystem::path(dir) / "checkpoint.pt").string();
}

namespace {

constexpr const char* kCheckpointFormat = "parry-adversarial-checkpoint-v1";
constexpr int64_t kHistoryColumns = 6;

/// Everything that must match for a checkpoint to be continued.
std::string training_signature(const AdversarialTrainerOptions& o, const data::LabeledImages& train) {
  std::ostringstream out;
  out.precision(17);
  out << "method=" << to_string(o.method()) << " eps=" << o.epsilon() << " steps=" << o.steps()
      << " alpha=" << o.step_size() << " fraction=" << o.adversarial_fraction() << " beta=" << o.trades_beta()
      << " range=" << o.clip_min() << ".." << o.clip_max() << " epochs=" << o.epochs() << " batch=" << o.batch_size()
      << " optimizer=" << static_cast<int>(o.optimizer()) << " lr=" << o.learning_rate() << " momentum=" << o.momentum()
      << " wd=" << o.weight_decay() << " schedule=" << static_cast<int>(o.schedule())
      << " final=" << o.final_lr_fraction() << " gamma=" << o.step_gamma() << " milestones=";
  for (const int64_t m : o.step_epochs()) out << m << ",";
  out << " seed=" << o.seed() << " eval=" << o.eval_samples() << "/" << o.eval_steps();
  torch::NoGradGuard no_grad;
  // Sums weighted by position, so reordered data is a different data set.
  const int64_t n = train.images.size(0);
  const torch::Tensor position = torch::arange(1, n + 1, torch::kFloat64);
  const torch::Tensor row_sums = train.images.reshape({n, -1}).sum(1, /*keepdim=*/false, torch::kFloat64);
  out << " n=" << n << " shape=" << c10::str(train.images.sizes())
      << " pixels=" << (row_sums * position).sum().item<double>()
      << " labels=" << (train.labels.to(torch::kFloat64) * position).sum().item<double>();
  return out.str();
}

torch::Tensor history_tensor(const std::vector<EpochReport>& history) {
  torch::Tensor t = torch::zeros({static_cast<int64_t>(history.size()), kHistoryColumns}, torch::kFloat64);
  auto a = t.accessor<double, 2>();
  for (size_t i = 0; i < history.size(); ++i) {
    const auto& r = history[i];
    const auto row = static_cast<int64_t>(i);
    a[row][0] = static_cast<double>(r.epoch);
    a[row][1] = r.train_loss;
    a[row][2] = r.clean_accuracy;
    a[row][3] = r.adversarial_accuracy;
    a[row][4] = r.learning_rate;
    a[row][5] = r.seconds;
  }
  return t;
}

std::vector<EpochReport> history_from_tensor(const torch::Tensor& t) {
  std::vector<EpochReport> history;
  auto a = t.accessor<double, 2>();
  for (int64_t i = 0; i < t.size(0); ++i) {
    EpochReport r;
    r.epoch = static_cast<int64_t>(a[i][0]);
    r.train_loss = a[i][1];
    r.clean_accuracy = a[i][2];
    r.adversarial_accuracy = a[i][3];
    r.learning_rate = a[i][4];
    r.seconds = a[i][5];
    history.push_back(r);
  }
  return history;
}

torch::Tensor default_generator_state() {
  auto gen = at::detail::getDefaultCPUGenerator();  // a handle sharing the default generator
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_default_generator_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

struct CheckpointContents {
  int64_t epoch = 0;
  double seconds = 0;
  std::vector<EpochReport> history;
};

void save_checkpoint(const std::string& path, const std::string& signature, int64_t epoch, double seconds,
                     const Model& model, const torch::optim::Optimizer& optimizer, const torch::Generator& generator,
                     const std::vector<EpochReport>& history) {
  detail::atomic_write(path, [&](const std::string& tmp) {
    torch::serialize::OutputArchive archive;
    archive.write("parry_format", c10::IValue(std::string(kCheckpointFormat)));
    archive.write("signature", c10::IValue(signature));
    archive.write("epoch", c10::IValue(epoch));
    archive.write("seconds", c10::IValue(seconds));
    archive.write("model", model_state_tensor(model));
    torch::serialize::OutputArchive optimizer_archive;
    optimizer.save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
    archive.write("generator", generator.get_state());
    archive.write("default_generator", default_generator_state());
    archive.write("history", history_tensor(history));
    archive.save_to(tmp);
  });
}

using OptimizerFactory =
    std::function<std::unique_ptr<torch::optim::Optimizer>(const std::vector<torch::Tensor>& parameters)>;

/// Reads and validates a checkpoint, then restores the model, the generators
/// and `optimizer` (made anew by `make_optimizer` over the model's parameters
/// after the load: a TorchScript model's load replaces its parameter
/// tensors). Nothing is changed if validation fails.
CheckpointContents restore_checkpoint(const std::string& path, const std::string& signature, int64_t max_epoch,
                                      Model& model, const OptimizerFactory& make_optimizer,
                                      std::unique_ptr<torch::optim::Optimizer>& optimizer,
                                      torch::Generator& generator) {
  const std::string corrupt = "training checkpoint is corrupt";
  const std::string where = "checkpoint '" + path + "'";
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw IoError(corrupt, where + ": " + e.what_without_backtrace());
  }
  c10::IValue format, stored_signature, epoch, seconds;
  if (!archive.try_read("parry_format", format) || !format.isString() || format.toStringRef() != kCheckpointFormat) {
    throw IoError("training checkpoint has an unknown format",
                  where + " is not a parry adversarial-training checkpoint");
  }
  if (!archive.try_read("signature", stored_signature) || !stored_signature.isString()) {
    throw IoError(corrupt, where + ": no signature");
  }
  if (stored_signature.toStringRef() != signature) {
    throw OptionError("the training checkpoint was written with different options or data",
                      where + " holds '" + stored_signature.toStringRef() + "', this run is '" + signature +
                          "'; remove it or use another checkpoint_dir");
  }
  torch::Tensor model_state, generator_state, default_state, history;
  if (!archive.try_read("epoch", epoch) || !epoch.isInt() || epoch.toInt() < 1 || epoch.toInt() > max_epoch ||
      !archive.try_read("seconds", seconds) || !seconds.isDouble() || !archive.try_read("model", model_state) ||
      !archive.try_read("generator", generator_state) || !archive.try_read("default_generator", default_state) ||
      !archive.try_read("history", history) || history.dim() != 2 || history.scalar_type() != torch::kFloat64 ||
      history.size(0) != epoch.toInt() || history.size(1) != kHistoryColumns) {
    throw IoError(corrupt, where + ": missing or malformed epoch, seconds, model, generator or history");
  }
  // Validate the generator states on a scratch generator first.
  try {
    torch::Generator scratch = at::detail::createCPUGenerator(0);
    scratch.set_state(generator_state);
    scratch.set_state(default_state);
  } catch (const c10::Error& e) {
    throw IoError(corrupt, where + ": bad generator state: " + e.what_without_backtrace());
  }
  torch::serialize::InputArchive optimizer_archive;
  auto load_optimizer = [&](torch::optim::Optimizer& target) {
    try {
      target.load(optimizer_archive);
    } catch (const c10::Error& e) {
      throw IoError(corrupt, where + ": bad optimizer state: " + e.what_without_backtrace());
    }
  };
  try {
    archive.read("optimizer", optimizer_archive);
  } catch (const c10::Error& e) {
    throw IoError(corrupt, where + ": no optimizer state: " + e.what_without_backtrace());
  }
  {
    // Validate the optimizer state on scratch copies of the parameters first.
    std::vector<torch::Tensor> scratch;
    for (const auto& p : model.parameters()) scratch.push_back(p.detach().clone().requires_grad_(true));
    load_optimizer(*make_optimizer(scratch));
  }
  load_model_state_tensor(model, model_state, corrupt, where);
  optimizer = make_optimizer(model.parameters());
  load_optimizer(*optimizer);
  generator.set_state(generator_state);
  set_default_generator_state(default_state);
  CheckpointContents contents;
  contents.epoch = epoch.toInt();
  contents.seconds = seconds.toDouble();
  contents.history = history_from_tensor(history.contiguous());
  return contents;
}

}  // namespace

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
    if (o.resume() && detail::file_exists(checkpoint)) {
      const CheckpointContents restored =
          restore_checkpoint(checkpoint, signature, o.epochs(), model, make_optimizer, optimizer, generator_);
      history = restored.history;
      previous_seconds = restored.seconds;
      summary.resumed_from_epoch = restored.epoch;
    }
  }

  const int64_t n = train.images.size(0);
  const int64_t steps_per_epoch = (n + o.batch_size() - 1) / o.batch_size();
  const int64_t total_steps = steps_per_epoch * o.epochs();
  for (int64_t epoch = summary.resumed_from_epoch + 1; epoch <= o.epochs(); ++epoch) {
    const auto epoch_start = std::chrono::steady_clock::now();
    model.set_training(true);
    const torch::Tensor order = torch::randperm(n, generator_, torch::kInt64);
    double loss_sum = 0;
    int64_t seen = 0;
    double lr = o.learning_rate();
    int64_t step = (epoch - 1) * steps_per_epoch;
    for (int64_t begin = 0; begin < n; begin += o.batch_size(), ++step) {
      lr = o.learning_rate_at(step, total_steps, epoch);
      set_learning_rate(*optimizer, lr);
      const torch::Tensor index = order.slice(0, begin, begin + o.batch_size());
      const torch::Tensor x = train.images.index_select(0, index);
      const torch::Tensor y = train.labels.index_select(0, index);
      optimizer->zero_grad();
      const torch::Tensor batch_loss = loss(model, x, y);
      batch_loss.backward();
      optimizer->step();
      loss_sum += batch_loss.item<double>() * static_cast<double>(x.size(0));
      seen += x.size(0);
      if (o.on_progress()) {
        o.on_progress()(StepProgress{epoch, o.epochs(), seen, n, loss_sum / static_cast<double>(seen),
                                     previous_seconds + seconds_since(start)});
      }
    }
    model.set_training(false);
    EpochReport report;
    report.epoch = epoch;
    report.train_loss = loss_sum / static_cast<double>(n);
    report.learning_rate = lr;
    report.seconds = seconds_since(epoch_start);
    if (eval_n > 0) {
      const torch::Tensor ex = held_out.images.slice(0, 0, eval_n);
      const torch::Tensor ey = held_out.labels.slice(0, 0, eval_n);
      report.clean_accuracy = accuracy(model, ex, ey);
      attack::GradientSettings settings;
      settings.clip_min = o.clip_min();
      settings.clip_max = o.clip_max();
      settings.seed = o.seed() + static_cast<uint64_t>(epoch);
      const auto pgd_options = attack::PgdOptions(o.epsilon()).steps(o.eval_steps()).settings(settings);
      const auto f = attack::differentiable(model);
      int64_t robust = 0;
      for (int64_t begin = 0; begin < eval_n; begin += 500) {
        const auto r = attack::pgd(f, ex.slice(0, begin, begin + 500), ey.slice(0, begin, begin + 500), pgd_options);
        robust += (~r.success).sum().item<int64_t>();
      }
      report.adversarial_accuracy = static_cast<double>(robust) / static_cast<double>(eval_n);
    }
    history.push_back(report);
    if (!checkpoint.empty()) {
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

// ================================================================ DetectorTrainer

const char* to_string(DetectorKind kind) {
  return kind == DetectorKind::ExtraClass ? "extra_class" : "binary";
}

TrainingAttack fgsm_attack(attack::FgsmOptions options) {
  return {"fgsm", [options](const attack::LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y) {
            return attack::fgsm(f, x, y, options);
          }};
}

TrainingAttack pgd_attack(attack::PgdOptions options) {
  return {options.norm() == attack::Norm::Linf ? "pgd" : "pgd_l2",
          [options](const attack::LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y) {
            return attack::pgd(f, x, y, options);
          }};
}

TrainingAttack carlini_wagner_attack(attack::CarliniWagnerOptions options) {
  return {"cw_l2", [options](const attack::LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y) {
            return attack::carlini_wagner_l2(f, x, y, options);
          }};
}

LearnedDetector::LearnedDetector(const Model& network, DetectorKind kind, std::vector<std::string> trained_on)
    : network_(network.clone()), kind_(kind), trained_on_(std::move(trained_on)) {
  check_trainable("LearnedDetector", network_);
  network_.set_training(false);
}

std::string LearnedDetector::describe() const {
  std::string attacks;
  for (const auto& a : trained_on_) attacks += (attacks.empty() ? "" : "+") + a;
  std::string out = std::string("LearnedDetector(") + to_string(kind_) + ", trained on " +
                    (attacks.empty() ? std::string("?") : attacks);
  out += is_calibrated() ? ", threshold=" + std::to_string(threshold()) + ")" : ", uncalibrated)";
  return out;
}

torch::Tensor LearnedDetector::probability(const torch::Tensor& logits) const {
  if (logits.dim() != 2 || logits.size(1) < 2 || (kind_ == DetectorKind::Binary && logits.size(1) != 2)) {
    throw StateError("detector network returned an unexpected shape",
                     "LearnedDetector: logits of shape " + c10::str(logits.sizes()));
  }
  // The adversarial class is the last output in both kinds.
  return torch::softmax(logits.to(torch::kFloat32), 1).select(1, logits.size(1) - 1);
}

torch::Tensor LearnedDetector::score(const DetectorInput& input) const {
  c10::InferenceMode inference;
  return probability(network_.logits(input.batch));
}

torch::Tensor LearnedDetector::differentiable_score(const torch::Tensor& batch, const Model&) const {
  return probability(network_.logits(batch));
}

void LearnedDetector::save_state(torch::serialize::OutputArchive& archive) const {
  archive.write("learned_kind", c10::IValue(std::string(to_string(kind_))));
  std::string names;
  for (const auto& a : trained_on_) names += (names.empty() ? "" : "\n") + a;
  archive.write("learned_attacks", c10::IValue(names));
  archive.write("learned_network", model_state_tensor(network_));
}

void LearnedDetector::load_state(torch::serialize::InputArchive& archive) {
  c10::IValue kind, names;
  torch::Tensor state;
  if (!archive.try_read("learned_kind", kind) || !kind.isString() || !archive.try_read("learned_attacks", names) ||
      !names.isString() || !archive.try_read("learned_network", state)) {
    throw IoError("detector file is corrupt", "learned detector: missing kind, attacks or network");
  }
  if (kind.toStringRef() != to_string(kind_)) {
    throw IoError(
        "detector file belongs to a different detector",
        "learned detector: file holds kind '" + kind.toStringRef() + "', this detector is '" + to_string(kind_) + "'");
  }
  // Load into a copy first so that a mismatch leaves this detector unchanged.
  Model loaded = network_.clone();
  load_model_state_tensor(loaded, state, "detector file does not match the detector network", "learned detector");
  loaded.set_training(false);
  std::vector<std::string> attacks;
  std::istringstream in(names.toStringRef());
  for (std::string line; std::getline(in, line);) attacks.push_back(line);
  network_ = loaded;
  trained_on_ = std::move(attacks);
}

DetectorTrainerOptions& DetectorTrainerOptions::kind(DetectorKind k) {
  kind_ = k;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::add_attack(TrainingAttack a) {
  if (!a.run) throw OptionError("DetectorTrainerOptions::add_attack: the attack '" + a.name + "' has no function");
  require(!a.name.empty() && a.name.find('\n') == std::string::npos, "DetectorTrainerOptions::add_attack",
          "the attack needs a one-line name", "'" + a.name + "'");
  attacks_.push_back(std::move(a));
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::keep_failed(bool on) {
  keep_failed_ = on;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::epochs(int64_t v) {
  require(v >= 1, "DetectorTrainerOptions::epochs", "must be at least 1", v);
  epochs_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::batch_size(int64_t v) {
  require(v >= 1, "DetectorTrainerOptions::batch_size", "must be at least 1", v);
  batch_size_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::learning_rate(double v) {
  require(std::isfinite(v) && v > 0, "DetectorTrainerOptions::learning_rate", "must be positive", v);
  learning_rate_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::attack_batch_size(int64_t v) {
  require(v >= 1, "DetectorTrainerOptions::attack_batch_size", "must be at least 1", v);
  attack_batch_size_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::seed(uint64_t v) {
  seed_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::on_progress(std::function<void(const StepProgress&)> f) {
  on_progress_ = std::move(f);
  return *this;
}

DetectorTrainer::DetectorTrainer(DetectorTrainerOptions options) : options_(std::move(options)) {
  if (options_.attacks().empty()) {
    throw OptionError("DetectorTrainer: add at least one attack with DetectorTrainerOptions::add_attack");
  }
}

data::LabeledImages DetectorTrainer::make_training_set(const Model& target, const data::LabeledImages& clean) const {
  check_data("DetectorTrainer", clean.images, clean.labels);
  // The attacks see the deployed function: BatchNorm running statistics,
  // no dropout, and the caller's model is never written to.
  const Model attacked = eval_view(target);
  const int64_t classes = class_count(attacked, clean.images);
  check_labels_below("DetectorTrainer", clean.labels, classes);
  const int64_t adversarial_label = options_.kind() == DetectorKind::ExtraClass ? classes : 1;
  std::vector<torch::Tensor> images{clean.images};
  std::vector<torch::Tensor> labels{options_.kind() == DetectorKind::ExtraClass ? clean.labels
                                                                                : torch::zeros_like(clean.labels)};
  const auto f = attack::differentiable(attacked);
  for (const auto& a : options_.attacks()) {
    for (int64_t begin = 0; begin < clean.images.size(0); begin += options_.attack_batch_size()) {
      const torch::Tensor x = clean.images.slice(0, begin, begin + options_.attack_batch_size());
      const torch::Tensor y = clean.labels.slice(0, begin, begin + options_.attack_batch_size());
      const attack::AttackResult r = a.run(f, x, y);
      if (!r.adversarial.defined() || r.adversarial.sizes() != x.sizes() || !r.success.defined() ||
          r.success.dim() != 1 || r.success.size(0) != x.size(0)) {
        throw OptionError("DetectorTrainer: the attack '" + a.name + "' returned a batch of another shape");
      }
      const torch::Tensor keep =
          options_.keep_failed() ? torch::ones({x.size(0)}, torch::kBool) : r.success.to(torch::kBool);
      const torch::Tensor rows = keep.nonzero().flatten();
      if (rows.numel() == 0) continue;
      images.push_back(r.adversarial.detach().index_select(0, rows));
      labels.push_back(torch::full({rows.numel()}, adversarial_label, torch::kInt64));
    }
  }
  data::LabeledImages out{torch::cat(images), torch::cat(labels)};
  if (out.images.size(0) == clean.images.size(0)) {
    throw OptionError("DetectorTrainer: no attack succeeded on the training images; nothing to learn from");
  }
  return out;
}

std::shared_ptr<LearnedDetector> DetectorTrainer::fit(const Model& target, Model& network,
                                                      const data::LabeledImages& clean) const {
  check_trainable("DetectorTrainer::fit", network);
  check_data("DetectorTrainer::fit", clean.images, clean.labels);
  // Checked before the (possibly long) attacks run.
  const int64_t expected = options_.kind() == DetectorKind::ExtraClass ? class_count(target, clean.images) + 1 : 2;
  const int64_t outputs = class_count(network, clean.images);
  if (outputs != expected) {
    throw OptionError(std::string("DetectorTrainer: a ") + to_string(options_.kind()) + " detector network needs " +
                      std::to_string(expected) + " outputs, but got " + std::to_string(outputs));
  }
  const data::LabeledImages set = make_training_set(target, clean);
  const LoopSettings settings{options_.epochs(), options_.batch_size(),  options_.learning_rate(), 0.05, 0.0,
                              options_.seed(),   &options_.on_progress()};
  run_training(network, set.images.size(0), settings, [&](const torch::Tensor& index) {
    return torch::nn::functional::cross_entropy(network.logits(set.images.index_select(0, index)),
                                                set.labels.index_select(0, index));
  });
  std::vector<std::string> names;
  for (const auto& a : options_.attacks()) names.push_back(a.name);
  return std::make_shared<LearnedDetector>(network, options_.kind(), std::move(names));
}

}  // namespace parry::train

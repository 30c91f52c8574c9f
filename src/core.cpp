// Compiled part of parry's core: input validation, the preprocessor gradient
// policies, detector calibration and state, the Guard pipeline and the log.
#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <mutex>
#include <sstream>

#include "parry/core/detector.hpp"
#include "parry/core/guard.hpp"
#include "parry/core/input_spec.hpp"
#include "parry/core/log.hpp"
#include "parry/core/preprocessor.hpp"
#include "parry/core/runtime.hpp"
#include "parry/detail/files.hpp"

namespace parry {

// ---------------------------------------------------------------- log

namespace {

std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}

LogSink& log_sink() {
  static LogSink sink = [](LogLevel level, const std::string& message) {
    if (level < LogLevel::Warning) return;
    std::cerr << "[parry] " << (level == LogLevel::Error ? "error: " : "warning: ") << message << '\n';
  };
  return sink;
}

}  // namespace

void set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(log_mutex());
  log_sink() = std::move(sink);
}

void log(LogLevel level, const std::string& message) {
  std::lock_guard<std::mutex> lock(log_mutex());
  if (log_sink()) log_sink()(level, message);
}

// ---------------------------------------------------------------- runtime

RuntimeOptions& RuntimeOptions::threads(int n) {
  if (n < 1) throw OptionError("RuntimeOptions::threads: must be at least 1, but got " + std::to_string(n));
  threads_ = n;
  return *this;
}

RuntimeOptions& RuntimeOptions::keep_freed_memory(bool on) {
  keep_freed_memory_ = on;
  return *this;
}

void configure_runtime(const RuntimeOptions& options) {
  torch::set_num_threads(options.threads());
  if (options.keep_freed_memory()) {
    // 32 MiB is the largest mmap threshold glibc accepts through mallopt.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 64 << 20);
  }
}

// ---------------------------------------------------------------- InputSpec

namespace {

std::string format_value(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

}  // namespace

InputSpec::InputSpec(int64_t channels, int64_t height, int64_t width)
    : channels_(channels), height_(height), width_(width) {
  if (channels <= 0 || height <= 0 || width <= 0) {
    throw OptionError("InputSpec: channels, height and width must be positive, but got " + std::to_string(channels) +
                      "x" + std::to_string(height) + "x" + std::to_string(width));
  }
}

InputSpec& InputSpec::value_range(double min_value, double max_value) {
  if (!std::isfinite(min_value) || !std::isfinite(max_value) || !(min_value < max_value)) {
    throw OptionError("InputSpec::value_range: need finite min < max, but got [" + format_value(min_value) + ", " +
                      format_value(max_value) + "]");
  }
  min_value_ = min_value;
  max_value_ = max_value;
  return *this;
}

InputSpec& InputSpec::max_batch(int64_t max_batch) {
  if (max_batch < 1) {
    throw OptionError("InputSpec::max_batch: must be at least 1, but got " + std::to_string(max_batch));
  }
  max_batch_ = max_batch;
  return *this;
}

std::string InputSpec::describe() const {
  std::ostringstream out;
  out << "float32 images " << channels_ << "x" << height_ << "x" << width_ << " (or a batch Nx" << channels_ << "x"
      << height_ << "x" << width_ << ", 1 <= N <= " << max_batch_ << ") with values in [" << min_value_ << ", "
      << max_value_ << "]";
  return out.str();
}

torch::Tensor InputSpec::validate(const torch::Tensor& x) const {
  const std::string expected = "expected " + describe();
  if (!x.defined()) throw InputError("input is empty; " + expected);
  if (x.scalar_type() != torch::kFloat32) {
    throw InputError(std::string("input has the wrong data type (") + c10::toString(x.scalar_type()) + "); " +
                     expected);
  }
  if (!x.device().is_cpu()) throw InputError("input must be a CPU tensor; " + expected);
  if (x.layout() != torch::kStrided) throw InputError("input must be a dense tensor; " + expected);
  torch::Tensor batch;
  if (x.dim() == 3) {
    batch = x.unsqueeze(0);
  } else if (x.dim() == 4) {
    batch = x;
  } else {
    throw InputError("input has rank " + std::to_string(x.dim()) + "; " + expected);
  }
  const int64_t n = batch.size(0);
  if (n == 0) throw InputError("input batch is empty; " + expected);
  if (n > max_batch_) {
    throw InputError("input batch of " + std::to_string(n) + " images exceeds the limit of " +
                     std::to_string(max_batch_));
  }
  if (batch.size(1) != channels_ || batch.size(2) != height_ || batch.size(3) != width_) {
    std::ostringstream got;
    got << batch.size(1) << "x" << batch.size(2) << "x" << batch.size(3);
    throw InputError("input images have shape " + got.str() + "; " + expected);
  }
  // One pass for both bounds; NaN propagates through min/max and fails both
  // comparisons, so the finiteness check only runs on the error path.
  torch::NoGradGuard no_grad;
  const auto [lo_t, hi_t] = torch::aminmax(batch);
  const double lo = lo_t.item<double>();
  const double hi = hi_t.item<double>();
  if (!(lo >= min_value_ && hi <= max_value_)) {
    if (!torch::isfinite(batch).all().item<bool>()) {
      throw InputError("input contains NaN or infinite values; " + expected);
    }
    throw InputError("input values lie outside [" + format_value(min_value_) + ", " + format_value(max_value_) + "]");
  }
  return batch;
}

// ---------------------------------------------------------------- Preprocessor

const char* to_string(GradientPolicy policy) {
  switch (policy) {
    case GradientPolicy::Exact:
      return "exact";
    case GradientPolicy::StraightThrough:
      return "straight_through";
    case GradientPolicy::Blocked:
      return "blocked";
  }
  return "unknown";
}

void Preprocessor::check_policy(const char* component) const {
  if (policy_ == GradientPolicy::Exact && !is_differentiable()) {
    throw OptionError(std::string(component) +
                      ": gradient policy 'exact' needs a differentiable transform; use "
                      "'straight_through' (BPDA) or 'blocked'");
  }
}

torch::Tensor Preprocessor::apply_differentiable(const torch::Tensor& x) const {
  switch (policy_) {
    case GradientPolicy::Exact:
      return apply(x);
    case GradientPolicy::StraightThrough: {
      // Forward: apply(x). Backward: identity (the detached term has no gradient).
      const torch::Tensor transformed = [&] {
        torch::NoGradGuard no_grad;
        return apply(x.detach());
      }();
      return x + (transformed - x.detach());
    }
    case GradientPolicy::Blocked: {
      const torch::Tensor transformed = [&] {
        torch::NoGradGuard no_grad;
        return apply(x.detach());
      }();
      // Keeps the graph connected so callers get an explicit zero gradient.
      return transformed + x * 0.0;
    }
  }
  throw StateError("unknown gradient policy");
}

const char* to_string(Verdict verdict) {
  switch (verdict) {
    case Verdict::Accepted:
      return "accepted";
    case Verdict::Flagged:
      return "flagged";
    case Verdict::Rejected:
      return "rejected";
  }
  return "unknown";
}

// ---------------------------------------------------------------- Detector

namespace {
constexpr const char* kDetectorFormatKey = "parry_format";
constexpr const char* kDetectorFormat = "parry-detector-v1";
}  // namespace

torch::Tensor Detector::score(const torch::Tensor& batch, const Model& model) const {
  c10::InferenceMode inference;
  const torch::Tensor logits = model.logits(batch);
  return score(DetectorInput{batch, logits, model});
}

torch::Tensor Detector::differentiable_score(const torch::Tensor&, const Model&) const {
  throw StateError("detector has no differentiable form", name() + " does not implement differentiable_score()");
}

torch::Tensor Detector::flag(const DetectorInput& input) const {
  return score(input) > threshold();
}

double Detector::threshold() const {
  if (!calibrated_) {
    throw StateError("detector is not calibrated", name() + ": call calibrate() or load() first");
  }
  return threshold_;
}

void Detector::set_threshold(double threshold) {
  if (!std::isfinite(threshold)) {
    throw OptionError(name() + ": threshold must be finite, but got " + format_value(threshold));
  }
  threshold_ = threshold;
  calibrated_ = true;
}

CalibrationReport Detector::calibrate(const torch::Tensor& clean, const Model& model, double target_fpr,
                                      int64_t batch_size) {
  if (!clean.defined() || clean.dim() != 4 || clean.size(0) == 0) {
    throw OptionError(name() + "::calibrate: need a non-empty N×C×H×W batch of clean inputs");
  }
  if (batch_size < 1) {
    throw OptionError(name() + "::calibrate: batch_size must be at least 1, but got " + std::to_string(batch_size));
  }
  std::vector<torch::Tensor> parts;
  for (int64_t start = 0; start < clean.size(0); start += batch_size) {
    parts.push_back(score(clean.slice(0, start, start + batch_size), model));
  }
  return calibrate_from_scores(torch::cat(parts), target_fpr);
}

CalibrationReport Detector::calibrate_from_scores(const torch::Tensor& clean_scores, double target_fpr) {
  if (!(target_fpr >= 0.0 && target_fpr < 1.0)) {
    throw OptionError(name() + "::calibrate: target false-positive rate must be in [0, 1), but got " +
                      format_value(target_fpr));
  }
  if (!clean_scores.defined() || clean_scores.numel() == 0) {
    throw OptionError(name() + "::calibrate: no clean scores");
  }
  const torch::Tensor scores = clean_scores.detach().to(torch::kFloat64).flatten();
  if (!torch::isfinite(scores).all().item<bool>()) {
    throw StateError("detector produced non-finite scores", name() + ": NaN/Inf in calibration scores");
  }
  const torch::Tensor sorted = std::get<0>(scores.sort());
  const int64_t n = sorted.numel();
  // At most floor(fpr * n) clean samples may lie strictly above the threshold.
  const auto allowed = static_cast<int64_t>(std::floor(target_fpr * static_cast<double>(n)));
  const double threshold = sorted[n - 1 - allowed].item<double>();
  set_threshold(threshold);
  CalibrationReport report;
  report.threshold = threshold;
  report.target_fpr = target_fpr;
  report.samples = n;
  report.achieved_fpr = (scores > threshold).sum().item<double>() / static_cast<double>(n);
  return report;
}

void Detector::save_state(torch::serialize::OutputArchive&) const {}
void Detector::load_state(torch::serialize::InputArchive&) {}

void Detector::save(const std::string& path) const {
  detail::atomic_write(path, [&](const std::string& tmp) {
    torch::serialize::OutputArchive archive;
    archive.write(kDetectorFormatKey, c10::IValue(std::string(kDetectorFormat)));
    archive.write("detector", c10::IValue(name()));
    archive.write("calibrated", c10::IValue(calibrated_));
    archive.write("threshold", c10::IValue(threshold_));
    save_state(archive);
    archive.save_to(tmp);
  });
}

void Detector::load(const std::string& path) {
  if (!detail::file_exists(path)) throw IoError("detector file not found", "no such file '" + path + "'");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw IoError("detector file is corrupt", "'" + path + "': " + e.what_without_backtrace());
  }
  c10::IValue format, stored_name, calibrated, threshold;
  if (!archive.try_read(kDetectorFormatKey, format) || !format.isString() || format.toStringRef() != kDetectorFormat) {
    throw IoError("detector file has an unknown format", "'" + path + "' is not a parry detector file");
  }
  if (!archive.try_read("detector", stored_name) || !stored_name.isString() || stored_name.toStringRef() != name()) {
    throw IoError("detector file belongs to a different detector",
                  "'" + path + "' holds state of '" +
                      (stored_name.isString() ? stored_name.toStringRef() : std::string("?")) + "', not '" + name() +
                      "'");
  }
  if (!archive.try_read("calibrated", calibrated) || !calibrated.isBool() ||
      !archive.try_read("threshold", threshold) || !threshold.isDouble() || !std::isfinite(threshold.toDouble())) {
    throw IoError("detector file is corrupt", "'" + path + "': bad threshold fields");
  }
  try {
    load_state(archive);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw IoError("detector file is corrupt", "'" + path + "': " + e.what());
  }
  threshold_ = threshold.toDouble();
  calibrated_ = calibrated.toBool();
}

// ---------------------------------------------------------------- Guard

namespace {

class DefaultLabelOnly final : public OutputPolicy {
 public:
  void fill(const torch::Tensor& logits, Response& response) const override {
    const torch::Tensor labels = logits.argmax(1).contiguous();
    response.labels.assign(labels.data_ptr<int64_t>(), labels.data_ptr<int64_t>() + labels.numel());
  }
  std::string describe() const override { return "LabelOnly"; }
};

}  // namespace

Guard::Guard(Model model, InputSpec spec)
    : model_(std::move(model)), spec_(spec), policy_(std::make_shared<DefaultLabelOnly>()) {
  if (model_.is_training()) {
    throw StateError("Guard: the model is in training mode",
                     "call eval() on the module before wrapping it: a Guard never toggles "
                     "train/eval on a shared module");
  }
}

Guard& Guard::add_gate(std::shared_ptr<Gate> gate) {
  if (!gate) throw OptionError("Guard::add_gate: gate is null");
  gates_.push_back(std::move(gate));
  return *this;
}

Guard& Guard::add_preprocessor(std::shared_ptr<const Preprocessor> preprocessor) {
  if (!preprocessor) throw OptionError("Guard::add_preprocessor: preprocessor is null");
  preprocessors_.push_back(std::move(preprocessor));
  return *this;
}

Guard& Guard::add_detector(std::shared_ptr<const Detector> detector) {
  if (!detector) throw OptionError("Guard::add_detector: detector is null");
  detectors_.push_back(std::move(detector));
  return *this;
}

Guard& Guard::set_output_policy(std::shared_ptr<const OutputPolicy> policy) {
  if (!policy) throw OptionError("Guard::set_output_policy: policy is null");
  policy_ = std::move(policy);
  return *this;
}

torch::Tensor Guard::preprocess(const torch::Tensor& batch) const {
  torch::Tensor x = batch;
  for (const auto& p : preprocessors_) x = p->apply(x);
  return x;
}

Guard::GateOutcome Guard::run_gates(const RequestContext& context, const torch::Tensor& input, GatePhase phase,
                                    GateOutcome outcome) const {
  for (const auto& gate : gates_) {
    if ((phase == GatePhase::WithoutPixels && gate->needs_pixels()) ||
        (phase == GatePhase::WithPixels && !gate->needs_pixels())) {
      continue;
    }
    const GateDecision decision = gate->admit(context, input);
    if (decision.action == GateDecision::Action::Reject) {
      outcome.rejected = true;
      outcome.rejection.verdict = Verdict::Rejected;
      outcome.rejection.reason = decision.reason;
      outcome.rejection.retry_after_seconds = decision.retry_after_seconds;
      return outcome;
    }
    if (decision.action == GateDecision::Action::Flag && !outcome.flagged) {
      outcome.flagged = true;
      outcome.flag_reason = decision.reason;
    }
  }
  return outcome;
}

Response Guard::predict(const torch::Tensor& input, const RequestContext& context) const {
  const GateOutcome gates = run_gates(context, input, GatePhase::All, GateOutcome());
  if (gates.rejected) return gates.rejection;
  return predict_valid(spec_.validate(input), gates);
}

Response Guard::predict_image(const std::string& bytes, const RequestContext& context,
                              const data::ImageLimits& limits) const {
  const GateOutcome before_decoding = run_gates(context, torch::Tensor(), GatePhase::WithoutPixels, GateOutcome());
  if (before_decoding.rejected) return before_decoding.rejection;
  torch::Tensor image;
  try {
    image = data::decode_image_for(bytes, spec_, limits);
  } catch (const InputError& e) {
    log(LogLevel::Debug, "Guard::predict_image: " + e.detail());
    throw;
  } catch (const std::exception& e) {
    log(LogLevel::Error, std::string("Guard::predict_image: ") + e.what());
    throw InternalError(e.what());
  }
  const GateOutcome gates = run_gates(context, image, GatePhase::WithPixels, before_decoding);
  if (gates.rejected) return gates.rejection;
  return predict_valid(spec_.validate(image), gates);
}

Response Guard::predict_valid(const torch::Tensor& batch, const GateOutcome& gates) const {
  try {
    c10::InferenceMode inference;
    const torch::Tensor x = preprocess(batch);
    const torch::Tensor logits = model_.logits(x);
    if (!logits.defined() || logits.dim() != 2 || logits.size(0) != batch.size(0) || logits.size(1) < 1) {
      throw InternalError("model returned logits of shape " +
                          (logits.defined() ? c10::str(logits.sizes()) : std::string("undefined")) +
                          " for a batch of " + std::to_string(batch.size(0)));
    }
    Response response;
    torch::Tensor flagged = torch::zeros({batch.size(0)}, torch::kBool);
    const DetectorInput detector_input{x, logits, model_};
    for (const auto& detector : detectors_) flagged |= detector->flag(detector_input).to(torch::kBool);
    policy_->fill(logits, response);
    const torch::Tensor flags = flagged.to(torch::kUInt8).contiguous();
    response.flagged.assign(flags.data_ptr<uint8_t>(), flags.data_ptr<uint8_t>() + flags.numel());
    if (flagged.any().item<bool>()) {
      response.verdict = Verdict::Flagged;
      response.reason = reason::kFlagged;
    } else if (gates.flagged) {
      response.verdict = Verdict::Flagged;
      response.reason = gates.flag_reason;
    }
    return response;
  } catch (const InputError& e) {
    log(LogLevel::Debug, "Guard::predict: " + e.detail());
    throw;
  } catch (const InternalError& e) {
    log(LogLevel::Error, "Guard::predict: " + e.detail());
    throw;
  } catch (const Error& e) {
    // A misconfigured stage (e.g. an uncalibrated detector): the caller only
    // learns that something internal failed.
    log(LogLevel::Error, "Guard::predict: " + e.detail());
    throw InternalError(e.detail());
  } catch (const c10::Error& e) {
    log(LogLevel::Error, std::string("Guard::predict: ") + e.what_without_backtrace());
    throw InternalError(e.what_without_backtrace());
  } catch (const std::exception& e) {
    log(LogLevel::Error, std::string("Guard::predict: ") + e.what());
    throw InternalError(e.what());
  }
}

torch::Tensor Guard::differentiable_logits(const torch::Tensor& x) const {
  torch::Tensor batch = spec_.validate(x);
  for (const auto& p : preprocessors_) batch = p->apply_differentiable(batch);
  return model_.logits(batch);
}

std::string Guard::describe() const {
  std::ostringstream out;
  out << "Guard\n  input: " << spec_.describe() << "\n  model: " << model_.kind() << '\n';
  for (const auto& g : gates_) out << "  gate: " << g->describe() << '\n';
  for (const auto& p : preprocessors_) out << "  preprocess: " << p->describe() << '\n';
  for (const auto& d : detectors_) out << "  detect: " << d->describe() << '\n';
  out << "  output: " << policy_->describe() << '\n';
  return out.str();
}

}  // namespace parry

// parry::Detector: calibration to a false-positive rate and atomic save/load.
#include "parry/core/detector.hpp"

#include <algorithm>
#include <cmath>

#include "detail/torch_archive.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detail/files.hpp"
#include "parry/detail/format.hpp"

namespace parry {

using detail::format_number;

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
  const std::shared_ptr<const double> threshold = std::atomic_load(&threshold_);
  if (!threshold) throw StateError("detector is not calibrated", name() + ": call calibrate() or load() first");
  return *threshold;
}

void Detector::set_threshold(double threshold) {
  if (!std::isfinite(threshold)) {
    throw OptionError(name() + ": threshold must be finite, but got " + format_number(threshold));
  }
  std::atomic_store(&threshold_, std::make_shared<const double>(threshold));
}

CalibrationReport Detector::calibrate(const torch::Tensor& clean, const Model& model, double target_fpr,
                                      int64_t batch_size) {
  if (!clean.defined() || clean.dim() != 4 || clean.size(0) == 0) {
    throw OptionError(name() + "::calibrate: need a non-empty N×C×H×W batch of clean inputs");
  }
  if (batch_size < 1) {
    throw OptionError(name() + "::calibrate: batch_size must be at least 1, but got " + std::to_string(batch_size));
  }
  const torch::Tensor scores =
      detail::map_chunks(clean, batch_size, [&](const torch::Tensor& part) { return score(part, model); });
  return calibrate_from_scores(scores, target_fpr);
}

CalibrationReport Detector::calibrate_from_scores(const torch::Tensor& clean_scores, double target_fpr) {
  if (!(target_fpr >= 0.0 && target_fpr < 1.0)) {
    throw OptionError(name() + "::calibrate: target false-positive rate must be in [0, 1), but got " +
                      format_number(target_fpr));
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
    const std::shared_ptr<const double> threshold = std::atomic_load(&threshold_);
    archive.write("calibrated", c10::IValue(threshold != nullptr));
    archive.write("threshold", c10::IValue(threshold ? *threshold : 0.0));
    save_state(archive);
    archive.save_to(tmp);
  });
}

void Detector::load(const std::string& path) {
  torch::serialize::InputArchive archive;
  detail::load_output_archive(path, "detector file", archive);
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
  std::atomic_store(&threshold_, calibrated.toBool() ? std::make_shared<const double>(threshold.toDouble())
                                                     : std::shared_ptr<const double>());
}

}  // namespace parry

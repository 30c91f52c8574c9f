// parry::Detector: a per-sample adversarial-input score with a calibrated
// threshold, used by Guard::predict to flag inputs.
//
// Threat model: a detector raises the bar for attackers who do not know it is
// there. An attacker who knows it can optimise against its score too; every
// reported detection rate must be paired with an adaptive attack's.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <memory>
#include <string>

#include "parry/core/model.hpp"

namespace parry {

/// What a detector sees for one batch: the input as the model sees it (after
/// preprocessing), the model's logits on it, and the model.
struct DetectorInput {
  const torch::Tensor& batch;   ///< N×C×H×W, preprocessed
  const torch::Tensor& logits;  ///< N×K
  const Model& model;
};

/// Result of Detector::calibrate.
struct CalibrationReport {
  double threshold = 0.0;     ///< scores strictly above it are flagged
  double target_fpr = 0.0;    ///< requested false-positive rate on clean data
  double achieved_fpr = 0.0;  ///< measured on the calibration data
  int64_t samples = 0;        ///< number of clean samples used
};

class Detector {
 public:
  virtual ~Detector() = default;

  /// Stable identifier stored in saved state, e.g. "softmax_confidence".
  virtual std::string name() const = 0;
  /// One line for reports.
  virtual std::string describe() const = 0;

  /// Per-sample score, shape N, float32; higher means more likely adversarial.
  /// Must be safe to call from many threads at once.
  virtual torch::Tensor score(const DetectorInput& input) const = 0;

  /// Convenience: scores `batch` (already preprocessed) with `model`.
  torch::Tensor score(const torch::Tensor& batch, const Model& model) const;

  /// The score as a differentiable function of `batch` (already preprocessed),
  /// for adaptive attacks that optimise against the detector (Carlini & Wagner
  /// 2017). Equal to score() up to float rounding (a stochastic detector draws
  /// fresh randomness on every call). Default: unavailable.
  /// @throws parry::StateError if this detector has no differentiable form.
  virtual torch::Tensor differentiable_score(const torch::Tensor& batch, const Model& model) const;

  /// Per-sample flags (bool, shape N): score > threshold.
  /// @throws parry::StateError if the detector was never calibrated.
  torch::Tensor flag(const DetectorInput& input) const;

  /// Sets the threshold from clean held-out data so that at most `target_fpr`
  /// of it is flagged. `clean` is N×C×H×W (as the model sees it), scored in
  /// chunks of `batch_size`.
  /// @throws parry::OptionError if target_fpr is outside [0, 1) or `clean` is empty.
  CalibrationReport calibrate(const torch::Tensor& clean, const Model& model, double target_fpr,
                              int64_t batch_size = 256);
  /// Same, from precomputed clean scores (shape N).
  CalibrationReport calibrate_from_scores(const torch::Tensor& clean_scores, double target_fpr);

  bool is_calibrated() const { return std::atomic_load(&threshold_) != nullptr; }
  /// @throws parry::StateError if not calibrated.
  double threshold() const;
  /// Sets the threshold by hand (marks the detector calibrated).
  void set_threshold(double threshold);

  /// Thread safety: score(), flag() and threshold() may run on many threads
  /// while one thread calls calibrate(), set_threshold() or load(); the
  /// threshold and each detector's fitted state are replaced whole (atomic
  /// shared_ptr swaps), so a request sees either the old or the new state of
  /// each. Two of these mutators must not run concurrently with each other.

  /// Saves name, threshold and fitted state atomically.
  void save(const std::string& path) const;
  /// Loads what save() wrote. @throws parry::IoError on a missing, corrupt or
  /// mismatched file (another detector's state); the detector is unchanged then.
  void load(const std::string& path);

 protected:
  /// Detector-specific fitted state (e.g. densities); default: none.
  virtual void save_state(torch::serialize::OutputArchive& archive) const;
  /// Must validate everything it reads before changing the detector.
  virtual void load_state(torch::serialize::InputArchive& archive);
  /// For detectors built from other detectors: their fitted state, nested.
  static void save_state_of(const Detector& detector, torch::serialize::OutputArchive& archive) {
    detector.save_state(archive);
  }
  static void load_state_of(Detector& detector, torch::serialize::InputArchive& archive) {
    detector.load_state(archive);
  }

 private:
  /// The calibrated threshold, null until calibrated. Replaced whole with
  /// std::atomic_store, so a Guard may serve while calibrate() or load() runs
  /// on another thread: each request sees the old or the new threshold.
  std::shared_ptr<const double> threshold_;
};

}  // namespace parry

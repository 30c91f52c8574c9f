// detect::UncertaintyDensity: the combined detector of Feinman, Curtin,
// Shintre, Gardner, "Detecting Adversarial Samples from Artifacts",
// arXiv:1703.00410, 2017 (section 4.2).
//
// Each input gets two features, the Monte-Carlo dropout uncertainty U(x)
// (detect::McDropout) and the log kernel density log K̂(x) under the predicted
// class (detect::KernelDensity). Both are z-normalised with the mean and
// standard deviation of the training set of the combiner, and a logistic
// regression is trained to separate adversarial examples (label 1) from clean
// and noisy ones (label 0). Noisy examples are clean ones plus Gaussian noise
// of the same L2 norm as the adversarial perturbation (noisy_counterparts());
// they teach the combiner that "perturbed" alone is not "adversarial". The
// score is the regression's probability that the input is adversarial.
//
// Threat model: as its parts. It is fitted on adversarial examples of chosen
// attacks; an attack unlike them, or one that optimises against U and K̂
// (Carlini & Wagner 2017), can evade it. Report both (docs/detectors.md).
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <memory>
#include <string>

#include "parry/detect/kernel_density.hpp"
#include "parry/detect/logistic_regression.hpp"
#include "parry/detect/mc_dropout.hpp"

namespace parry::detect {

/// What UncertaintyDensity::fit measured on its own training data.
struct CombinerFitReport {
  int64_t negatives = 0;   ///< clean + noisy samples (label 0)
  int64_t positives = 0;   ///< adversarial samples (label 1)
  int64_t iterations = 0;  ///< Newton iterations of the logistic regression
  /// The fitted combiner's P(adversarial) on its training samples, negatives
  /// first (float64, negatives + positives); eval::roc_auc of the two parts is
  /// the training ROC-AUC (detect does not depend on eval).
  torch::Tensor training_probability;
};

class UncertaintyDensity final : public Detector {
 public:
  /// Both parts must be built for the model this detector will score with; the
  /// density must be fitted before fit() is called.
  /// @throws parry::OptionError on a null part.
  UncertaintyDensity(std::shared_ptr<McDropout> uncertainty, std::shared_ptr<KernelDensity> density,
                     LogisticRegressionOptions options = LogisticRegressionOptions());

  std::string name() const override { return "uncertainty_density"; }
  std::string describe() const override;

  /// Fits the normalisation and the regression. `clean`, `noisy` and
  /// `adversarial` are N×C×H×W batches as the model sees them (any sizes ≥ 1;
  /// noisy may be empty).
  /// @throws parry::StateError if the density is not fitted, parry::OptionError on bad batches.
  CombinerFitReport fit(const Model& model, const torch::Tensor& clean, const torch::Tensor& noisy,
                        const torch::Tensor& adversarial, int64_t batch_size = 256);

  /// Per sample [U(x), log K̂(x)], float64, N×2 (before normalisation).
  torch::Tensor features(const torch::Tensor& batch, const torch::Tensor& logits, const Model& model) const;

  bool is_fitted() const { return std::atomic_load(&combiner_) != nullptr; }
  /// P(adversarial) per sample, float32, N. @throws parry::StateError before fit().
  torch::Tensor score(const DetectorInput& input) const override;
  using Detector::score;
  torch::Tensor differentiable_score(const torch::Tensor& batch, const Model& model) const override;

  /// The fitted combiner's regression (a copy). @throws parry::StateError before fit().
  LogisticRegression regression() const { return snapshot("regression()")->regression; }
  const McDropout& uncertainty() const { return *uncertainty_; }
  const KernelDensity& density() const { return *density_; }

 protected:
  /// Saves the normalisation, the regression and the density's fitted features.
  void save_state(torch::serialize::OutputArchive& archive) const override;
  void load_state(torch::serialize::InputArchive& archive) override;

 private:
  /// The fitted combination: z-normalisation of [U, log K̂] and the regression.
  struct Combiner {
    LogisticRegression regression;
    double mean[2] = {0.0, 0.0};
    double scale[2] = {1.0, 1.0};
  };
  /// The current combiner, or StateError naming `what` before fit()/load().
  std::shared_ptr<const Combiner> snapshot(const char* what) const;

  std::shared_ptr<McDropout> uncertainty_;
  std::shared_ptr<KernelDensity> density_;
  LogisticRegressionOptions options_;
  /// Replaced whole by fit() and load() (std::atomic_store): scoring threads
  /// see the old or the new combiner, never a mix.
  std::shared_ptr<const Combiner> combiner_;
};

/// The paper's noisy counterparts: x_i + Gaussian noise whose L2 norm equals
/// ‖adversarial_i − x_i‖₂, clipped to [clip_min, clip_max]. Seeded.
torch::Tensor noisy_counterparts(const torch::Tensor& clean, const torch::Tensor& adversarial, uint64_t seed,
                                 double clip_min = 0.0, double clip_max = 1.0);

}  // namespace parry::detect

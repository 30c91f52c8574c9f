// detect::KernelDensity: density of the last hidden layer's features under
// the predicted class, as in Feinman, Curtin, Shintre, Gardner, "Detecting
// Adversarial Samples from Artifacts", arXiv:1703.00410, 2017 (section 3.1).
//
// For each class c the training features X_c = {φ(x_i) : y_i = c} define a
// Gaussian kernel density
//     log K̂(z; X_c) = log Σ_i exp(−‖z − φ(x_i)‖² / (2σ²)) − log |X_c| − (D/2) log(2πσ²),
// the same quantity as scikit-learn's KernelDensity(kernel="gaussian",
// bandwidth=σ).score_samples, which the authors' code uses. An input x with
// predicted class ĉ scores −log K̂(φ(x); X_ĉ): an adversarial example pushed
// into class ĉ lies far from ĉ's training manifold, so its density is low and
// its score high. σ = 1.20 is the paper's bandwidth for MNIST.
//
// Served scores are computed with Eigen (blocked GEMM for the squared
// distances, a log-sum-exp in double); differentiable_score() computes the
// same quantity with torch ops for adaptive attacks.
//
// Threat model: catches adversarial examples that leave the data manifold in
// feature space. Carlini & Wagner 2017 broke it on CIFAR-10 by adding the
// density to the attack loss; on MNIST it raised the distortion needed. Parry
// measures that in docs/detectors.md. Memory: the stored features, N×D floats
// (60,000 × 128 × 4 B = 31 MB for the reference model).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "parry/core/detector.hpp"
#include "parry/detail/arg.hpp"

namespace parry::detect {

struct KernelDensityOptions {
  PARRY_OPTIONS(KernelDensityOptions);
  /// Kernel bandwidth σ in feature units (default 1.20).
  PARRY_CHECKED_ARG(double, bandwidth, 1.20, std::isfinite(v) && v > 0.0, "must be finite and > 0");
};

class KernelDensity final : public Detector {
 public:
  explicit KernelDensity(KernelDensityOptions options = KernelDensityOptions());
  ~KernelDensity() override;

  std::string name() const override { return "kernel_density"; }
  std::string describe() const override;

  /// Stores the features of `images` (N×C×H×W, as the model sees them) grouped
  /// by `labels` (int64, N, the true classes). Needs a model with a
  /// features/head split. Replaces any earlier fit.
  /// @throws parry::OptionError on mismatched or empty inputs, parry::StateError without a split.
  void fit(const Model& model, const torch::Tensor& images, const torch::Tensor& labels, int64_t batch_size = 256);
  /// Same from precomputed features N×D (float) and labels N (int64 in 0..K−1).
  void fit_features(const torch::Tensor& features, const torch::Tensor& labels);

  bool is_fitted() const;
  /// Feature dimension D and class count K of the fit (0 before fitting).
  int64_t feature_dim() const;
  int64_t classes() const;

  /// log K̂(z_i; X_{c_i}) per row, float64, shape N. A class with no training
  /// features gives −inf. @throws parry::StateError if not fitted,
  /// parry::OptionError on a wrong feature dimension or class index.
  torch::Tensor log_density(const torch::Tensor& features, const torch::Tensor& classes) const;

  /// −log density of the input's features under its predicted class, float32, N.
  torch::Tensor score(const DetectorInput& input) const override;
  using Detector::score;
  torch::Tensor differentiable_score(const torch::Tensor& batch, const Model& model) const override;

  const KernelDensityOptions& options() const { return options_; }

  /// The fitted features (opaque; defined in the library).
  struct Fit;

 protected:
  void save_state(torch::serialize::OutputArchive& archive) const override;
  void load_state(torch::serialize::InputArchive& archive) override;

 private:
  KernelDensityOptions options_;
  std::shared_ptr<const Fit> fit_;  // immutable once built; swapped whole
};

}  // namespace parry::detect

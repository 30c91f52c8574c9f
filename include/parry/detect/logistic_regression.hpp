// detect::LogisticRegression: binary logistic regression with an L2 penalty,
// fitted by Newton's method (iteratively reweighted least squares) with Eigen.
// Used to combine detector scores (Feinman et al. 2017) and by learned
// detectors. Minimises
//     Σ_i [log(1 + e^{z_i}) − y_i z_i] + (λ/2)‖w‖²,   z_i = wᵀx_i + b,
// the bias unpenalised. λ = 1 is scikit-learn's default (C = 1). The penalty
// keeps the solution finite on separable data.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace parry::detect {

struct LogisticRegressionOptions {
  /// L2 penalty λ ≥ 0 on the weights (default 1).
  LogisticRegressionOptions& l2(double lambda);
  double l2() const { return l2_; }
  /// Newton iterations at most, ≥ 1 (default 100).
  LogisticRegressionOptions& max_iterations(int64_t n);
  int64_t max_iterations() const { return max_iterations_; }
  /// Stop when the gradient's max-norm falls below this (default 1e-10).
  LogisticRegressionOptions& tolerance(double t);
  double tolerance() const { return tolerance_; }

 private:
  double l2_ = 1.0;
  int64_t max_iterations_ = 100;
  double tolerance_ = 1e-10;
};

class LogisticRegression {
 public:
  explicit LogisticRegression(LogisticRegressionOptions options = LogisticRegressionOptions()) : options_(options) {}

  /// Fits on x (N×D, finite) and labels y (N, values 0 or 1, both present).
  /// @return the number of Newton iterations used.
  /// @throws parry::OptionError on bad shapes, non-finite values or one class only.
  int64_t fit(const torch::Tensor& x, const torch::Tensor& y);

  /// wᵀx + b per row, float64, N. @throws parry::StateError before fit.
  torch::Tensor decision_function(const torch::Tensor& x) const;
  /// P(y = 1 | x) per row, float64, N.
  torch::Tensor predict_probability(const torch::Tensor& x) const;

  bool is_fitted() const { return !weights_.empty(); }
  const std::vector<double>& weights() const { return weights_; }
  double bias() const { return bias_; }
  /// Restores a fitted model (e.g. from saved state). @throws parry::OptionError if not finite.
  void set_parameters(std::vector<double> weights, double bias);

 private:
  LogisticRegressionOptions options_;
  std::vector<double> weights_;
  double bias_ = 0.0;
};

}  // namespace parry::detect

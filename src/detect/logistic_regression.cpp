// detect::LogisticRegression: L2-regularised logistic regression fitted by Newton steps (Eigen).
#include "parry/detect/logistic_regression.hpp"

#include <Eigen/Dense>
#include <cmath>
#include <numeric>

#include "parry/detail/require.hpp"

namespace parry::detect {

using parry::detail::require;

LogisticRegressionOptions& LogisticRegressionOptions::l2(double lambda) {
  require(std::isfinite(lambda) && lambda >= 0.0, "LogisticRegressionOptions", "l2 must be finite and >= 0", lambda);
  l2_ = lambda;
  return *this;
}
LogisticRegressionOptions& LogisticRegressionOptions::max_iterations(int64_t n) {
  require(n >= 1, "LogisticRegressionOptions", "max_iterations must be at least 1", n);
  max_iterations_ = n;
  return *this;
}
LogisticRegressionOptions& LogisticRegressionOptions::tolerance(double t) {
  require(std::isfinite(t) && t > 0.0, "LogisticRegressionOptions", "tolerance must be finite and > 0", t);
  tolerance_ = t;
  return *this;
}

namespace {

// log(1 + e^z) without overflow.
double softplus(double z) {
  return z > 0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z));
}
double sigmoid(double z) {
  return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z));
}

Eigen::MatrixXd to_eigen(const torch::Tensor& x) {
  const torch::Tensor values = x.detach().to(torch::kFloat64).contiguous();
  return Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      values.data_ptr<double>(), values.size(0), values.size(1));
}

}  // namespace

int64_t LogisticRegression::fit(const torch::Tensor& x, const torch::Tensor& y) {
  if (!x.defined() || x.dim() != 2 || x.size(0) < 2 || x.size(1) < 1) {
    throw OptionError("LogisticRegression::fit: need x of shape N×D with N >= 2");
  }
  if (!y.defined() || y.dim() != 1 || y.size(0) != x.size(0)) {
    throw OptionError("LogisticRegression::fit: need one label per row of x");
  }
  if (!torch::isfinite(x.to(torch::kFloat64)).all().item<bool>()) {
    throw OptionError("LogisticRegression::fit: x must be finite");
  }
  const torch::Tensor labels = y.to(torch::kFloat64);
  if (!((labels == 0) | (labels == 1)).all().item<bool>()) {
    throw OptionError("LogisticRegression::fit: labels must be 0 or 1");
  }
  const double positives = labels.sum().item<double>();
  if (positives == 0 || positives == static_cast<double>(y.size(0))) {
    throw OptionError("LogisticRegression::fit: need samples of both classes");
  }
  const int64_t n = x.size(0), d = x.size(1);
  Eigen::MatrixXd design(n, d + 1);
  design.leftCols(d) = to_eigen(x);
  design.col(d).setOnes();
  const Eigen::VectorXd target = Eigen::Map<const Eigen::VectorXd>(labels.contiguous().data_ptr<double>(), n);
  Eigen::VectorXd penalty = Eigen::VectorXd::Constant(d + 1, options_.l2());
  penalty[d] = 0.0;  // the bias is not penalised

  auto objective = [&](const Eigen::VectorXd& theta) {
    const Eigen::VectorXd z = design * theta;
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += softplus(z[i]) - target[i] * z[i];
    return total + 0.5 * theta.cwiseProduct(penalty).dot(theta);
  };

  Eigen::VectorXd theta = Eigen::VectorXd::Zero(d + 1);
  double value = objective(theta);
  int64_t iteration = 0;
  for (; iteration < options_.max_iterations(); ++iteration) {
    const Eigen::VectorXd z = design * theta;
    Eigen::VectorXd p(n), w(n);
    for (int64_t i = 0; i < n; ++i) {
      p[i] = sigmoid(z[i]);
      w[i] = p[i] * (1.0 - p[i]);
    }
    const Eigen::VectorXd gradient = design.transpose() * (p - target) + penalty.cwiseProduct(theta);
    if (gradient.lpNorm<Eigen::Infinity>() <= options_.tolerance() * static_cast<double>(n)) break;
    Eigen::MatrixXd hessian = design.transpose() * w.asDiagonal() * design;
    hessian.diagonal() += penalty;
    hessian.diagonal().array() += 1e-12;  // keeps the system solvable when all w vanish
    const Eigen::VectorXd step = hessian.ldlt().solve(gradient);
    // Backtracking: Newton steps on a nearly separable set can overshoot.
    double t = 1.0;
    Eigen::VectorXd candidate = theta - step;
    double candidate_value = objective(candidate);
    while (candidate_value > value && t > 1e-10) {
      t *= 0.5;
      candidate = theta - t * step;
      candidate_value = objective(candidate);
    }
    if (candidate_value > value) break;
    theta = candidate;
    value = candidate_value;
  }
  weights_.assign(theta.data(), theta.data() + d);
  bias_ = theta[d];
  return iteration;
}

torch::Tensor LogisticRegression::decision_function(const torch::Tensor& x) const {
  if (!is_fitted()) throw StateError("model is not fitted", "LogisticRegression: call fit() first");
  if (!x.defined() || x.dim() != 2 || x.size(1) != static_cast<int64_t>(weights_.size())) {
    throw OptionError("LogisticRegression: need x of shape N×" + std::to_string(weights_.size()));
  }
  const torch::Tensor w = torch::tensor(weights_, torch::kFloat64);
  return x.detach().to(torch::kFloat64).matmul(w) + bias_;
}

torch::Tensor LogisticRegression::predict_probability(const torch::Tensor& x) const {
  return torch::sigmoid(decision_function(x));
}

void LogisticRegression::set_parameters(std::vector<double> weights, double bias) {
  require(!weights.empty(), "LogisticRegression::set_parameters", "need at least one weight", weights.size());
  for (double v : weights) require(std::isfinite(v), "LogisticRegression::set_parameters", "weights must be finite", v);
  require(std::isfinite(bias), "LogisticRegression::set_parameters", "bias must be finite", bias);
  weights_ = std::move(weights);
  bias_ = bias;
}

}  // namespace parry::detect

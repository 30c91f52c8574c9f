// Detectors (Monte-Carlo dropout, kernel density, their logistic-regression
// combination, feature squeezing), detector metrics and the detector-aware
// adaptive attack construction.
#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>

#include "parry/attack/detector_aware.hpp"
#include "parry/detail/require.hpp"
#include "parry/detect/feature_squeezing.hpp"
#include "parry/detect/kernel_density.hpp"
#include "parry/detect/logistic_regression.hpp"
#include "parry/detect/mc_dropout.hpp"
#include "parry/detect/uncertainty_density.hpp"
#include "parry/eval/metrics.hpp"
#include "parry/preprocess/bit_depth.hpp"
#include "parry/preprocess/median_smoothing.hpp"

namespace parry {

using detail::require;

namespace {

std::string format_double(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// Rejects batches a detector cannot score: undefined, rank 0 or empty.
void check_scoring_batch(const std::string& who, const torch::Tensor& batch) {
  if (!batch.defined() || batch.dim() < 2 || batch.size(0) == 0) {
    throw InputError("input cannot be scored", who + ": need a non-empty batch of rank >= 2");
  }
}

std::vector<int64_t> repeats_along_batch(const torch::Tensor& t, int64_t times) {
  std::vector<int64_t> reps(static_cast<size_t>(t.dim()), 1);
  reps[0] = times;
  return reps;
}

}  // namespace

namespace detect {

// ---------------------------------------------------------------- McDropout

McDropoutOptions& McDropoutOptions::samples(int64_t t) {
  require(t >= 2 && t <= 10000, "McDropoutOptions", "samples must be in 2..10000", t);
  samples_ = t;
  return *this;
}

McDropoutOptions& McDropoutOptions::max_rows(int64_t rows) {
  require(rows >= 1, "McDropoutOptions", "max_rows must be at least 1", rows);
  max_rows_ = rows;
  return *this;
}

McDropout::McDropout(const Model& model, McDropoutOptions options)
    : options_(options), stochastic_(model.with_active_dropout()) {
  fast_path_ = options_.fast_path() && stochastic_.has_feature_split();
}

std::string McDropout::describe() const {
  std::string text = "McDropout(T=" + std::to_string(options_.samples()) +
                     (fast_path_ ? ", features once + batched head" : ", replicated batch");
  text += is_calibrated() ? ", threshold=" + format_double(threshold()) + ")" : ", uncalibrated)";
  return text;
}

void McDropout::check_fast_path(const torch::Tensor& batch) const {
  if (fast_path_checked_.load(std::memory_order_acquire)) return;
  // Dropout before the split would be frozen by running features() once: the
  // fast path would then sample a different distribution. Two calls on the
  // same input differ if features() holds an active dropout layer.
  const torch::Tensor probe = batch.narrow(0, 0, 1);
  const torch::Tensor first = stochastic_.features(probe);
  const torch::Tensor second = stochastic_.features(probe);
  if (!torch::equal(first, second)) {
    throw StateError("detector is misconfigured",
                     "McDropout: features() is stochastic (dropout before the features/head split); "
                     "construct it with McDropoutOptions().fast_path(false)");
  }
  fast_path_checked_.store(true, std::memory_order_release);
}

torch::Tensor McDropout::probabilities(const torch::Tensor& batch) const {
  check_scoring_batch("McDropout", batch);
  const int64_t n = batch.size(0);
  const int64_t samples = options_.samples();
  const int64_t passes_per_call = std::max<int64_t>(1, options_.max_rows() / n);
  std::vector<torch::Tensor> logits;
  if (fast_path_) {
    check_fast_path(batch);
    const torch::Tensor features = stochastic_.features(batch);
    for (int64_t done = 0; done < samples; done += passes_per_call) {
      const int64_t passes = std::min(passes_per_call, samples - done);
      logits.push_back(stochastic_.head(features.repeat(repeats_along_batch(features, passes))));
    }
  } else {
    for (int64_t done = 0; done < samples; done += passes_per_call) {
      const int64_t passes = std::min(passes_per_call, samples - done);
      logits.push_back(stochastic_.logits(batch.repeat(repeats_along_batch(batch, passes))));
    }
  }
  // Rows are pass-major: row t·N + i is pass t of sample i.
  return torch::softmax(torch::cat(logits, 0).to(torch::kFloat32), 1).view({samples, n, -1});
}

torch::Tensor McDropout::mc_probabilities(const torch::Tensor& batch) const {
  c10::InferenceMode inference;
  return probabilities(batch);
}

torch::Tensor McDropout::score(const DetectorInput& input) const {
  c10::InferenceMode inference;
  return mc_dropout_uncertainty(probabilities(input.batch));
}

torch::Tensor McDropout::differentiable_score(const torch::Tensor& batch, const Model&) const {
  return mc_dropout_uncertainty(probabilities(batch));
}

torch::Tensor mc_dropout_uncertainty(const torch::Tensor& probabilities) {
  if (!probabilities.defined() || probabilities.dim() != 3 || probabilities.size(0) < 1) {
    throw OptionError("mc_dropout_uncertainty: need probabilities of shape T×N×K");
  }
  return probabilities.var(0, /*unbiased=*/false).mean(1);
}

// ---------------------------------------------------------------- KernelDensity

KernelDensityOptions& KernelDensityOptions::bandwidth(double sigma) {
  require(std::isfinite(sigma) && sigma > 0.0, "KernelDensityOptions", "bandwidth must be finite and > 0", sigma);
  bandwidth_ = sigma;
  return *this;
}

struct KernelDensity::Fit {
  double bandwidth = 1.0;
  int64_t dim = 0;
  std::vector<torch::Tensor> points;        // per class: n_c × D, float32, contiguous
  std::vector<torch::Tensor> square_norms;  // per class: n_c, float32
};

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMatrix>;

std::shared_ptr<const KernelDensity::Fit> make_fit(double bandwidth, std::vector<torch::Tensor> points);

}  // namespace

KernelDensity::KernelDensity(KernelDensityOptions options) : options_(options) {}
KernelDensity::~KernelDensity() = default;

std::string KernelDensity::describe() const {
  const auto fit = std::atomic_load(&fit_);
  std::ostringstream out;
  out << "KernelDensity(bandwidth=" << (fit ? fit->bandwidth : options_.bandwidth());
  if (fit) {
    int64_t stored = 0;
    for (const auto& p : fit->points) stored += p.size(0);
    out << ", " << stored << " features of dim " << fit->dim << " in " << fit->points.size() << " classes";
  } else {
    out << ", not fitted";
  }
  out << (is_calibrated() ? ", threshold=" + format_double(threshold()) + ")" : ", uncalibrated)");
  return out.str();
}

bool KernelDensity::is_fitted() const {
  return std::atomic_load(&fit_) != nullptr;
}
int64_t KernelDensity::feature_dim() const {
  const auto fit = std::atomic_load(&fit_);
  return fit ? fit->dim : 0;
}
int64_t KernelDensity::classes() const {
  const auto fit = std::atomic_load(&fit_);
  return fit ? static_cast<int64_t>(fit->points.size()) : 0;
}

void KernelDensity::fit(const Model& model, const torch::Tensor& images, const torch::Tensor& labels,
                        int64_t batch_size) {
  require(batch_size >= 1, "KernelDensity::fit", "batch_size must be at least 1", batch_size);
  if (!images.defined() || images.dim() != 4 || images.size(0) == 0) {
    throw OptionError("KernelDensity::fit: need a non-empty N×C×H×W batch of images");
  }
  if (!model.has_feature_split()) {
    throw StateError("detector is misconfigured", "KernelDensity needs a model with a features/head split");
  }
  std::vector<torch::Tensor> parts;
  {
    c10::InferenceMode inference;
    for (int64_t start = 0; start < images.size(0); start += batch_size) {
      parts.push_back(model.features(images.slice(0, start, start + batch_size)).flatten(1));
    }
  }
  fit_features(torch::cat(parts), labels);
}

void KernelDensity::fit_features(const torch::Tensor& features, const torch::Tensor& labels) {
  if (!features.defined() || features.dim() != 2 || features.size(0) == 0 || features.size(1) == 0) {
    throw OptionError("KernelDensity::fit: need non-empty features of shape N×D");
  }
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != features.size(0) ||
      labels.scalar_type() != torch::kInt64) {
    throw OptionError("KernelDensity::fit: need int64 labels of shape N = " + std::to_string(features.size(0)));
  }
  const torch::Tensor values = features.detach().to(torch::kFloat32).contiguous();
  if (!torch::isfinite(values).all().item<bool>()) throw OptionError("KernelDensity::fit: features must be finite");
  const int64_t lowest = labels.min().item<int64_t>();
  const int64_t highest = labels.max().item<int64_t>();
  require(lowest >= 0 && highest < 100000, "KernelDensity::fit", "labels must be in 0..99999",
          lowest < 0 ? lowest : highest);
  std::vector<torch::Tensor> points;
  for (int64_t c = 0; c <= highest; ++c) {
    points.push_back(values.index_select(0, torch::nonzero(labels == c).flatten()).contiguous());
  }
  std::atomic_store(&fit_, make_fit(options_.bandwidth(), std::move(points)));
}

namespace {

std::shared_ptr<const KernelDensity::Fit> make_fit(double bandwidth, std::vector<torch::Tensor> points) {
  auto fit = std::make_shared<KernelDensity::Fit>();
  fit->bandwidth = bandwidth;
  fit->dim = points.front().size(1);
  for (auto& p : points) {
    fit->square_norms.push_back(p.pow(2).sum(1).contiguous());
    fit->points.push_back(std::move(p));
  }
  return fit;
}

// log Σ_j exp(−‖q_i − p_j‖² / (2σ²)) for each query row, by blocks of stored
// points with a running log-sum-exp (double).
std::vector<double> log_sum_kernels(const RowMatrix& queries, const KernelDensity::Fit& fit, int64_t c) {
  const torch::Tensor& points = fit.points[static_cast<size_t>(c)];
  const int64_t stored = points.size(0);
  const int64_t m = queries.rows();
  const ConstRowMap all_points(points.data_ptr<float>(), stored, fit.dim);
  const Eigen::Map<const Eigen::VectorXf> point_norms(fit.square_norms[static_cast<size_t>(c)].data_ptr<float>(),
                                                      stored);
  const Eigen::VectorXf query_norms = queries.rowwise().squaredNorm();
  const double inverse_two_sigma_sq = 1.0 / (2.0 * fit.bandwidth * fit.bandwidth);
  std::vector<double> running_max(static_cast<size_t>(m), -std::numeric_limits<double>::infinity());
  std::vector<double> running_sum(static_cast<size_t>(m), 0.0);
  constexpr int64_t kBlock = 2048;
  RowMatrix products;
  for (int64_t start = 0; start < stored; start += kBlock) {
    const int64_t width = std::min(kBlock, stored - start);
    products.noalias() = queries * all_points.middleRows(start, width).transpose();
    for (int64_t i = 0; i < m; ++i) {
      // exponent_j = −(‖q‖² + ‖p_j‖² − 2 q·p_j) / (2σ²), distances clamped at 0.
      double block_max = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < width; ++j) {
        const double d2 = std::max(0.0, static_cast<double>(query_norms[i]) + point_norms[start + j] -
                                            2.0 * static_cast<double>(products(i, j)));
        const double exponent = -d2 * inverse_two_sigma_sq;
        products(i, j) = static_cast<float>(d2);
        block_max = std::max(block_max, exponent);
      }
      double& top = running_max[static_cast<size_t>(i)];
      double& sum = running_sum[static_cast<size_t>(i)];
      const double new_top = std::max(top, block_max);
      sum = (std::isinf(top) ? 0.0 : sum * std::exp(top - new_top));
      for (int64_t j = 0; j < width; ++j) sum += std::exp(-products(i, j) * inverse_two_sigma_sq - new_top);
      top = new_top;
    }
  }
  std::vector<double> result(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) result[static_cast<size_t>(i)] = running_max[i] + std::log(running_sum[i]);
  return result;
}

double kernel_log_normaliser(const KernelDensity::Fit& fit) {
  return -0.5 * static_cast<double>(fit.dim) * std::log(2.0 * M_PI * fit.bandwidth * fit.bandwidth);
}

}  // namespace

torch::Tensor KernelDensity::log_density(const torch::Tensor& features, const torch::Tensor& classes) const {
  const auto fit = std::atomic_load(&fit_);
  if (!fit) throw StateError("detector is not fitted", "KernelDensity: call fit() or load() first");
  if (!features.defined() || features.dim() != 2 || features.size(1) != fit->dim) {
    throw OptionError("KernelDensity::log_density: need features of shape N×" + std::to_string(fit->dim));
  }
  if (!classes.defined() || classes.dim() != 1 || classes.size(0) != features.size(0)) {
    throw OptionError("KernelDensity::log_density: need one class per feature row");
  }
  const int64_t n = features.size(0);
  torch::Tensor result = torch::empty({n}, torch::kFloat64);
  if (n == 0) return result;
  const torch::Tensor cls = classes.to(torch::kInt64).contiguous();
  const int64_t lowest = cls.min().item<int64_t>();
  const int64_t highest = cls.max().item<int64_t>();
  require(lowest >= 0, "KernelDensity::log_density", "classes must be >= 0", lowest);
  const torch::Tensor values = features.detach().to(torch::kFloat32).contiguous();
  auto out = result.accessor<double, 1>();
  const int64_t fitted_classes = static_cast<int64_t>(fit->points.size());
  for (int64_t c = lowest; c <= highest; ++c) {
    const torch::Tensor rows = torch::nonzero(cls == c).flatten();
    if (rows.numel() == 0) continue;
    const auto row_index = rows.accessor<int64_t, 1>();
    const int64_t stored = c < fitted_classes ? fit->points[static_cast<size_t>(c)].size(0) : 0;
    if (stored == 0) {
      for (int64_t r = 0; r < rows.numel(); ++r) out[row_index[r]] = -std::numeric_limits<double>::infinity();
      continue;
    }
    const torch::Tensor selected = values.index_select(0, rows).contiguous();
    const RowMatrix queries = ConstRowMap(selected.data_ptr<float>(), selected.size(0), fit->dim);
    const std::vector<double> sums = log_sum_kernels(queries, *fit, c);
    const double offset = -std::log(static_cast<double>(stored)) + kernel_log_normaliser(*fit);
    for (int64_t r = 0; r < rows.numel(); ++r) out[row_index[r]] = sums[static_cast<size_t>(r)] + offset;
  }
  return result;
}

torch::Tensor KernelDensity::score(const DetectorInput& input) const {
  c10::InferenceMode inference;
  check_scoring_batch("KernelDensity", input.batch);
  if (!input.model.has_feature_split()) {
    throw StateError("detector is misconfigured", "KernelDensity needs a model with a features/head split");
  }
  const torch::Tensor features = input.model.features(input.batch).flatten(1);
  return (-log_density(features, input.logits.argmax(1))).to(torch::kFloat32);
}

torch::Tensor KernelDensity::differentiable_score(const torch::Tensor& batch, const Model& model) const {
  const auto fit = std::atomic_load(&fit_);
  if (!fit) throw StateError("detector is not fitted", "KernelDensity: call fit() or load() first");
  check_scoring_batch("KernelDensity", batch);
  const torch::Tensor features = model.features(batch).flatten(1).to(torch::kFloat32);
  const torch::Tensor classes = model.head(features).argmax(1).detach();
  torch::Tensor log_density = torch::full({batch.size(0)}, -std::numeric_limits<float>::infinity(), features.options());
  const double inverse_two_sigma_sq = 1.0 / (2.0 * fit->bandwidth * fit->bandwidth);
  for (int64_t c = 0; c < static_cast<int64_t>(fit->points.size()); ++c) {
    const torch::Tensor rows = torch::nonzero(classes == c).flatten();
    const int64_t stored = fit->points[static_cast<size_t>(c)].size(0);
    if (rows.numel() == 0 || stored == 0) continue;
    const torch::Tensor q = features.index_select(0, rows);
    const torch::Tensor& p = fit->points[static_cast<size_t>(c)];
    const torch::Tensor d2 =
        (q.pow(2).sum(1, true) + fit->square_norms[static_cast<size_t>(c)].unsqueeze(0) - 2.0 * q.matmul(p.t()))
            .clamp_min(0.0);
    const torch::Tensor values = torch::logsumexp(-d2 * inverse_two_sigma_sq, 1) -
                                 std::log(static_cast<double>(stored)) + kernel_log_normaliser(*fit);
    log_density = log_density.index_put({rows}, values);
  }
  return -log_density;
}

void KernelDensity::save_state(torch::serialize::OutputArchive& archive) const {
  const auto fit = std::atomic_load(&fit_);
  if (!fit) throw StateError("detector is not fitted", "KernelDensity: nothing to save before fit()");
  archive.write("kde_bandwidth", c10::IValue(fit->bandwidth));
  archive.write("kde_classes", c10::IValue(static_cast<int64_t>(fit->points.size())));
  for (size_t c = 0; c < fit->points.size(); ++c) {
    archive.write("kde_class_" + std::to_string(c), fit->points[c], /*is_buffer=*/true);
  }
}

void KernelDensity::load_state(torch::serialize::InputArchive& archive) {
  c10::IValue bandwidth, classes;
  if (!archive.try_read("kde_bandwidth", bandwidth) || !bandwidth.isDouble() || !std::isfinite(bandwidth.toDouble()) ||
      bandwidth.toDouble() <= 0.0 || !archive.try_read("kde_classes", classes) || !classes.isInt() ||
      classes.toInt() < 1 || classes.toInt() > 100000) {
    throw IoError("detector file is corrupt", "kernel density: bad bandwidth or class count");
  }
  std::vector<torch::Tensor> points;
  for (int64_t c = 0; c < classes.toInt(); ++c) {
    torch::Tensor p;
    if (!archive.try_read("kde_class_" + std::to_string(c), p, /*is_buffer=*/true) || p.dim() != 2 ||
        p.scalar_type() != torch::kFloat32 || p.size(1) == 0 || (!points.empty() && p.size(1) != points[0].size(1)) ||
        !torch::isfinite(p).all().item<bool>()) {
      throw IoError("detector file is corrupt", "kernel density: bad features of class " + std::to_string(c));
    }
    points.push_back(p.contiguous());
  }
  options_.bandwidth(bandwidth.toDouble());
  std::atomic_store(&fit_, make_fit(bandwidth.toDouble(), std::move(points)));
}

// ---------------------------------------------------------------- LogisticRegression

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

// ---------------------------------------------------------------- UncertaintyDensity

UncertaintyDensity::UncertaintyDensity(std::shared_ptr<McDropout> uncertainty, std::shared_ptr<KernelDensity> density,
                                       LogisticRegressionOptions options)
    : uncertainty_(std::move(uncertainty)), density_(std::move(density)), regression_(options) {
  if (!uncertainty_ || !density_) throw OptionError("UncertaintyDensity: both detectors must be non-null");
}

std::string UncertaintyDensity::describe() const {
  std::ostringstream out;
  out << "UncertaintyDensity(" << uncertainty_->describe() << " + " << density_->describe();
  if (is_fitted()) {
    out << ", weights=[" << regression_.weights()[0] << ", " << regression_.weights()[1]
        << "], bias=" << regression_.bias();
  } else {
    out << ", not fitted";
  }
  out << (is_calibrated() ? ", threshold=" + format_double(threshold()) + ")" : ", uncalibrated)");
  return out.str();
}

torch::Tensor UncertaintyDensity::features(const torch::Tensor& batch, const torch::Tensor& logits,
                                           const Model& model) const {
  c10::InferenceMode inference;
  const torch::Tensor u = uncertainty_->score(DetectorInput{batch, logits, model}).to(torch::kFloat64);
  const torch::Tensor log_k = -density_->score(DetectorInput{batch, logits, model}).to(torch::kFloat64);
  return torch::stack({u, log_k}, 1);
}

CombinerFitReport UncertaintyDensity::fit(const Model& model, const torch::Tensor& clean, const torch::Tensor& noisy,
                                          const torch::Tensor& adversarial, int64_t batch_size) {
  require(batch_size >= 1, "UncertaintyDensity::fit", "batch_size must be at least 1", batch_size);
  if (!density_->is_fitted()) {
    throw StateError("detector is not fitted", "UncertaintyDensity::fit: fit the KernelDensity first");
  }
  auto check = [](const torch::Tensor& t, const char* what, bool may_be_empty) {
    if (!t.defined() || t.dim() != 4 || (!may_be_empty && t.size(0) == 0)) {
      throw OptionError(std::string("UncertaintyDensity::fit: ") + what + " must be an N×C×H×W batch" +
                        (may_be_empty ? "" : " with N >= 1"));
    }
  };
  check(clean, "clean", false);
  check(adversarial, "adversarial", false);
  const bool with_noisy = noisy.defined() && noisy.numel() > 0;
  if (with_noisy) check(noisy, "noisy", false);
  auto features_of = [&](const torch::Tensor& images) {
    std::vector<torch::Tensor> parts;
    c10::InferenceMode inference;
    for (int64_t start = 0; start < images.size(0); start += batch_size) {
      const torch::Tensor chunk = images.slice(0, start, start + batch_size);
      parts.push_back(features(chunk, model.logits(chunk), model));
    }
    return torch::cat(parts);
  };
  const torch::Tensor negatives =
      with_noisy ? torch::cat({features_of(clean), features_of(noisy)}) : features_of(clean);
  const torch::Tensor positives = features_of(adversarial);
  const torch::Tensor x = torch::cat({negatives, positives});
  if (!torch::isfinite(x).all().item<bool>()) {
    throw StateError("detector produced non-finite scores", "UncertaintyDensity::fit: a feature is not finite");
  }
  // z-normalisation over the whole training set (scikit-learn's scale(), as in the paper's code).
  const torch::Tensor mean = x.mean(0);
  torch::Tensor scale = x.std(0, /*unbiased=*/false);
  scale = torch::where(scale > 0, scale, torch::ones_like(scale));
  const torch::Tensor y =
      torch::cat({torch::zeros({negatives.size(0)}, torch::kInt64), torch::ones({positives.size(0)}, torch::kInt64)});
  LogisticRegression regression = regression_;
  CombinerFitReport report;
  report.iterations = regression.fit((x - mean) / scale, y);
  report.negatives = negatives.size(0);
  report.positives = positives.size(0);
  const torch::Tensor probability = regression.predict_probability((x - mean) / scale);
  report.training_auc = eval::roc_auc(probability.narrow(0, 0, negatives.size(0)),
                                      probability.narrow(0, negatives.size(0), positives.size(0)));
  regression_ = regression;
  for (int k = 0; k < 2; ++k) {
    mean_[k] = mean[k].item<double>();
    scale_[k] = scale[k].item<double>();
  }
  return report;
}

torch::Tensor UncertaintyDensity::score(const DetectorInput& input) const {
  if (!is_fitted()) throw StateError("detector is not fitted", "UncertaintyDensity: call fit() or load() first");
  const torch::Tensor x = features(input.batch, input.logits, input.model);
  const torch::Tensor mean = torch::tensor({mean_[0], mean_[1]}, torch::kFloat64);
  const torch::Tensor scale = torch::tensor({scale_[0], scale_[1]}, torch::kFloat64);
  return regression_.predict_probability((x - mean) / scale).to(torch::kFloat32);
}

torch::Tensor UncertaintyDensity::differentiable_score(const torch::Tensor& batch, const Model& model) const {
  if (!is_fitted()) throw StateError("detector is not fitted", "UncertaintyDensity: call fit() or load() first");
  const torch::Tensor u = uncertainty_->differentiable_score(batch, model);
  const torch::Tensor log_k = -density_->differentiable_score(batch, model);
  const auto& w = regression_.weights();
  const torch::Tensor z =
      w[0] * (u - mean_[0]) / scale_[0] + w[1] * (log_k - mean_[1]) / scale_[1] + regression_.bias();
  return torch::sigmoid(z);
}

void UncertaintyDensity::save_state(torch::serialize::OutputArchive& archive) const {
  if (!is_fitted()) throw StateError("detector is not fitted", "UncertaintyDensity: nothing to save before fit()");
  const auto& w = regression_.weights();
  archive.write(
      "combiner",
      torch::tensor({mean_[0], mean_[1], scale_[0], scale_[1], w[0], w[1], regression_.bias()}, torch::kFloat64),
      /*is_buffer=*/true);
  torch::serialize::OutputArchive density;
  save_state_of(*density_, density);
  archive.write("density", density);
}

void UncertaintyDensity::load_state(torch::serialize::InputArchive& archive) {
  torch::Tensor combiner;
  if (!archive.try_read("combiner", combiner, /*is_buffer=*/true) || combiner.dim() != 1 || combiner.numel() != 7 ||
      combiner.scalar_type() != torch::kFloat64 || !torch::isfinite(combiner).all().item<bool>() ||
      combiner[2].item<double>() <= 0 || combiner[3].item<double>() <= 0) {
    throw IoError("detector file is corrupt", "uncertainty-density: bad combiner parameters");
  }
  torch::serialize::InputArchive density;
  if (!archive.try_read("density", density)) {
    throw IoError("detector file is corrupt", "uncertainty-density: no density state");
  }
  load_state_of(*density_, density);
  const auto c = combiner.accessor<double, 1>();
  regression_.set_parameters({c[4], c[5]}, c[6]);
  mean_[0] = c[0];
  mean_[1] = c[1];
  scale_[0] = c[2];
  scale_[1] = c[3];
}

torch::Tensor noisy_counterparts(const torch::Tensor& clean, const torch::Tensor& adversarial, uint64_t seed,
                                 double clip_min, double clip_max) {
  if (!clean.defined() || !adversarial.defined() || clean.sizes() != adversarial.sizes() || clean.dim() < 2) {
    throw OptionError("noisy_counterparts: clean and adversarial must be batches of the same shape");
  }
  require(std::isfinite(clip_min) && std::isfinite(clip_max) && clip_min < clip_max, "noisy_counterparts",
          "need finite clip_min < clip_max", clip_max - clip_min);
  torch::Generator generator = at::detail::createCPUGenerator(seed);
  const torch::Tensor x = clean.detach().to(torch::kFloat32);
  const torch::Tensor target_norm = (adversarial.detach().to(torch::kFloat32) - x).flatten(1).norm(2, 1);
  const torch::Tensor noise = torch::randn(x.sizes(), generator, x.options());
  const torch::Tensor noise_norm = noise.flatten(1).norm(2, 1).clamp_min(1e-12);
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  return (x + noise * (target_norm / noise_norm).view(shape)).clamp(clip_min, clip_max);
}

// ---------------------------------------------------------------- FeatureSqueezing

FeatureSqueezing::FeatureSqueezing(std::vector<std::shared_ptr<const Preprocessor>> squeezers)
    : squeezers_(std::move(squeezers)) {
  if (squeezers_.empty()) throw OptionError("FeatureSqueezing: need at least one squeezer");
  for (const auto& s : squeezers_) {
    if (!s) throw OptionError("FeatureSqueezing: a squeezer is null");
  }
}

FeatureSqueezing FeatureSqueezing::for_grayscale() {
  return FeatureSqueezing({std::make_shared<preprocess::BitDepth>(preprocess::BitDepthOptions(1)),
                           std::make_shared<preprocess::MedianSmoothing>(preprocess::MedianSmoothingOptions(2))});
}

std::string FeatureSqueezing::describe() const {
  std::string text = "FeatureSqueezing(";
  for (size_t i = 0; i < squeezers_.size(); ++i) text += (i ? ", " : "") + squeezers_[i]->describe();
  text += is_calibrated() ? "; threshold=" + format_double(threshold()) + ")" : "; uncalibrated)";
  return text;
}

torch::Tensor FeatureSqueezing::score(const DetectorInput& input) const {
  c10::InferenceMode inference;
  check_scoring_batch("FeatureSqueezing", input.batch);
  const torch::Tensor original = torch::softmax(input.logits.to(torch::kFloat32), 1);
  torch::Tensor largest;
  for (const auto& squeezer : squeezers_) {
    const torch::Tensor squeezed =
        torch::softmax(input.model.logits(squeezer->apply(input.batch)).to(torch::kFloat32), 1);
    const torch::Tensor distance = (original - squeezed).abs().sum(1);
    largest = largest.defined() ? torch::maximum(largest, distance) : distance;
  }
  return largest;
}

torch::Tensor FeatureSqueezing::differentiable_score(const torch::Tensor& batch, const Model& model) const {
  check_scoring_batch("FeatureSqueezing", batch);
  const torch::Tensor original = torch::softmax(model.logits(batch).to(torch::kFloat32), 1);
  torch::Tensor largest;
  for (const auto& squeezer : squeezers_) {
    const torch::Tensor squeezed =
        torch::softmax(model.logits(squeezer->apply_differentiable(batch)).to(torch::kFloat32), 1);
    const torch::Tensor distance = (original - squeezed).abs().sum(1);
    largest = largest.defined() ? torch::maximum(largest, distance) : distance;
  }
  return largest;
}

}  // namespace detect

// ---------------------------------------------------------------- eval metrics

namespace eval {

namespace {

std::vector<double> finite_values(const torch::Tensor& scores, const char* what) {
  if (!scores.defined() || scores.numel() == 0) {
    throw OptionError(std::string("detector metrics: no ") + what + " scores");
  }
  const torch::Tensor values = scores.detach().to(torch::kFloat64).flatten().contiguous();
  if (!torch::isfinite(values).all().item<bool>()) {
    throw OptionError(std::string("detector metrics: ") + what + " scores must be finite");
  }
  return std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
}

}  // namespace

RocCurve roc_curve(const torch::Tensor& negative_scores, const torch::Tensor& positive_scores) {
  const std::vector<double> negatives = finite_values(negative_scores, "negative");
  const std::vector<double> positives = finite_values(positive_scores, "positive");
  std::vector<std::pair<double, bool>> all;  // (score, is_positive)
  all.reserve(negatives.size() + positives.size());
  for (double v : negatives) all.emplace_back(v, false);
  for (double v : positives) all.emplace_back(v, true);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  const double n_neg = static_cast<double>(negatives.size());
  const double n_pos = static_cast<double>(positives.size());
  RocCurve curve;
  curve.fpr.push_back(0.0);
  curve.tpr.push_back(0.0);
  curve.thresholds.push_back(std::numeric_limits<double>::infinity());
  double false_positives = 0, true_positives = 0;
  for (size_t i = 0; i < all.size();) {
    const double threshold = all[i].first;
    // All samples tied at this score enter together: one point per distinct score.
    for (; i < all.size() && all[i].first == threshold; ++i) (all[i].second ? true_positives : false_positives) += 1;
    const double fpr = false_positives / n_neg, tpr = true_positives / n_pos;
    curve.auc += (fpr - curve.fpr.back()) * (tpr + curve.tpr.back()) / 2.0;
    curve.fpr.push_back(fpr);
    curve.tpr.push_back(tpr);
    curve.thresholds.push_back(threshold);
  }
  return curve;
}

double roc_auc(const torch::Tensor& negative_scores, const torch::Tensor& positive_scores) {
  // Mann–Whitney U from mid-ranks (ties get the average rank).
  const std::vector<double> negatives = finite_values(negative_scores, "negative");
  const std::vector<double> positives = finite_values(positive_scores, "positive");
  std::vector<std::pair<double, bool>> all;
  for (double v : negatives) all.emplace_back(v, false);
  for (double v : positives) all.emplace_back(v, true);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  double positive_rank_sum = 0.0;
  for (size_t i = 0; i < all.size();) {
    size_t j = i;
    while (j < all.size() && all[j].first == all[i].first) ++j;
    const double mid_rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2.0;
    for (size_t k = i; k < j; ++k) {
      if (all[k].second) positive_rank_sum += mid_rank;
    }
    i = j;
  }
  const double n_pos = static_cast<double>(positives.size());
  const double n_neg = static_cast<double>(negatives.size());
  return (positive_rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg);
}

DetectionAtFpr detection_at_fpr(const torch::Tensor& negative_scores, const torch::Tensor& positive_scores,
                                double target_fpr) {
  require(target_fpr >= 0.0 && target_fpr < 1.0, "detection_at_fpr", "target false-positive rate must be in [0, 1)",
          target_fpr);
  std::vector<double> negatives = finite_values(negative_scores, "negative");
  const std::vector<double> positives = finite_values(positive_scores, "positive");
  std::sort(negatives.begin(), negatives.end());
  const auto n = static_cast<int64_t>(negatives.size());
  const auto allowed = static_cast<int64_t>(std::floor(target_fpr * static_cast<double>(n)));
  DetectionAtFpr result;
  result.threshold = negatives[static_cast<size_t>(n - 1 - allowed)];
  const auto above = [&](const std::vector<double>& v) {
    return static_cast<double>(std::count_if(v.begin(), v.end(), [&](double s) { return s > result.threshold; })) /
           static_cast<double>(v.size());
  };
  result.fpr = above(negatives);
  result.detection_rate = above(positives);
  return result;
}

}  // namespace eval

// ---------------------------------------------------------------- detector-aware attack

namespace attack {

LogitsFn detector_aware(LogitsFn classifier, const Detector& detector, const Model& model, double scale,
                        LogitsFn preprocess) {
  require(std::isfinite(scale) && scale > 0.0, "detector_aware", "scale must be finite and > 0", scale);
  if (!classifier) throw OptionError("detector_aware: classifier is empty");
  const Detector* target = &detector;
  return [classifier = std::move(classifier), target, model, scale,
          preprocess = std::move(preprocess)](const torch::Tensor& x) {
    const torch::Tensor logits = classifier(x);
    const torch::Tensor seen = preprocess ? preprocess(x) : x;
    const torch::Tensor margin = (target->differentiable_score(seen, model) - target->threshold()).to(logits.dtype());
    const torch::Tensor flagged_logit = std::get<0>(logits.max(1)) + scale * margin;
    return torch::cat({logits, flagged_logit.unsqueeze(1)}, 1);
  };
}

}  // namespace attack

}  // namespace parry

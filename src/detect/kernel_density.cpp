// detect::KernelDensity: Gaussian kernel density of last-layer features per class (Feinman et al. 2017).
#include "parry/detect/kernel_density.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "detect/scoring.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detail/format.hpp"
#include "parry/detail/require.hpp"

namespace parry::detect {

using detail::check_scoring_batch;
using detail::repeats_along_batch;
using parry::detail::format_number;
using parry::detail::require;

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
  out << (is_calibrated() ? ", threshold=" + format_number(threshold()) + ")" : ", uncalibrated)");
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
  torch::Tensor features;
  {
    c10::InferenceMode inference;
    features = parry::detail::map_chunks(images, batch_size,
                                         [&](const torch::Tensor& chunk) { return model.features(chunk).flatten(1); });
  }
  fit_features(features, labels);
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
  parry::detail::for_each_chunk(stored, kBlock, [&](int64_t start, int64_t end) {
    const int64_t width = end - start;
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
  });
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

}  // namespace parry::detect

// eval:: metrics: the Wilson interval of a proportion (and the normal quantile
// it needs); detector metrics: ROC curve, ROC-AUC (Mann–Whitney U), detection
// rate at a false-positive rate.
#include "parry/eval/metrics.hpp"

#include "parry/certify/statistics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "parry/detail/require.hpp"

namespace parry::eval {

using parry::detail::require;

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

double normal_quantile(double p) { return certify::normal_quantile(p); }

Interval wilson_interval(int64_t successes, int64_t trials, double confidence) {
  require(trials >= 0, "wilson_interval", "trials must be non-negative", trials);
  require(successes >= 0 && successes <= trials, "wilson_interval",
          "successes must be in [0, trials = " + std::to_string(trials) + "]", successes);
  require(confidence > 0.0 && confidence < 1.0, "wilson_interval", "confidence must be in (0, 1)", confidence);
  if (trials == 0) return {0.0, 1.0};
  const double z = normal_quantile(1.0 - (1.0 - confidence) / 2.0);
  const double n = static_cast<double>(trials), p = static_cast<double>(successes) / n, z2 = z * z;
  const double denominator = 1.0 + z2 / n;
  const double center = (p + z2 / (2.0 * n)) / denominator;
  const double half = z * std::sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denominator;
  // Exact bounds at the ends (the formula gives them up to rounding).
  return {successes == 0 ? 0.0 : std::max(0.0, center - half),
          successes == trials ? 1.0 : std::min(1.0, center + half)};
}

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

}  // namespace parry::eval

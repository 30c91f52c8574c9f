// parry::eval metrics: the confidence interval of a proportion (every rate of
// the report carries one) and, for detectors, ROC curve, ROC-AUC and
// detection rate at a false-positive rate. Detector scores: higher means
// "more likely adversarial"; negatives are clean inputs, positives
// adversarial ones.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace parry::eval {

/// A two-sided confidence interval for a proportion, in [0, 1].
struct Interval {
  double low = 0.0;
  double high = 1.0;
};

/// The quantile function of the standard normal distribution, Φ⁻¹(p), for p
/// in (0, 1): certify::normal_quantile (Boost.Math), here for the intervals.
/// @throws parry::OptionError unless 0 < p < 1.
double normal_quantile(double p);

/// The Wilson score interval (E. B. Wilson, "Probable inference, the law of
/// succession, and statistical inference", JASA 1927) of `successes` out of
/// `trials` at `confidence`: with p̂ = successes/trials, n = trials and
/// z = Φ⁻¹(1 − (1 − confidence)/2) (1.959964 for 95%),
///   center     = (p̂ + z²/2n) / (1 + z²/n)
///   half-width = z·√(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n)
/// and the interval is center ± half-width (inside [0, 1] by construction;
/// clipped against rounding). Unlike p̂ ± z·√(p̂(1 − p̂)/n) it keeps its
/// coverage near 0 and 1 and for small n: 0 of 10 gives [0, 0.278], not [0, 0].
/// @param successes in [0, trials]
/// @param trials >= 0; 0 trials give the uninformative {0, 1}
/// @param confidence in (0, 1), default 0.95
/// @throws parry::OptionError for arguments outside these ranges.
Interval wilson_interval(int64_t successes, int64_t trials, double confidence = 0.95);

/// ROC curve points, from (0, 0) to (1, 1), one per distinct threshold.
struct RocCurve {
  std::vector<double> fpr;         ///< false-positive rate at each point
  std::vector<double> tpr;         ///< true-positive (detection) rate
  std::vector<double> thresholds;  ///< flag when score >= threshold (+inf at the first point)
  double auc = 0.0;                ///< area under the curve (trapezoidal; ties count 1/2)
};

/// The ROC curve of a detector from its scores on negatives and positives
/// (any shape, flattened; finite). @throws parry::OptionError if either is empty or not finite.
RocCurve roc_curve(const torch::Tensor& negative_scores, const torch::Tensor& positive_scores);

/// ROC-AUC = P(score(pos) > score(neg)) + ½ P(equal): the Mann–Whitney
/// statistic, equal to the trapezoidal area of roc_curve().
double roc_auc(const torch::Tensor& negative_scores, const torch::Tensor& positive_scores);

/// Detection at a false-positive budget.
struct DetectionAtFpr {
  double threshold = 0.0;       ///< flag when score > threshold
  double fpr = 0.0;             ///< achieved on the negatives (≤ target)
  double detection_rate = 0.0;  ///< fraction of positives flagged
};

/// Chooses the threshold from the negatives exactly as Detector::calibrate
/// does (at most ⌊target·N⌋ negatives strictly above it) and reports the
/// fraction of positives above it. @throws parry::OptionError on bad input.
DetectionAtFpr detection_at_fpr(const torch::Tensor& negative_scores, const torch::Tensor& positive_scores,
                                double target_fpr);

}  // namespace parry::eval

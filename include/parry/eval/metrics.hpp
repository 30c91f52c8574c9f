// parry::eval metrics for detectors: ROC curve, ROC-AUC, detection rate at a
// false-positive rate. Scores: higher means "more likely adversarial";
// negatives are clean inputs, positives adversarial ones.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace parry::eval {

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

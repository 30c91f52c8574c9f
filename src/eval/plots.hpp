// The report's PNG plots, drawn with OpenCV. Internal: not installed.
#pragma once

#include <opencv2/core.hpp>

#include <string>

#include "parry/detail/format.hpp"
#include "parry/eval/evaluation.hpp"

namespace parry::eval::detail {

inline std::string fixed(double v, int digits) {
  return parry::detail::format_fixed(v, digits);
}
inline std::string percent(double v) {
  return fixed(100.0 * v, 1) + "%";
}

/// Accuracy (right label or flagged) against ε, solid non-adaptive, dashed adaptive.
cv::Mat plot_accuracy(const Evaluation& e);
/// ROC curves of every detector.
cv::Mat plot_roc(const Evaluation& e);
/// Clean and adversarial example images side by side.
cv::Mat plot_examples(const Evaluation& e);
/// Latency and throughput per defense.
cv::Mat plot_latency(const Evaluation& e);
/// Certified accuracy against L2 radius per σ (solid steps), with the
/// attacked accuracy at the table's radii (dashed, circles).
cv::Mat plot_certified(const Evaluation& e);
/// PNG-encoded bytes of an image. @throws parry::IoError.
std::string png_bytes(const cv::Mat& img);

}  // namespace parry::eval::detail

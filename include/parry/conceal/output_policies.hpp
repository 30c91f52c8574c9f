// conceal:: output policies: what a caller learns from a prediction.
//
// Threat model: each extra bit returned helps a black-box attacker. Full
// probability vectors enable score-based attacks (Square, NES); rounding
// coarsens them; top-k hides the rest; label-only leaves only decision-based
// attacks (HopSkipJump), which need many more queries. None of these stops a
// white-box attacker or one with a good surrogate model.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "parry/core/output_policy.hpp"

namespace parry::conceal {

/// Only the top-1 label. The default for a deployed Guard (parry::LabelOnly, core).
using LabelOnly = parry::LabelOnly;

/// Label plus the k most probable classes and their probabilities (N×k).
class TopK final : public OutputPolicy {
 public:
  /// @param k number of classes revealed, at least 1.
  explicit TopK(int64_t k) : k_(k) {
    if (k < 1) throw OptionError("TopK: k must be at least 1, but got " + std::to_string(k));
  }
  void fill(const torch::Tensor& logits, Response& response) const override {
    parry::detail::fill_labels(logits, response);
    const auto k = std::min<int64_t>(k_, logits.size(1));
    auto [values, indices] = torch::softmax(logits.to(torch::kFloat32), 1).topk(k, 1);
    response.scores = values;
    response.top_classes = indices;
  }
  std::string describe() const override { return "TopK(k=" + std::to_string(k_) + ")"; }

 private:
  int64_t k_;
};

/// Label plus all probabilities rounded to `decimals` decimal places.
class RoundedScores final : public OutputPolicy {
 public:
  /// @param decimals in [0, 6].
  explicit RoundedScores(int decimals) : decimals_(decimals) {
    if (decimals < 0 || decimals > 6) {
      throw OptionError("RoundedScores: decimals must be in [0, 6], but got " + std::to_string(decimals));
    }
  }
  void fill(const torch::Tensor& logits, Response& response) const override {
    parry::detail::fill_labels(logits, response);
    const double scale = std::pow(10.0, decimals_);
    response.scores = torch::round(torch::softmax(logits.to(torch::kFloat32), 1) * scale) / scale;
  }
  std::string describe() const override { return "RoundedScores(decimals=" + std::to_string(decimals_) + ")"; }

 private:
  int decimals_;
};

/// Label plus the full probability vector. For internal callers only.
class Full final : public OutputPolicy {
 public:
  void fill(const torch::Tensor& logits, Response& response) const override {
    parry::detail::fill_labels(logits, response);
    response.scores = torch::softmax(logits.to(torch::kFloat32), 1);
  }
  std::string describe() const override { return "Full"; }
};

}  // namespace parry::conceal

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
#include "parry/detail/arg.hpp"

namespace parry::conceal {

/// Only the top-1 label. The default for a deployed Guard (parry::LabelOnly, core).
using LabelOnly = parry::LabelOnly;

struct TopKOptions {
  PARRY_OPTIONS(TopKOptions);
  /// Number of classes revealed (all of them if there are fewer).
  PARRY_CHECKED_ARG(int64_t, k, 3, v >= 1, "must be at least 1");
};

/// Label plus the k most probable classes and their probabilities (N×k).
class TopK final : public OutputPolicy {
 public:
  /// @param options how many classes are revealed.
  explicit TopK(TopKOptions options) : k_(options.k()) {}
  /// @param k number of classes revealed, at least 1. @throws parry::OptionError otherwise.
  explicit TopK(int64_t k) : TopK(TopKOptions().k(k)) {}
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

struct RoundedScoresOptions {
  PARRY_OPTIONS(RoundedScoresOptions);
  /// Decimal places kept of every probability.
  PARRY_CHECKED_ARG(int, decimals, 2, v >= 0 && v <= 6, "must be in [0, 6]");
};

/// Label plus all probabilities rounded to `decimals` decimal places.
class RoundedScores final : public OutputPolicy {
 public:
  /// @param options the decimal places kept.
  explicit RoundedScores(RoundedScoresOptions options) : decimals_(options.decimals()) {}
  /// @param decimals in [0, 6]. @throws parry::OptionError otherwise.
  explicit RoundedScores(int decimals) : RoundedScores(RoundedScoresOptions().decimals(decimals)) {}
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
  /// Everything, certified radii included.
  bool shows_certified_radius() const override { return true; }
};

}  // namespace parry::conceal

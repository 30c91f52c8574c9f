// detect::McDropout: Monte-Carlo dropout uncertainty (Feinman et al. 2017), fast and replicated paths.
#include "parry/detect/mc_dropout.hpp"

#include <algorithm>
#include <cmath>

#include "detect/scoring.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detail/format.hpp"

namespace parry::detect {

using detail::check_scoring_batch;
using detail::repeats_along_batch;
using parry::detail::format_number;

McDropout::McDropout(const Model& model, McDropoutOptions options)
    : options_(options), stochastic_(model.with_active_dropout()) {
  fast_path_ = options_.fast_path() && stochastic_.has_feature_split();
}

std::string McDropout::describe() const {
  std::string text = "McDropout(T=" + std::to_string(options_.samples()) +
                     (fast_path_ ? ", features once + batched head" : ", replicated batch");
  text += is_calibrated() ? ", threshold=" + format_number(threshold()) + ")" : ", uncalibrated)";
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
    parry::detail::for_each_chunk(samples, passes_per_call, [&](int64_t done, int64_t end) {
      logits.push_back(stochastic_.head(features.repeat(repeats_along_batch(features, end - done))));
    });
  } else {
    parry::detail::for_each_chunk(samples, passes_per_call, [&](int64_t done, int64_t end) {
      logits.push_back(stochastic_.logits(batch.repeat(repeats_along_batch(batch, end - done))));
    });
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

}  // namespace parry::detect

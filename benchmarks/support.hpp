// Helpers shared by the benchmark programs: wall time and running attacks or
// detectors over a large batch in chunks (bounded memory, same results).
#pragma once

#include <chrono>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#include "parry/detail/chunks.hpp"
#include "parry/parry.hpp"

namespace parry::bench {

/// The first `count` images of `images` that `model` classifies correctly
/// (searched among the first 4·count), and their labels.
inline std::pair<torch::Tensor, torch::Tensor> correctly_classified(const Model& model, const torch::Tensor& images,
                                                                    const torch::Tensor& labels, int64_t count) {
  torch::NoGradGuard no_grad;
  const auto head = images.slice(0, 0, 4 * count);
  const auto correct =
      model.logits(head).argmax(1).eq(labels.slice(0, 0, 4 * count)).nonzero().flatten().slice(0, 0, count);
  return {head.index_select(0, correct), labels.index_select(0, correct)};
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// A detector's scores on x (N×C×H×W), computed `chunk` rows at a time.
inline torch::Tensor chunked_scores(const Detector& detector, const torch::Tensor& x, const Model& model,
                                    int64_t chunk = 256) {
  return detail::map_chunks(x, chunk, [&](const torch::Tensor& part) { return detector.score(part, model); });
}

using AttackFn = std::function<attack::AttackResult(const torch::Tensor&, const torch::Tensor&)>;

/// Runs `run` on (x, y) `chunk` rows at a time and concatenates the
/// adversarial examples, success flags and norms.
inline attack::AttackResult run_chunked(const AttackFn& run, const torch::Tensor& x, const torch::Tensor& y,
                                        int64_t chunk = 250) {
  std::vector<torch::Tensor> adversarial, success, norm;
  detail::for_each_chunk(x.size(0), chunk, [&](int64_t begin, int64_t end) {
    const auto r = run(x.slice(0, begin, end), y.slice(0, begin, end));
    adversarial.push_back(r.adversarial);
    success.push_back(r.success);
    norm.push_back(r.norm);
  });
  attack::AttackResult all;
  all.adversarial = torch::cat(adversarial);
  all.success = torch::cat(success);
  all.norm = torch::cat(norm);
  return all;
}

}  // namespace parry::bench

// What the detectors share: input checks for scoring. Internal: not installed.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "parry/core/errors.hpp"

namespace parry::detect::detail {

// Rejects batches a detector cannot score: undefined, rank 0 or empty.
inline void check_scoring_batch(const std::string& who, const torch::Tensor& batch) {
  if (!batch.defined() || batch.dim() < 2 || batch.size(0) == 0) {
    throw InputError("input cannot be scored", who + ": need a non-empty batch of rank >= 2");
  }
}

inline std::vector<int64_t> repeats_along_batch(const torch::Tensor& t, int64_t times) {
  std::vector<int64_t> reps(static_cast<size_t>(t.dim()), 1);
  reps[0] = times;
  return reps;
}

}  // namespace parry::detect::detail

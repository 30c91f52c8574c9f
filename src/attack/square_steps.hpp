// Internal: the steps of the Square Attack that attack::square and
// attack::oars_square share (defined in square.cpp).
#pragma once

#include <torch/torch.h>

#include "parry/attack/attack.hpp"

namespace parry::attack::detail {

/// Margin loss per sample from log-probabilities N×K: log p_y − max_{i≠y} log p_i
/// (targeted: max_{i≠t} log p_i − log p_t); negative once the attack succeeds.
torch::Tensor margin_loss(const torch::Tensor& log_scores, const torch::Tensor& y, bool targeted);

/// Replaces, in every candidate (N×C×H×W, in place), one random side×side
/// window by the clean image ±ε (one sign per channel), clipped to the box.
/// A window that leaves the candidate unchanged is drawn again, up to 10 times.
void place_squares(torch::Tensor& candidates, const torch::Tensor& originals, int64_t side, double eps,
                   const GradientSettings& range, torch::Generator& gen);

/// Log-probabilities (float32, clamped at the smallest normal float) from
/// class probabilities.
torch::Tensor log_scores(const torch::Tensor& scores);

}  // namespace parry::attack::detail

// parry::DecisionRule: how a Guard decides when "the argmax of one forward
// pass" is not the rule. A randomized-smoothing classifier
// (certify::SmoothedDecision) votes over many noisy copies of each input,
// may abstain, and may certify an L2 radius; a Guard with a decision rule
// asks it instead of calling its model once.
//
// Threat model: the rule runs on the preprocessed pixels of the serving path,
// after the gates, validation and preprocessors, and before the output
// policy, which still decides what leaves (scores, radii). An abstention is
// an answer an attacker can provoke (near the decision boundary): it is
// reported as Verdict::Abstained, never as a label.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace parry {

/// A decision rule's answer for a batch of N samples.
struct Decisions {
  /// Per sample: the class, or kNoLabel (-1, parry/core/response.hpp) to abstain.
  std::vector<int64_t> labels;
  /// N×K probabilities the output policy may reveal (for smoothing: the
  /// share of noisy copies the base model put in each class). Rows sum to 1.
  torch::Tensor probabilities;
  /// Per sample: the certified L2 radius in pixel units (0 where the rule
  /// abstained); empty if the rule certifies nothing.
  std::vector<double> certified_radius;
};

class DecisionRule {
 public:
  virtual ~DecisionRule() = default;
  /// Decides for a batch N×C×H×W of preprocessed pixels (on the model's
  /// device). Must be safe to call from many threads at once.
  virtual Decisions decide(const torch::Tensor& batch) const = 0;
  /// One line for reports.
  virtual std::string describe() const = 0;
};

}  // namespace parry

// attack::hop_skip_jump: the decision-based HopSkipJump attack, L2 version
// (Chen, Jordan, Wainwright, "HopSkipJumpAttack: A Query-Efficient
// Decision-Based Attack", IEEE S&P 2020).
//
// Untargeted by default; targeted when given starting images of the target
// classes. It sees only labels, through Guard::predict, so it works against a
// label-only Guard. Per sample: start from a misclassified point (uniform
// noise), then repeat
//   1. binary search between x and the current point to the decision boundary
//      (threshold θ = 1/d^{3/2}),
//   2. estimate the boundary's normal from B_t = B_0·√t random probes at
//      distance δ_t = √d·θ·‖x_t − x‖ (δ = 0.1·range at t = 1), with the
//      paper's baseline subtraction,
//   3. geometric step search: ξ = 2‖x_t − x‖/√t, halved until the step stays
//      adversarial,
// until the query budget is spent. Every kept point is adversarial, so the
// distance to x only shrinks; the result reports the starting distance too.
// Stops and reports if the Guard rejects a query.
#pragma once

#include "parry/attack/attack.hpp"

namespace parry::attack {

struct HopSkipJumpOptions {
  HopSkipJumpOptions();
  /// Queries per sample at most (>= 10; default 5000).
  HopSkipJumpOptions& max_queries(int64_t v);
  /// Probes for the first gradient estimate, B_0 (>= 1; default 100).
  HopSkipJumpOptions& initial_probes(int64_t v);
  /// Cap on probes per estimate (>= 1; default 1000).
  HopSkipJumpOptions& max_probes(int64_t v);
  /// Random noise images tried to find a misclassified start (>= 1; default 100).
  HopSkipJumpOptions& init_tries(int64_t v);
  HopSkipJumpOptions& seed(uint64_t v);
  /// Targeted: y holds target classes; each sample starts from the matching
  /// image of `starting_images` (N×C×H×W), which the model must classify as
  /// the target (e.g. a test image of that class).
  HopSkipJumpOptions& targeted(torch::Tensor starting_images);
  /// Client id used for the queries (throttling is per client).
  HopSkipJumpOptions& client_id(std::string id);

  int64_t max_queries() const { return max_queries_; }
  int64_t initial_probes() const { return initial_probes_; }
  int64_t max_probes() const { return max_probes_; }
  int64_t init_tries() const { return init_tries_; }
  uint64_t seed() const { return seed_; }
  const std::string& client_id() const { return client_id_; }
  bool targeted() const { return starting_images_.defined(); }
  const torch::Tensor& starting_images() const { return starting_images_; }

 private:
  torch::Tensor starting_images_;
  int64_t max_queries_ = 5000;
  int64_t initial_probes_ = 100;
  int64_t max_probes_ = 1000;
  int64_t init_tries_ = 100;
  uint64_t seed_ = 0;
  std::string client_id_ = "hop-skip-jump";
};

/// HopSkipJump (L2) on (x, y) through guard.predict (labels only); untargeted
/// unless options.targeted(). Samples for which no valid start is found keep
/// x (success false). @throws parry::OptionError on bad arguments.
AttackResult hop_skip_jump(const Guard& guard, const torch::Tensor& x, const torch::Tensor& y,
                           const HopSkipJumpOptions& options = HopSkipJumpOptions());

}  // namespace parry::attack

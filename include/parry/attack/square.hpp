// attack::square: the L∞ Square Attack (Andriushchenko, Croce, Flammarion,
// Hein, "Square Attack: a query-efficient black-box adversarial attack via
// random search", ECCV 2020).
//
// Black-box and score-based: it only calls Guard::predict, so throttling,
// gates and the output policy apply and every query is counted. Start: vertical
// stripes of ±ε. Each iteration, per sample not yet fooled: pick a random
// s×s square (s from the paper's schedule, p halving at fixed fractions of
// the budget), set it to ±ε per channel (resampled until it changes), and
// keep the candidate if the margin loss  log p_y − max_{i≠y} log p_i
// (targeted: max_{i≠t} log p_i − log p_t) decreases. A sample is fooled
// when the loss is negative.
//
// It needs class scores: against a label-only Guard it refuses to run (that is
// what label-only answers buy; use a decision-based attack). If the Guard
// rejects a query (throttled), the attack stops and reports it.
#pragma once

#include "parry/attack/attack.hpp"

namespace parry::attack {

struct SquareOptions {
  /// @param epsilon L∞ radius, >= 0.
  explicit SquareOptions(double epsilon = 0.1);
  SquareOptions& epsilon(double v);
  /// Queries per sample at most, >= 1 (default 2000), the initial query included.
  SquareOptions& max_queries(int64_t v);
  /// Initial fraction of pixels changed per square, in (0, 1] (default 0.3).
  SquareOptions& p_init(double v);
  /// true (default): the p schedule is rescaled to the budget, as the
  /// paper's code does for budgets other than 10,000; false: the halvings
  /// stay at the fixed iterations, as AutoAttack runs Square (resc_schedule=False).
  SquareOptions& rescale_schedule(bool on);
  SquareOptions& targeted(bool on);
  SquareOptions& seed(uint64_t v);
  /// Client id used for the queries (throttling is per client).
  SquareOptions& client_id(std::string id);

  double epsilon() const { return epsilon_; }
  int64_t max_queries() const { return max_queries_; }
  double p_init() const { return p_init_; }
  bool rescale_schedule() const { return rescale_schedule_; }
  bool targeted() const { return targeted_; }
  uint64_t seed() const { return seed_; }
  const std::string& client_id() const { return client_id_; }

 private:
  double epsilon_ = 0.1;
  int64_t max_queries_ = 2000;
  double p_init_ = 0.3;
  bool rescale_schedule_ = true;
  bool targeted_ = false;
  uint64_t seed_ = 0;
  std::string client_id_ = "square-attack";
};

/// The paper's schedule: the fraction of pixels per square after `iteration`
/// of a `max_queries` budget (p_init halved at 10, 50, 200, 500, 1000, 2000,
/// 4000, 6000 and 8000 iterations, rescaled to a 10,000-query budget unless
/// `rescale` is false).
double square_fraction(double p_init, int64_t iteration, int64_t max_queries, bool rescale = true);

/// Runs the attack on (x, y) through guard.predict. x must satisfy the Guard's
/// InputSpec; pixel range is the spec's value range.
/// @throws parry::OptionError if the Guard's output policy hides class scores.
AttackResult square(const Guard& guard, const torch::Tensor& x, const torch::Tensor& y,
                    const SquareOptions& options = SquareOptions());

}  // namespace parry::attack

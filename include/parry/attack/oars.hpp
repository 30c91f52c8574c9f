// attack::oars_square, attack::oars_hop_skip_jump: Square and HopSkipJump
// adapted to a stateful defense (a query monitor such as Blacklight) with
// OARS, "Oracle-guided Adaptive Rejection Sampling" (Ryan Feng, Ashish Hooda,
// Neal Mangaokar, Kassem Fawaz, Somesh Jha, Atul Prakash, "Stateful Defenses
// for Machine Learning Models Are Not Yet Secure Against Black-box Attacks",
// ACM CCS 2023, arXiv 2303.06280; constants from the authors' code,
// github.com/nmangaokar/ccs_23_oars_stateful_attacks, configs for
// Blacklight on CIFAR-10).
//
// Threat model. A black-box attacker that calls only Guard::predict, one
// image per request, and reads from each answer whether the service detected
// the query: verdict Flagged, or Rejected with the public reason "flagged"
// (what the monitor's Flag and Reject actions return). It knows that the
// defense is a similarity monitor over its past queries, not its settings
// (quantisation step, window, threshold) nor the fingerprints. It does not
// rotate client ids. Any other refusal (reason "rate_limited", "unavailable",
// ...) stops it: a throttled attacker is slowed down, not adapted. Against
// MonitorAction::Silent it gets no signal and behaves like the attack it
// adapts (it cannot adapt what it cannot see), which is why Silent exists.
//
// The two phases of OARS (paper, section 4):
//   1. adapt the proposal distribution: before attacking, find with the
//      defense's answers the smallest perturbation at which proposals stop
//      being detected — Square: the number of squares changed per proposal,
//      then the smallest square side; HopSkipJump: the L2 radius δ of the
//      gradient-estimation probes — by binary search, sending a few sample
//      proposals per step and keeping a value whose detected fraction is at
//      most a target rate;
//   2. rejection sampling: a proposal that is detected is discarded and drawn
//      again, so the attack moves only on accepted answers. Square gives up
//      after a run of consecutive detected proposals; HopSkipJump drops
//      detected probes from its gradient estimate and draws replacements for
//      a few rounds, stops a boundary search at its first detected query, and
//      on a detected step abandons the iteration (a new gradient estimate),
//      giving up after a few consecutive ones.
// Every image sent counts towards the query budget, answered or refused,
// adaptation probes included.
//
// Deviations from the authors' code, each for Parry's setting: the default
// search ranges are rescaled to 28×28×1 images (Square: 1–100 squares instead
// of 10–100, sides up to the image's side − 1; HopSkipJump: δ in 0.25–4 L2
// instead of 1–2 on 32×32×3); HopSkipJump's δ search probes around the first
// boundary point (where its gradient probes are sent), not around the clean
// image; the searches are integer bisections for Square (the authors bisect a
// real number and truncate); a rejected query also counts as sent when the
// Guard refuses it before the model runs.
#pragma once

#include "parry/attack/hop_skip_jump.hpp"
#include "parry/attack/square.hpp"
#include "parry/detail/arg.hpp"

namespace parry::attack {

/// What an OARS run adds to AttackResult. In an OarsResult, `queries` counts
/// every image sent per sample (answered or refused, adaptation included),
/// `flagged_answers` the answers with verdict Flagged, and
/// `stopped_by_defense` / `stop_reason` a refusal that is not a detection
/// (e.g. "rate_limited") or a run given up after too many detections (reason
/// "flagged").
struct OarsResult : AttackResult {
  /// int64 N: queries per sample that the defense detected (Flagged, or
  /// Rejected with reason "flagged"), adaptation included.
  torch::Tensor detected;
  /// int64 N: queries per sample spent adapting the proposal distribution (phase 1).
  torch::Tensor adaptation_queries;
  /// float N: the learned scale. Square: squares changed per proposal;
  /// HopSkipJump: the probe radius δ (L2, pixel units).
  torch::Tensor scale;
  /// int64 N: Square: the learned smallest square side in pixels; HopSkipJump: 0.
  torch::Tensor min_side;

  /// Detected queries over queries sent, over the whole batch (0 if none sent).
  double detection_rate() const;
};

/// Options of oars_square: the Square Attack it adapts plus the adaptation.
struct OarsSquareOptions {
  PARRY_OPTIONS(OarsSquareOptions);
  /// The attack: ε (L∞, pixel units), budget (every image sent counts),
  /// p schedule, targeted, seed, client id.
  PARRY_ARG(SquareOptions, square) = SquareOptions();
  /// Fewest squares per proposal tried by the search (default 1; paper's
  /// CIFAR config 10).
  PARRY_CHECKED_ARG(int64_t, min_squares, 1, v >= 1, "must be at least 1 square");
  /// Most squares per proposal (default 100, as the paper's config); at least min_squares, checked by oars_square.
  PARRY_CHECKED_ARG(int64_t, max_squares, 100, v >= 1 && v <= 10000, "must lie in [1, 10000] squares");
  /// Bisection steps for the square count (default 10, as the paper's config); 0 = use max_squares.
  PARRY_CHECKED_ARG(int64_t, squares_search_steps, 10, v >= 0 && v <= 64, "must lie in [0, 64]");
  /// Sample proposals per bisection step of the square count (default 5).
  PARRY_CHECKED_ARG(int64_t, squares_samples, 5, v >= 1, "must be at least 1 proposal");
  /// Largest detected fraction of those samples that is accepted (default 0:
  /// none detected, as the paper's config).
  PARRY_CHECKED_ARG(double, squares_detection_rate, 0.0, v >= 0 && v <= 1, "must lie in [0, 1]");
  /// Bisection steps for the smallest square side (default 10); 0 = no
  /// smallest side (the schedule's sides, down to 1).
  PARRY_CHECKED_ARG(int64_t, side_search_steps, 10, v >= 0 && v <= 64, "must lie in [0, 64]");
  /// Sample proposals per bisection step of the side (default 10).
  PARRY_CHECKED_ARG(int64_t, side_samples, 10, v >= 1, "must be at least 1 proposal");
  /// Largest detected fraction accepted for the side (default 0.5, as the paper's config).
  PARRY_CHECKED_ARG(double, side_detection_rate, 0.5, v >= 0 && v <= 1, "must lie in [0, 1]");
  /// Consecutive detected proposals after which a sample is given up
  /// (default 300, as the paper's config).
  PARRY_CHECKED_ARG(int64_t, max_consecutive_detections, 300, v >= 1, "must be at least 1");

 public:
  OarsSquareOptions() = default;
  /// Adapts `square` with the default adaptation.
  explicit OarsSquareOptions(SquareOptions square) : square_(std::move(square)) {}
};

/// Square (L∞) with OARS through guard.predict, one image per request,
/// sample after sample. x must satisfy the Guard's InputSpec (pixel range is
/// its value range); the result stays within ε of x in L∞. Each sample:
/// first query x + vertical stripes of ±ε; phase 1 bisects the square count,
/// then the smallest side, on sample proposals around that first point;
/// phase 2 is Square's random search where each proposal changes that many
/// squares of side max(schedule side, smallest side), a detected proposal is
/// discarded, and the sample is given up after max_consecutive_detections of
/// them in a row. Success: margin loss negative on an accepted answer.
/// @throws parry::OptionError if the output policy hides class scores, or
///   min_squares > max_squares.
OarsResult oars_square(const Guard& guard, const torch::Tensor& x, const torch::Tensor& y,
                       const OarsSquareOptions& options = OarsSquareOptions());

/// Options of oars_hop_skip_jump: the HopSkipJump it adapts plus the adaptation.
struct OarsHopSkipJumpOptions {
  PARRY_OPTIONS(OarsHopSkipJumpOptions);
  /// The attack: budget (every image sent counts), probes, init tries, seed,
  /// client id, targeted starts.
  PARRY_ARG(HopSkipJumpOptions, hop_skip_jump) = HopSkipJumpOptions();
  /// Smallest probe radius δ tried (L2, in units of the pixel range; default 0.25).
  PARRY_CHECKED_ARG(double, min_delta, 0.25, v > 0 && std::isfinite(v), "must be positive and finite (L2)");
  /// Largest probe radius δ (L2; default 4); at least min_delta, checked by oars_hop_skip_jump.
  PARRY_CHECKED_ARG(double, max_delta, 4.0, v > 0 && std::isfinite(v), "must be positive and finite (L2)");
  /// Bisection steps for δ (default 10, as the paper's config); 0 = use max_delta.
  PARRY_CHECKED_ARG(int64_t, delta_search_steps, 10, v >= 0 && v <= 64, "must lie in [0, 64]");
  /// Sample probes per bisection step (default 20).
  PARRY_CHECKED_ARG(int64_t, delta_samples, 20, v >= 1, "must be at least 1 probe");
  /// Largest detected fraction of those probes accepted (default 0.05, as the paper's config).
  PARRY_CHECKED_ARG(double, delta_detection_rate, 0.05, v >= 0 && v <= 1, "must lie in [0, 1]");
  /// Rounds of replacement probes for detected ones per gradient estimate
  /// (default 20, as the paper's config); a partial estimate is used after that.
  PARRY_CHECKED_ARG(int64_t, probe_rounds, 20, v >= 1, "must be at least 1 round");
  /// Consecutive detected step searches after which a sample is given up (default 5).
  PARRY_CHECKED_ARG(int64_t, max_step_detections, 5, v >= 1, "must be at least 1");

 public:
  OarsHopSkipJumpOptions() = default;
  /// Adapts `hop_skip_jump` with the default adaptation.
  explicit OarsHopSkipJumpOptions(HopSkipJumpOptions hop_skip_jump) : hop_skip_jump_(std::move(hop_skip_jump)) {}
};

/// HopSkipJump (L2) with OARS through guard.predict (labels only), one image
/// per request, sample after sample; untargeted unless
/// hop_skip_jump().targeted(). Start as HopSkipJump (a misclassified noise
/// image, detected ones drawn again), binary search to the boundary; phase 1
/// bisects δ with probes of L2 radius δ around that boundary point; phase 2 is
/// HopSkipJump with probes of radius δ and the rejection sampling described
/// in the header. Every kept point is an accepted, adversarial answer, so the
/// distance to x only shrinks. Samples without a valid start keep x (success
/// false). @throws parry::OptionError on bad arguments or min_delta > max_delta.
OarsResult oars_hop_skip_jump(const Guard& guard, const torch::Tensor& x, const torch::Tensor& y,
                              const OarsHopSkipJumpOptions& options = OarsHopSkipJumpOptions());

}  // namespace parry::attack

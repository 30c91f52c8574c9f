// eval::black_box: the black-box rows of the evaluation. Square (score-based,
// L∞) and HopSkipJump (decision-based, L2) attack a defense through
// Guard::predict of its full Guard — gates, validation, preprocessing,
// detectors and output policy — at stated query budgets, on a few images.
//
// What a run is. One attack on one image is one run: a new attacker meeting
// the deployed service. Each run gets a Guard built anew with fresh gates
// (config::DefenseSpec::build_fresh_guard): every throttle bucket full, every
// query monitor's store empty — no benign history, so a monitor only ever
// matches the attacker's own queries, which is the conservative choice for
// the defense (a store pre-filled with other traffic could only add matches).
// The throttles' clock is held still during a run: the attacker sends as fast
// as the service answers and never waits, so it gets each bucket's burst and
// then every query is refused. The figures do not depend on the machine's
// speed; an attacker who waits for refills is slowed, not stopped (Throttle's
// threat model). Each run's query monitors get their own secret salt key,
// drawn from EvaluationSpec::seed and the image's index
// (config::FreshGateSettings::salt_key): unknown to the attacker as a
// deployment's random key is, yet the same evaluation gives the same rows. All queries of a run come from one client id,
// "eval-square" or "eval-hop-skip-jump"; the attacker does not rotate ids.
// The config's own gates are never touched.
//
// What counts as a success. After the run, the attacker's final image (the
// best it holds, also when the gates stopped it) is sent through the Guard
// without gates: the attack succeeds on the image if that answer is a wrong,
// unflagged label, and — for HopSkipJump, a minimum-distortion attack — if
// the L2 distance to the clean image is at most the stated L2 budget. Images
// the model already gets wrong count as successes, as they count against the
// accuracy rows. Square runs only where the output policy reveals every
// class score; elsewhere its row says why it did not run.
//
// Adaptive rows. Square and HopSkipJump do not know the gates. When the
// defense has a QueryMonitor gate (and black_box.adaptive_monitor is on, the
// default), OARS-Square (each ε) and OARS-HopSkipJump run too, at the same
// budgets and with their own client ids ("eval-oars-square",
// "eval-oars-hop-skip-jump"): attackers that learn from the monitor's
// detections how far apart their queries must be and discard detected
// proposals (attack/oars.hpp; Feng et al., CCS 2023). Their query counts
// include every image sent, refused ones too, and their `flagged` counts runs
// with at least one detected query. Against MonitorAction::Silent they get no
// signal and behave like the plain attacks.
//
// What it is not. No attacker here rotates client ids or waits for the
// monitor's store to evict its queries.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "parry/config/defense_config.hpp"
#include "parry/core/model.hpp"

namespace parry::eval {

/// One black-box attack against one defense, over the runs of the subset.
struct BlackBoxOutcome {
  std::string attack;        ///< "Square", "HopSkipJump", "OARS-Square" or "OARS-HopSkipJump"
  std::string norm;          ///< "linf" (Square) or "l2" (HopSkipJump)
  double epsilon = 0.0;      ///< Square: its L∞ budget; HopSkipJump: the L2 budget of success_rate
  int64_t query_budget = 0;  ///< queries per image at most
  /// False if the attack did not run; `not_applicable` says why
  /// ("label-only answers": the output policy hides the scores Square needs).
  bool applicable = true;
  std::string not_applicable;
  int64_t images = 0;  ///< n: runs, one per image (0 when not applicable)
  /// Runs whose final image the Guard (without gates) labels wrongly and does
  /// not flag, within the budget: the success count is success_rate·images.
  double success_rate = 0.0;
  double median_queries = 0.0;  ///< queries spent per run, median over the runs
  /// HopSkipJump: median L2 distance of the final adversarial image over the
  /// runs, counting a run without one as infinitely far (so +inf when at least
  /// half found none); Square: 0.
  double median_l2 = 0.0;
  int64_t stopped = 0;                    ///< runs a gate stopped (a query was rejected)
  std::vector<std::string> stop_reasons;  ///< their distinct public reasons ("rate_limited", "flagged")
  int64_t flagged = 0;                    ///< runs with at least one answer flagged (a gate or a detector)
};

/// Runs Square at each ε of `settings.epsilons` and HopSkipJump on (x, y)
/// — and, for a defense with a QueryMonitor, OARS-Square at each ε and
/// OARS-HopSkipJump — one run per image (see the header comment), with the budgets of
/// settings.black_box. `raw_model` is the bare model (the defense applies its
/// model_input). Detectors must be calibrated. `progress` gets one line per attack (may be empty).
/// @throws parry::OptionError if the defense has gates without factories
///   (config::DefenseSpec::fresh_gates).
std::vector<BlackBoxOutcome> black_box(const config::DefenseSpec& defense, const Model& raw_model,
                                       const torch::Tensor& x, const torch::Tensor& y,
                                       const config::EvaluationSpec& settings,
                                       const std::function<void(const std::string&)>& progress = {});

}  // namespace parry::eval

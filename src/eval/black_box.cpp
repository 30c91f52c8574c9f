// eval::black_box: Square and HopSkipJump through each defense's full Guard, one fresh service per run.
#include "parry/eval/black_box.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <set>

#include "parry/attack/hop_skip_jump.hpp"
#include "parry/attack/oars.hpp"
#include "parry/attack/square.hpp"
#include "parry/conceal/query_monitor.hpp"
#include "parry/detail/format.hpp"

namespace parry::eval {

namespace {

using Clock = std::chrono::steady_clock;

// The throttles' clock during a run: time stands still (see the header).
double frozen_clock() {
  return 0.0;
}

// SplitMix64's output function (Steele, Lea, Flood 2014): a bijection of
// 64-bit words whose outputs of nearby inputs look independent.
uint64_t split_mix_64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The gates of run `run`: the clock held still and a query-monitor salt key
// drawn from the evaluation's seed, so that a run is a fresh deployment with
// its own secret key and the evaluation still repeats. The plain and the
// OARS row of one image meet the same key.
config::FreshGateSettings fresh_run(uint64_t seed, int64_t run) {
  config::FreshGateSettings settings;
  settings.clock = frozen_clock;
  settings.salt_key = split_mix_64(split_mix_64(seed) + static_cast<uint64_t>(run));
  return settings;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2.0;
}

// Whether the Guard's answers carry every class score (what Square climbs);
// else why not, in the report's words.
std::string hidden_scores(const Guard& plain, const torch::Tensor& one) {
  const Response r = plain.predict(one);
  if (r.scores.defined() && !r.top_classes.defined()) return "";
  if (r.top_classes.defined()) return "top-k answers hide most class scores";
  return "label-only answers";
}

// The totals of one attack over its runs.
struct Runs {
  std::vector<double> queries, l2;
  int64_t successes = 0, stopped = 0, flagged = 0;
  std::set<std::string> reasons;

  /// `detected`: the run had a detected query (OARS: flagged or refused as
  /// flagged); plain attacks: a flagged answer.
  void add(const attack::AttackResult& r, bool success, double l2_distance, bool detected = false) {
    queries.push_back(static_cast<double>(r.queries.sum().item<int64_t>()));
    l2.push_back(l2_distance);
    successes += success;
    if (r.stopped_by_defense) {
      ++stopped;
      reasons.insert(r.stop_reason);
    }
    flagged += r.flagged_answers > 0 || detected;
  }

  BlackBoxOutcome outcome(BlackBoxOutcome o) const {
    o.images = static_cast<int64_t>(queries.size());
    o.success_rate = o.images > 0 ? static_cast<double>(successes) / static_cast<double>(o.images) : 0.0;
    o.median_queries = median(queries);
    o.stopped = stopped;
    o.flagged = flagged;
    o.stop_reasons.assign(reasons.begin(), reasons.end());
    return o;
  }
};

std::string summary(const BlackBoxOutcome& o, double seconds) {
  using parry::detail::format_fixed;
  std::string line = "  " + o.attack + " (" + o.norm + " " + format_fixed(o.epsilon, 3) + ", " +
                     std::to_string(o.query_budget) + " queries): ";
  if (!o.applicable) return line + "not applicable: " + o.not_applicable;
  return line + "success " + format_fixed(100.0 * o.success_rate, 1) + "% of " + std::to_string(o.images) +
         ", median queries " + format_fixed(o.median_queries, 0) + ", stopped " + std::to_string(o.stopped) +
         ", flagged " + std::to_string(o.flagged) + " in " + format_fixed(seconds, 1) + " s";
}

}  // namespace

std::vector<BlackBoxOutcome> black_box(const config::DefenseSpec& defense, const Model& raw_model,
                                       const torch::Tensor& x, const torch::Tensor& y,
                                       const config::EvaluationSpec& settings,
                                       const std::function<void(const std::string&)>& progress) {
  const auto& budget = settings.black_box;
  const int64_t n = x.size(0);
  // The judge: the same Guard without gates, which the attacker's final image is sent through.
  config::DefenseSpec without_gates = defense;
  without_gates.gates.clear();
  without_gates.gate_factories.clear();
  const auto plain = without_gates.build_guard(raw_model);
  // Fails early, before any run, if a gate cannot be built anew.
  (void)defense.fresh_gates(fresh_run(settings.seed, 0));
  const auto judged_wrong = [&](const torch::Tensor& image, int64_t label) {
    const Response r = plain->predict(image);
    return r.labels.at(0) != label && !(r.flagged.empty() ? false : r.flagged[0] != 0);
  };
  const auto say = [&](const BlackBoxOutcome& o, Clock::time_point started) {
    if (progress) progress(summary(o, std::chrono::duration<double>(Clock::now() - started).count()));
  };
  std::vector<BlackBoxOutcome> out;
  const std::string hidden = n > 0 ? hidden_scores(*plain, x.slice(0, 0, 1)) : "";

  // The adaptive rows run where a query monitor guards the defense.
  bool monitored = false;
  for (const auto& gate : defense.fresh_gates(fresh_run(settings.seed, 0))) {
    monitored = monitored || std::dynamic_pointer_cast<conceal::QueryMonitor>(gate) != nullptr;
  }
  const bool adaptive = monitored && budget.adaptive_monitor;

  for (const bool oars : {false, true}) {
    if (oars && !adaptive) break;
    for (double eps : settings.epsilons) {
      const auto started = Clock::now();
      BlackBoxOutcome o;
      o.attack = oars ? "OARS-Square" : "Square";
      o.norm = "linf";
      o.epsilon = eps;
      o.query_budget = budget.square_queries;
      if (!hidden.empty()) {
        o.applicable = false;
        o.not_applicable = hidden;
        say(o, started);
        out.push_back(o);
        continue;
      }
      Runs runs;
      for (int64_t i = 0; i < n; ++i) {
        const auto guard = defense.build_fresh_guard(raw_model, fresh_run(settings.seed, i));
        const torch::Tensor xi = x.slice(0, i, i + 1), yi = y.slice(0, i, i + 1);
        const auto options = attack::SquareOptions(eps)
                                 .max_queries(budget.square_queries)
                                 .seed(settings.seed + static_cast<uint64_t>(i))
                                 .client_id(oars ? "eval-oars-square" : "eval-square");
        if (oars) {
          const auto r = attack::oars_square(*guard, xi, yi, attack::OarsSquareOptions(options));
          runs.add(r, judged_wrong(r.adversarial, yi[0].item<int64_t>()), 0.0, r.detected.sum().item<int64_t>() > 0);
        } else {
          const auto r = attack::square(*guard, xi, yi, options);
          runs.add(r, judged_wrong(r.adversarial, yi[0].item<int64_t>()), 0.0);
        }
      }
      o = runs.outcome(o);
      say(o, started);
      out.push_back(o);
    }
  }

  for (const bool oars : {false, true}) {
    if (oars && !adaptive) break;
    const auto started = Clock::now();
    BlackBoxOutcome o;
    o.attack = oars ? "OARS-HopSkipJump" : "HopSkipJump";
    o.norm = "l2";
    o.epsilon = budget.l2_epsilon;
    o.query_budget = budget.hop_skip_jump_queries;
    Runs runs;
    for (int64_t i = 0; i < n; ++i) {
      const auto guard = defense.build_fresh_guard(raw_model, fresh_run(settings.seed, i));
      const torch::Tensor xi = x.slice(0, i, i + 1), yi = y.slice(0, i, i + 1);
      const auto options = attack::HopSkipJumpOptions()
                               .max_queries(budget.hop_skip_jump_queries)
                               .seed(settings.seed + static_cast<uint64_t>(i))
                               .client_id(oars ? "eval-oars-hop-skip-jump" : "eval-hop-skip-jump");
      attack::AttackResult r;
      bool detected = false;
      if (oars) {
        const auto adaptive_result =
            attack::oars_hop_skip_jump(*guard, xi, yi, attack::OarsHopSkipJumpOptions(options));
        detected = adaptive_result.detected.sum().item<int64_t>() > 0;
        r = adaptive_result;
      } else {
        r = attack::hop_skip_jump(*guard, xi, yi, options);
      }
      // The final image is adversarial only if the Guard says so; then its distance counts.
      const bool wrong = judged_wrong(r.adversarial, yi[0].item<int64_t>());
      const double l2 = wrong ? r.norm[0].item<double>() : std::numeric_limits<double>::infinity();
      runs.add(r, wrong && l2 <= budget.l2_epsilon, l2, detected);
    }
    o = runs.outcome(o);
    o.median_l2 = median(runs.l2);
    say(o, started);
    out.push_back(o);
  }
  return out;
}

}  // namespace parry::eval

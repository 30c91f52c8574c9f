// OARS (Feng et al., CCS 2023): Square and HopSkipJump adapted to a query
// monitor's rejections, through Guard::predict.
#include "parry/attack/oars.hpp"

#include <algorithm>
#include <cmath>
#include <optional>

#include "attack/square_steps.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detail/generator.hpp"

namespace parry::attack {

namespace {

/// How the service answered one image.
enum class Answer {
  Accepted,  ///< answered, not detected: the attacker uses the answer
  Detected,  ///< Flagged, or Rejected with reason "flagged": the proposal is discarded
  Stopped,   ///< budget spent, or refused for another reason (throttled): the run ends
};

// One image per request, so every detection is tied to one proposal; counts
// what was sent and how it was answered, and enforces the budget.
class Channel {
 public:
  Channel(const Guard& guard, RequestContext context, int64_t budget)
      : guard_(guard), context_(std::move(context)), budget_(budget) {}

  Answer send(const torch::Tensor& image, Response* answer = nullptr) {
    if (stopped() || sent_ >= budget_) {
      exhausted_ = true;
      return Answer::Stopped;
    }
    Response r = guard_.predict(image.unsqueeze(0), context_);
    ++sent_;
    Answer kind = Answer::Accepted;
    if (r.verdict == Verdict::Rejected) {
      if (r.reason != reason::kFlagged) {
        refused_reason_ = r.reason;
        return Answer::Stopped;
      }
      kind = Answer::Detected;
    } else if (r.verdict == Verdict::Flagged) {
      ++flagged_;
      kind = Answer::Detected;
    }
    if (kind == Answer::Detected) ++detected_;
    if (answer) *answer = std::move(r);
    return kind;
  }
  /// Gives the run up after too many detections (public reason "flagged").
  void give_up() { gave_up_ = true; }
  bool stopped() const { return exhausted_ || gave_up_ || !refused_reason_.empty(); }
  int64_t sent() const { return sent_; }
  int64_t detected() const { return detected_; }
  int64_t flagged() const { return flagged_; }
  bool gave_up() const { return gave_up_; }
  const std::string& refused_reason() const { return refused_reason_; }

 private:
  const Guard& guard_;
  RequestContext context_;
  int64_t budget_;
  int64_t sent_ = 0, detected_ = 0, flagged_ = 0;
  bool exhausted_ = false, gave_up_ = false;
  std::string refused_reason_;
};

// Fills the per-sample counters of `result` from a finished channel.
// Returns true if the run was refused for a reason other than a detection
// (the attacker is throttled: the remaining samples are not attacked).
bool record(OarsResult& result, int64_t i, const Channel& channel, int64_t adaptation) {
  result.queries[i] = channel.sent();
  result.detected[i] = channel.detected();
  result.adaptation_queries[i] = adaptation;
  result.flagged_answers += channel.flagged();
  if (!channel.refused_reason().empty()) {
    result.stopped_by_defense = true;
    result.stop_reason = channel.refused_reason();
    return true;
  }
  if (channel.gave_up()) {
    result.stopped_by_defense = true;
    if (result.stop_reason.empty()) result.stop_reason = reason::kFlagged;
  }
  return false;
}

OarsResult empty_result(int64_t n, const torch::Tensor& x0) {
  OarsResult result;
  result.adversarial = x0.clone();
  result.success = torch::zeros({n}, torch::kBool);
  result.queries = torch::zeros({n}, torch::kInt64);
  result.detected = torch::zeros({n}, torch::kInt64);
  result.adaptation_queries = torch::zeros({n}, torch::kInt64);
  result.scale = torch::zeros({n});
  result.min_side = torch::zeros({n}, torch::kInt64);
  return result;
}

// Integer bisection for the smallest value in [lo, hi] whose sample proposals
// are detected at most `rate` of the time (detection assumed to fall as the
// value grows). Returns nullopt if a probe answered Stopped.
template <typename Probe>
std::optional<int64_t> smallest_undetected(int64_t lo, int64_t hi, int64_t steps, int64_t samples, double rate,
                                           Probe&& probe) {
  if (steps == 0) return hi;
  for (int64_t step = 0; step < steps && lo < hi; ++step) {
    const int64_t mid = lo + (hi - lo) / 2;
    int64_t detected = 0;
    for (int64_t s = 0; s < samples; ++s) {
      const Answer a = probe(mid);
      if (a == Answer::Stopped) return std::nullopt;
      detected += a == Answer::Detected;
    }
    if (static_cast<double>(detected) <= rate * static_cast<double>(samples)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return hi;
}

int64_t square_side(double p, int64_t h, int64_t w) {
  return std::clamp<int64_t>(std::llround(std::sqrt(p * static_cast<double>(h * w))), 1, std::min(h, w) - 1);
}

}  // namespace

double OarsResult::detection_rate() const {
  if (!queries.defined() || !detected.defined()) return 0.0;
  const int64_t sent = queries.sum().item<int64_t>();
  return sent > 0 ? static_cast<double>(detected.sum().item<int64_t>()) / static_cast<double>(sent) : 0.0;
}

OarsResult oars_square(const Guard& guard, const torch::Tensor& x, const torch::Tensor& y,
                       const OarsSquareOptions& options) {
  if (options.min_squares() > options.max_squares()) {
    throw OptionError("OarsSquareOptions::min_squares: must not exceed max_squares (" +
                      std::to_string(options.max_squares()) + "), but got " + std::to_string(options.min_squares()));
  }
  const SquareOptions& sq = options.square();
  const InputSpec& spec = guard.input_spec();
  GradientSettings range;
  range.clip_min = spec.min_value();
  range.clip_max = spec.max_value();
  check_batch("oars_square", x, y, range);
  parry::detail::for_each_chunk(x.size(0), spec.max_batch(),
                                [&](int64_t begin, int64_t end) { spec.validate(x.detach().slice(0, begin, end)); });
  const torch::Tensor x0 = x.detach().contiguous();
  const int64_t n = x0.size(0), c = x0.size(1), h = x0.size(2), w = x0.size(3);
  if (std::min(h, w) < 2) throw OptionError("oars_square: images must be at least 2×2 pixels");
  const double eps = sq.epsilon();
  torch::Generator gen = parry::detail::make_generator(sq.seed(), x0.device());
  OarsResult result = empty_result(n, x0);

  for (int64_t i = 0; i < n; ++i) {
    const torch::Tensor xi = x0.slice(0, i, i + 1);  // 1×C×H×W
    const torch::Tensor yi = y.slice(0, i, i + 1);
    Channel channel(guard, RequestContext{sq.client_id()}, sq.max_queries());
    // Sends a candidate; on an accepted answer sets *loss to its margin loss.
    auto score = [&](const torch::Tensor& candidate, double* loss) {
      Response r;
      const Answer a = channel.send(candidate[0], &r);
      if (a == Answer::Stopped || (a == Answer::Detected && !r.scores.defined() && r.labels.empty())) return a;
      if (!r.scores.defined() || r.top_classes.defined()) {
        throw OptionError(
            "oars_square: the Guard's output policy does not reveal every class score; the Square Attack is "
            "score-based (use a decision-based attack against label-only answers)");
      }
      if (yi[0].item<int64_t>() >= r.scores.size(1)) {
        throw OptionError("oars_square: labels must be below the class count " + std::to_string(r.scores.size(1)));
      }
      if (a == Answer::Accepted) {
        *loss = detail::margin_loss(detail::log_scores(r.scores), yi, sq.targeted()).item<double>();
      }
      return a;
    };
    // `squares` windows of `side` pixels changed to x ± ε around the current point.
    auto propose = [&](const torch::Tensor& from, int64_t squares, int64_t side) {
      torch::Tensor candidate = from.clone();
      for (int64_t k = 0; k < squares; ++k) detail::place_squares(candidate, xi, side, eps, range, gen);
      return candidate;
    };

    // Start: vertical stripes of ±ε (redrawn while detected).
    torch::Tensor best;
    double loss = 0;
    bool started = false;
    for (int64_t attempt = 0; attempt < options.max_consecutive_detections() && !started; ++attempt) {
      const torch::Tensor stripes = (torch::randint(0, 2, {1, c, 1, w}, gen, x0.options()) * 2 - 1) * eps;
      best = (xi + stripes).clamp(range.clip_min, range.clip_max);
      const Answer a = score(best, &loss);
      if (a == Answer::Stopped) break;
      started = a == Answer::Accepted;
    }
    if (!started && !channel.stopped()) channel.give_up();
    if (!started) {
      if (record(result, i, channel, 0)) break;
      continue;
    }

    // Phase 1: adapt the proposal distribution around the start. A sample
    // proposal that happens to succeed is kept.
    auto sample = [&](int64_t squares, int64_t side) {
      double l = 0;
      const torch::Tensor candidate = propose(best, squares, side);
      const Answer a = score(candidate, &l);
      if (a == Answer::Accepted && l < 0) {
        best = candidate;
        loss = l;
        return Answer::Stopped;  // done: ends the search (the channel itself goes on)
      }
      return a;
    };
    const int64_t first_side = square_side(sq.p_init(), h, w);
    int64_t squares = options.max_squares(), min_side = 1;
    std::optional<int64_t> learned_squares;
    if (loss >= 0) {  // the start may already succeed
      learned_squares = smallest_undetected(
          options.min_squares(), options.max_squares(), options.squares_search_steps(), options.squares_samples(),
          options.squares_detection_rate(), [&](int64_t m) { return sample(m, first_side); });
    }
    if (learned_squares) {
      squares = *learned_squares;
      if (options.side_search_steps() > 0) {
        const auto learned_side =
            smallest_undetected(1, std::min(h, w) - 1, options.side_search_steps(), options.side_samples(),
                                options.side_detection_rate(), [&](int64_t m) { return sample(squares, m); });
        if (learned_side) min_side = *learned_side;
      }
    }
    const int64_t adaptation = channel.sent();
    result.scale[i] = static_cast<float>(squares);
    result.min_side[i] = min_side;

    // Phase 2: random search on accepted answers only.
    int64_t in_a_row = 0;
    while (loss >= 0 && !channel.stopped()) {
      const double p = square_fraction(sq.p_init(), channel.sent(), sq.max_queries(), sq.rescale_schedule());
      const torch::Tensor candidate = propose(best, squares, std::max(square_side(p, h, w), min_side));
      double new_loss = 0;
      const Answer a = score(candidate, &new_loss);
      if (a == Answer::Stopped) break;
      if (a == Answer::Detected) {
        if (++in_a_row >= options.max_consecutive_detections()) channel.give_up();
        continue;
      }
      in_a_row = 0;
      if (new_loss < loss) {
        best = candidate;
        loss = new_loss;
      }
    }
    result.adversarial[i].copy_(best[0]);
    result.success[i] = loss < 0;
    if (record(result, i, channel, adaptation)) break;
  }
  result.norm = perturbation_norm(result.adversarial - x0, Norm::Linf);
  return result;
}

namespace {

// Label-only view of a channel: is this image adversarial for the sample?
class Decisions {
 public:
  Decisions(Channel& channel, int64_t label, bool targeted) : channel_(channel), label_(label), targeted_(targeted) {}
  /// Accepted (with *adversarial set), Detected or Stopped.
  Answer ask(const torch::Tensor& image, bool* adversarial) {
    Response r;
    const Answer a = channel_.send(image, &r);
    if (a == Answer::Accepted) *adversarial = targeted_ ? r.labels.at(0) == label_ : r.labels.at(0) != label_;
    return a;
  }

 private:
  Channel& channel_;
  int64_t label_;
  bool targeted_;
};

// Binary search from x (clean side) towards adv (adversarial, accepted):
// the adversarial-side point within θ of the boundary, or the closest one
// reached before the first detected or refused query.
torch::Tensor accepted_boundary(Decisions& decisions, const torch::Tensor& x, const torch::Tensor& adv, double theta) {
  double low = 0, high = 1;
  while (high - low > theta) {
    const double mid = (low + high) / 2;
    bool adversarial = false;
    if (decisions.ask((1 - mid) * x + mid * adv, &adversarial) != Answer::Accepted) break;
    (adversarial ? high : low) = mid;
  }
  return (1 - high) * x + high * adv;
}

}  // namespace

OarsResult oars_hop_skip_jump(const Guard& guard, const torch::Tensor& x, const torch::Tensor& y,
                              const OarsHopSkipJumpOptions& options) {
  if (options.min_delta() > options.max_delta()) {
    throw OptionError("OarsHopSkipJumpOptions::min_delta: must not exceed max_delta (" +
                      std::to_string(options.max_delta()) + "), but got " + std::to_string(options.min_delta()));
  }
  const HopSkipJumpOptions& hsj = options.hop_skip_jump();
  const InputSpec& spec = guard.input_spec();
  GradientSettings range;
  range.clip_min = spec.min_value();
  range.clip_max = spec.max_value();
  check_batch("oars_hop_skip_jump", x, y, range);
  const torch::Tensor x0 = x.detach().contiguous();
  const int64_t n = x0.size(0);
  if (hsj.targeted() && hsj.starting_images().sizes() != x0.sizes()) {
    throw OptionError("oars_hop_skip_jump: targeted starting images must have the shape of x, " + c10::str(x0.sizes()));
  }
  const auto d = static_cast<double>(x0[0].numel());
  const double theta = 1.0 / (d * std::sqrt(d));
  const double span = range.clip_max - range.clip_min;
  torch::Generator gen = parry::detail::make_generator(hsj.seed(), x0.device());
  OarsResult result = empty_result(n, x0);
  result.start_norm = torch::zeros({n});
  // A random direction of unit L2 norm, shaped like one image.
  auto direction = [&](const torch::Tensor& like) {
    const torch::Tensor u = torch::randn(like.sizes(), gen, like.options());
    return u / u.norm().clamp_min(1e-12);
  };

  for (int64_t i = 0; i < n; ++i) {
    const torch::Tensor xi = x0[i];
    Channel channel(guard, RequestContext{hsj.client_id()}, hsj.max_queries());
    Decisions decisions(channel, y[i].item<int64_t>(), hsj.targeted());
    bool adversarial = false;
    // An image the model already gets wrong is its own adversarial example.
    if (decisions.ask(xi, &adversarial) == Answer::Accepted && adversarial) {
      result.success[i] = true;
      if (record(result, i, channel, 0)) break;
      continue;
    }
    // A start on the adversarial side, from accepted answers only.
    std::optional<torch::Tensor> current;
    if (hsj.targeted()) {
      const torch::Tensor start = hsj.starting_images()[i].clamp(range.clip_min, range.clip_max);
      if (decisions.ask(start, &adversarial) == Answer::Accepted && adversarial) current = start;
    }
    for (int64_t t = 0; t < hsj.init_tries() && !current && !hsj.targeted() && !channel.stopped(); ++t) {
      const torch::Tensor noise = torch::rand(xi.sizes(), gen, xi.options()) * span + range.clip_min;
      if (decisions.ask(noise, &adversarial) == Answer::Accepted && adversarial) current = noise;
    }
    if (!current) {
      if (record(result, i, channel, 0)) break;
      continue;
    }
    current = accepted_boundary(decisions, xi, *current, theta);
    result.start_norm[i] = (*current - xi).norm().item<float>();
    result.adversarial[i].copy_(*current);
    result.success[i] = true;

    // Phase 1: the probe radius δ, bisected on probes around the boundary point.
    double delta = options.max_delta() * span;
    {
      double lo = options.min_delta() * span, hi = delta;
      for (int64_t step = 0; step < options.delta_search_steps() && !channel.stopped(); ++step) {
        const double mid = (lo + hi) / 2;
        int64_t detected = 0, asked = 0;
        for (int64_t s = 0; s < options.delta_samples(); ++s) {
          const torch::Tensor probe = (*current + mid * direction(xi)).clamp(range.clip_min, range.clip_max);
          const Answer a = decisions.ask(probe, &adversarial);
          if (a == Answer::Stopped) break;
          ++asked;
          detected += a == Answer::Detected;
        }
        if (asked < options.delta_samples()) break;
        if (static_cast<double>(detected) <= options.delta_detection_rate() * static_cast<double>(asked)) {
          delta = hi = mid;
        } else {
          lo = mid;
        }
      }
    }
    const int64_t adaptation = channel.sent();
    result.scale[i] = static_cast<float>(delta);

    // Phase 2: HopSkipJump on accepted answers only.
    int64_t step_detections = 0;
    for (int64_t t = 1; !channel.stopped(); ++t) {
      const double dist = (*current - xi).norm().item<double>();
      if (!(dist > 0) || !std::isfinite(dist)) break;
      // Gradient direction from accepted probes; detected ones are redrawn.
      const int64_t wanted = std::min(hsj.max_probes(), static_cast<int64_t>(hsj.initial_probes() * std::sqrt(t)));
      std::vector<torch::Tensor> dirs;
      std::vector<float> phi;
      for (int64_t round = 0;
           round < options.probe_rounds() && static_cast<int64_t>(dirs.size()) < wanted && !channel.stopped();
           ++round) {
        const int64_t missing = wanted - static_cast<int64_t>(dirs.size());
        for (int64_t k = 0; k < missing; ++k) {
          const torch::Tensor probe = (*current + delta * direction(xi)).clamp(range.clip_min, range.clip_max);
          const Answer a = decisions.ask(probe, &adversarial);
          if (a == Answer::Stopped) break;
          if (a == Answer::Accepted) {
            dirs.push_back((probe - *current) / delta);
            phi.push_back(adversarial ? 1.f : -1.f);
          }
        }
      }
      if (channel.stopped()) break;
      if (dirs.empty()) {  // every probe detected: the estimate failed
        channel.give_up();
        break;
      }
      torch::Tensor phis = torch::tensor(phi);
      const double mean_phi = phis.mean().item<double>();
      if (std::abs(mean_phi) < 1.0) phis = phis - mean_phi;  // baseline, unless all probes agree
      torch::Tensor grad = (phis.view({-1, 1, 1, 1}) * torch::stack(dirs)).mean(0);
      grad = grad / grad.norm().clamp_min(1e-12);
      if (!torch::isfinite(grad).all().item<bool>()) break;
      // Geometric step search; a detected step abandons the iteration.
      double step = 2 * dist / std::sqrt(static_cast<double>(t));
      std::optional<torch::Tensor> next;
      bool detected_step = false;
      while (!channel.stopped()) {
        const torch::Tensor candidate = (*current + step * grad).clamp(range.clip_min, range.clip_max);
        const Answer a = decisions.ask(candidate, &adversarial);
        if (a == Answer::Stopped) break;
        if (a == Answer::Detected) {
          detected_step = true;
          break;
        }
        if (adversarial) {
          next = candidate;
          break;
        }
        step /= 2;
        if (step < 1e-12) break;
      }
      if (detected_step) {
        if (++step_detections >= options.max_step_detections()) channel.give_up();
        continue;
      }
      if (!next) break;
      step_detections = 0;
      const torch::Tensor boundary = accepted_boundary(decisions, xi, *next, theta);
      if ((boundary - xi).norm().item<double>() < dist) {
        current = boundary;
        result.adversarial[i].copy_(*current);
      }
    }
    if (record(result, i, channel, adaptation)) break;
  }
  result.norm = perturbation_norm(result.adversarial - x0, Norm::L2);
  return result;
}

}  // namespace parry::attack

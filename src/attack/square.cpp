// The Square Attack (L∞), through Guard::predict.
#include "parry/attack/square.hpp"

#include <cmath>
#include <limits>

#include "attack/square_steps.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detail/generator.hpp"
#include "parry/detail/require.hpp"

namespace parry::attack {

using parry::detail::require;

namespace {

// Queries the Guard in chunks of its batch limit. Returns log-probabilities
// (N×K), or an undefined tensor and the reason if a chunk was rejected.
struct QueryResult {
  torch::Tensor log_scores;
  std::string rejected_reason;
  int64_t flagged = 0;  // answers with verdict Flagged
};

QueryResult query(const Guard& guard, const torch::Tensor& x, const RequestContext& context) {
  std::vector<torch::Tensor> parts;
  std::string rejected;
  int64_t flagged = 0;
  const bool answered =
      parry::detail::for_each_chunk(x.size(0), guard.input_spec().max_batch(), [&](int64_t begin, int64_t end) {
        const Response r = guard.predict(x.slice(0, begin, end), context);
        if (r.verdict == Verdict::Rejected) {
          rejected = r.reason;
          return false;
        }
        if (!r.scores.defined() || r.top_classes.defined()) {
          throw OptionError(
              "square: the Guard's output policy does not reveal every class score; the Square Attack is "
              "score-based (use a decision-based attack against label-only answers)");
        }
        flagged += r.verdict == Verdict::Flagged;
        parts.push_back(r.scores);
        return true;
      });
  if (!answered) return {torch::Tensor(), rejected, flagged};
  // Clamped at the smallest normal float, not higher: margins up to about 87
  // nats stay visible (AutoAttack's Square climbs raw logit margins; a
  // clamp at 1e-12 flattens every margin above 27.6 and blinds it on
  // saturated models).
  return {detail::log_scores(torch::cat(parts)), "", flagged};
}

}  // namespace

namespace detail {

torch::Tensor log_scores(const torch::Tensor& scores) {
  return torch::log(scores.to(torch::kFloat32).clamp_min(std::numeric_limits<float>::min()));
}

torch::Tensor margin_loss(const torch::Tensor& log_scores, const torch::Tensor& y, bool targeted) {
  const torch::Tensor own = log_scores.gather(1, y.view({-1, 1})).flatten();
  const torch::Tensor other =
      std::get<0>(log_scores.scatter(1, y.view({-1, 1}), -std::numeric_limits<float>::infinity()).max(1));
  return targeted ? other - own : own - other;
}

// Vectorised over the batch: the window is a mask, not a loop (as the
// paper's code, an unchanged window is drawn again up to 10 times).
void place_squares(torch::Tensor& candidates, const torch::Tensor& originals, int64_t side, double eps,
                   const GradientSettings& range, torch::Generator& gen) {
  const int64_t h = candidates.size(2), w = candidates.size(3), c = candidates.size(1);
  const auto index = candidates.options().dtype(torch::kInt64);
  const torch::Tensor row_ids = torch::arange(h, index).view({1, h}), col_ids = torch::arange(w, index).view({1, w});
  torch::Tensor pending = torch::arange(candidates.size(0), index);
  for (int attempt = 0; attempt < 10 && pending.numel() > 0; ++attempt) {
    const int64_t m = pending.numel();
    const torch::Tensor r0 = torch::randint(0, h - side + 1, {m, 1}, gen, index);
    const torch::Tensor c0 = torch::randint(0, w - side + 1, {m, 1}, gen, index);
    const torch::Tensor signs = torch::randint(0, 2, {m, c, 1, 1}, gen, candidates.options()) * 2 - 1;
    const torch::Tensor in_rows = row_ids.ge(r0) & row_ids.lt(r0 + side);  // m×h
    const torch::Tensor in_cols = col_ids.ge(c0) & col_ids.lt(c0 + side);  // m×w
    const torch::Tensor window = in_rows.view({m, 1, h, 1}) & in_cols.view({m, 1, 1, w});
    const torch::Tensor current = candidates.index_select(0, pending);
    const torch::Tensor proposal = torch::where(
        window, (originals.index_select(0, pending) + signs * eps).clamp(range.clip_min, range.clip_max), current);
    const torch::Tensor changed = proposal.ne(current).flatten(1).any(1);
    const torch::Tensor moved = changed.nonzero().flatten();
    candidates.index_copy_(0, pending.index_select(0, moved), proposal.index_select(0, moved));
    pending = pending.masked_select(changed.logical_not());
  }
}

}  // namespace detail

SquareOptions::SquareOptions(double epsilon) {
  this->epsilon(epsilon);
}
SquareOptions& SquareOptions::epsilon(double v) {
  require(v >= 0 && std::isfinite(v), "SquareOptions", "epsilon must be non-negative and finite", v);
  epsilon_ = v;
  return *this;
}
SquareOptions& SquareOptions::max_queries(int64_t v) {
  require(v >= 1, "SquareOptions", "max_queries must be at least 1", static_cast<double>(v));
  max_queries_ = v;
  return *this;
}
SquareOptions& SquareOptions::p_init(double v) {
  require(v > 0 && v <= 1, "SquareOptions", "p_init must be in (0, 1]", v);
  p_init_ = v;
  return *this;
}
SquareOptions& SquareOptions::rescale_schedule(bool on) {
  rescale_schedule_ = on;
  return *this;
}
SquareOptions& SquareOptions::targeted(bool on) {
  targeted_ = on;
  return *this;
}
SquareOptions& SquareOptions::seed(uint64_t v) {
  seed_ = v;
  return *this;
}
SquareOptions& SquareOptions::client_id(std::string id) {
  client_id_ = std::move(id);
  return *this;
}

double square_fraction(double p_init, int64_t iteration, int64_t max_queries, bool rescale) {
  const int64_t it =
      rescale ? static_cast<int64_t>(static_cast<double>(iteration) * 10000.0 / static_cast<double>(max_queries))
              : iteration;
  static constexpr int64_t kSteps[] = {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000};
  double p = p_init;
  for (int64_t step : kSteps) {
    if (it > step) p /= 2;
  }
  return p;
}

AttackResult square(const Guard& guard, const torch::Tensor& x, const torch::Tensor& y, const SquareOptions& options) {
  const InputSpec& spec = guard.input_spec();
  GradientSettings range;
  range.clip_min = spec.min_value();
  range.clip_max = spec.max_value();
  check_batch("square", x, y, range);
  // The whole batch may exceed one request's limit: check it request by request.
  parry::detail::for_each_chunk(x.size(0), spec.max_batch(),
                                [&](int64_t begin, int64_t end) { spec.validate(x.detach().slice(0, begin, end)); });
  const torch::Tensor x0 = x.detach().contiguous();
  const int64_t n = x0.size(0), c = x0.size(1), h = x0.size(2), w = x0.size(3);
  const double eps = options.epsilon();
  const RequestContext context{options.client_id()};
  torch::Generator gen = parry::detail::make_generator(options.seed(), x0.device());

  AttackResult result;
  result.queries = torch::zeros({n}, torch::kInt64);
  auto finish = [&](const torch::Tensor& best, const torch::Tensor& loss) {
    result.adversarial = best;
    result.success = loss < 0;
    result.norm = perturbation_norm(best - x0, Norm::Linf);
    return result;
  };

  // Vertical stripes of ±ε.
  const torch::Tensor stripes = (torch::randint(0, 2, {n, c, 1, w}, gen, x0.options()) * 2 - 1) * eps;
  torch::Tensor best = (x0 + stripes).clamp(range.clip_min, range.clip_max);
  QueryResult q = query(guard, best, context);
  result.flagged_answers += q.flagged;
  if (!q.log_scores.defined()) {
    result.stopped_by_defense = true;
    result.stop_reason = q.rejected_reason;
    return finish(x0.clone(), torch::ones({n}));
  }
  if (y.max().item<int64_t>() >= q.log_scores.size(1)) {
    throw OptionError("square: labels must be below the class count " + std::to_string(q.log_scores.size(1)));
  }
  torch::Tensor loss = detail::margin_loss(q.log_scores, y, options.targeted());
  result.queries += 1;

  for (int64_t iteration = 1; iteration < options.max_queries(); ++iteration) {
    const torch::Tensor active = (loss >= 0).nonzero().flatten();
    if (active.numel() == 0) break;
    const double p = square_fraction(options.p_init(), iteration, options.max_queries(), options.rescale_schedule());
    const int64_t side =
        std::clamp<int64_t>(std::llround(std::sqrt(p * static_cast<double>(h * w))), 1, std::min(h, w) - 1);
    torch::Tensor candidates = best.index_select(0, active);
    detail::place_squares(candidates, x0.index_select(0, active), side, eps, range, gen);
    q = query(guard, candidates, context);
    result.flagged_answers += q.flagged;
    if (!q.log_scores.defined()) {
      result.stopped_by_defense = true;
      result.stop_reason = q.rejected_reason;
      break;
    }
    result.queries.index_add_(0, active, torch::ones({active.numel()}, torch::kInt64));
    const torch::Tensor new_loss = detail::margin_loss(q.log_scores, y.index_select(0, active), options.targeted());
    const torch::Tensor improved = new_loss < loss.index_select(0, active);
    const torch::Tensor accepted = active.masked_select(improved);
    if (accepted.numel() > 0) {
      const torch::Tensor picked = improved.nonzero().flatten();
      best.index_copy_(0, accepted, candidates.index_select(0, picked));
      loss.index_copy_(0, accepted, new_loss.index_select(0, picked));
    }
  }
  return finish(best, loss);
}

}  // namespace parry::attack

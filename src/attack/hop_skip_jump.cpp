// HopSkipJump (L2, untargeted) through Guard::predict.
#include "parry/attack/hop_skip_jump.hpp"

#include <cmath>
#include <optional>

#include "parry/detail/chunks.hpp"
#include "parry/detail/generator.hpp"
#include "parry/detail/require.hpp"

namespace parry::attack {

using parry::detail::require;

namespace {

// Label-only oracle for one sample: "is this image misclassified?", with a
// query budget and the Guard's rejections.
class Oracle {
 public:
  Oracle(const Guard& guard, RequestContext context, int64_t label, bool targeted, int64_t budget)
      : guard_(guard), context_(std::move(context)), label_(label), targeted_(targeted), budget_(budget) {}

  /// Decisions for a batch (bool N), or nullopt once the budget is spent or a query was rejected.
  std::optional<torch::Tensor> adversarial(const torch::Tensor& batch) {
    if (stopped() || queries_ + batch.size(0) > budget_) {
      exhausted_ = true;
      return std::nullopt;
    }
    std::vector<int64_t> labels;
    const bool answered =
        parry::detail::for_each_chunk(batch.size(0), guard_.input_spec().max_batch(), [&](int64_t begin, int64_t end) {
          const Response r = guard_.predict(batch.slice(0, begin, end), context_);
          if (r.verdict == Verdict::Rejected) {
            rejected_reason_ = r.reason;
            return false;
          }
          queries_ += static_cast<int64_t>(r.labels.size());
          flagged_ += r.verdict == Verdict::Flagged;
          labels.insert(labels.end(), r.labels.begin(), r.labels.end());
          return true;
        });
    if (!answered) return std::nullopt;
    const torch::Tensor predicted = torch::tensor(labels, torch::kInt64);
    return targeted_ ? predicted.eq(label_) : predicted.ne(label_);
  }
  std::optional<bool> adversarial_one(const torch::Tensor& image) {
    auto d = adversarial(image.unsqueeze(0));
    if (!d) return std::nullopt;
    return (*d)[0].item<bool>();
  }
  bool stopped() const { return exhausted_ || !rejected_reason_.empty(); }
  int64_t queries() const { return queries_; }
  int64_t flagged() const { return flagged_; }
  const std::string& rejected_reason() const { return rejected_reason_; }

 private:
  const Guard& guard_;
  RequestContext context_;
  int64_t label_;
  bool targeted_;
  int64_t budget_;
  int64_t queries_ = 0;
  int64_t flagged_ = 0;  // answers with verdict Flagged
  bool exhausted_ = false;
  std::string rejected_reason_;
};

// Binary search on the segment from x (clean side) to adv (adversarial side);
// returns the point on the adversarial side within θ of the boundary.
std::optional<torch::Tensor> to_boundary(Oracle& oracle, const torch::Tensor& x, const torch::Tensor& adv,
                                         double theta) {
  double low = 0, high = 1;
  while (high - low > theta) {
    const double mid = (low + high) / 2;
    const auto d = oracle.adversarial_one((1 - mid) * x + mid * adv);
    if (!d) return std::nullopt;
    (*d ? high : low) = mid;
  }
  return (1 - high) * x + high * adv;
}

}  // namespace

HopSkipJumpOptions::HopSkipJumpOptions() = default;
HopSkipJumpOptions& HopSkipJumpOptions::max_queries(int64_t v) {
  require(v >= 10, "HopSkipJumpOptions", "max_queries must be at least 10", v);
  max_queries_ = v;
  return *this;
}
HopSkipJumpOptions& HopSkipJumpOptions::initial_probes(int64_t v) {
  require(v >= 1, "HopSkipJumpOptions", "initial_probes must be at least 1", v);
  initial_probes_ = v;
  return *this;
}
HopSkipJumpOptions& HopSkipJumpOptions::max_probes(int64_t v) {
  require(v >= 1, "HopSkipJumpOptions", "max_probes must be at least 1", v);
  max_probes_ = v;
  return *this;
}
HopSkipJumpOptions& HopSkipJumpOptions::init_tries(int64_t v) {
  require(v >= 1, "HopSkipJumpOptions", "init_tries must be at least 1", v);
  init_tries_ = v;
  return *this;
}
HopSkipJumpOptions& HopSkipJumpOptions::seed(uint64_t v) {
  seed_ = v;
  return *this;
}
HopSkipJumpOptions& HopSkipJumpOptions::targeted(torch::Tensor starting_images) {
  if (!starting_images.defined() || starting_images.dim() != 4) {
    throw OptionError("HopSkipJumpOptions::targeted: starting images must be an N×C×H×W batch");
  }
  starting_images_ = starting_images.detach().contiguous();
  return *this;
}
HopSkipJumpOptions& HopSkipJumpOptions::client_id(std::string id) {
  client_id_ = std::move(id);
  return *this;
}

AttackResult hop_skip_jump(const Guard& guard, const torch::Tensor& x, const torch::Tensor& y,
                           const HopSkipJumpOptions& options) {
  const InputSpec& spec = guard.input_spec();
  GradientSettings range;
  range.clip_min = spec.min_value();
  range.clip_max = spec.max_value();
  check_batch("hop_skip_jump", x, y, range);
  const torch::Tensor x0 = x.detach().contiguous();
  const int64_t n = x0.size(0);
  if (options.targeted() && options.starting_images().sizes() != x0.sizes()) {
    throw OptionError("hop_skip_jump: targeted starting images must have the shape of x, " + c10::str(x0.sizes()));
  }
  const auto d = static_cast<double>(x0[0].numel());
  const double theta = 1.0 / (d * std::sqrt(d));
  const double span = range.clip_max - range.clip_min;
  torch::Generator gen = parry::detail::make_generator(options.seed(), x0.device());

  AttackResult result;
  result.adversarial = x0.clone();
  result.success = torch::zeros({n}, torch::kBool);
  result.queries = torch::zeros({n}, torch::kInt64);
  result.start_norm = torch::zeros({n});
  for (int64_t i = 0; i < n && !result.stopped_by_defense; ++i) {
    const torch::Tensor xi = x0[i];
    Oracle oracle(guard, RequestContext{options.client_id()}, y[i].item<int64_t>(), options.targeted(),
                  options.max_queries());
    // An image the model already gets wrong is its own adversarial example.
    const auto already = oracle.adversarial_one(xi);
    if (already && *already) {
      result.success[i] = true;
      result.queries[i] = oracle.queries();
      result.flagged_answers += oracle.flagged();
      continue;
    }
    // A start on the adversarial side: the given image of the target class,
    // or uniform noise that the model misclassifies.
    std::optional<torch::Tensor> current;
    if (options.targeted()) {
      const torch::Tensor start = options.starting_images()[i].clamp(range.clip_min, range.clip_max);
      const auto ok = oracle.adversarial_one(start);
      if (ok && *ok) current = start;
    }
    for (int64_t t = 0; t < options.init_tries() && !current && !options.targeted(); ++t) {
      const torch::Tensor noise = torch::rand(xi.sizes(), gen, xi.options()) * span + range.clip_min;
      const auto adv = oracle.adversarial_one(noise);
      if (!adv) break;
      if (*adv) current = noise;
    }
    if (current) current = to_boundary(oracle, xi, *current, theta);
    if (current) {
      result.start_norm[i] = (*current - xi).norm().item<float>();
      result.adversarial[i].copy_(*current);
      result.success[i] = true;
      for (int64_t t = 1; !oracle.stopped(); ++t) {
        const double dist = (*current - xi).norm().item<double>();
        if (!(dist > 0) || !std::isfinite(dist)) break;
        // 2. Gradient direction at the boundary point from random probes.
        const double delta = t == 1 ? 0.1 * span : std::sqrt(d) * theta * dist;
        const int64_t probes =
            std::min(options.max_probes(), static_cast<int64_t>(options.initial_probes() * std::sqrt(t)));
        torch::Tensor u = torch::randn({probes, xi.size(0), xi.size(1), xi.size(2)}, gen, xi.options());
        u = u / u.flatten(1).norm(2, 1).view({-1, 1, 1, 1});
        const torch::Tensor probe = (*current + delta * u).clamp(range.clip_min, range.clip_max);
        u = (probe - *current) / delta;
        const auto decisions = oracle.adversarial(probe);
        if (!decisions) break;
        torch::Tensor phi = decisions->to(torch::kFloat32) * 2 - 1;
        const double mean_phi = phi.mean().item<double>();
        if (std::abs(mean_phi) < 1.0) phi = phi - mean_phi;  // baseline, unless all probes agree
        torch::Tensor grad = (phi.view({-1, 1, 1, 1}) * u).mean(0);
        grad = grad / grad.norm().clamp_min(1e-12);
        if (!torch::isfinite(grad).all().item<bool>()) break;
        // 3. Geometric step search.
        double step = 2 * dist / std::sqrt(static_cast<double>(t));
        std::optional<torch::Tensor> next;
        while (!oracle.stopped()) {
          const torch::Tensor candidate = (*current + step * grad).clamp(range.clip_min, range.clip_max);
          const auto adv = oracle.adversarial_one(candidate);
          if (!adv) break;
          if (*adv) {
            next = candidate;
            break;
          }
          step /= 2;
          if (step < 1e-12) break;
        }
        if (!next) break;
        // 1. Back to the boundary.
        const auto boundary = to_boundary(oracle, xi, *next, theta);
        if (!boundary) break;
        if ((*boundary - xi).norm().item<double>() < dist) {
          current = boundary;
          result.adversarial[i].copy_(*current);
        }
      }
    }
    result.queries[i] = oracle.queries();
    result.flagged_answers += oracle.flagged();
    if (!oracle.rejected_reason().empty()) {
      result.stopped_by_defense = true;
      result.stop_reason = oracle.rejected_reason();
    }
  }
  result.norm = perturbation_norm(result.adversarial - x0, Norm::L2);
  return result;
}

}  // namespace parry::attack

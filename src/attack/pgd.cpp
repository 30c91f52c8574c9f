// attack::pgd: projected gradient descent, L∞ and L2, with random starts and restarts (Madry et al. 2018).
#include "parry/attack/pgd.hpp"

#include "attack/support.hpp"

namespace parry::attack {

using namespace detail;

PgdOptions::PgdOptions(double epsilon, Norm norm) {
  this->epsilon(epsilon);
  this->norm(norm);
}
PgdOptions& PgdOptions::epsilon(double v) {
  require(v >= 0 && std::isfinite(v), "PgdOptions", "epsilon must be non-negative and finite", v);
  epsilon_ = v;
  return *this;
}
PgdOptions& PgdOptions::norm(Norm n) {
  norm_ = n;
  return *this;
}
PgdOptions& PgdOptions::step_size(double v) {
  require(v > 0 && std::isfinite(v), "PgdOptions", "step_size must be positive", v);
  step_size_ = v;
  return *this;
}
PgdOptions& PgdOptions::steps(int64_t v) {
  require(v >= 1, "PgdOptions", "steps must be at least 1", v);
  steps_ = v;
  return *this;
}
PgdOptions& PgdOptions::restarts(int64_t v) {
  require(v >= 1, "PgdOptions", "restarts must be at least 1", v);
  restarts_ = v;
  return *this;
}
PgdOptions& PgdOptions::random_start(bool on) {
  random_start_ = on;
  return *this;
}
PgdOptions& PgdOptions::settings(GradientSettings s) {
  check_settings("PgdOptions", s);
  settings_ = s;
  return *this;
}
double PgdOptions::step_size() const {
  return step_size_ > 0 ? step_size_ : 2.5 * epsilon_ / static_cast<double>(steps_);
}

namespace {

torch::Tensor random_start_point(const torch::Tensor& x, const PgdOptions& o, torch::Generator& gen) {
  const auto& s = o.settings();
  torch::Tensor delta;
  if (o.norm() == Norm::Linf) {
    delta = (torch::rand(x.sizes(), gen, x.options()) * 2 - 1) * o.epsilon();
  } else {
    // Uniform in the L2 ball: a Gaussian direction, radius ε·U^(1/d).
    const int64_t d = flat(x).size(1);
    torch::Tensor direction = torch::randn(x.sizes(), gen, x.options());
    direction = direction / flat(direction).norm(2, 1).clamp_min(1e-12).view({-1, 1, 1, 1});
    const torch::Tensor radius =
        torch::rand({x.size(0)}, gen, x.options()).pow(1.0 / static_cast<double>(d)) * o.epsilon();
    delta = direction * radius.view({-1, 1, 1, 1});
  }
  return project(x + delta, x, o.epsilon(), o.norm(), s.clip_min, s.clip_max);
}

}  // namespace

AttackResult pgd(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y, const PgdOptions& options) {
  const auto& s = options.settings();
  check_batch("pgd", x, y, s);
  const int64_t n = x.size(0);
  const torch::Tensor x0 = x.detach();
  torch::Generator gen = at::detail::createCPUGenerator(s.seed);
  AttackResult result;
  result.adversarial = x0.clone();
  result.success = torch::zeros({n}, torch::kBool);
  result.queries = torch::zeros({n}, torch::kInt64);
  const double alpha = options.step_size();
  bool labels_checked = false;
  for (int64_t restart = 0; restart < options.restarts(); ++restart) {
    const torch::Tensor active = (~result.success).nonzero().flatten();
    if (active.numel() == 0) break;
    const torch::Tensor xa = x0.index_select(0, active);
    const torch::Tensor ya = y.index_select(0, active);
    torch::Tensor current = options.random_start() ? random_start_point(xa, options, gen) : xa.clone();
    for (int64_t step = 0; step < options.steps(); ++step) {
      auto [grad, logits] = loss_gradient(f, current, ya, s);
      if (!labels_checked) {
        check_labels("pgd", logits, ya);
        labels_checked = true;
      }
      torch::Tensor direction;
      if (options.norm() == Norm::Linf) {
        direction = grad.sign();
      } else {
        direction = grad / flat(grad).norm(2, 1).clamp_min(1e-12).view({-1, 1, 1, 1});
      }
      current = project(current + alpha * direction, xa, options.epsilon(), options.norm(), s.clip_min, s.clip_max);
    }
    const torch::Tensor fooled = is_success(evaluate(f, current), ya, s.targeted);
    result.queries.index_add_(0, active,
                              torch::full({active.size(0)}, options.steps() * s.eot_samples + 1, torch::kInt64));
    // Keep a success from this restart; a sample never fooled keeps the last attempt.
    const bool last = restart + 1 == options.restarts();
    const torch::Tensor keep = last ? torch::ones_like(fooled) : fooled;
    const torch::Tensor rows = active.masked_select(keep);
    result.adversarial.index_copy_(0, rows, current.index_select(0, keep.nonzero().flatten()));
    result.success.index_put_({active}, fooled);
  }
  result.norm = perturbation_norm(result.adversarial - x0, options.norm());
  return result;
}

}  // namespace parry::attack

// attack::pgd: projected gradient descent, L∞ and L2, with random starts and restarts (Madry et al. 2018), on the
// cross-entropy or on the KL divergence to the clean prediction (TRADES' inner maximisation, Zhang et al. 2019).
#include "parry/attack/pgd.hpp"

#include "attack/support.hpp"
#include "parry/detail/generator.hpp"

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
  start_ = on ? PgdStart::Uniform : PgdStart::None;
  gaussian_sigma_ = 0;
  return *this;
}
PgdOptions& PgdOptions::gaussian_start(double sigma) {
  require(sigma > 0 && std::isfinite(sigma), "PgdOptions::gaussian_start", "sigma must be positive and finite", sigma);
  start_ = PgdStart::Gaussian;
  gaussian_sigma_ = sigma;
  return *this;
}
PgdOptions& PgdOptions::start_perturbation(torch::Tensor delta) {
  start_perturbation_ = std::move(delta);
  return *this;
}
PgdOptions& PgdOptions::loss(PgdLoss l) {
  loss_ = l;
  return *this;
}
PgdOptions& PgdOptions::generator(torch::Generator g) {
  generator_ = std::move(g);
  return *this;
}
PgdOptions& PgdOptions::last_iterate(bool on) {
  last_iterate_ = on;
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

torch::Tensor start_point(const torch::Tensor& x, const PgdOptions& o, torch::Generator& gen) {
  const auto& s = o.settings();
  torch::Tensor delta;
  if (o.start_perturbation().defined()) {
    return project(x + o.start_perturbation().to(x.device(), x.scalar_type()), x, o.epsilon(), o.norm(), s.clip_min,
                   s.clip_max);
  }
  switch (o.start()) {
    case PgdStart::None:
      return x.clone();
    case PgdStart::Gaussian:
      return project(x + o.gaussian_sigma() * torch::randn(x.sizes(), gen, x.options()), x, o.epsilon(), o.norm(),
                     s.clip_min, s.clip_max);
    case PgdStart::Uniform:
      break;
  }
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

// softmax(f(x)) of the clean batch, averaged over the EOT draws.
torch::Tensor clean_probabilities(const LogitsFn& f, const torch::Tensor& x, int64_t eot_samples) {
  torch::NoGradGuard no_grad;
  torch::Tensor p = torch::softmax(f(x), 1);
  for (int64_t k = 1; k < eot_samples; ++k) p = p + torch::softmax(f(x), 1);
  return eot_samples > 1 ? p / static_cast<double>(eot_samples) : p;
}

// Gradient of the summed KL(p_clean ‖ softmax(f(x))) in x. The constant
// Σ p log p does not change the gradient; it keeps the value a divergence.
std::pair<torch::Tensor, torch::Tensor> kl_gradient(const LogitsFn& f, const torch::Tensor& x,
                                                    const torch::Tensor& p_clean, int64_t eot_samples) {
  return objective_gradient(f, x, eot_samples, [&p_clean](const torch::Tensor& logits) {
    if (logits.dim() != 2 || logits.sizes() != p_clean.sizes()) {
      throw OptionError("pgd: the model returned logits of shape " + c10::str(logits.sizes()) +
                        " where the clean batch gave " + c10::str(p_clean.sizes()));
    }
    return (p_clean * (torch::log(p_clean.clamp_min(1e-12)) - torch::log_softmax(logits, 1))).sum();
  });
}

}  // namespace

AttackResult pgd(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y, const PgdOptions& options) {
  const auto& s = options.settings();
  check_batch("pgd", x, y, s);
  if (options.start_perturbation().defined() &&
      (options.restarts() != 1 || options.start_perturbation().sizes() != x.sizes())) {
    throw OptionError("pgd: start_perturbation needs restarts = 1 and the shape of x");
  }
  require(!options.last_iterate() || options.restarts() == 1, "pgd",
          "last_iterate returns the one run's last point and needs restarts = 1", options.restarts());
  const bool kl = options.loss() == PgdLoss::KlToClean;
  if (kl && s.targeted) {
    throw OptionError(
        "pgd: the KL loss ascends the divergence from the clean prediction and has no target; "
        "use PgdLoss::CrossEntropy for a targeted attack");
  }
  const int64_t n = x.size(0);
  const torch::Tensor x0 = x.detach();
  torch::Generator gen =
      options.generator().defined() ? options.generator() : parry::detail::make_generator(s.seed, x0.device());
  const torch::Tensor p_clean = kl ? clean_probabilities(f, x0, s.eot_samples) : torch::Tensor();
  if (kl) check_labels("pgd", p_clean, y);
  auto gradient = [&](const torch::Tensor& point, const torch::Tensor& labels, const torch::Tensor& p) {
    return kl ? kl_gradient(f, point, p, s.eot_samples) : loss_gradient(f, point, labels, s);
  };
  auto step = [&](const torch::Tensor& current, const torch::Tensor& grad, const torch::Tensor& origin) {
    torch::Tensor direction;
    if (options.norm() == Norm::Linf) {
      direction = grad.sign();
    } else {
      direction = grad / flat(grad).norm(2, 1).clamp_min(1e-12).view({-1, 1, 1, 1});
    }
    return project(current + options.step_size() * direction, origin, options.epsilon(), options.norm(), s.clip_min,
                   s.clip_max);
  };
  const int64_t clean_queries = kl ? s.eot_samples : 0;
  AttackResult result;
  if (options.last_iterate()) {
    torch::Tensor current = start_point(x0, options, gen);
    for (int64_t i = 0; i < options.steps(); ++i) {
      auto [grad, logits] = gradient(current, y, p_clean);
      if (i == 0 && !kl) check_labels("pgd", logits, y);
      current = step(current, grad, x0);
    }
    result.adversarial = current;
    result.queries = torch::full({n}, options.steps() * s.eot_samples + clean_queries, torch::kInt64);
    result.norm = perturbation_norm(result.adversarial - x0, options.norm());
    return result;
  }
  result.adversarial = x0.clone();
  result.success = torch::zeros({n}, torch::kBool);
  result.queries = torch::full({n}, clean_queries, torch::kInt64);
  bool labels_checked = kl;
  for (int64_t restart = 0; restart < options.restarts(); ++restart) {
    const torch::Tensor active = (~result.success).nonzero().flatten();
    if (active.numel() == 0) break;
    const torch::Tensor xa = x0.index_select(0, active);
    const torch::Tensor ya = y.index_select(0, active);
    const torch::Tensor pa = kl ? p_clean.index_select(0, active) : torch::Tensor();
    torch::Tensor current = start_point(xa, options, gen);
    for (int64_t i = 0; i < options.steps(); ++i) {
      auto [grad, logits] = gradient(current, ya, pa);
      if (!labels_checked) {
        check_labels("pgd", logits, ya);
        labels_checked = true;
      }
      current = step(current, grad, xa);
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

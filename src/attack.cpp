// White-box attacks: FGSM, PGD (L∞/L2, restarts), Carlini & Wagner L2, EOT.
#include <cmath>
#include <limits>
#include <sstream>

#include "parry/attack/carlini_wagner.hpp"
#include "parry/attack/fgsm.hpp"
#include "parry/attack/pgd.hpp"

namespace parry::attack {

namespace {

template <typename T>
void require(bool ok, const char* where, const std::string& what, T got) {
  if (!ok) {
    std::ostringstream out;
    out << where << ": " << what << ", but got " << got;
    throw OptionError(out.str());
  }
}

void check_settings(const char* where, const GradientSettings& s) {
  require(std::isfinite(s.clip_min) && std::isfinite(s.clip_max) && s.clip_min < s.clip_max, where,
          "clip range must be finite with clip_min < clip_max", s.clip_max - s.clip_min);
  require(s.eot_samples >= 1, where, "eot_samples must be at least 1", s.eot_samples);
}

// The per-sample view of a batch for reductions: N × (everything else).
torch::Tensor flat(const torch::Tensor& t) {
  return t.reshape({t.size(0), -1});
}

torch::Tensor evaluate(const LogitsFn& f, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return f(x);
}

void check_labels(const char* attack, const torch::Tensor& logits, const torch::Tensor& y) {
  if (logits.dim() != 2 || logits.size(0) != y.size(0)) {
    throw OptionError(std::string(attack) + ": the model returned logits of shape " + c10::str(logits.sizes()) +
                      " for a batch of " + std::to_string(y.size(0)));
  }
  require(y.max().item<int64_t>() < logits.size(1), attack,
          "labels must be below the class count " + std::to_string(logits.size(1)), y.max().item<int64_t>());
}

}  // namespace

const char* to_string(Norm norm) {
  return norm == Norm::Linf ? "linf" : "l2";
}

LogitsFn differentiable(const Guard& guard) {
  return [&guard](const torch::Tensor& x) { return guard.differentiable_logits(x); };
}

LogitsFn differentiable(const Model& model) {
  return [model](const torch::Tensor& x) { return model.logits(x); };
}

void check_batch(const char* attack, const torch::Tensor& x, const torch::Tensor& y, const GradientSettings& s) {
  check_settings(attack, s);
  if (!x.defined() || x.dim() != 4 || x.size(0) == 0 || !x.is_floating_point()) {
    throw OptionError(std::string(attack) + ": x must be a non-empty floating N×C×H×W batch");
  }
  if (!y.defined() || y.dim() != 1 || y.scalar_type() != torch::kInt64 || y.size(0) != x.size(0)) {
    throw OptionError(std::string(attack) + ": y must be int64 labels of length N = " + std::to_string(x.size(0)));
  }
  require(y.min().item<int64_t>() >= 0, attack, "labels must be non-negative", y.min().item<int64_t>());
  const auto [lo, hi] = torch::aminmax(x.detach());
  if (!(lo.item<double>() >= s.clip_min && hi.item<double>() <= s.clip_max)) {
    throw OptionError(std::string(attack) + ": x must lie in the clip range [" + std::to_string(s.clip_min) + ", " +
                      std::to_string(s.clip_max) + "] and be finite");
  }
}

std::pair<torch::Tensor, torch::Tensor> loss_gradient(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                                                      const GradientSettings& s) {
  torch::AutoGradMode enable_grad(true);
  const torch::Tensor input = x.detach().requires_grad_(true);
  torch::Tensor total;
  torch::Tensor logits;
  for (int64_t k = 0; k < s.eot_samples; ++k) {
    logits = f(input);
    torch::Tensor loss;
    try {
      loss = torch::nn::functional::cross_entropy(
          logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    } catch (const c10::Error&) {
      check_labels("attack", logits, y);  // names the bad labels or shape
      throw;
    }
    total = k == 0 ? loss : total + loss;
  }
  if (s.eot_samples > 1) total = total / static_cast<double>(s.eot_samples);
  // Only the input's gradient: no parameter gradients are computed or stored.
  torch::Tensor grad = torch::autograd::grad({total}, {input}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                             /*create_graph=*/false, /*allow_unused=*/true)[0];
  if (!grad.defined()) grad = torch::zeros_like(input);
  if (s.targeted) grad = -grad;
  return {grad.detach(), logits.detach()};
}

torch::Tensor is_success(const torch::Tensor& logits, const torch::Tensor& y, bool targeted) {
  const torch::Tensor predicted = logits.argmax(1);
  return targeted ? predicted.eq(y) : predicted.ne(y);
}

torch::Tensor perturbation_norm(const torch::Tensor& delta, Norm norm) {
  const torch::Tensor d = flat(delta.detach()).to(torch::kFloat32);
  return norm == Norm::Linf ? std::get<0>(d.abs().max(1)) : d.norm(2, 1);
}

torch::Tensor project(const torch::Tensor& x_adv, const torch::Tensor& x, double epsilon, Norm norm, double clip_min,
                      double clip_max) {
  torch::Tensor delta = x_adv - x;
  if (norm == Norm::Linf) {
    delta = delta.clamp(-epsilon, epsilon);
  } else {
    const torch::Tensor n = flat(delta).norm(2, 1).clamp_min(1e-12);
    const torch::Tensor factor = (epsilon / n).clamp_max(1.0);
    delta = delta * factor.view({-1, 1, 1, 1});
  }
  // Clipping to the pixel range moves every coordinate towards x (which lies
  // inside the range), so it never leaves the ε-ball.
  return (x + delta).clamp(clip_min, clip_max);
}

// ---------------------------------------------------------------- FGSM

FgsmOptions::FgsmOptions(double epsilon) {
  this->epsilon(epsilon);
}
FgsmOptions& FgsmOptions::epsilon(double v) {
  require(v >= 0 && std::isfinite(v), "FgsmOptions", "epsilon must be non-negative and finite", v);
  epsilon_ = v;
  return *this;
}
FgsmOptions& FgsmOptions::settings(GradientSettings s) {
  check_settings("FgsmOptions", s);
  settings_ = s;
  return *this;
}

AttackResult fgsm(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y, const FgsmOptions& options) {
  const auto& s = options.settings();
  check_batch("fgsm", x, y, s);
  const auto [grad, clean_logits] = loss_gradient(f, x, y, s);
  check_labels("fgsm", clean_logits, y);
  AttackResult result;
  result.adversarial = (x.detach() + options.epsilon() * grad.sign()).clamp(s.clip_min, s.clip_max);
  result.success = is_success(evaluate(f, result.adversarial), y, s.targeted);
  result.norm = perturbation_norm(result.adversarial - x, Norm::Linf);
  result.queries = torch::full({x.size(0)}, s.eot_samples + 1, torch::kInt64);
  return result;
}

// ---------------------------------------------------------------- PGD

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

// ---------------------------------------------------------------- Carlini & Wagner L2

CarliniWagnerOptions::CarliniWagnerOptions() = default;
CarliniWagnerOptions& CarliniWagnerOptions::confidence(double v) {
  require(v >= 0 && std::isfinite(v), "CarliniWagnerOptions", "confidence must be non-negative", v);
  confidence_ = v;
  return *this;
}
CarliniWagnerOptions& CarliniWagnerOptions::initial_const(double v) {
  require(v > 0 && std::isfinite(v), "CarliniWagnerOptions", "initial_const must be positive", v);
  initial_const_ = v;
  return *this;
}
CarliniWagnerOptions& CarliniWagnerOptions::binary_search_steps(int64_t v) {
  require(v >= 1, "CarliniWagnerOptions", "binary_search_steps must be at least 1", v);
  binary_search_steps_ = v;
  return *this;
}
CarliniWagnerOptions& CarliniWagnerOptions::max_iterations(int64_t v) {
  require(v >= 1, "CarliniWagnerOptions", "max_iterations must be at least 1", v);
  max_iterations_ = v;
  return *this;
}
CarliniWagnerOptions& CarliniWagnerOptions::learning_rate(double v) {
  require(v > 0 && std::isfinite(v), "CarliniWagnerOptions", "learning_rate must be positive", v);
  learning_rate_ = v;
  return *this;
}
CarliniWagnerOptions& CarliniWagnerOptions::settings(GradientSettings s) {
  check_settings("CarliniWagnerOptions", s);
  settings_ = s;
  return *this;
}

AttackResult carlini_wagner_l2(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                               const CarliniWagnerOptions& options) {
  const auto& s = options.settings();
  check_batch("carlini_wagner_l2", x, y, s);
  torch::AutoGradMode enable_grad(true);
  const int64_t n = x.size(0);
  const torch::Tensor x0 = x.detach();
  const double range = s.clip_max - s.clip_min;
  auto to_image = [&](const torch::Tensor& w) { return s.clip_min + (torch::tanh(w) + 1) * 0.5 * range; };
  // atanh of the scaled input; the factor keeps ±1 finite.
  const torch::Tensor w0 = torch::atanh(((x0 - s.clip_min) / range * 2 - 1) * 0.999999);
  const auto double_opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor c = torch::full({n}, options.initial_const(), double_opts);
  torch::Tensor lower = torch::zeros({n}, double_opts);
  torch::Tensor upper = torch::full({n}, 1e10, double_opts);
  torch::Tensor best_l2 = torch::full({n}, std::numeric_limits<double>::infinity(), double_opts);
  torch::Tensor best_adv = x0.clone();
  torch::Tensor one_hot;
  for (int64_t round = 0; round < options.binary_search_steps(); ++round) {
    torch::Tensor w = w0.clone().requires_grad_(true);
    torch::optim::Adam adam({w}, torch::optim::AdamOptions(options.learning_rate()));
    torch::Tensor round_success = torch::zeros({n}, torch::kBool);
    const torch::Tensor c_batch = c.to(x0.dtype());
    for (int64_t it = 0; it < options.max_iterations(); ++it) {
      const torch::Tensor image = to_image(w);
      const torch::Tensor l2 = flat(image - x0).pow(2).sum(1);
      torch::Tensor loss;
      torch::Tensor margin;  // > κ means success
      for (int64_t k = 0; k < s.eot_samples; ++k) {
        const torch::Tensor logits = f(image);
        if (!one_hot.defined()) {
          check_labels("carlini_wagner_l2", logits, y);
          one_hot = torch::one_hot(y, logits.size(1)).to(torch::kBool);
        }
        const torch::Tensor own = logits.masked_select(one_hot).view({n});
        const torch::Tensor other =
            std::get<0>(logits.masked_fill(one_hot, -std::numeric_limits<float>::infinity()).max(1));
        const torch::Tensor m = s.targeted ? own - other : other - own;
        const torch::Tensor term = l2 + c_batch * torch::clamp_min(-m, -options.confidence());
        loss = k == 0 ? term.sum() : loss + term.sum();
        margin = k == 0 ? m.detach() : margin + m.detach();
      }
      margin = margin / static_cast<double>(s.eot_samples);
      const torch::Tensor succeeded = margin > options.confidence();
      const torch::Tensor improved = succeeded & (l2.detach().to(torch::kFloat64) < best_l2);
      if (improved.any().item<bool>()) {
        best_l2 = torch::where(improved, l2.detach().to(torch::kFloat64), best_l2);
        best_adv = torch::where(improved.view({-1, 1, 1, 1}), image.detach(), best_adv);
      }
      round_success |= succeeded;
      w.mutable_grad() = torch::autograd::grad({loss}, {w})[0];
      adam.step();
    }
    // Binary search on c per sample.
    upper = torch::where(round_success, torch::minimum(upper, c), upper);
    lower = torch::where(round_success, lower, torch::maximum(lower, c));
    c = torch::where(upper < 1e9, (lower + upper) / 2, c * 10);
  }
  AttackResult result;
  result.adversarial = best_adv.clamp(s.clip_min, s.clip_max);
  result.success = is_success(evaluate(f, result.adversarial), y, s.targeted) & torch::isfinite(best_l2);
  result.norm = perturbation_norm(result.adversarial - x0, Norm::L2);
  result.queries =
      torch::full({n}, options.binary_search_steps() * options.max_iterations() * s.eot_samples + 1, torch::kInt64);
  return result;
}

}  // namespace parry::attack

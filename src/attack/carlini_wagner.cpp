// attack::carlini_wagner_l2: the C&W L2 attack (Carlini & Wagner 2017) with a binary search over c.
#include "parry/attack/carlini_wagner.hpp"

#include <limits>

#include "attack/support.hpp"

namespace parry::attack {

using namespace detail;

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

// attack::fgsm: the fast gradient sign method (Goodfellow et al. 2015).
#include "parry/attack/fgsm.hpp"

#include "attack/support.hpp"

namespace parry::attack {

using namespace detail;

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

}  // namespace parry::attack

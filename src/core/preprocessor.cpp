// parry::Preprocessor: the gradient policies of the attack path (exact, BPDA, blocked).
#include "parry/core/preprocessor.hpp"

namespace parry {

const char* to_string(GradientPolicy policy) {
  switch (policy) {
    case GradientPolicy::Exact:
      return "exact";
    case GradientPolicy::StraightThrough:
      return "straight_through";
    case GradientPolicy::Blocked:
      return "blocked";
  }
  return "unknown";
}

void Preprocessor::check_policy(const char* component) const {
  if (policy_ == GradientPolicy::Exact && !is_differentiable()) {
    throw OptionError(std::string(component) +
                      ": gradient policy 'exact' needs a differentiable transform; use "
                      "'straight_through' (BPDA) or 'blocked'");
  }
}

torch::Tensor Preprocessor::apply_differentiable(const torch::Tensor& x) const {
  switch (policy_) {
    case GradientPolicy::Exact:
      return apply(x);
    case GradientPolicy::StraightThrough: {
      // Forward: apply(x). Backward: identity (the detached term has no gradient).
      const torch::Tensor transformed = [&] {
        torch::NoGradGuard no_grad;
        return apply(x.detach());
      }();
      return x + (transformed - x.detach());
    }
    case GradientPolicy::Blocked: {
      const torch::Tensor transformed = [&] {
        torch::NoGradGuard no_grad;
        return apply(x.detach());
      }();
      // Keeps the graph connected so callers get an explicit zero gradient.
      return transformed + x * 0.0;
    }
  }
  throw StateError("unknown gradient policy");
}

}  // namespace parry

// attack::detector_aware: the classifier and the detector as one objective (Carlini & Wagner 2017).
#include "parry/attack/detector_aware.hpp"

#include <cmath>

#include "parry/detail/require.hpp"

namespace parry::attack {

using parry::detail::require;

LogitsFn detector_aware(LogitsFn classifier, const Detector& detector, const Model& model, double scale,
                        LogitsFn preprocess) {
  require(std::isfinite(scale) && scale > 0.0, "detector_aware", "scale must be finite and > 0", scale);
  if (!classifier) throw OptionError("detector_aware: classifier is empty");
  const Detector* target = &detector;
  return [classifier = std::move(classifier), target, model, scale,
          preprocess = std::move(preprocess)](const torch::Tensor& x) {
    const torch::Tensor logits = classifier(x);
    const torch::Tensor seen = preprocess ? preprocess(x) : x;
    const torch::Tensor margin = (target->differentiable_score(seen, model) - target->threshold()).to(logits.dtype());
    const torch::Tensor flagged_logit = std::get<0>(logits.max(1)) + scale * margin;
    return torch::cat({logits, flagged_logit.unsqueeze(1)}, 1);
  };
}

}  // namespace parry::attack

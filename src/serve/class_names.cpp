// serve::class_names: the model's output size from one forward pass on zeros.
#include "parry/serve/class_names.hpp"

#include <torch/torch.h>

namespace parry::serve {

int64_t model_classes(const Guard& guard) {
  const InputSpec& spec = guard.input_spec();
  torch::NoGradGuard no_grad;
  torch::Tensor logits;
  try {
    const auto zeros =
        torch::full({1, spec.channels(), spec.height(), spec.width()}, spec.min_value(), torch::kFloat32);
    logits = guard.model().logits(zeros.to(guard.model().device()));
  } catch (const std::exception& e) {
    throw InternalError(std::string("model_classes: the model fails on one image of the input shape: ") + e.what());
  }
  if (logits.dim() != 2 || logits.size(0) != 1 || logits.size(1) < 1) {
    throw InternalError("model_classes: the model's output is not 1×K logits for one image");
  }
  return logits.size(1);
}

std::vector<std::string> class_names(const Guard& guard, const std::vector<std::string>& configured) {
  const int64_t k = model_classes(guard);
  if (!configured.empty()) {
    if (static_cast<int64_t>(configured.size()) != k) {
      throw OptionError("the config names " + std::to_string(configured.size()) + " classes but the model outputs " +
                        std::to_string(k));
    }
    return configured;
  }
  std::vector<std::string> names;
  for (int64_t i = 0; i < k; ++i) names.push_back(std::to_string(i));
  return names;
}

}  // namespace parry::serve

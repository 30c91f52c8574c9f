// detect::LearnedDetector: P(adversarial) under a trained detector network.
#include "parry/detect/learned_detector.hpp"

#include <sstream>

#include "parry/detail/format.hpp"
#include "parry/detail/model_state.hpp"

namespace parry::detect {

using parry::detail::format_number;
using parry::detail::load_model_state_tensor;
using parry::detail::model_state_tensor;

const char* to_string(DetectorKind kind) {
  return kind == DetectorKind::ExtraClass ? "extra_class" : "binary";
}

LearnedDetector::LearnedDetector(const Model& network, DetectorKind kind, std::vector<std::string> trained_on)
    : kind_(kind) {
  Model copy = network.clone();
  if (copy.parameters().empty()) {
    throw OptionError("LearnedDetector: the model has no trainable parameters (make it from a torch::nn module)");
  }
  copy.set_training(false);
  state_ = std::make_shared<const State>(State{std::move(copy), std::move(trained_on)});
}

std::string LearnedDetector::describe() const {
  std::string attacks;
  for (const auto& a : trained_on()) attacks += (attacks.empty() ? "" : "+") + a;
  std::string out = std::string("LearnedDetector(") + to_string(kind_) + ", trained on " +
                    (attacks.empty() ? std::string("?") : attacks);
  out += is_calibrated() ? ", threshold=" + format_number(threshold()) + ")" : ", uncalibrated)";
  return out;
}

torch::Tensor LearnedDetector::probability(const torch::Tensor& logits) const {
  if (logits.dim() != 2 || logits.size(1) < 2 || (kind_ == DetectorKind::Binary && logits.size(1) != 2)) {
    throw StateError("detector network returned an unexpected shape",
                     "LearnedDetector: logits of shape " + c10::str(logits.sizes()));
  }
  // The adversarial class is the last output in both kinds.
  return torch::softmax(logits.to(torch::kFloat32), 1).select(1, logits.size(1) - 1);
}

torch::Tensor LearnedDetector::score(const DetectorInput& input) const {
  c10::InferenceMode inference;
  return probability(network().logits(input.batch));
}

torch::Tensor LearnedDetector::differentiable_score(const torch::Tensor& batch, const Model&) const {
  return probability(network().logits(batch));
}

void LearnedDetector::save_state(torch::serialize::OutputArchive& archive) const {
  archive.write("learned_kind", c10::IValue(std::string(to_string(kind_))));
  std::string names;
  const auto state = std::atomic_load(&state_);
  for (const auto& a : state->trained_on) names += (names.empty() ? "" : "\n") + a;
  archive.write("learned_attacks", c10::IValue(names));
  archive.write("learned_network", model_state_tensor(state->network));
}

void LearnedDetector::load_state(torch::serialize::InputArchive& archive) {
  c10::IValue kind, names;
  torch::Tensor state;
  if (!archive.try_read("learned_kind", kind) || !kind.isString() || !archive.try_read("learned_attacks", names) ||
      !names.isString() || !archive.try_read("learned_network", state)) {
    throw IoError("detector file is corrupt", "learned detector: missing kind, attacks or network");
  }
  if (kind.toStringRef() != to_string(kind_)) {
    throw IoError(
        "detector file belongs to a different detector",
        "learned detector: file holds kind '" + kind.toStringRef() + "', this detector is '" + to_string(kind_) + "'");
  }
  // Load into a copy first so that a mismatch leaves this detector unchanged.
  Model loaded = network().clone();
  load_model_state_tensor(loaded, state, "detector file does not match the detector network", "learned detector");
  loaded.set_training(false);
  std::vector<std::string> attacks;
  std::istringstream in(names.toStringRef());
  for (std::string line; std::getline(in, line);) attacks.push_back(line);
  std::atomic_store(&state_, std::make_shared<const State>(State{std::move(loaded), std::move(attacks)}));
}

}  // namespace parry::detect

// The readers of saved state that fuzz_saved_state drives, shared with the
// unit test that replays the fuzzer's reproducers (tests/test_fuzz_reproducers.cpp):
// a detector's state (Detector::load), a model's parameters (Model::load) and
// an adversarial training checkpoint (the resume path of AdversarialTrainer::fit),
// for a small linear model.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parry/core/model.hpp"
#include "parry/detect/kernel_density.hpp"
#include "parry/detect/softmax_confidence.hpp"
#include "train/checkpoint.hpp"

namespace parry::fuzz {

inline Model linear_model() {
  torch::manual_seed(0);
  return Model(torch::nn::Linear(4, 2));
}

inline const train::detail::OptimizerFactory& make_adam() {
  static const train::detail::OptimizerFactory factory = [](const std::vector<torch::Tensor>& p) {
    return std::unique_ptr<torch::optim::Optimizer>(new torch::optim::Adam(p, torch::optim::AdamOptions(1e-3)));
  };
  return factory;
}

/// The signature of the checkpoints in the seed corpus.
inline const char* checkpoint_signature() {
  return "fuzz";
}

/// Reads the file at `path` with reader `kind % 4`: 0 SoftmaxConfidence,
/// 1 KernelDensity, 2 Model::load, 3 a training checkpoint.
inline void read_saved_state(uint8_t kind, const std::string& path) {
  switch (kind % 4) {
    case 0:
      detect::SoftmaxConfidence().load(path);
      break;
    case 1:
      detect::KernelDensity().load(path);
      break;
    case 2:
      linear_model().load(path);
      break;
    default: {
      Model model = linear_model();
      torch::Generator generator = at::detail::createCPUGenerator(0);
      std::unique_ptr<torch::optim::Optimizer> optimizer = make_adam()(model.parameters());
      train::detail::restore_checkpoint(path, checkpoint_signature(), 10, model, make_adam(), optimizer, generator);
      break;
    }
  }
}

}  // namespace parry::fuzz

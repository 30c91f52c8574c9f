// Checkpoints of adversarial training: written atomically, validated whole
// before anything is restored, so a resumed run continues bit for bit.
// Internal: not installed.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parry/core/model.hpp"
#include "parry/data/idx.hpp"
#include "parry/train/adversarial_trainer.hpp"

namespace parry::train::detail {

/// Everything that must match for a checkpoint to be continued.
std::string training_signature(const AdversarialTrainerOptions& o, const data::LabeledImages& train);

struct CheckpointContents {
  int64_t epoch = 0;
  double seconds = 0;
  std::vector<EpochReport> history;
};

/// Writes the model, optimizer, both generators and the history atomically.
void save_checkpoint(const std::string& path, const std::string& signature, int64_t epoch, double seconds,
                     const Model& model, const torch::optim::Optimizer& optimizer, const torch::Generator& generator,
                     const std::vector<EpochReport>& history);

using OptimizerFactory =
    std::function<std::unique_ptr<torch::optim::Optimizer>(const std::vector<torch::Tensor>& parameters)>;

/// Reads and validates a checkpoint, then restores the model, the generators
/// and `optimizer` (made anew by `make_optimizer` over the model's parameters
/// after the load: a TorchScript model's load replaces its parameter
/// tensors). Nothing is changed if validation fails.
CheckpointContents restore_checkpoint(const std::string& path, const std::string& signature, int64_t max_epoch,
                                      Model& model, const OptimizerFactory& make_optimizer,
                                      std::unique_ptr<torch::optim::Optimizer>& optimizer, torch::Generator& generator);

}  // namespace parry::train::detail

// A Model's parameters and buffers as a uint8 tensor, so that a detector or a
// checkpoint can nest a whole network's state inside its own archive.
#pragma once

#include <torch/torch.h>

#include <string>

#include "parry/core/model.hpp"

namespace parry::detail {

/// The bytes Model::save writes (parameters and buffers), as a uint8 tensor.
/// @throws parry::IoError if the temporary file cannot be written or read.
torch::Tensor model_state_tensor(const Model& model);

/// Loads what model_state_tensor() produced into `model`; `model` is unchanged
/// on error. @throws parry::IoError with `public_message` (detail: `where`).
void load_model_state_tensor(Model& model, const torch::Tensor& state, const std::string& public_message,
                             const std::string& where);

}  // namespace parry::detail

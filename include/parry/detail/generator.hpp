// Seeded random-number generators on the device of the tensors they fill.
#pragma once

#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/torch.h>

#include <cstdint>

#include "parry/core/errors.hpp"

namespace parry::detail {

/// A new generator seeded with `seed` for `device`: a CPU generator, or a
/// clone of the CUDA device's default generator reseeded (so the stream does
/// not depend on what else used that device). Draws of the same seed on CPU
/// and CUDA differ: the two use different algorithms.
/// @throws parry::StateError for other device types.
inline torch::Generator make_generator(uint64_t seed, const torch::Device& device) {
  if (device.is_cpu()) return at::detail::createCPUGenerator(seed);
  if (device.is_cuda()) {
    torch::Generator generator = at::detail::getCUDAHooks().getDefaultCUDAGenerator(device.index()).clone();
    generator.set_current_seed(seed);
    return generator;
  }
  throw StateError("random numbers are not available on this device", "make_generator: device " + device.str());
}

}  // namespace parry::detail

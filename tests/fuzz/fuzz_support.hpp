// What the libFuzzer targets share: the fuzzed bytes as a file (for readers
// that take a path), a small callable model, and the rule that only a
// parry::Error may escape a reader: anything else is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include "parry/core/errors.hpp"
#include "parry/core/model.hpp"

namespace parry::fuzz {

/// Writes `bytes` to a file private to this process on tmpfs and returns its path.
inline const std::string& as_file(const uint8_t* data, size_t size, const char* suffix = "") {
  static const std::string path = "/dev/shm/parry-fuzz-" + std::to_string(::getpid()) + suffix;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

/// A model of C×H×W images to 10 classes: logits from the per-channel means.
inline Model tiny_model() {
  return Model::from_callable([](const torch::Tensor& x) {
    const torch::Tensor means = x.flatten(2).mean(2);  // N×C
    return torch::cat({means, means.sum(1, true).expand({x.size(0), 10 - x.size(1)})}, 1);
  });
}

/// Runs `body`; a parry::Error is a clean rejection of bad input.
template <typename F>
void expect_clean(F&& body) {
  try {
    body();
  } catch (const parry::Error&) {
  }
}

}  // namespace parry::fuzz

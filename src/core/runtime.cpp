// Process-wide runtime settings: LibTorch threads and glibc malloc tuning.
#include "parry/core/runtime.hpp"

#include <malloc.h>
#include <torch/torch.h>

#include "parry/core/errors.hpp"

namespace parry {

RuntimeOptions& RuntimeOptions::threads(int n) {
  if (n < 1) throw OptionError("RuntimeOptions::threads: must be at least 1, but got " + std::to_string(n));
  threads_ = n;
  return *this;
}

RuntimeOptions& RuntimeOptions::keep_freed_memory(bool on) {
  keep_freed_memory_ = on;
  return *this;
}

void configure_runtime(const RuntimeOptions& options) {
  torch::set_num_threads(options.threads());
  if (options.keep_freed_memory()) {
    // 32 MiB is the largest mmap threshold glibc accepts through mallopt.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 64 << 20);
  }
}

}  // namespace parry

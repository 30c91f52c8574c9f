// Process-wide runtime settings: LibTorch threads and glibc malloc tuning.
#include "parry/core/runtime.hpp"

#include <malloc.h>

#include <torch/torch.h>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

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

namespace detail {

int idle_cores_between(const std::string& stat_before, const std::string& stat_after, int cores) {
  // The first line of /proc/stat: "cpu  user nice system idle iowait irq
  // softirq steal guest guest_nice", in clock ticks of all cores together
  // (guest time is already counted in user).
  struct Ticks {
    unsigned long long busy = 0;
    unsigned long long total = 0;
    bool read = false;
  };
  const auto parse = [](const std::string& text) {
    Ticks ticks;
    if (text.rfind("cpu ", 0) != 0) return ticks;
    std::istringstream fields(
        text.substr(4, text.find('\n') == std::string::npos ? std::string::npos : text.find('\n') - 4));
    unsigned long long value = 0;
    unsigned long long idle = 0;
    int count = 0;
    for (; count < 8 && fields >> value; ++count) {
      ticks.total += value;
      if (count == 3 || count == 4) idle += value;
    }
    ticks.busy = ticks.total - idle;
    ticks.read = count >= 4;
    return ticks;
  };
  cores = std::max(1, cores);
  const Ticks before = parse(stat_before);
  const Ticks after = parse(stat_after);
  if (!before.read || !after.read || after.total <= before.total || after.busy < before.busy) return cores;
  const double busy_share =
      static_cast<double>(after.busy - before.busy) / static_cast<double>(after.total - before.total);
  const int busy = static_cast<int>(std::lround(busy_share * cores));
  return std::clamp(cores - busy, 1, cores);
}

}  // namespace detail

namespace {

std::string read_proc_stat() {
  std::ifstream stat("/proc/stat");
  std::string line;
  std::getline(stat, line);
  return line;
}

}  // namespace

int idle_cores(std::chrono::milliseconds window) {
  if (window < std::chrono::milliseconds(10) || window > std::chrono::seconds(10)) {
    throw OptionError("idle_cores: the window must be between 10 ms and 10 s, but got " +
                      std::to_string(window.count()) + " ms");
  }
  const int cores = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  const std::string before = read_proc_stat();
  std::this_thread::sleep_for(window);
  return detail::idle_cores_between(before, read_proc_stat(), cores);
}

}  // namespace parry

// Process-wide runtime settings for serving and training on CPU.
#pragma once

#include <chrono>
#include <string>

namespace parry {

/// Settings applied by configure_runtime().
struct RuntimeOptions {
  /// LibTorch intra-op threads (>= 1). LibTorch here starts with one thread.
  RuntimeOptions& threads(int n);
  /// Keep freed tensor buffers in the process (glibc malloc: no mmap for
  /// blocks up to 32 MiB, no trimming below 1 GiB, 64 MiB top pad) instead of
  /// returning them to the kernel after every step. On virtual machines where
  /// page faults are slow this makes training here about 4× faster (measured:
  /// 87 ms → 20 ms per batch of 128 for the reference CNN); the price is a
  /// higher resident set size. Default on.
  RuntimeOptions& keep_freed_memory(bool on);

  int threads() const { return threads_; }
  bool keep_freed_memory() const { return keep_freed_memory_; }

 private:
  int threads_ = 2;
  bool keep_freed_memory_ = true;
};

/// Applies `options` to the whole process. Call once at start-up, before
/// other threads use LibTorch. Parry never calls it on its own.
/// @throws parry::OptionError on invalid options.
void configure_runtime(const RuntimeOptions& options = {});

/// The number of this machine's cores that no process kept busy during
/// `window` (system-wide CPU time from /proc/stat, busy = all but idle and
/// I/O wait), rounded to the nearest core, clamped to [1, the cores the
/// kernel reports]. It sleeps for `window`. Meant for choosing intra-op
/// threads at start-up: OpenMP's parallel regions wait for their slowest
/// thread, so more threads than free cores beside another busy process
/// costs far more than their share (docs/benchmarks.md, "Sharing the
/// cores"). A snapshot: a process that runs for hours sees the load of its
/// first `window` only. Where /proc/stat cannot be read, every core counts
/// as idle.
/// @throws parry::OptionError if `window` is not between 10 ms and 10 s.
int idle_cores(std::chrono::milliseconds window = std::chrono::milliseconds(100));

namespace detail {
/// idle_cores()'s arithmetic: the idle cores of `cores` between two
/// snapshots of /proc/stat's first line ("cpu  user nice system idle iowait
/// ..."); `cores` when either cannot be read or time did not advance.
int idle_cores_between(const std::string& stat_before, const std::string& stat_after, int cores);
}  // namespace detail

}  // namespace parry

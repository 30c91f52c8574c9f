// conceal::Throttle: token-bucket rate limiting per client and globally.
//
// Threat model: black-box attacks need thousands of queries (Square: hundreds
// to thousands; HopSkipJump: thousands to tens of thousands). Throttling does
// not stop them; it stretches them in time, so that monitoring and humans can
// react. It counts images, not requests, so batching does not help an
// attacker. Per-client buckets are keyed by RequestContext::client_id; an
// attacker with many ids is bounded by the optional global bucket. Memory is
// bounded by max_clients: the least recently seen client is evicted first (a
// client idle long enough to have refilled its bucket loses nothing).
#pragma once

#include <chrono>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>

#include "parry/core/gate.hpp"
#include "parry/detail/arg.hpp"

namespace parry::conceal {

/// Seconds on a monotonic clock. Tests inject their own.
using Clock = std::function<double()>;

/// The default clock: std::chrono::steady_clock in seconds.
inline double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct ThrottleOptions {
  PARRY_OPTIONS(ThrottleOptions);
  /// Sustained images per second per client.
  PARRY_CHECKED_ARG(double, rate, 10.0, v > 0 && std::isfinite(v), "must be finite and > 0");
  /// Bucket size per client in images: how many may come at once.
  PARRY_CHECKED_ARG(double, burst, 20.0, v >= 1 && std::isfinite(v), "must be finite and at least 1 image");
  /// Sustained images per second over all clients; 0 disables the global bucket.
  PARRY_CHECKED_ARG(double, global_rate, 0.0, v >= 0 && std::isfinite(v),
                    "must be finite and non-negative (0 disables it)");
  /// Global bucket size in images (used when the global bucket is enabled).
  PARRY_CHECKED_ARG(double, global_burst, 1.0, v >= 1 && std::isfinite(v), "must be finite and at least 1 image");
  /// Most clients tracked at once; beyond it the least recently seen is evicted.
  PARRY_CHECKED_ARG(size_t, max_clients, 100000, v >= 1, "must be at least 1");

 public:
  /// Clock in seconds (default steady_seconds). @throws parry::OptionError if empty.
  ThrottleOptions& clock(Clock clock);
  /// The clock in seconds.
  const Clock& clock() const { return clock_; }

 private:
  Clock clock_ = steady_seconds;
};

class Throttle final : public Gate {
 public:
  explicit Throttle(ThrottleOptions options = {});

  /// Charges one token per image (a rank-4 input of N images costs N, anything
  /// else costs 1). Rejects with reason "rate_limited" and the seconds after
  /// which the same request would pass (infinity if it exceeds the burst).
  GateDecision admit(const RequestContext& context, const torch::Tensor& input) override;
  std::string describe() const override;

  /// Number of clients currently tracked (<= max_clients).
  size_t tracked_clients() const;
  /// Clients evicted so far to respect max_clients.
  uint64_t evictions() const;

  const ThrottleOptions& options() const { return options_; }

 private:
  struct Bucket {
    double tokens;
    double updated;  // clock seconds of the last refill
  };
  struct ClientEntry {
    Bucket bucket;
    std::list<std::string>::iterator recency;
  };
  static void refill(Bucket& bucket, double now, double rate, double burst);

  ThrottleOptions options_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, ClientEntry> clients_;
  std::list<std::string> recency_;  // front: least recently seen
  Bucket global_;
  uint64_t evictions_ = 0;
};

}  // namespace parry::conceal

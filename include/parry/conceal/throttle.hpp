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

namespace parry::conceal {

/// Seconds on a monotonic clock. Tests inject their own.
using Clock = std::function<double()>;

/// The default clock: std::chrono::steady_clock in seconds.
inline double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct ThrottleOptions {
  /// Sustained images per second per client (> 0).
  ThrottleOptions& rate(double images_per_second);
  /// Bucket size per client in images (>= 1): how many may come at once.
  ThrottleOptions& burst(double images);
  /// Sustained images per second over all clients; 0 disables the global bucket.
  ThrottleOptions& global_rate(double images_per_second);
  /// Global bucket size in images (>= 1 when the global bucket is enabled).
  ThrottleOptions& global_burst(double images);
  /// Most clients tracked at once (>= 1); beyond it the least recently seen is evicted.
  ThrottleOptions& max_clients(size_t clients);
  /// Clock in seconds (default steady_seconds).
  ThrottleOptions& clock(Clock clock);

  double rate() const { return rate_; }
  double burst() const { return burst_; }
  double global_rate() const { return global_rate_; }
  double global_burst() const { return global_burst_; }
  size_t max_clients() const { return max_clients_; }
  const Clock& clock() const { return clock_; }

 private:
  double rate_ = 10.0;
  double burst_ = 20.0;
  double global_rate_ = 0.0;
  double global_burst_ = 1.0;
  size_t max_clients_ = 100000;
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

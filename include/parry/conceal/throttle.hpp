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
//
// State. By default the buckets are in the process. With redis() set, they
// live in Redis (parry/conceal/state.hpp) and every replica using the same
// Redis and prefix charges the same buckets, with the same refill arithmetic
// (one atomic server-side script per request). Time is then Redis' own clock
// (TIME), so replicas on different machines agree, unless a clock was set on
// the options (tests). Instead of max_clients, a Redis bucket expires once its
// client has been idle long enough to refill it (burst / rate seconds, plus
// one), which loses nothing, since a new bucket starts full. Anyone who can
// write to that Redis can refill any budget.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "parry/conceal/state.hpp"
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
  /// Most clients tracked at once; beyond it the least recently seen is
  /// evicted. In-process state only (Redis buckets expire instead).
  PARRY_CHECKED_ARG(size_t, max_clients, 100000, v >= 1, "must be at least 1");
  /// Where the buckets live: unset (default) in this process; set, in that
  /// Redis under "<prefix>:th", shared with every throttle that uses the same
  /// Redis and prefix (they should agree on the rates and bursts).
  PARRY_ARG(std::optional<RedisOptions>, redis) = std::nullopt;

 public:
  /// Clock in seconds (default steady_seconds). @throws parry::OptionError if empty.
  ThrottleOptions& clock(Clock clock);
  /// The clock in seconds.
  const Clock& clock() const { return clock_; }
  /// Whether clock() was set (a Redis store then uses it instead of Redis' TIME).
  bool has_clock() const { return has_clock_; }

 private:
  Clock clock_ = steady_seconds;
  bool has_clock_ = false;
};

namespace detail {
class BucketStore;
class RateLimitedLog;
}  // namespace detail

class Throttle final : public Gate {
 public:
  /// A Redis store connects on first use.
  explicit Throttle(ThrottleOptions options = {});
  ~Throttle() override;
  Throttle(const Throttle&) = delete;
  Throttle& operator=(const Throttle&) = delete;

  /// Charges one token per image (a rank-4 input of N images costs N, anything
  /// else costs 1). Rejects with reason "rate_limited" and the seconds after
  /// which the same request would pass (infinity if it exceeds the burst).
  /// When the Redis state is unavailable: FailClosed rejects with reason
  /// "unavailable", FailOpen admits unthrottled; both count a state failure.
  /// Never throws.
  GateDecision admit(const RequestContext& context, const torch::Tensor& input) override;
  std::string describe() const override;

  /// Number of clients currently tracked (<= max_clients; 0 with Redis state).
  size_t tracked_clients() const;
  /// Clients evicted so far to respect max_clients (0 with Redis state).
  uint64_t evictions() const;
  /// Requests not judged because the Redis state was unavailable (refused
  /// under FailClosed, admitted under FailOpen), by this object.
  uint64_t state_failures() const;

  const ThrottleOptions& options() const { return options_; }

 private:
  ThrottleOptions options_;
  std::unique_ptr<detail::BucketStore> store_;
  std::unique_ptr<detail::RateLimitedLog> failure_log_;  // one line per 10 s
  mutable std::mutex mutex_;                             // guards state_failures_
  uint64_t state_failures_ = 0;
};

}  // namespace parry::conceal

// Where the gates keep their state: in the process (the default) or in a
// Redis server shared by several replicas of a service.
//
// With RedisOptions set on a QueryMonitor or a Throttle, the monitor's stored
// fingerprints and inverted index, or the throttle's token buckets, live in
// Redis under a key prefix, and every replica that uses the same Redis, prefix
// and gate settings sees the same query history and budgets: an attacker who
// spreads a query stream over the replicas behind a load balancer is flagged
// as early as against one process, and a client's budget is one budget.
// Each gate decision is one Redis round trip running a server-side Lua script
// (atomic per request); docs/deployment.md has the layout and the figures.
//
// Failures. When Redis is unreachable, slower than timeout_ms, or answers
// with an error, the gate applies its FailurePolicy: FailClosed refuses the
// request with the public reason "unavailable" (HTTP 503 in parry serve);
// FailOpen admits it unjudged, logs a (rate-limited) warning and counts it
// (QueryMonitorStats::state_failures, Throttle::state_failures, and
// parry_state_failures_total in /metrics). A gate never falls back to
// in-process state, which would present a per-replica view as the shared one.
// Connections are re-established on the next request after a failure, with an
// exponential back-off (reconnect_ms doubling to 2 s) during which requests
// fail at once instead of waiting for the timeout.
//
// Threat model. Redis holds the defense's memory: anyone who can write to it
// (or to the network between the replicas and it) can erase or forge the
// query history and refill any budget, and anyone who can read it learns the
// fingerprints of recent queries. Bind Redis to a private interface or
// loopback, require a password or ACL and TLS in front of it where the network
// is not trusted (this client speaks plain TCP without AUTH), and give each
// service its own prefix. A timed-out request may still have been stored.
#pragma once

#include <cstdint>
#include <string>

#include "parry/core/errors.hpp"
#include "parry/detail/arg.hpp"

namespace parry::conceal {

/// What a gate does when its shared state cannot be reached.
enum class FailurePolicy {
  FailClosed,  ///< refuse the request with reason "unavailable" (HTTP 503)
  FailOpen,    ///< admit it unjudged; log a warning and count the failure
};

/// "fail_closed", "fail_open".
const char* to_string(FailurePolicy policy);

/// Public reason code of a request refused because shared state is
/// unavailable (FailurePolicy::FailClosed); parry serve answers HTTP 503.
inline constexpr const char* kReasonUnavailable = "unavailable";

/// Shared state could not be reached in time or answered with an error. The
/// public message is generic; detail() holds the cause for the operator log.
class UnavailableError : public Error {
 public:
  explicit UnavailableError(std::string detail) : Error("the service is temporarily unavailable", std::move(detail)) {}
  const char* reason_code() const noexcept override { return kReasonUnavailable; }
};

/// A Redis server holding gate state, and how to talk to it.
struct RedisOptions {
  PARRY_OPTIONS(RedisOptions);
  /// Host name or IPv4 address. Default 127.0.0.1.
  PARRY_CHECKED_ARG(std::string, host, "127.0.0.1", valid_host(v),
                    "must be a host name or IPv4 address (letters, digits, '.', '-'; at most 253 characters)");
  /// TCP port. Default 6379.
  PARRY_CHECKED_ARG(int, port, 6379, v >= 1 && v <= 65535, "must be in 1..65535");
  /// Database number (SELECT). Default 0.
  PARRY_CHECKED_ARG(int, database, 0, v >= 0 && v <= 65535, "must be in 0..65535");
  /// Namespace of every key the gates write ("<prefix>:qm:…", "<prefix>:th:…").
  /// Replicas that share state use the same prefix; unrelated services
  /// sharing a Redis use different ones. Default "parry".
  PARRY_CHECKED_ARG(std::string, prefix, "parry", valid_prefix(v), "must be 1..128 characters of A-Z a-z 0-9 _ . - :");
  /// Bound on connecting and on each round trip, in milliseconds. Default 50.
  PARRY_CHECKED_ARG(double, timeout_ms, 50.0, std::isfinite(v) && v >= 1 && v <= 60000,
                    "must be in [1, 60000] milliseconds");
  /// First back-off after a failed connection, in milliseconds; it doubles
  /// on each further failure up to 2000 ms. Default 100.
  PARRY_CHECKED_ARG(double, reconnect_ms, 100.0, std::isfinite(v) && v >= 0 && v <= 2000,
                    "must be in [0, 2000] milliseconds");
  /// FailClosed (default) or FailOpen.
  PARRY_CHECKED_ARG(FailurePolicy, failure, FailurePolicy::FailClosed,
                    v == FailurePolicy::FailClosed || v == FailurePolicy::FailOpen, "must be FailClosed or FailOpen");

 public:
  /// Options from a URL "redis://HOST[:PORT][/DATABASE]" (port 6379 and
  /// database 0 by default); the other options keep their defaults.
  /// @throws parry::OptionError naming what was expected, for any other form
  ///   (another scheme, credentials, IPv6, a query string, a bad port).
  static RedisOptions from_url(const std::string& url);
  /// "redis://HOST:PORT/DATABASE".
  std::string url() const;

  /// Whether `host` is a plain host name or IPv4 address.
  static bool valid_host(const std::string& host);
  /// Whether `prefix` is 1..128 characters of A-Z a-z 0-9 _ . - :.
  static bool valid_prefix(const std::string& prefix);
};

}  // namespace parry::conceal

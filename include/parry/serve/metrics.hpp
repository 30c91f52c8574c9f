// serve::Metrics: the counters and latency histogram of a served model, in
// the Prometheus text exposition format (prometheus-cpp core).
//
//   parry_requests_total{verdict, reason}  prediction requests by outcome:
//       verdict accepted | flagged | rejected | error, reason the public
//       reason code of the answer (ok, flagged, rate_limited, invalid_input,
//       unauthorized, unsupported_media_type, payload_too_large, internal_error)
//   parry_throttled_total      requests refused by a throttle (HTTP 429)
//   parry_flagged_total        requests a detector or the query monitor flagged,
//                              answered (verdict flagged) or refused (HTTP 403)
//   parry_request_seconds      histogram of the time spent in the handler of one
//                              prediction request, in seconds (buckets 0.5 ms..10 s)
//   parry_state_failures_total requests a gate could not judge because its shared
//                              state (Redis) was unavailable: refused with 503
//                              (fail closed) or served unjudged (fail open);
//                              only when a source is set (set_state_failures)
//
// Threat model: the metrics are for the operator. They hold counts and
// timings, no keys, client names or images, but flag counts tell an attacker
// whether the query monitor sees them: expose /metrics only where attackers
// cannot reach it (ServerOptions::metrics, a firewall or a reverse proxy).
// Thread-safe: record() may be called from any number of threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace parry::serve {

class Metrics {
 public:
  /// Zero counters and an empty histogram, in a registry of their own.
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  /// Counts one prediction request with its verdict (accepted, flagged,
  /// rejected, error) and public reason code. Reason "rate_limited" also
  /// counts in parry_throttled_total, reason "flagged" in parry_flagged_total.
  void record(const std::string& verdict, const std::string& reason);
  /// Adds the time taken to answer one prediction request, in seconds, to
  /// the histogram (requests refused by the HTTP layer before a handler ran,
  /// such as 413, are counted by record() but not timed).
  void observe_seconds(double seconds);

  /// Exposes parry_state_failures_total, read from `total` (a running count
  /// that never decreases) at each text(). Call before serving.
  void set_state_failures(std::function<uint64_t()> total);

  /// Every metric in the Prometheus text format (version 0.0.4).
  std::string text() const;

  /// The Content-Type of text(): "text/plain; version=0.0.4; charset=utf-8".
  static const char* content_type();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace parry::serve

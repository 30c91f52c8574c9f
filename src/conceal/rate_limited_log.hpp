// detail::RateLimitedLog: warnings of a gate that could otherwise flood the log.
//
// Threat model: an attacker who can make every request log a line (a Redis
// outage under load, a stream of near-duplicate queries) must not be able to
// fill the operator's disk or block the workers on a full stderr pipe. Lines
// beyond the limit are counted, and the next line logged says how many were
// left out; the gates' statistics count every event regardless.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace parry::conceal::detail {

class RateLimitedLog {
 public:
  /// At most `lines` warnings per `window` (fixed windows, each starting at
  /// the first warning after the previous one ended). `left_out` names what
  /// was not logged in the note appended to the next line ("similar failures").
  RateLimitedLog(int64_t lines, std::chrono::steady_clock::duration window, std::string left_out);

  /// Logs `message` at warning level (parry::log) if the window has room,
  /// else counts it. Thread-safe.
  void report(const std::string& message);

 private:
  const int64_t lines_;
  const std::chrono::steady_clock::duration window_;
  const std::string left_out_;
  std::mutex mutex_;
  std::chrono::steady_clock::time_point window_end_{};
  int64_t logged_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace parry::conceal::detail

// detail::RateLimitedLog: at most so many warnings per window, and a count of the rest.
#include "conceal/rate_limited_log.hpp"

#include <utility>

#include "parry/core/log.hpp"

namespace parry::conceal::detail {

RateLimitedLog::RateLimitedLog(int64_t lines, std::chrono::steady_clock::duration window, std::string left_out)
    : lines_(lines), window_(window), left_out_(std::move(left_out)) {}

void RateLimitedLog::report(const std::string& message) {
  uint64_t left_out = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (now >= window_end_) {
      window_end_ = now + window_;
      logged_ = 0;
    }
    if (logged_ >= lines_) {
      ++suppressed_;
      return;
    }
    ++logged_;
    left_out = suppressed_;
    suppressed_ = 0;
  }
  log(LogLevel::Warning,
      message + (left_out > 0 ? " (" + std::to_string(left_out) + " " + left_out_ + " not logged)" : std::string()));
}

}  // namespace parry::conceal::detail

// parry::log and the replaceable log sink.
#include "parry/core/log.hpp"

#include <iostream>
#include <mutex>

namespace parry {

// ---------------------------------------------------------------- log

namespace {

std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}

LogSink& log_sink() {
  static LogSink sink = [](LogLevel level, const std::string& message) {
    if (level < LogLevel::Warning) return;
    std::cerr << "[parry] " << (level == LogLevel::Error ? "error: " : "warning: ") << message << '\n';
  };
  return sink;
}

}  // namespace

void set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(log_mutex());
  log_sink() = std::move(sink);
}

void log(LogLevel level, const std::string& message) {
  std::lock_guard<std::mutex> lock(log_mutex());
  if (log_sink()) log_sink()(level, message);
}

}  // namespace parry

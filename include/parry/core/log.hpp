// Parry's operator log. Internal details (exception texts, paths) go here and
// never into public messages. By default warnings and errors go to stderr;
// services install their own sink.
#pragma once

#include <functional>
#include <string>

namespace parry {

enum class LogLevel { Debug, Info, Warning, Error };

using LogSink = std::function<void(LogLevel, const std::string&)>;

/// Replaces the process-wide log sink (thread-safe). An empty sink silences Parry.
void set_log_sink(LogSink sink);

/// Writes a message to the current sink (thread-safe).
void log(LogLevel level, const std::string& message);

}  // namespace parry

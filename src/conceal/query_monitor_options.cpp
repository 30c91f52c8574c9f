// conceal::QueryMonitorOptions and the scope/action names.
#include "parry/conceal/query_monitor.hpp"

#include <cmath>

#include "parry/detail/require.hpp"

namespace parry::conceal {

using parry::detail::require;

const char* to_string(MonitorScope scope) {
  switch (scope) {
    case MonitorScope::Global:
      return "global";
    case MonitorScope::PerClient:
      return "per_client";
    case MonitorScope::Both:
      return "both";
  }
  return "global";
}

const char* to_string(MonitorAction action) {
  switch (action) {
    case MonitorAction::Flag:
      return "flag";
    case MonitorAction::Reject:
      return "reject";
    case MonitorAction::Silent:
      return "silent";
  }
  return "flag";
}

QueryMonitorOptions& QueryMonitorOptions::quantization_step(double v) {
  require(v >= 1 && v <= 255 && std::isfinite(v), "QueryMonitorOptions::quantization_step",
          "must lie in [1, 255] (8-bit units)", v);
  quantization_step_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::window(int64_t v) {
  require(v >= 1, "QueryMonitorOptions::window", "must be at least 1 value", static_cast<double>(v));
  window_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::window_step(int64_t v) {
  require(v >= 1, "QueryMonitorOptions::window_step", "must be at least 1 value", static_cast<double>(v));
  window_step_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::hashes_kept(int64_t v) {
  require(v >= 1 && v <= 1024, "QueryMonitorOptions::hashes_kept", "must lie in [1, 1024]", static_cast<double>(v));
  hashes_kept_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::threshold(int64_t v) {
  require(v >= 1 && v <= 1024, "QueryMonitorOptions::threshold", "must lie in [1, hashes_kept]",
          static_cast<double>(v));
  threshold_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::value_range(double lo, double hi) {
  require(std::isfinite(lo), "QueryMonitorOptions::value_range", "the lower bound must be finite", lo);
  require(std::isfinite(hi) && hi > lo, "QueryMonitorOptions::value_range",
          "the upper bound must be finite and above the lower bound", hi);
  min_value_ = lo;
  max_value_ = hi;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::image_shape(int64_t channels, int64_t height, int64_t width) {
  require(channels > 0, "QueryMonitorOptions::image_shape", "channels must be positive", static_cast<double>(channels));
  require(height > 0, "QueryMonitorOptions::image_shape", "height must be positive", static_cast<double>(height));
  require(width > 0, "QueryMonitorOptions::image_shape", "width must be positive", static_cast<double>(width));
  image_shape_ = {channels, height, width};
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::max_batch(int64_t v) {
  require(v >= 1, "QueryMonitorOptions::max_batch", "must be at least 1 image", static_cast<double>(v));
  max_batch_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::match_spec(const InputSpec& spec) {
  value_range(spec.min_value(), spec.max_value());
  image_shape(spec.channels(), spec.height(), spec.width());
  return max_batch(spec.max_batch());
}
QueryMonitorOptions& QueryMonitorOptions::scope(MonitorScope v) {
  require(v == MonitorScope::Global || v == MonitorScope::PerClient || v == MonitorScope::Both,
          "QueryMonitorOptions::scope", "unknown scope", static_cast<double>(static_cast<int>(v)));
  scope_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::action(MonitorAction v) {
  require(v == MonitorAction::Flag || v == MonitorAction::Reject || v == MonitorAction::Silent,
          "QueryMonitorOptions::action", "unknown action", static_cast<double>(static_cast<int>(v)));
  action_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::max_stored_queries(int64_t v) {
  require(v >= 1, "QueryMonitorOptions::max_stored_queries", "must be at least 1 image", static_cast<double>(v));
  max_stored_queries_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::max_scan_per_hash(int64_t v) {
  require(v >= 1, "QueryMonitorOptions::max_scan_per_hash", "must be at least 1", static_cast<double>(v));
  max_scan_per_hash_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::on_detection(DetectionCallback callback) {
  on_detection_ = std::move(callback);
  return *this;
}

}  // namespace parry::conceal

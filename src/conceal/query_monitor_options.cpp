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
QueryMonitorOptions& QueryMonitorOptions::match_spec(const InputSpec& spec) {
  value_range(spec.min_value(), spec.max_value());
  image_shape(spec.channels(), spec.height(), spec.width());
  return max_batch(spec.max_batch());
}
QueryMonitorOptions& QueryMonitorOptions::on_detection(DetectionCallback callback) {
  on_detection_ = std::move(callback);
  return *this;
}

}  // namespace parry::conceal

// serve::Metrics on prometheus-cpp core (Registry, Counter, Histogram, TextSerializer).
#include "parry/serve/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <mutex>

namespace parry::serve {

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& requests =
      prometheus::BuildCounter()
          .Name("parry_requests_total")
          .Help("Prediction requests by verdict (accepted, flagged, rejected, abstained, error) and public reason code")
          .Register(*registry);
  prometheus::Counter& throttled = prometheus::BuildCounter()
                                       .Name("parry_throttled_total")
                                       .Help("Prediction requests refused by a throttle (HTTP 429)")
                                       .Register(*registry)
                                       .Add({});
  prometheus::Counter& flagged = prometheus::BuildCounter()
                                     .Name("parry_flagged_total")
                                     .Help("Prediction requests flagged by a detector or the query monitor")
                                     .Register(*registry)
                                     .Add({});
  prometheus::Histogram& latency =
      prometheus::BuildHistogram()
          .Name("parry_request_seconds")
          .Help("Time to answer one prediction request, in seconds")
          .Register(*registry)
          .Add({}, prometheus::Histogram::BucketBoundaries{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                           0.5, 1.0, 2.5, 10.0});
  std::mutex state_mutex;  // guards the three below
  std::function<uint64_t()> state_source;
  prometheus::Counter* state_failures = nullptr;
  uint64_t state_seen = 0;
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

void Metrics::record(const std::string& verdict, const std::string& reason) {
  impl_->requests.Add({{"verdict", verdict}, {"reason", reason}}).Increment();
  if (reason == "rate_limited") impl_->throttled.Increment();
  if (reason == "flagged") impl_->flagged.Increment();
}

void Metrics::observe_seconds(double seconds) {
  impl_->latency.Observe(seconds);
}

void Metrics::set_state_failures(std::function<uint64_t()> total) {
  std::lock_guard<std::mutex> lock(impl_->state_mutex);
  impl_->state_source = std::move(total);
  if (impl_->state_source && !impl_->state_failures) {
    impl_->state_failures = &prometheus::BuildCounter()
                                 .Name("parry_state_failures_total")
                                 .Help(
                                     "Requests a gate could not judge because its shared state (Redis) was "
                                     "unavailable: refused with 503 (fail closed) or served unjudged (fail open)")
                                 .Register(*impl_->registry)
                                 .Add({});
  }
}

std::string Metrics::text() const {
  {
    std::lock_guard<std::mutex> lock(impl_->state_mutex);
    if (impl_->state_source) {
      const uint64_t total = impl_->state_source();
      if (total > impl_->state_seen) impl_->state_failures->Increment(static_cast<double>(total - impl_->state_seen));
      impl_->state_seen = std::max(impl_->state_seen, total);
    }
  }
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

const char* Metrics::content_type() {
  return "text/plain; version=0.0.4; charset=utf-8";
}

}  // namespace parry::serve

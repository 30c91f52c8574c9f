// serve::Metrics on prometheus-cpp core (Registry, Counter, Histogram, TextSerializer).
#include "parry/serve/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

namespace parry::serve {

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& requests =
      prometheus::BuildCounter()
          .Name("parry_requests_total")
          .Help("Prediction requests by verdict (accepted, flagged, rejected, error) and public reason code")
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

std::string Metrics::text() const {
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

const char* Metrics::content_type() {
  return "text/plain; version=0.0.4; charset=utf-8";
}

}  // namespace parry::serve

// conceal::Throttle: per-client and global token buckets over a bucket store.
#include "parry/conceal/throttle.hpp"

#include <cmath>
#include <limits>
#include <sstream>

#include "conceal/rate_limited_log.hpp"
#include "conceal/state_store.hpp"

namespace parry::conceal {

ThrottleOptions& ThrottleOptions::clock(Clock c) {
  if (!c) throw OptionError("ThrottleOptions::clock: the clock function is empty");
  clock_ = std::move(c);
  has_clock_ = true;
  return *this;
}

Throttle::Throttle(ThrottleOptions options)
    : options_(std::move(options)),
      failure_log_(std::make_unique<detail::RateLimitedLog>(1, std::chrono::seconds(10), "similar failures")) {
  store_ = options_.redis() ? detail::make_redis_bucket_store(options_) : detail::make_memory_bucket_store(options_);
}

Throttle::~Throttle() = default;

GateDecision Throttle::admit(const RequestContext& context, const torch::Tensor& input) {
  const double cost =
      (input.defined() && input.dim() == 4) ? static_cast<double>(std::max<int64_t>(input.size(0), 1)) : 1.0;
  detail::BucketTake take;
  try {
    take = store_->take(context.client_id, cost);
  } catch (const UnavailableError& e) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++state_failures_;
    }
    const FailurePolicy policy = options_.redis() ? options_.redis()->failure() : FailurePolicy::FailClosed;
    failure_log_->report(
        std::string("Throttle: shared state unavailable, request ") +
        (policy == FailurePolicy::FailOpen ? "admitted unthrottled (fail_open)" : "refused (fail_closed)") + ": " +
        e.detail());
    return policy == FailurePolicy::FailOpen ? GateDecision::admit() : GateDecision::reject(kReasonUnavailable);
  }
  if (take.admitted) return GateDecision::admit();
  constexpr double kNever = std::numeric_limits<double>::infinity();
  const bool global_on = options_.global_rate() > 0;
  double retry = 0;
  if (take.client_tokens < cost)
    retry = cost > options_.burst() ? kNever : (cost - take.client_tokens) / options_.rate();
  if (global_on && take.global_tokens < cost) {
    retry =
        std::max(retry, cost > options_.global_burst() ? kNever : (cost - take.global_tokens) / options_.global_rate());
  }
  return GateDecision::reject(reason::kRateLimited, retry);
}

std::string Throttle::describe() const {
  std::ostringstream out;
  out << "Throttle(rate=" << options_.rate() << "/s, burst=" << options_.burst();
  if (options_.global_rate() > 0) {
    out << ", global_rate=" << options_.global_rate() << "/s, global_burst=" << options_.global_burst();
  }
  if (options_.redis()) {
    out << ", state=" << store_->describe();
  } else {
    out << ", max_clients=" << options_.max_clients();
  }
  out << ")";
  return out.str();
}

size_t Throttle::tracked_clients() const {
  return store_->tracked_clients();
}

uint64_t Throttle::evictions() const {
  return store_->evictions();
}

uint64_t Throttle::state_failures() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_failures_;
}

}  // namespace parry::conceal

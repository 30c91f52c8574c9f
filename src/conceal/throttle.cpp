// conceal::Throttle: per-client and global token buckets.
#include "parry/conceal/throttle.hpp"

#include <cmath>
#include <limits>

namespace parry::conceal {

ThrottleOptions& ThrottleOptions::clock(Clock c) {
  if (!c) throw OptionError("ThrottleOptions::clock: the clock function is empty");
  clock_ = std::move(c);
  return *this;
}

Throttle::Throttle(ThrottleOptions options) : options_(std::move(options)) {
  global_ = Bucket{options_.global_burst(), options_.clock()()};
}

void Throttle::refill(Bucket& bucket, double now, double rate, double burst) {
  const double elapsed = now - bucket.updated;
  if (elapsed > 0) {  // a clock that goes backwards refills nothing
    bucket.tokens = std::min(burst, bucket.tokens + elapsed * rate);
    bucket.updated = now;
  }
}

GateDecision Throttle::admit(const RequestContext& context, const torch::Tensor& input) {
  const double cost =
      (input.defined() && input.dim() == 4) ? static_cast<double>(std::max<int64_t>(input.size(0), 1)) : 1.0;
  std::lock_guard<std::mutex> lock(mutex_);
  const double now = options_.clock()();

  auto it = clients_.find(context.client_id);
  if (it == clients_.end()) {
    if (clients_.size() >= options_.max_clients()) {
      clients_.erase(recency_.front());
      recency_.pop_front();
      ++evictions_;
    }
    recency_.push_back(context.client_id);
    it = clients_.emplace(context.client_id, ClientEntry{Bucket{options_.burst(), now}, std::prev(recency_.end())})
             .first;
  } else {
    recency_.splice(recency_.end(), recency_, it->second.recency);
  }
  Bucket& client = it->second.bucket;
  refill(client, now, options_.rate(), options_.burst());
  const bool global_on = options_.global_rate() > 0;
  if (global_on) refill(global_, now, options_.global_rate(), options_.global_burst());

  const bool client_ok = client.tokens >= cost;
  const bool global_ok = !global_on || global_.tokens >= cost;
  if (client_ok && global_ok) {
    client.tokens -= cost;
    if (global_on) global_.tokens -= cost;
    return GateDecision::admit();
  }
  constexpr double kNever = std::numeric_limits<double>::infinity();
  double retry = 0;
  if (!client_ok) retry = cost > options_.burst() ? kNever : (cost - client.tokens) / options_.rate();
  if (!global_ok) {
    retry = std::max(retry, cost > options_.global_burst() ? kNever : (cost - global_.tokens) / options_.global_rate());
  }
  return GateDecision::reject(reason::kRateLimited, retry);
}

std::string Throttle::describe() const {
  std::ostringstream out;
  out << "Throttle(rate=" << options_.rate() << "/s, burst=" << options_.burst();
  if (options_.global_rate() > 0) {
    out << ", global_rate=" << options_.global_rate() << "/s, global_burst=" << options_.global_burst();
  }
  out << ", max_clients=" << options_.max_clients() << ")";
  return out.str();
}

size_t Throttle::tracked_clients() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return clients_.size();
}

uint64_t Throttle::evictions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return evictions_;
}

}  // namespace parry::conceal

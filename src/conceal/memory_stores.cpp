// The in-process state stores: the QueryMonitor's index (query_store.hpp)
// and the Throttle's token buckets with least-recently-seen eviction.
#include <list>
#include <mutex>
#include <unordered_map>

#include "conceal/query_store.hpp"
#include "conceal/state_store.hpp"

namespace parry::conceal::detail {

namespace {

class MemoryQueryStore final : public QueryStore {
 public:
  explicit MemoryQueryStore(const QueryMonitorOptions& options)
      : global_(options.scope() != MonitorScope::PerClient),
        client_(options.scope() != MonitorScope::Global),
        threshold_(options.threshold()),
        max_scan_(options.max_scan_per_hash()),
        capacity_(options.max_stored_queries()),
        kept_(options.hashes_kept()),
        index_(std::make_unique<MemoryQueryIndex>(capacity_, per_slot(), kept_)) {}

  std::vector<StoreMatch> match_and_insert(const std::vector<StoreQuery>& queries) override {
    std::vector<StoreMatch> out(queries.size());
    const int64_t client_offset = global_ ? kept_ : 0;
    std::lock_guard<std::mutex> lock(mutex_);
    MemoryQueryIndex& s = *index_;
    for (size_t i = 0; i < queries.size(); ++i) {
      const StoreQuery& q = queries[i];
      StoreMatch& m = out[i];
      m.query_id = s.next_id++;
      if (global_) {
        const auto [matches, slot] = s.best_match(q.global_keys, 0, threshold_, max_scan_);
        m.global_matches = matches;
        m.global_match_id = slot == MemoryQueryIndex::kNone ? 0 : s.slot_id[slot];
      }
      if (client_) {
        const auto [matches, slot] = s.best_match(q.client_keys, client_offset, threshold_, max_scan_);
        m.client_matches = matches;
        m.client_match_id = slot == MemoryQueryIndex::kNone ? 0 : s.slot_id[slot];
      }
      const uint32_t slot = s.acquire_slot(m.query_id);
      const uint32_t base = slot * static_cast<uint32_t>(s.per_slot);
      s.slot_size[slot] = static_cast<uint16_t>(global_ ? q.global_keys.size() : q.client_keys.size());
      if (global_) {
        for (size_t j = 0; j < q.global_keys.size(); ++j)
          s.add_posting(q.global_keys[j], base + static_cast<uint32_t>(j));
      }
      if (client_) {
        for (size_t j = 0; j < q.client_keys.size(); ++j) {
          s.add_posting(q.client_keys[j], base + static_cast<uint32_t>(client_offset + j));
        }
      }
    }
    return out;
  }

  QueryStoreStats stats() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    MemoryQueryIndex& s = *index_;
    // Dead images still in the index are removed first: the figures are
    // those of the live images.
    s.remove_dead(s.next_id - 1);
    QueryStoreStats out;
    out.stored = s.stored;
    out.evictions = s.evictions;
    out.index_entries = s.entries;
    out.postings = s.postings;
    out.memory_bytes = s.memory_bytes();
    return out;
  }

  void clear() override {
    std::lock_guard<std::mutex> lock(mutex_);
    index_ = std::make_unique<MemoryQueryIndex>(capacity_, per_slot(), kept_);
  }

  std::string describe() const override { return "in-process"; }
  uint64_t salt_key(uint64_t proposed, bool /*must_match*/) override { return proposed; }

 private:
  int64_t per_slot() const { return kept_ * ((global_ ? 1 : 0) + (client_ ? 1 : 0)); }

  const bool global_;
  const bool client_;
  const int64_t threshold_;
  const int64_t max_scan_;
  const int64_t capacity_;
  const int64_t kept_;
  mutable std::mutex mutex_;
  std::unique_ptr<MemoryQueryIndex> index_;
};

class MemoryBucketStore final : public BucketStore {
 public:
  explicit MemoryBucketStore(const ThrottleOptions& options) : options_(options) {
    global_ = Bucket{options_.global_burst(), options_.clock()()};
  }

  BucketTake take(const std::string& client_id, double cost) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const double now = options_.clock()();
    auto it = clients_.find(client_id);
    if (it == clients_.end()) {
      if (clients_.size() >= options_.max_clients()) {
        clients_.erase(recency_.front());
        recency_.pop_front();
        ++evictions_;
      }
      recency_.push_back(client_id);
      it = clients_.emplace(client_id, ClientEntry{Bucket{options_.burst(), now}, std::prev(recency_.end())}).first;
    } else {
      recency_.splice(recency_.end(), recency_, it->second.recency);
    }
    Bucket& client = it->second.bucket;
    refill(client, now, options_.rate(), options_.burst());
    const bool global_on = options_.global_rate() > 0;
    if (global_on) refill(global_, now, options_.global_rate(), options_.global_burst());
    BucketTake out;
    out.admitted = client.tokens >= cost && (!global_on || global_.tokens >= cost);
    if (out.admitted) {
      client.tokens -= cost;
      if (global_on) global_.tokens -= cost;
    }
    out.client_tokens = client.tokens;
    out.global_tokens = global_.tokens;
    return out;
  }

  size_t tracked_clients() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return clients_.size();
  }

  uint64_t evictions() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return evictions_;
  }

  std::string describe() const override { return "in-process"; }

 private:
  struct Bucket {
    double tokens;
    double updated;  // clock seconds of the last refill
  };
  struct ClientEntry {
    Bucket bucket;
    std::list<std::string>::iterator recency;
  };
  // The refill arithmetic; the Redis script repeats it operation for operation.
  static void refill(Bucket& bucket, double now, double rate, double burst) {
    const double elapsed = now - bucket.updated;
    if (elapsed > 0) {  // a clock that goes backwards refills nothing
      bucket.tokens = std::min(burst, bucket.tokens + elapsed * rate);
      bucket.updated = now;
    }
  }

  const ThrottleOptions options_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, ClientEntry> clients_;
  std::list<std::string> recency_;  // front: least recently seen
  Bucket global_;
  uint64_t evictions_ = 0;
};

}  // namespace

std::unique_ptr<QueryStore> make_memory_query_store(const QueryMonitorOptions& options) {
  return std::make_unique<MemoryQueryStore>(options);
}

std::unique_ptr<BucketStore> make_memory_bucket_store(const ThrottleOptions& options) {
  return std::make_unique<MemoryBucketStore>(options);
}

}  // namespace parry::conceal::detail

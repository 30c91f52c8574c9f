// The state stores under QueryMonitor and Throttle: the interfaces and their
// factories. Two implementations each: in-process (query_store.hpp,
// memory_stores.cpp) and Redis (redis_stores.cpp). The gates keep everything
// that needs no shared state (fingerprinting, per-client key mixing, the
// decision, counters of their own requests) and hand the stores identical
// keys, so both stores see the same data. Internal: not installed.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "parry/conceal/query_monitor.hpp"
#include "parry/conceal/throttle.hpp"

namespace parry::conceal::detail {

/// One image as the query store receives it: its fingerprint keys for the
/// global index and for the per-client index (already mixed with the client
/// id), each distinct, non-zero and sorted descending; empty for an index the
/// monitor does not keep. Both hold the same number of keys when both are kept.
struct StoreQuery {
  std::vector<uint64_t> global_keys;
  std::vector<uint64_t> client_keys;
};

/// What the store found for one image before storing it.
struct StoreMatch {
  uint64_t query_id = 0;  ///< id given to the image (from 1; global across replicas for Redis)
  int64_t global_matches = 0;
  uint64_t global_match_id = 0;
  int64_t client_matches = 0;
  uint64_t client_match_id = 0;
};

/// Current sizes of a query store.
struct QueryStoreStats {
  uint64_t stored = 0;
  uint64_t evictions = 0;
  uint64_t index_entries = 0;
  uint64_t postings = 0;
  uint64_t memory_bytes = 0;  ///< 0 for Redis (see INFO memory there)
};

/// Stored fingerprints and their inverted index. Thread-safe.
class QueryStore {
 public:
  virtual ~QueryStore() = default;
  /// For each image in order, atomically: the stored image sharing the most
  /// keys of each kept index (ties to the newest; exact at or above the
  /// threshold, a lower bound below it; posting lists walked newest first,
  /// at most max_scan_per_hash entries each), then the image is stored,
  /// evicting the oldest beyond max_stored_queries. Later images of the batch
  /// see the earlier ones.
  /// @throws UnavailableError when shared state cannot be reached (nothing
  ///   or only a prefix of the batch may then be stored).
  virtual std::vector<StoreMatch> match_and_insert(const std::vector<StoreQuery>& queries) = 0;
  /// @throws UnavailableError as match_and_insert().
  virtual QueryStoreStats stats() const = 0;
  /// Forgets every stored image. @throws UnavailableError as match_and_insert().
  virtual void clear() = 0;
  /// "in-process" or the Redis URL and prefix.
  virtual std::string describe() const = 0;
  /// The salt key the monitor must use: in-process, `proposed`; in Redis, the
  /// key stored under the prefix, set to `proposed` if none is (the first
  /// replica's key wins, so all agree). clear() keeps it.
  /// @throws UnavailableError when shared state cannot be reached, or when
  ///   `must_match` and the stored key differs from `proposed`.
  virtual uint64_t salt_key(uint64_t proposed, bool must_match) = 0;
};

/// What a bucket store answered for one request.
struct BucketTake {
  bool admitted = false;
  double client_tokens = 0;  ///< the client's tokens after the refill (and the charge, if admitted)
  double global_tokens = 0;  ///< the same for the global bucket (when enabled)
};

/// The throttle's token buckets. Thread-safe.
class BucketStore {
 public:
  virtual ~BucketStore() = default;
  /// Refills the client's bucket and the global one (when global_rate > 0)
  /// to the store's clock, then takes `cost` tokens from both if both hold
  /// that many, atomically. A client seen for the first time starts full.
  /// @throws UnavailableError when shared state cannot be reached.
  virtual BucketTake take(const std::string& client_id, double cost) = 0;
  /// Clients with a bucket in this process (0 for Redis: expiring keys there).
  virtual size_t tracked_clients() const = 0;
  /// Clients evicted to respect max_clients (0 for Redis).
  virtual uint64_t evictions() const = 0;
  virtual std::string describe() const = 0;
};

/// The in-process stores (the default): the exact behaviour and speed of
/// the gates before stores existed.
std::unique_ptr<QueryStore> make_memory_query_store(const QueryMonitorOptions& options);
std::unique_ptr<BucketStore> make_memory_bucket_store(const ThrottleOptions& options);

/// The Redis stores under options.redis()'s prefix. They connect lazily: an
/// unreachable Redis fails requests (by the gate's policy), not construction.
std::unique_ptr<QueryStore> make_redis_query_store(const QueryMonitorOptions& options);
std::unique_ptr<BucketStore> make_redis_bucket_store(const ThrottleOptions& options);

}  // namespace parry::conceal::detail

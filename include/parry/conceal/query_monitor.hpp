// conceal::QueryMonitor: detection of query streams made of highly similar
// images, with the probabilistic fingerprints of Blacklight (Huiying Li, Shawn
// Shan, Emily Wenger, Jiayun Zhang, Haitao Zheng, Ben Y. Zhao, "Blacklight:
// Scalable Defense for Neural Networks against Query-Based Black-Box
// Attacks", USENIX Security 2022).
//
// Method (as in the paper). For every image of a query:
//   1. quantise: map the value range [lo, hi] onto [0, 255], add value i's
//      secret salt s_i in [0, step/2) (the authors' code salts, the paper's
//      text does not; salted() below says how Parry's salt differs), and
//      replace each value t by floor(t / step) (paper: step 50, so 6 levels);
//   2. flatten (C×H×W memory order) and slide a window of w values with a
//      stride s over it (paper: w = 20 for MNIST-sized images, 50 for larger
//      ones; s = 1); hash each window's quantised bytes with XXH3-64 (xxHash);
//   3. keep the N numerically largest distinct hashes (paper: N = 50) as the
//      image's fingerprint;
//   4. count, through an inverted index hash → stored queries, the largest
//      number of hashes the fingerprint shares with any single stored query
//      (only the n − threshold + 1 shortest posting lists are walked: any
//      image at the threshold is in one of them; candidates found there are
//      checked against the remaining hashes in their own sorted key block);
//      the image is a detection when that count reaches the threshold
//      (paper: 25 of 50 for MNIST);
//   5. store the fingerprint (every fingerprinted image is stored, detected
//      or not, so a persistent attacker keeps matching its own history).
// A small perturbation changes only the windows that contain a pixel that
// crossed a quantisation boundary; since the kept hashes are a
// content-defined sample of the windows, two near-identical images keep many
// of the same hashes while unrelated images share almost none.
//
// Threat model. It stops query-based black-box attacks (score-based such as
// Square, decision-based such as HopSkipJump) whose successive queries are
// small perturbations of each other or of the source image, including
// attackers who spread their queries over many client ids (the global scope).
// It does not stop: white-box or transfer attacks (no query stream); an
// attacker who waits until its earlier queries are evicted (the store is a
// FIFO of max_stored_queries images, so spacing queries beyond that many
// other queries defeats it); queries with large random transforms (shifts,
// rotations, strong noise) that change most quantised windows — at the price
// of a weaker attack; or an attacker who can tell a detection from the
// answers (use MonitorAction::Silent so it cannot). Without the salt, an
// attacker who knows the step knows every bin edge and can move just the
// values that sit near one; the salt hides the edges, so it must stay secret
// (it is never logged; with Redis, whoever reads Redis can read it, as they
// can read the fingerprints). Detections are a signal
// for the operator: with MonitorAction::Reject, a benign user whose queries
// happen to resemble stored ones is refused (false positives are measured in
// docs/concealment.md).
//
// Costs: per image, one hash per window position and a partial sort; lookups in an open-addressing
// table; memory bounded by max_stored_queries plus one removal batch (the oldest image is evicted, i.e.
// unmatchable, at once; evicted postings leave the index in batches of up to 1,024 images). Thread-safe:
// one mutex guards the store, so admit() may be called from any number of threads.
//
// State. By default the store is in the process. With redis() set, the
// stored fingerprints and the index live in Redis (parry/conceal/state.hpp),
// shared by every replica with the same prefix and settings, with the same
// FIFO bound, eviction and matching (one atomic server-side script per
// request); query ids are then global across the replicas. Fingerprints are
// computed here either way, so both stores receive identical keys. Anyone who
// can write to that Redis can erase the monitor's memory (see state.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "parry/conceal/state.hpp"
#include "parry/core/gate.hpp"
#include "parry/core/input_spec.hpp"
#include "parry/detail/arg.hpp"

namespace parry::conceal {

/// Which stored queries a new query is compared with.
enum class MonitorScope {
  Global,     ///< every stored query, whoever sent it (catches attackers with many client ids)
  PerClient,  ///< only the same client's stored queries
  Both,       ///< both indexes: a detection in either counts (costs twice the index memory)
};

/// What the gate does with a request that contains a detected image.
enum class MonitorAction {
  Flag,    ///< answer, with verdict Flagged and reason "flagged"
  Reject,  ///< refuse, with verdict Rejected and reason "flagged"
  Silent,  ///< answer normally (Accepted); the detection is only counted, logged and reported to the callback
};

/// "global", "per_client", "both".
const char* to_string(MonitorScope scope);
/// "flag", "reject", "silent".
const char* to_string(MonitorAction action);

/// One detected image, as reported to the detection callback and the log.
struct QueryMonitorDetection {
  std::string client_id;                      ///< who sent the detected image
  uint64_t query_id = 0;                      ///< id given to the detected image (ids count from 1)
  uint64_t matched_query_id = 0;              ///< the stored image it matched best
  int64_t matches = 0;                        ///< hashes shared with that image
  MonitorScope scope = MonitorScope::Global;  ///< the index that matched (Global or PerClient)
};

/// Called once per detected image, after the monitor's lock is released, on
/// the thread that called admit(); it must be thread-safe.
using DetectionCallback = std::function<void(const QueryMonitorDetection&)>;

struct QueryMonitorOptions {
  PARRY_OPTIONS(QueryMonitorOptions);
  /// Quantisation step in 8-bit units (the value range is mapped onto
  /// [0, 255]). Default 50 (the paper's). Larger steps make fingerprints more
  /// tolerant of perturbations and of unrelated images alike.
  PARRY_CHECKED_ARG(double, quantization_step, 50.0, v >= 1 && v <= 255 && std::isfinite(v),
                    "must lie in [1, 255] (8-bit units)");
  /// Sliding-window length in values of the flattened image. Default 20 (the
  /// paper's for 28×28 images). An image with fewer values is one window.
  PARRY_CHECKED_ARG(int64_t, window, 20, v >= 1, "must be at least 1 value");
  /// Stride of the sliding window in values. Default 1.
  PARRY_CHECKED_ARG(int64_t, window_step, 1, v >= 1, "must be at least 1 value");
  /// Hashes kept per image, N. Default 50.
  PARRY_CHECKED_ARG(int64_t, hashes_kept, 50, v >= 1 && v <= 1024, "must lie in [1, 1024]");
  /// Shared hashes with one stored image at which an image is a detection; at
  /// most hashes_kept, which is checked when the QueryMonitor is built.
  /// Default 25; docs/concealment.md has the measurements behind it.
  PARRY_CHECKED_ARG(int64_t, threshold, 25, v >= 1 && v <= 1024, "must lie in [1, 1024] and not exceed hashes_kept");
  /// Largest batch fingerprinted (default 256); larger ones are not.
  PARRY_CHECKED_ARG(int64_t, max_batch, 256, v >= 1, "must be at least 1 image");
  /// Global, per client, or both. Default Global.
  PARRY_CHECKED_ARG(MonitorScope, scope, MonitorScope::Global,
                    v == MonitorScope::Global || v == MonitorScope::PerClient || v == MonitorScope::Both,
                    "must be Global, PerClient or Both");
  /// Flag, Reject or Silent. Default Flag.
  PARRY_CHECKED_ARG(MonitorAction, action, MonitorAction::Flag,
                    v == MonitorAction::Flag || v == MonitorAction::Reject || v == MonitorAction::Silent,
                    "must be Flag, Reject or Silent");
  /// Most images stored at once (also max_stored_queries × hashes_kept ×
  /// indexes < 2^32, checked when the QueryMonitor is built). Beyond it the
  /// oldest is evicted. Default 100,000.
  PARRY_CHECKED_ARG(int64_t, max_stored_queries, 100000, v >= 1, "must be at least 1 image");
  /// Most stored images visited per walked posting list when counting
  /// matches, newest first. Bounds the work when even the shortest lists of a
  /// query are long (hashes shared by very many stored images); images older
  /// than the newest `n` of such a list may be missed. Default 1024.
  PARRY_CHECKED_ARG(int64_t, max_scan_per_hash, 1024, v >= 1, "must be at least 1");
  /// Where the stored queries live: unset (default) in this process; set, in
  /// that Redis under "<prefix>:qm", shared with every monitor that uses the
  /// same Redis, prefix and settings. Monitors sharing a prefix must agree
  /// on max_stored_queries, hashes_kept, scope and max_scan_per_hash (a
  /// monitor that does not is refused, by its failure policy).
  PARRY_ARG(std::optional<RedisOptions>, redis) = std::nullopt;
  /// Blacklight's secret salt: before quantising, value i (in 8-bit units)
  /// gets a secret offset s_i, uniform in [0, step/2): level floor((t + s_i)
  /// / step). Each value's bin edges then sit at places unknown to an
  /// attacker who knows the step, who can no longer move just the values next
  /// to an edge to change a window's hash at the least cost. Deviation: the
  /// authors' code draws s_i in [0, 255) and wraps modulo 255, which hides
  /// the edges no better but makes constant regions (a blank background)
  /// quantise differently at every position, so unrelated images share their
  /// background windows: on Fashion-MNIST, 14.9 % benign false positives at
  /// threshold 25 instead of 0. Half a step rather than a whole one keeps a
  /// blank background half a step from its next edge, as robust to small
  /// noise as unsalted (docs/concealment.md, "Secret salt", has the
  /// measurements). Default true; false: the paper's floor(t / step).
  PARRY_ARG(bool, salted) = true;
  /// The salt's 64-bit secret key (the offsets are derived from it). Unset
  /// (default): a key drawn from std::random_device when the monitor is
  /// built — the salt lives and dies with the in-process store — or, with
  /// Redis, the key stored under "<prefix>:qm:salt" by the first monitor that
  /// used the prefix, so that every replica quantises alike (clear() keeps
  /// it). Set it only to reproduce an experiment or to share a key between
  /// in-process monitors; with Redis it must equal the stored key, or the
  /// monitor's requests fail by its policy. describe() and the logs never show it.
  PARRY_ARG(std::optional<uint64_t>, salt_key) = std::nullopt;

 public:
  /// Value range mapped onto the 256 quantisation levels; lo < hi, finite.
  /// Default [0, 1]. Images with a value outside it are not fingerprinted.
  QueryMonitorOptions& value_range(double lo, double hi);
  /// Expected image shape C×H×W (all > 0); other shapes are not
  /// fingerprinted. Unset (any shape) by default.
  QueryMonitorOptions& image_shape(int64_t channels, int64_t height, int64_t width);
  /// Copies value range, image shape and batch limit from the Guard's spec, so
  /// exactly the inputs the Guard would answer are fingerprinted.
  QueryMonitorOptions& match_spec(const InputSpec& spec);
  /// Called for each detected image (default none).
  QueryMonitorOptions& on_detection(DetectionCallback callback);

  /// Lower end of the value range mapped onto the quantisation levels.
  double min_value() const { return min_value_; }
  /// Upper end of that range.
  double max_value() const { return max_value_; }
  /// {C, H, W}, or empty when any shape is accepted.
  const std::vector<int64_t>& image_shape() const { return image_shape_; }
  /// The detection callback (empty by default).
  const DetectionCallback& on_detection() const { return on_detection_; }

 private:
  double min_value_ = 0.0;
  double max_value_ = 1.0;
  std::vector<int64_t> image_shape_;
  DetectionCallback on_detection_;
};

/// What the monitor found for one image. Match counts are exact when they
/// reach the threshold; below it they are lower bounds (the search only
/// walks the posting lists that can contain an image at the threshold), so
/// build the monitor with threshold(1) to measure exact counts.
struct QueryObservation {
  uint64_t query_id = 0;  ///< id given to the image (ids count from 1)
  /// Largest number of hashes shared with one stored image of the global
  /// index, and that image's id (0 if none); stays 0 in PerClient scope.
  int64_t global_matches = 0;
  uint64_t global_match_id = 0;
  /// The same over the client's own stored images; stays 0 in Global scope.
  int64_t client_matches = 0;
  uint64_t client_match_id = 0;
  /// The threshold was reached in a scope the monitor watches.
  bool detected = false;
};

/// Counters since construction (or clear()). images, detections,
/// requests_detected, skipped and state_failures count this object's
/// requests; stored, evictions, index_entries and postings describe the store
/// (with Redis: the shared one, read with one round trip; zero if Redis cannot
/// be reached).
struct QueryMonitorStats {
  uint64_t images = 0;             ///< images fingerprinted and stored
  uint64_t detections = 0;         ///< of them, images detected
  uint64_t requests_detected = 0;  ///< requests with at least one detected image
  uint64_t skipped = 0;            ///< requests not fingerprinted (malformed input; the Guard rejects them)
  uint64_t evictions = 0;          ///< images evicted to respect max_stored_queries
  uint64_t stored = 0;             ///< images currently stored (<= max_stored_queries)
  uint64_t index_entries = 0;      ///< distinct keys currently in the inverted index (all scopes)
  uint64_t postings = 0;           ///< (key, image) pairs currently in the index
  uint64_t memory_bytes = 0;       ///< bytes held by the store and index (allocated capacity; 0 for Redis)
  /// Requests not judged because the shared state (Redis) was unreachable,
  /// too slow or refused the request: refused under FailClosed, admitted
  /// under FailOpen. Counted by this monitor object, not shared.
  uint64_t state_failures = 0;
};

namespace detail {
class QueryStore;
class RateLimitedLog;
}  // namespace detail

class QueryMonitor final : public Gate {
 public:
  /// Detections are logged (parry::log, warning level) at most this many
  /// lines per second per monitor; the next line logged says how many were
  /// left out. stats() and the detection callback see every detection. An
  /// attacker's stream of near-duplicates cannot flood the log or block the
  /// workers on a full stderr pipe.
  static constexpr int64_t kDetectionLinesPerSecond = 10;

  /// @throws parry::OptionError if threshold > hashes_kept or the store would
  ///   need more than 2^32 postings. A Redis store connects on first use.
  explicit QueryMonitor(QueryMonitorOptions options = {});
  ~QueryMonitor() override;
  QueryMonitor(const QueryMonitor&) = delete;
  QueryMonitor& operator=(const QueryMonitor&) = delete;

  /// Gate interface. Fingerprints, matches and stores every image of `input`
  /// (C×H×W or N×C×H×W) in order, so later images of a batch are compared with
  /// earlier ones. If any image is a detection: Flag or Reject with reason
  /// "flagged", or Admit for MonitorAction::Silent. Inputs the Guard would
  /// reject (undefined, not float32, not CPU/dense, wrong rank, empty or too
  /// large a batch, wrong shape when one is set, NaN/Inf, values outside the
  /// range) are admitted without being fingerprinted and counted as skipped:
  /// the Guard's validation refuses them right after, so no answer leaks.
  /// When the Redis state is unavailable: FailClosed rejects with reason
  /// "unavailable", FailOpen admits; both count a state failure. Never throws.
  GateDecision admit(const RequestContext& context, const torch::Tensor& input) override;
  /// True: in Guard::predict_image the monitor sees the decoded image.
  bool needs_pixels() const override { return true; }
  std::string describe() const override;

  /// Fingerprints, matches and stores each image of a valid input and returns
  /// what was found per image (admit() is this plus the decision). Detections
  /// are counted, logged and reported to the callback as in admit().
  /// @throws parry::InputError for an input admit() would skip.
  std::vector<QueryObservation> observe(const RequestContext& context, const torch::Tensor& input);

  /// The fingerprint of one image C×H×W (or a flat tensor): its up to
  /// hashes_kept distinct window hashes, largest first (salted when the
  /// monitor is). Stores nothing.
  /// @throws parry::InputError for a non-finite or empty image, or values
  ///   outside the value range.
  /// @throws UnavailableError if the salt is kept in Redis and cannot be read.
  std::vector<uint64_t> fingerprint(const torch::Tensor& image) const;

  /// Counters and current sizes (with Redis, one round trip).
  QueryMonitorStats stats() const;
  /// QueryMonitorStats::state_failures alone, without asking the store.
  uint64_t state_failures() const;
  /// Forgets every stored image and resets the counters. With Redis, the
  /// shared store under the prefix is emptied for every replica.
  /// @throws UnavailableError when the Redis state cannot be reached.
  void clear();

  const QueryMonitorOptions& options() const { return options_; }

 private:
  /// Checks what admit() would skip; returns an empty string if the input is
  /// fingerprintable, else the (operator-only) reason.
  std::string check_input(const torch::Tensor& input) const;
  /// Fingerprints of each image of a checked N×C×H×W (or C×H×W) float32 input.
  std::vector<std::vector<uint64_t>> fingerprints(const torch::Tensor& input) const;
  std::vector<QueryObservation> record(const RequestContext& context, const torch::Tensor& input);
  GateDecision unavailable(const Error& error);
  /// The salt's offsets for images of `count` values (8-bit units), or null
  /// when the monitor is unsalted. The key is read from the store once.
  /// @throws UnavailableError if the store keeps the key and cannot be reached.
  std::shared_ptr<const std::vector<float>> salt_offsets(int64_t count) const;

  QueryMonitorOptions options_;
  std::unique_ptr<detail::QueryStore> store_;
  std::unique_ptr<detail::RateLimitedLog> failure_log_;    // one line per 10 s
  std::unique_ptr<detail::RateLimitedLog> detection_log_;  // kDetectionLinesPerSecond
  mutable std::mutex mutex_;                               // guards the counters
  uint64_t images_ = 0;
  uint64_t detections_ = 0;
  uint64_t requests_detected_ = 0;
  uint64_t skipped_ = 0;
  uint64_t state_failures_ = 0;
  uint64_t proposed_salt_key_ = 0;  // options' salt_key, or a random one; the store may hold another
  mutable std::mutex salt_mutex_;
  mutable std::optional<uint64_t> salt_key_;  // the key in use, once the store agreed on it
  mutable std::vector<std::shared_ptr<const std::vector<float>>> salt_offsets_;  // by value count
};

}  // namespace parry::conceal

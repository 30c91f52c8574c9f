// conceal::QueryMonitor (Blacklight): fingerprints of quantised windows and the gate.
//
// xxHash is compiled in (XXH_INLINE_ALL, the library's documented header-only
// mode): hashing 20-byte windows is fastest inlined, and Parry's static
// library then carries no xxhash link dependency for its consumers.
#define XXH_INLINE_ALL
#include "parry/conceal/query_monitor.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>

#include "conceal/rate_limited_log.hpp"
#include "conceal/state_store.hpp"
#include "parry/core/log.hpp"

namespace parry::conceal {

namespace {

bool watches_global(MonitorScope scope) {
  return scope != MonitorScope::PerClient;
}
bool watches_client(MonitorScope scope) {
  return scope != MonitorScope::Global;
}
int64_t scope_count(MonitorScope scope) {
  return scope == MonitorScope::Both ? 2 : 1;
}

// Client ids come from callers: keep the log line printable and short.
std::string printable(const std::string& id) {
  std::string out;
  for (const char c : id.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (id.size() > 64) out += "...";
  return out;
}

// 0 marks an empty table cell; a window hash of 0 becomes 1.
uint64_t nonzero(uint64_t key) {
  return key == 0 ? 1 : key;
}

}  // namespace

QueryMonitor::QueryMonitor(QueryMonitorOptions options)
    : options_(std::move(options)),
      failure_log_(std::make_unique<detail::RateLimitedLog>(1, std::chrono::seconds(10), "similar failures")),
      detection_log_(
          std::make_unique<detail::RateLimitedLog>(kDetectionLinesPerSecond, std::chrono::seconds(1), "detections")) {
  if (options_.threshold() > options_.hashes_kept()) {
    throw OptionError("QueryMonitor: threshold must not exceed hashes_kept (" + std::to_string(options_.hashes_kept()) +
                      "), but got " + std::to_string(options_.threshold()));
  }
  const int64_t per_slot = options_.hashes_kept() * scope_count(options_.scope());
  // The in-process index's posting ids are 32-bit, and it needs room for at
  // least one evicted image beyond max_stored_queries (query_store.hpp).
  constexpr int64_t kMaxPostings = std::numeric_limits<uint32_t>::max() - 1;
  if (options_.max_stored_queries() > kMaxPostings / per_slot - 1) {
    throw OptionError("QueryMonitor: max_stored_queries × hashes_kept × indexes must stay below 2^32, but got " +
                      std::to_string(options_.max_stored_queries()) + " × " + std::to_string(options_.hashes_kept()) +
                      " × " + std::to_string(scope_count(options_.scope())));
  }
  store_ = options_.redis() ? detail::make_redis_query_store(options_) : detail::make_memory_query_store(options_);
  if (options_.salted()) {
    if (options_.salt_key()) {
      proposed_salt_key_ = *options_.salt_key();
    } else {
      std::random_device device;  // the operating system's entropy source
      proposed_salt_key_ = (static_cast<uint64_t>(device()) << 32) ^ device();
    }
  }
}

QueryMonitor::~QueryMonitor() = default;

std::string QueryMonitor::check_input(const torch::Tensor& input) const {
  if (!input.defined()) return "undefined tensor";
  if (input.scalar_type() != torch::kFloat32) return "not float32";
  if (!input.device().is_cpu() || input.layout() != torch::kStrided) return "not a dense CPU tensor";
  if (input.dim() != 3 && input.dim() != 4) return "rank " + std::to_string(input.dim());
  const int64_t n = input.dim() == 4 ? input.size(0) : 1;
  if (n < 1 || n > options_.max_batch()) return "batch of " + std::to_string(n);
  const auto image = input.sizes().slice(input.dim() - 3);
  if (image[0] * image[1] * image[2] == 0) return "empty images";
  const auto& shape = options_.image_shape();
  if (!shape.empty() && (image[0] != shape[0] || image[1] != shape[1] || image[2] != shape[2])) return "image shape";
  // A plain loop: at batch 1, torch::aminmax and two item() calls cost more
  // than the fingerprint's arithmetic.
  const torch::Tensor x = input.contiguous();
  const float* values = x.data_ptr<float>();
  const double lo = options_.min_value(), hi = options_.max_value();
  bool inside = true;
  for (int64_t i = 0, count = x.numel(); i < count; ++i) {
    const double v = values[i];
    inside &= v >= lo && v <= hi;  // false for NaN
  }
  if (!inside) return "values non-finite or out of range";
  return {};
}

namespace {

// Blacklight's fingerprint of `count` values; `salt` holds count offsets in
// 8-bit units, or is null for plain quantisation.
std::vector<uint64_t> fingerprint_values(const float* values, int64_t count, const QueryMonitorOptions& o,
                                         const float* salt, std::vector<uint8_t>& quantised,
                                         std::vector<uint64_t>& hashes) {
  const double top = std::floor(255.0 / o.quantization_step());
  quantised.resize(static_cast<size_t>(count));
  if (salt == nullptr) {
    // v in [lo, hi] -> t = (v − lo)/(hi − lo)·255 in [0, 255] -> floor(t / step).
    // The small epsilon puts an 8-bit value k/255 that float rounding left just
    // below a level boundary (k a multiple of the step) on the level it belongs to.
    const double scale = 255.0 / (o.max_value() - o.min_value()) / o.quantization_step();
    // Clamping before the conversion makes truncation the floor: equal to
    // clamp(floor(x), 0, top) for every x, and the loop vectorises.
    for (int64_t i = 0; i < count; ++i) {
      const double level = (static_cast<double>(values[i]) - o.min_value()) * scale + 1e-6;
      quantised[i] = static_cast<uint8_t>(static_cast<int>(std::clamp(level, 0.0, top)));
    }
  } else {
    // t = (v − lo)/(hi − lo)·255, then floor((t + s_i) / step) with s_i in
    // [0, step): every edge of value i sits at a secret place inside its
    // step, and constant regions stay constant. The edges are not at 8-bit
    // values, so no epsilon is needed. One more level than unsalted at most.
    const double scale = 255.0 / (o.max_value() - o.min_value());
    const double inverse_step = 1.0 / o.quantization_step();
    const double salted_top = std::min(255.0, top + 1);
    for (int64_t i = 0; i < count; ++i) {
      const double t = (static_cast<double>(values[i]) - o.min_value()) * scale + salt[i];
      quantised[i] = static_cast<uint8_t>(static_cast<int>(std::clamp(t * inverse_step, 0.0, salted_top)));
    }
  }
  hashes.clear();
  const int64_t window = o.window();
  if (count <= window) {
    hashes.push_back(nonzero(XXH3_64bits(quantised.data(), static_cast<size_t>(count))));
  } else {
    for (int64_t i = 0; i + window <= count; i += o.window_step()) {
      hashes.push_back(nonzero(XXH3_64bits(quantised.data() + i, static_cast<size_t>(window))));
    }
  }
  // The N largest distinct hashes: select the 2N largest first (cheap), and
  // fall back to sorting everything when duplicates leave fewer than N.
  const size_t keep = static_cast<size_t>(o.hashes_kept());
  const auto descending = std::greater<uint64_t>();
  size_t candidates = std::min(hashes.size(), 2 * keep);
  std::nth_element(hashes.begin(), hashes.begin() + (candidates - 1), hashes.end(), descending);
  std::sort(hashes.begin(), hashes.begin() + candidates, descending);
  size_t distinct = std::unique(hashes.begin(), hashes.begin() + candidates) - hashes.begin();
  if (distinct < keep && candidates < hashes.size()) {
    std::sort(hashes.begin(), hashes.end(), descending);
    distinct = std::unique(hashes.begin(), hashes.end()) - hashes.begin();
  }
  return std::vector<uint64_t>(hashes.begin(), hashes.begin() + std::min(distinct, keep));
}

}  // namespace

std::vector<std::vector<uint64_t>> QueryMonitor::fingerprints(const torch::Tensor& input) const {
  const torch::Tensor x = input.contiguous();
  const int64_t n = x.dim() == 4 ? x.size(0) : 1;
  const int64_t per_image = x.numel() / n;
  std::vector<uint8_t> quantised;
  std::vector<uint64_t> hashes;
  std::vector<std::vector<uint64_t>> out;
  out.reserve(static_cast<size_t>(n));
  const float* data = x.data_ptr<float>();
  const auto salt = salt_offsets(per_image);
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(fingerprint_values(data + i * per_image, per_image, options_, salt ? salt->data() : nullptr,
                                     quantised, hashes));
  }
  return out;
}

std::shared_ptr<const std::vector<float>> QueryMonitor::salt_offsets(int64_t count) const {
  if (!options_.salted()) return nullptr;
  std::lock_guard<std::mutex> lock(salt_mutex_);
  if (!salt_key_) salt_key_ = store_->salt_key(proposed_salt_key_, options_.salt_key().has_value());
  for (const auto& offsets : salt_offsets_) {
    if (static_cast<int64_t>(offsets->size()) == count) return offsets;
  }
  // s_i = step·u_i with u_i uniform in [0, 1): the top 53 bits of a keyed
  // XXH3-64 of the position (a counter-mode generator: the same key gives the
  // same offsets in every process, which is what replicas sharing a Redis need).
  auto offsets = std::make_shared<std::vector<float>>(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t position = static_cast<uint64_t>(i);
    const double u =
        static_cast<double>(XXH3_64bits_withSeed(&position, sizeof position, *salt_key_) >> 11) * 0x1.0p-53;
    (*offsets)[static_cast<size_t>(i)] = static_cast<float>(0.5 * options_.quantization_step() * u);
  }
  if (salt_offsets_.size() >= 8) salt_offsets_.erase(salt_offsets_.begin());  // a handful of image sizes at most
  salt_offsets_.push_back(offsets);
  return offsets;
}

std::vector<uint64_t> QueryMonitor::fingerprint(const torch::Tensor& image) const {
  if (!image.defined() || image.numel() == 0) throw InputError("QueryMonitor::fingerprint: the image is empty");
  if (!image.is_floating_point() || !image.device().is_cpu()) {
    throw InputError("QueryMonitor::fingerprint: the image must be a floating-point CPU tensor");
  }
  torch::NoGradGuard no_grad;
  const torch::Tensor x = image.to(torch::kFloat32).contiguous();
  const auto [lo_t, hi_t] = torch::aminmax(x);
  if (!(lo_t.item<double>() >= options_.min_value() && hi_t.item<double>() <= options_.max_value())) {
    throw InputError("QueryMonitor::fingerprint: the image has non-finite values or values outside the value range");
  }
  std::vector<uint8_t> quantised;
  std::vector<uint64_t> hashes;
  const auto salt = salt_offsets(x.numel());
  return fingerprint_values(x.data_ptr<float>(), x.numel(), options_, salt ? salt->data() : nullptr, quantised, hashes);
}

std::vector<QueryObservation> QueryMonitor::record(const RequestContext& context, const torch::Tensor& input) {
  // Hashing and the per-client key mixing happen here, outside any lock and
  // before the store: both stores receive identical keys.
  std::vector<std::vector<uint64_t>> prints = fingerprints(input);
  const bool global = watches_global(options_.scope());
  const bool client = watches_client(options_.scope());
  const uint64_t client_seed = XXH3_64bits(context.client_id.data(), context.client_id.size());
  const int64_t threshold = options_.threshold();

  std::vector<detail::StoreQuery> queries(prints.size());
  for (size_t i = 0; i < prints.size(); ++i) {
    detail::StoreQuery& q = queries[i];
    if (client) {
      q.client_keys.reserve(prints[i].size());
      for (const uint64_t h : prints[i])
        q.client_keys.push_back(nonzero(XXH3_64bits_withSeed(&h, sizeof h, client_seed)));
      std::sort(q.client_keys.begin(), q.client_keys.end(), std::greater<uint64_t>());  // slots keep keys sorted
    }
    if (global) q.global_keys = std::move(prints[i]);
  }
  const std::vector<detail::StoreMatch> matches = store_->match_and_insert(queries);

  std::vector<QueryObservation> observations(matches.size());
  std::vector<QueryMonitorDetection> detections;
  for (size_t i = 0; i < matches.size(); ++i) {
    const detail::StoreMatch& m = matches[i];
    QueryObservation& obs = observations[i];
    obs.query_id = m.query_id;
    obs.global_matches = m.global_matches;
    obs.global_match_id = m.global_match_id;
    obs.client_matches = m.client_matches;
    obs.client_match_id = m.client_match_id;
    const bool global_hit = global && obs.global_matches >= threshold;
    const bool client_hit = client && obs.client_matches >= threshold;
    obs.detected = global_hit || client_hit;
    if (obs.detected) {
      QueryMonitorDetection d;
      d.client_id = context.client_id;
      d.query_id = obs.query_id;
      const bool use_client = client_hit && (!global_hit || obs.client_matches > obs.global_matches);
      d.scope = use_client ? MonitorScope::PerClient : MonitorScope::Global;
      d.matches = use_client ? obs.client_matches : obs.global_matches;
      d.matched_query_id = use_client ? obs.client_match_id : obs.global_match_id;
      detections.push_back(std::move(d));
    }
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    images_ += observations.size();
    detections_ += detections.size();
    if (!detections.empty()) ++requests_detected_;
  }
  for (const QueryMonitorDetection& d : detections) {
    std::ostringstream line;
    line << "QueryMonitor: query " << d.query_id << " from client '" << printable(d.client_id) << "' shares "
         << d.matches << " of " << options_.hashes_kept() << " hashes with stored query " << d.matched_query_id << " ("
         << to_string(d.scope) << " index); action " << to_string(options_.action());
    detection_log_->report(line.str());
    if (options_.on_detection()) options_.on_detection()(d);
  }
  return observations;
}

GateDecision QueryMonitor::unavailable(const Error& error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++state_failures_;
  }
  const FailurePolicy policy = options_.redis() ? options_.redis()->failure() : FailurePolicy::FailClosed;
  failure_log_->report(std::string("QueryMonitor: shared state unavailable, request ") +
                       (policy == FailurePolicy::FailOpen ? "admitted unjudged (fail_open)" : "refused (fail_closed)") +
                       ": " + error.detail());
  return policy == FailurePolicy::FailOpen ? GateDecision::admit() : GateDecision::reject(kReasonUnavailable);
}

std::vector<QueryObservation> QueryMonitor::observe(const RequestContext& context, const torch::Tensor& input) {
  const std::string problem = check_input(input);
  if (!problem.empty()) throw InputError("QueryMonitor::observe: the input is not a valid image batch", problem);
  return record(context, input);
}

GateDecision QueryMonitor::admit(const RequestContext& context, const torch::Tensor& input) {
  std::vector<QueryObservation> observations;
  try {
    const std::string problem = check_input(input);
    if (!problem.empty()) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++skipped_;
      return GateDecision::admit();
    }
    observations = record(context, input);
  } catch (const UnavailableError& e) {
    return unavailable(e);  // never a silent admission: the policy decides, and it is counted
  } catch (const std::exception& e) {
    // Never let the monitor turn a request into a crash; the Guard validates next.
    log(LogLevel::Error, std::string("QueryMonitor::admit: ") + e.what());
    std::lock_guard<std::mutex> lock(mutex_);
    ++skipped_;
    return GateDecision::admit();
  }
  const bool detected =
      std::any_of(observations.begin(), observations.end(), [](const QueryObservation& o) { return o.detected; });
  if (!detected) return GateDecision::admit();
  switch (options_.action()) {
    case MonitorAction::Flag:
      return GateDecision::flag(reason::kFlagged);
    case MonitorAction::Reject:
      return GateDecision::reject(reason::kFlagged);
    case MonitorAction::Silent:
      return GateDecision::admit();
  }
  return GateDecision::admit();
}

std::string QueryMonitor::describe() const {
  std::ostringstream out;
  out << "QueryMonitor(Blacklight: step=" << options_.quantization_step() << ", window=" << options_.window()
      << ", window_step=" << options_.window_step() << ", N=" << options_.hashes_kept()
      << ", threshold=" << options_.threshold() << ", scope=" << to_string(options_.scope())
      << ", action=" << to_string(options_.action()) << ", max_stored=" << options_.max_stored_queries()
      << (options_.salted() ? ", salted" : ", unsalted");
  if (options_.redis()) out << ", state=" << store_->describe();
  out << ")";
  return out.str();
}

QueryMonitorStats QueryMonitor::stats() const {
  QueryMonitorStats out;
  try {
    const detail::QueryStoreStats s = store_->stats();
    out.evictions = s.evictions;
    out.stored = s.stored;
    out.index_entries = s.index_entries;
    out.postings = s.postings;
    out.memory_bytes = s.memory_bytes;
  } catch (const UnavailableError& e) {
    log(LogLevel::Warning, "QueryMonitor::stats: shared state unavailable: " + e.detail());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  out.images = images_;
  out.detections = detections_;
  out.requests_detected = requests_detected_;
  out.skipped = skipped_;
  out.state_failures = state_failures_;
  return out;
}

uint64_t QueryMonitor::state_failures() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_failures_;
}

void QueryMonitor::clear() {
  store_->clear();
  std::lock_guard<std::mutex> lock(mutex_);
  images_ = detections_ = requests_detected_ = skipped_ = state_failures_ = 0;
}

}  // namespace parry::conceal

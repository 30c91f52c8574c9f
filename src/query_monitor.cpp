// conceal::QueryMonitor (Blacklight).
//
// xxHash is compiled in (XXH_INLINE_ALL, the library's documented header-only
// mode): hashing 20-byte windows is fastest inlined, and Parry's static
// library then carries no xxhash link dependency for its consumers.
#define XXH_INLINE_ALL
#include "parry/conceal/query_monitor.hpp"

#include <xxhash.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <sstream>

#include "parry/core/log.hpp"

namespace parry::conceal {

namespace {

void require(bool ok, const std::string& message, double got) {
  if (!ok) {
    std::ostringstream out;
    out << "QueryMonitorOptions::" << message << ", but got " << got;
    throw OptionError(out.str());
  }
}

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

// Asks the kernel for transparent huge pages over a large array's storage:
// the index is read at random, and with 4 KiB pages nearly every access of a
// large store also misses the TLB. Pages touched before the call keep their size.
template <class T>
void advise_huge_pages(const std::vector<T>& v) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t start = reinterpret_cast<uintptr_t>(v.data());
  const uintptr_t begin = (start + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (start + v.capacity() * sizeof(T)) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice only
#else
  (void)v;
#endif
}

// 0 marks an empty table cell; a window hash of 0 becomes 1.
uint64_t nonzero(uint64_t key) {
  return key == 0 ? 1 : key;
}

}  // namespace

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

// ------------------------------------------------------------------ options

QueryMonitorOptions& QueryMonitorOptions::quantization_step(double v) {
  require(v >= 1 && v <= 255 && std::isfinite(v), "quantization_step: must lie in [1, 255] (8-bit units)", v);
  quantization_step_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::window(int64_t v) {
  require(v >= 1, "window: must be at least 1 value", static_cast<double>(v));
  window_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::window_step(int64_t v) {
  require(v >= 1, "window_step: must be at least 1 value", static_cast<double>(v));
  window_step_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::hashes_kept(int64_t v) {
  require(v >= 1 && v <= 1024, "hashes_kept: must lie in [1, 1024]", static_cast<double>(v));
  hashes_kept_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::threshold(int64_t v) {
  require(v >= 1 && v <= 1024, "threshold: must lie in [1, hashes_kept]", static_cast<double>(v));
  threshold_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::value_range(double lo, double hi) {
  require(std::isfinite(lo), "value_range: the lower bound must be finite", lo);
  require(std::isfinite(hi) && hi > lo, "value_range: the upper bound must be finite and above the lower bound", hi);
  min_value_ = lo;
  max_value_ = hi;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::image_shape(int64_t channels, int64_t height, int64_t width) {
  require(channels > 0, "image_shape: channels must be positive", static_cast<double>(channels));
  require(height > 0, "image_shape: height must be positive", static_cast<double>(height));
  require(width > 0, "image_shape: width must be positive", static_cast<double>(width));
  image_shape_ = {channels, height, width};
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::max_batch(int64_t v) {
  require(v >= 1, "max_batch: must be at least 1 image", static_cast<double>(v));
  max_batch_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::match_spec(const InputSpec& spec) {
  value_range(spec.min_value(), spec.max_value());
  image_shape(spec.channels(), spec.height(), spec.width());
  return max_batch(spec.max_batch());
}
QueryMonitorOptions& QueryMonitorOptions::scope(MonitorScope v) {
  require(v == MonitorScope::Global || v == MonitorScope::PerClient || v == MonitorScope::Both, "scope: unknown scope",
          static_cast<double>(static_cast<int>(v)));
  scope_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::action(MonitorAction v) {
  require(v == MonitorAction::Flag || v == MonitorAction::Reject || v == MonitorAction::Silent,
          "action: unknown action", static_cast<double>(static_cast<int>(v)));
  action_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::max_stored_queries(int64_t v) {
  require(v >= 1, "max_stored_queries: must be at least 1 image", static_cast<double>(v));
  max_stored_queries_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::max_scan_per_hash(int64_t v) {
  require(v >= 1, "max_scan_per_hash: must be at least 1", static_cast<double>(v));
  max_scan_per_hash_ = v;
  return *this;
}
QueryMonitorOptions& QueryMonitorOptions::on_detection(DetectionCallback callback) {
  on_detection_ = std::move(callback);
  return *this;
}

// -------------------------------------------------------------------- store

// The stored fingerprints and the inverted index, guarded by the monitor's
// mutex.
//
// Images live in a ring of slots (FIFO eviction). Slot s owns the postings
// s·P … s·P + P − 1 (P = hashes_kept × number of indexes); a posting holds
// its key (a window hash, or for the per-client index the hash mixed with the
// client id) and the next older posting of the same key. The index is an
// open-addressing table (linear probing, backward-shift deletion) from key to
// the newest posting of that key, so each key's postings form a list from
// newest to oldest. Evicting the oldest image removes the oldest posting of
// each of its keys: the key's cell goes when that posting is also its newest,
// and the older end of a list needs no unlinking, because a walk stops as soon
// as the image ids stop decreasing (a slot reused by a newer image, or a cycle
// back into it). Memory per stored image and index: N postings of 16 bytes
// (key, next, insertion order), table cells of 12 bytes at a load between
// 0.53 and 0.8 (the table never grows beyond what a full store needs), a
// 64-byte Bloom filter of the image's keys, and 12 bytes of slot data.
struct QueryMonitor::Store {
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
  static constexpr double kMaxLoad = 0.8;
  static constexpr size_t kBloomWords = 8;  // 512 bits per image and index

  Store(int64_t capacity, int64_t per_slot, int64_t kept)
      : capacity(capacity),
        per_slot(per_slot),
        kept(kept),
        // The table never needs more cells than this: there are at most
        // capacity × per_slot distinct keys at once.
        max_cells(static_cast<size_t>(std::ceil(static_cast<double>(capacity * per_slot) / kMaxLoad)) + 1),
        slot_divisor(~uint64_t{0} / static_cast<uint64_t>(per_slot) + 1) {}

  // Table ------------------------------------------------------------------
  // Fingerprint hashes are the numerically largest of each image, so they
  // crowd the top of the 64-bit range: mix them (MurmurHash3's finaliser)
  // before mapping onto the table (Lemire's multiply-shift range reduction).
  size_t home(uint64_t key) const {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ULL;
    key ^= key >> 33;
    return static_cast<size_t>((static_cast<unsigned __int128>(key) * keys.size()) >> 64);
  }
  size_t next_cell(size_t i) const { return i + 1 == keys.size() ? 0 : i + 1; }

  // The cell holding `key`, or keys.size() if absent.
  size_t find(uint64_t key) const {
    if (keys.empty()) return 0;
    for (size_t i = home(key);; i = next_cell(i)) {
      if (keys[i] == key) return i;
      if (keys[i] == 0) return keys.size();
    }
  }

  void grow() {
    const size_t cells = std::min(max_cells, std::max<size_t>(64, keys.size() + keys.size() / 2));
    std::vector<uint64_t> old_keys;
    std::vector<uint32_t> old_heads;
    old_keys.reserve(cells);
    old_heads.reserve(cells);
    advise_huge_pages(old_keys);
    advise_huge_pages(old_heads);
    old_keys.assign(cells, 0);
    old_heads.assign(cells, kNone);
    old_keys.swap(keys);
    old_heads.swap(heads);
    for (size_t i = 0; i < old_keys.size(); ++i) {
      if (old_keys[i] == 0) continue;
      size_t j = home(old_keys[i]);
      while (keys[j] != 0) j = next_cell(j);
      keys[j] = old_keys[i];
      heads[j] = old_heads[i];
    }
  }

  void erase_cell(size_t i) {
    size_t j = i;
    for (;;) {
      j = next_cell(j);
      if (keys[j] == 0) break;
      const size_t h = home(keys[j]);
      const bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (stays) continue;
      keys[i] = keys[j];
      heads[i] = heads[j];
      i = j;
    }
    keys[i] = 0;
    heads[i] = kNone;
    --entries;
  }

  void add_posting(uint64_t key, uint32_t posting) {
    posting_key[posting] = key;
    size_t cell = find(key);
    if (cell == keys.size()) {
      if (keys.size() < max_cells && static_cast<double>(entries + 1) > kMaxLoad * static_cast<double>(keys.size())) {
        grow();
      }
      cell = home(key);
      while (keys[cell] != 0) cell = next_cell(cell);
      keys[cell] = key;
      heads[cell] = kNone;
      ++entries;
    }
    const uint32_t previous = heads[cell];
    links[posting].next = previous;
    posting_order[posting] =
        previous == kNone ? 1 : std::max(posting_order[previous], posting_order[previous] + 1);  // saturates
    links[posting].id = static_cast<uint32_t>(slot_id[slot_of(posting)]);
    heads[cell] = posting;
    const uint32_t slot = posting / static_cast<uint32_t>(per_slot);
    const uint32_t index = (posting % static_cast<uint32_t>(per_slot)) / static_cast<uint32_t>(kept);
    uint64_t* filter = &bloom[(slot * static_cast<size_t>(per_slot / kept) + index) * kBloomWords];
    for (const uint32_t bit : bloom_bits(key)) filter[bit >> 6] |= uint64_t{1} << (bit & 63);
    ++postings;
  }

  // Removes the oldest posting of its key (the evicted image is the oldest).
  void remove_posting(uint32_t posting) {
    const size_t cell = find(posting_key[posting]);
    if (cell == keys.size()) return;
    if (heads[cell] == posting) erase_cell(cell);  // it was the only one left
    --postings;
  }

  // Slots ------------------------------------------------------------------
  // posting / per_slot by multiplication (Lemire, Kaser, Kurz 2019), exact
  // for every 32-bit posting index.
  uint32_t slot_of(uint32_t posting) const {
    return static_cast<uint32_t>((static_cast<unsigned __int128>(posting) * slot_divisor) >> 64);
  }

  // A slot for a new image with `id`, evicting the oldest image if full.
  uint32_t acquire_slot(uint64_t id) {
    uint32_t slot;
    if (static_cast<int64_t>(slot_id.size()) < capacity) {
      slot = static_cast<uint32_t>(slot_id.size());
      reserve_for(slot_id.size() + 1);
      slot_id.push_back(id);
      slot_size.push_back(0);
      counts.push_back(0);
      posting_key.resize(posting_key.size() + per_slot, 0);
      links.resize(links.size() + per_slot, Link{kNone, 0});
      posting_order.resize(posting_order.size() + per_slot, 0);
      bloom.resize(bloom.size() + static_cast<size_t>(per_slot / kept) * kBloomWords, 0);
    } else {
      slot = static_cast<uint32_t>(oldest);
      oldest = (oldest + 1) % slot_id.size();
      const uint32_t base = slot * static_cast<uint32_t>(per_slot);
      for (int64_t j = 0; j < per_slot; ++j) {
        if (posting_key[base + j] != 0) {  // 0: position unused by this image (keys are never 0)
          remove_posting(base + static_cast<uint32_t>(j));
          posting_key[base + j] = 0;
        }
        // Every position, used by the new image or not, carries its id: an
        // older posting's link into this slot then always ends a walk.
        links[base + j] = Link{kNone, static_cast<uint32_t>(id)};
      }
      slot_id[slot] = id;
      slot_size[slot] = 0;
      const size_t words = static_cast<size_t>(per_slot / kept) * kBloomWords;
      std::fill_n(bloom.begin() + static_cast<int64_t>(slot * words), words, 0);
      --stored;
      ++evictions;
    }
    ++stored;
    return slot;
  }

  // Grows the slot arrays geometrically but never beyond the capacity.
  void reserve_for(size_t slots) {
    if (slots <= slot_id.capacity()) return;
    const size_t target = std::min<size_t>(static_cast<size_t>(capacity), std::max<size_t>(slots, 2 * slot_id.size()));
    slot_id.reserve(target);
    slot_size.reserve(target);
    counts.reserve(target);
    posting_key.reserve(target * per_slot);
    links.reserve(target * per_slot);
    posting_order.reserve(target * per_slot);
    bloom.reserve(target * static_cast<size_t>(per_slot / kept) * kBloomWords);
    advise_huge_pages(posting_key);
    advise_huge_pages(links);
    advise_huge_pages(posting_order);
    advise_huge_pages(bloom);
  }

  // The stored image sharing the most of `query_keys` (distinct keys), and
  // how many; ties go to the newest image. `offset` locates the scope's keys
  // inside a slot's postings (kept sorted, largest first).
  //
  // Pruning (the T-occurrence bound): an image sharing at least `threshold`
  // of the n keys appears in at least one of any n − threshold + 1 of their
  // posting lists. So only the shortest n − threshold + 1 lists are walked;
  // each image found there is then checked against the other keys in its own
  // sorted key block. Keys shared by very many stored images (blank
  // backgrounds) are thus mostly looked up in the candidates' blocks, not
  // walked. The count is exact when it reaches the threshold; below it, it
  // is a lower bound. List lengths are estimated from the insertion order of
  // the newest posting (an upper bound: evictions are not subtracted), which
  // only affects which lists are walked, not the result.
  std::pair<int64_t, uint32_t> best_match(const std::vector<uint64_t>& query_keys, int64_t offset, int64_t threshold,
                                          int64_t max_scan) {
    lists.clear();
    for (const uint64_t key : query_keys) {
      const size_t cell = find(key);
      if (cell == keys.size()) continue;  // no stored image has it
      lists.push_back(List{posting_order[heads[cell]], heads[cell], key});
    }
    const size_t n = query_keys.size();
    const size_t absent = n - lists.size();
    // Lists to walk: n − threshold + 1 in all; absent ones count as walked.
    const size_t walk_total = static_cast<int64_t>(n) >= threshold ? n - static_cast<size_t>(threshold) + 1 : n;
    size_t walk = walk_total > absent ? std::min(walk_total - absent, lists.size()) : 0;
    std::sort(lists.begin(), lists.end(), [](const List& a, const List& b) { return a.length < b.length; });
    // A few more short lists are cheaper to walk than the candidates they rule
    // out (each list walked raises the count an image needs from the walk).
    for (int extra = 0; extra < 3 && walk < lists.size() && lists[walk].length <= 64; ++extra) ++walk;
    // Ages (newest id − posting id, modulo 2^32: live images span fewer than
    // 2^32 ids) grow strictly along a live list; a posting of a reused slot is
    // younger than its predecessor, which ends the walk.
    const uint32_t now = static_cast<uint32_t>(next_id);
    for (size_t l = 0; l < walk; ++l) {
      int64_t previous_age = -1;
      int64_t scanned = 0;
      for (uint32_t p = lists[l].head; p != kNone && scanned < max_scan; p = links[p].next, ++scanned) {
        const int64_t age = static_cast<uint32_t>(now - links[p].id);
        if (age <= previous_age) break;  // reached a reused slot: the rest of the list is evicted
        previous_age = age;
        const uint32_t slot = slot_of(p);
        if (counts[slot]++ == 0) touched.push_back(slot);
      }
    }
    int64_t best = 0;
    uint32_t best_slot = kNone;
    for (const uint32_t slot : touched) {
      int64_t count = counts[slot];
      counts[slot] = 0;
      // Each unwalked list adds at most one: skip images that cannot reach
      // the threshold without touching their memory.
      if (walk < lists.size() && count + static_cast<int64_t>(lists.size() - walk) >= threshold) {
        // Bloom filter first (one cache line): an upper bound on the count.
        const uint64_t* filter = &bloom[(slot * static_cast<size_t>(per_slot / kept) + offset / kept) * kBloomWords];
        int64_t upper = count;
        for (size_t l = walk; l < lists.size(); ++l) {
          bool hit = true;
          for (const uint32_t bit : bloom_bits(lists[l].key)) hit = hit && (filter[bit >> 6] >> (bit & 63) & 1);
          upper += hit;
        }
        if (upper >= threshold) {  // exact count from the image's sorted keys
          const auto begin = posting_key.begin() + static_cast<int64_t>(slot) * per_slot + offset;
          const auto end = begin + slot_size[slot];
          for (size_t l = walk; l < lists.size(); ++l) {
            count += std::binary_search(begin, end, lists[l].key, std::greater<uint64_t>());
          }
        }
      }
      if (count > best || (count == best && best_slot != kNone && slot_id[slot] > slot_id[best_slot])) {
        best = count;
        best_slot = slot;
      }
    }
    touched.clear();
    return {best, best_slot};
  }

  // Two bit positions of a key in a 512-bit filter (the low bits of the hash
  // are uniform even for the numerically largest hashes).
  static std::array<uint32_t, 2> bloom_bits(uint64_t key) {
    return {static_cast<uint32_t>(key & 511), static_cast<uint32_t>((key >> 9) & 511)};
  }

  size_t memory_bytes() const {
    return keys.capacity() * sizeof(uint64_t) + heads.capacity() * sizeof(uint32_t) +
           posting_key.capacity() * sizeof(uint64_t) + links.capacity() * sizeof(Link) +
           posting_order.capacity() * sizeof(uint32_t) + lists.capacity() * sizeof(List) +
           bloom.capacity() * sizeof(uint64_t) + slot_id.capacity() * sizeof(uint64_t) +
           slot_size.capacity() * sizeof(uint16_t) + counts.capacity() * sizeof(uint16_t) +
           touched.capacity() * sizeof(uint32_t);
  }

  const int64_t capacity;
  const int64_t per_slot;
  const int64_t kept;  // hashes_kept: postings per image and index
  const size_t max_cells;
  const uint64_t slot_divisor;  // ceil(2^64 / per_slot)
  std::vector<uint64_t> keys;   // table cells: key, 0 = empty
  std::vector<uint32_t> heads;  // table cells: newest posting of the key
  size_t entries = 0;
  std::vector<uint64_t> posting_key;
  // Per posting, what a walk reads: the next older posting of the key and the
  // low 32 bits of the image id (one cache line access per step).
  struct Link {
    uint32_t next;
    uint32_t id;
  };
  std::vector<Link> links;
  std::vector<uint64_t> bloom;          // per slot and index: a 512-bit Bloom filter of its keys (2 bits per key)
  std::vector<uint32_t> posting_order;  // 1 + the number of older postings of the key when it was added
  std::vector<uint64_t> slot_id;        // id of the image in each slot
  std::vector<uint16_t> slot_size;      // hashes kept for it (<= hashes_kept)
  std::vector<uint16_t> counts;         // scratch for best_match, all zero between calls
  std::vector<uint32_t> touched;        // scratch: slots with a non-zero count
  struct List {
    uint32_t length;  // estimated posting-list length
    uint32_t head;
    uint64_t key;
  };
  std::vector<List> lists;  // scratch for best_match
  size_t oldest = 0;        // once full: the slot evicted next
  uint64_t postings = 0;
  uint64_t stored = 0;
  uint64_t next_id = 1;
  uint64_t images = 0;
  uint64_t detections = 0;
  uint64_t requests_detected = 0;
  uint64_t skipped = 0;
  uint64_t evictions = 0;
};

// ------------------------------------------------------------------ monitor

QueryMonitor::QueryMonitor(QueryMonitorOptions options) : options_(std::move(options)) {
  if (options_.threshold() > options_.hashes_kept()) {
    throw OptionError("QueryMonitor: threshold must not exceed hashes_kept (" + std::to_string(options_.hashes_kept()) +
                      "), but got " + std::to_string(options_.threshold()));
  }
  const int64_t per_slot = options_.hashes_kept() * scope_count(options_.scope());
  if (options_.max_stored_queries() > static_cast<int64_t>(Store::kNone - 1) / per_slot) {
    throw OptionError("QueryMonitor: max_stored_queries × hashes_kept × indexes must stay below 2^32, but got " +
                      std::to_string(options_.max_stored_queries()) + " × " + std::to_string(options_.hashes_kept()) +
                      " × " + std::to_string(scope_count(options_.scope())));
  }
  store_ = std::make_unique<Store>(options_.max_stored_queries(), per_slot, options_.hashes_kept());
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
  torch::NoGradGuard no_grad;
  const auto [lo_t, hi_t] = torch::aminmax(input);
  const double lo = lo_t.item<double>();
  const double hi = hi_t.item<double>();
  if (!(lo >= options_.min_value() && hi <= options_.max_value())) return "values non-finite or out of range";
  return {};
}

namespace {

// Blacklight's fingerprint of `count` values.
std::vector<uint64_t> fingerprint_values(const float* values, int64_t count, const QueryMonitorOptions& o,
                                         std::vector<uint8_t>& quantised, std::vector<uint64_t>& hashes) {
  // v in [lo, hi] -> t = (v − lo)/(hi − lo)·255 in [0, 255] -> floor(t / step).
  // The small epsilon puts an 8-bit value k/255 that float rounding left just
  // below a level boundary (k a multiple of the step) on the level it belongs to.
  const double scale = 255.0 / (o.max_value() - o.min_value()) / o.quantization_step();
  const double top = std::floor(255.0 / o.quantization_step());
  quantised.resize(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const double level = std::floor((static_cast<double>(values[i]) - o.min_value()) * scale + 1e-6);
    quantised[i] = static_cast<uint8_t>(std::clamp(level, 0.0, top));
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
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(fingerprint_values(data + i * per_image, per_image, options_, quantised, hashes));
  }
  return out;
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
  return fingerprint_values(x.data_ptr<float>(), x.numel(), options_, quantised, hashes);
}

std::vector<QueryObservation> QueryMonitor::record(const RequestContext& context, const torch::Tensor& input) {
  // Hashing needs no lock; only matching and storing do.
  const std::vector<std::vector<uint64_t>> prints = fingerprints(input);
  const bool global = watches_global(options_.scope());
  const bool client = watches_client(options_.scope());
  const uint64_t client_seed = XXH3_64bits(context.client_id.data(), context.client_id.size());
  const int64_t threshold = options_.threshold();
  const int64_t client_offset = global ? options_.hashes_kept() : 0;

  std::vector<QueryObservation> observations(prints.size());
  std::vector<QueryMonitorDetection> detections;
  std::vector<uint64_t> client_keys;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Store& s = *store_;
    bool request_detected = false;
    for (size_t i = 0; i < prints.size(); ++i) {
      const std::vector<uint64_t>& print = prints[i];
      QueryObservation& obs = observations[i];
      obs.query_id = s.next_id++;
      if (client) {
        client_keys.clear();
        for (const uint64_t h : print) client_keys.push_back(nonzero(XXH3_64bits_withSeed(&h, sizeof h, client_seed)));
        std::sort(client_keys.begin(), client_keys.end(), std::greater<uint64_t>());  // slots keep keys sorted
      }
      if (global) {
        const auto [matches, slot] = s.best_match(print, 0, threshold, options_.max_scan_per_hash());
        obs.global_matches = matches;
        obs.global_match_id = slot == Store::kNone ? 0 : s.slot_id[slot];
      }
      if (client) {
        const auto [matches, slot] = s.best_match(client_keys, client_offset, threshold, options_.max_scan_per_hash());
        obs.client_matches = matches;
        obs.client_match_id = slot == Store::kNone ? 0 : s.slot_id[slot];
      }
      const bool global_hit = global && obs.global_matches >= threshold;
      const bool client_hit = client && obs.client_matches >= threshold;
      obs.detected = global_hit || client_hit;

      const uint32_t slot = s.acquire_slot(obs.query_id);
      const uint32_t base = slot * static_cast<uint32_t>(s.per_slot);
      s.slot_size[slot] = static_cast<uint16_t>(print.size());
      if (global) {
        for (size_t j = 0; j < print.size(); ++j) s.add_posting(print[j], base + static_cast<uint32_t>(j));
      }
      if (client) {
        for (size_t j = 0; j < client_keys.size(); ++j) {
          s.add_posting(client_keys[j], base + static_cast<uint32_t>(client_offset + j));
        }
      }
      ++s.images;
      if (obs.detected) {
        ++s.detections;
        request_detected = true;
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
    if (request_detected) ++s.requests_detected;
  }
  for (const QueryMonitorDetection& d : detections) {
    std::ostringstream line;
    line << "QueryMonitor: query " << d.query_id << " from client '" << printable(d.client_id) << "' shares "
         << d.matches << " of " << options_.hashes_kept() << " hashes with stored query " << d.matched_query_id << " ("
         << to_string(d.scope) << " index); action " << to_string(options_.action());
    log(LogLevel::Warning, line.str());
    if (options_.on_detection()) options_.on_detection()(d);
  }
  return observations;
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
      ++store_->skipped;
      return GateDecision::admit();
    }
    observations = record(context, input);
  } catch (const std::exception& e) {
    // Never let the monitor turn a request into a crash; the Guard validates next.
    log(LogLevel::Error, std::string("QueryMonitor::admit: ") + e.what());
    std::lock_guard<std::mutex> lock(mutex_);
    ++store_->skipped;
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
      << ", action=" << to_string(options_.action()) << ", max_stored=" << options_.max_stored_queries() << ")";
  return out.str();
}

QueryMonitorStats QueryMonitor::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Store& s = *store_;
  QueryMonitorStats out;
  out.images = s.images;
  out.detections = s.detections;
  out.requests_detected = s.requests_detected;
  out.skipped = s.skipped;
  out.evictions = s.evictions;
  out.stored = s.stored;
  out.index_entries = s.entries;
  out.postings = s.postings;
  out.memory_bytes = s.memory_bytes();
  return out;
}

void QueryMonitor::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  store_ = std::make_unique<Store>(options_.max_stored_queries(), store_->per_slot, store_->kept);
}

}  // namespace parry::conceal

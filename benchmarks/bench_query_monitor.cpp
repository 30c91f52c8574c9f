// QueryMonitor cost: time per query and memory per stored query with 100,000
// and 1,000,000 stored queries (docs/concealment.md).
//
// The store is filled with distinct uniform-noise images (every window hash
// distinct: the most index memory per stored query) followed by the 60,000
// Fashion-MNIST training images (real images share background windows, so the
// posting lists of common hashes grow as they would in service). Each timed
// iteration is one benign query, a Fashion-MNIST test image, through admit():
// fingerprint, match, store and evict the oldest. Counters: bytes_per_stored
// is the allocated memory of the store and index divided by the stored count.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "parry/conceal/query_monitor.hpp"
#include "parry/core/log.hpp"
#include "parry/data/idx.hpp"
#include "parry/detail/chunks.hpp"

namespace {

using parry::conceal::QueryMonitor;
using parry::conceal::QueryMonitorOptions;

const parry::data::LabeledImages& fashion(bool train) {
  static const auto train_set = parry::data::load_fashion_mnist(parry::data::kDebianFashionMnistDir, true, 0);
  static const auto test_set = parry::data::load_fashion_mnist(parry::data::kDebianFashionMnistDir, false, 0);
  return train ? train_set : test_set;
}

// A monitor holding `stored` images, built once per size.
QueryMonitor& filled_monitor(int64_t stored) {
  static std::map<int64_t, std::unique_ptr<QueryMonitor>> monitors;
  auto& slot = monitors[stored];
  if (slot) return *slot;
  parry::set_log_sink({});          // benign duplicates in the training set would log detections
  constexpr int64_t kBatch = 4096;  // the monitor's batch limit: admit() takes at most this many images
  slot = std::make_unique<QueryMonitor>(QueryMonitorOptions().max_stored_queries(stored).max_batch(kBatch));
  const parry::RequestContext context{"filler"};
  const torch::Tensor& train = fashion(true).images;
  const int64_t noise = std::max<int64_t>(0, stored - train.size(0));
  torch::manual_seed(0);
  parry::detail::for_each_chunk(noise, kBatch, [&](int64_t begin, int64_t end) {
    slot->admit(context, torch::rand({end - begin, 1, 28, 28}));
  });
  parry::detail::for_each_chunk(train.size(0), kBatch,
                                [&](int64_t begin, int64_t end) { slot->admit(context, train.slice(0, begin, end)); });
  return *slot;
}

// The share of the process's resident memory in transparent huge pages
// (/proc/self/smaps_rollup; 0 where it cannot be read). The monitor asks for
// them (madvise) for its large arrays: with 4 KiB pages nearly every random
// access of a large store also misses the TLB.
double huge_page_share() {
  std::ifstream rollup("/proc/self/smaps_rollup");
  double rss = 0, huge = 0;
  for (std::string line; std::getline(rollup, line);) {
    std::istringstream fields(line);
    std::string name;
    double kilobytes = 0;
    if (!(fields >> name >> kilobytes)) continue;  // the header line
    if (name == "Rss:") rss = kilobytes;
    if (name == "AnonHugePages:") huge = kilobytes;
  }
  return rss > 0 ? huge / rss : 0.0;
}

void BM_QueryMonitorAdmit(benchmark::State& state) {
  QueryMonitor& monitor = filled_monitor(state.range(0));
  const torch::Tensor& test = fashion(false).images;
  const parry::RequestContext context{"benign"};
  int64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(monitor.admit(context, test[i % test.size(0)]));
    ++i;
  }
  const auto stats = monitor.stats();
  state.counters["stored"] = static_cast<double>(stats.stored);
  state.counters["bytes_per_stored"] = static_cast<double>(stats.memory_bytes) / static_cast<double>(stats.stored);
  state.counters["postings_per_stored"] = static_cast<double>(stats.postings) / static_cast<double>(stats.stored);
  state.counters["huge_page_share"] = huge_page_share();
}
// 10,000 iterations: each test image is queried once.
BENCHMARK(BM_QueryMonitorAdmit)->Arg(100000)->Arg(1000000)->Iterations(10000)->Unit(benchmark::kMicrosecond);

// The plain baseline: Blacklight's hash table as its reference code keeps it,
// a std::unordered_map from window hash to the ids of the stored images that
// have it, every posting of every key counted (no pruning), with the same
// fingerprints, FIFO capacity and best-match rule as the QueryMonitor.
class UnorderedMapIndex {
 public:
  explicit UnorderedMapIndex(int64_t capacity) : capacity_(static_cast<size_t>(capacity)) {}

  // The most hashes any stored image shares with `keys`; then stores them.
  int64_t match_and_insert(const std::vector<uint64_t>& keys) {
    counts_.clear();
    for (const uint64_t key : keys) {
      const auto it = index_.find(key);
      if (it == index_.end()) continue;
      for (const uint32_t id : it->second) ++counts_[id];
    }
    int64_t best = 0;
    for (const auto& [id, count] : counts_) best = std::max<int64_t>(best, count);
    const uint32_t id = next_id_++;
    for (const uint64_t key : keys) index_[key].push_back(id);
    stored_.push_back(keys);
    if (stored_.size() > capacity_) {
      for (const uint64_t key : stored_.front()) {  // the oldest id is first in each list
        auto it = index_.find(key);
        it->second.erase(it->second.begin());
        if (it->second.empty()) index_.erase(it);
      }
      stored_.pop_front();
    }
    return best;
  }

 private:
  size_t capacity_;
  uint32_t next_id_ = 0;
  std::unordered_map<uint64_t, std::vector<uint32_t>> index_;
  std::deque<std::vector<uint64_t>> stored_;
  std::unordered_map<uint32_t, int64_t> counts_;
};

// The baseline filled like filled_monitor(), with its heap growth per stored
// query (glibc's mallinfo2).
struct FilledBaseline {
  QueryMonitor hasher;  // fingerprints only: the same (salted) hashes for filling and querying
  std::unique_ptr<UnorderedMapIndex> index;
  double bytes_per_stored = 0;
};

FilledBaseline& filled_baseline(int64_t stored) {
  static std::map<int64_t, FilledBaseline> baselines;
  FilledBaseline& slot = baselines[stored];
  if (slot.index) return slot;
  const size_t heap_before = mallinfo2().uordblks;
  slot.index = std::make_unique<UnorderedMapIndex>(stored);
  const auto insert = [&](const torch::Tensor& images) {
    for (int64_t i = 0; i < images.size(0); ++i) slot.index->match_and_insert(slot.hasher.fingerprint(images[i]));
  };
  const torch::Tensor& train = fashion(true).images;
  const int64_t noise = std::max<int64_t>(0, stored - train.size(0));
  torch::manual_seed(0);
  parry::detail::for_each_chunk(noise, 4096, [&](int64_t begin, int64_t end) {
    insert(torch::rand({end - begin, 1, 28, 28}));
  });
  insert(train);
  slot.bytes_per_stored = static_cast<double>(mallinfo2().uordblks - heap_before) / static_cast<double>(stored);
  return slot;
}

// One query through the baseline: the same fingerprint, then match, store
// and evict. Compare with BM_QueryMonitorAdmit in the same run.
void BM_QueryMonitorUnorderedMapBaseline(benchmark::State& state) {
  FilledBaseline& baseline = filled_baseline(state.range(0));
  const torch::Tensor& test = fashion(false).images;
  int64_t i = 0;
  for (auto _ : state) {
    const auto keys = baseline.hasher.fingerprint(test[i % test.size(0)]);
    benchmark::DoNotOptimize(baseline.index->match_and_insert(keys));
    ++i;
  }
  state.counters["bytes_per_stored"] = baseline.bytes_per_stored;
}
BENCHMARK(BM_QueryMonitorUnorderedMapBaseline)
    ->Arg(100000)
    ->Arg(1000000)
    ->Iterations(10000)
    ->Unit(benchmark::kMicrosecond);

// The fingerprint alone (quantise, 765 XXH3 window hashes, top 50).
void BM_QueryMonitorFingerprint(benchmark::State& state) {
  QueryMonitor monitor;
  const torch::Tensor& test = fashion(false).images;
  int64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(monitor.fingerprint(test[i % test.size(0)]));
    ++i;
  }
}
BENCHMARK(BM_QueryMonitorFingerprint)->Unit(benchmark::kMicrosecond);

}  // namespace

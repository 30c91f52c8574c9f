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

#include <map>
#include <memory>

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
}
// 10,000 iterations: each test image is queried once.
BENCHMARK(BM_QueryMonitorAdmit)->Arg(100000)->Arg(1000000)->Iterations(10000)->Unit(benchmark::kMicrosecond);

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

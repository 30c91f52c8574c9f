// QueryMonitor with its state in Redis (docs/deployment.md): per-query latency
// p50/p99 at 100,000 and 1,000,000 stored fingerprints over loopback, memory
// per stored query in Redis (INFO memory, used_memory after − before filling,
// divided by the stored count), the script's own time per query inside Redis
// (INFO commandstats, usec_per_call of EVALSHA), and queries per second of one and of two
// replicas (monitor objects on their own threads) against one Redis.
//
//   redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no &
//   PARRY_BENCH_REDIS=redis://127.0.0.1:6390 build/benchmarks/parry_redis_benchmarks
//
// The store is filled as in bench_query_monitor.cpp: distinct uniform-noise
// images (every window hash distinct: the most index memory per stored query),
// then the 60,000 Fashion-MNIST training images. Each timed query is a
// Fashion-MNIST test image through admit(): fingerprint here, then one EVALSHA
// that matches, stores and evicts. The Redis server is flushed first.
#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "parry/conceal/query_monitor.hpp"
#include "parry/core/log.hpp"
#include "parry/data/idx.hpp"
#include "parry/detail/chunks.hpp"

namespace {

using parry::conceal::QueryMonitor;
using parry::conceal::QueryMonitorOptions;
using parry::conceal::RedisOptions;

const parry::data::LabeledImages& fashion(bool train) {
  static const auto train_set = parry::data::load_fashion_mnist(parry::data::kDebianFashionMnistDir, true, 0);
  static const auto test_set = parry::data::load_fashion_mnist(parry::data::kDebianFashionMnistDir, false, 0);
  return train ? train_set : test_set;
}

const char* redis_url() {
  return std::getenv("PARRY_BENCH_REDIS");
}

// One command on a fresh connection (benchmark bookkeeping only).
std::string redis_command(const std::vector<std::string>& args) {
  const RedisOptions o = RedisOptions::from_url(redis_url());
  redisContext* c = redisConnect(o.host().c_str(), o.port());
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lengths.push_back(a.size());
  }
  auto* reply =
      static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(args.size()), argv.data(), lengths.data()));
  std::string out = reply && reply->str ? std::string(reply->str, reply->len) : std::string();
  if (reply) freeReplyObject(reply);
  redisFree(c);
  return out;
}

uint64_t used_memory() {
  const std::string info = redis_command({"INFO", "memory"});
  const size_t at = info.find("used_memory:");
  return at == std::string::npos ? 0 : std::strtoull(info.c_str() + at + 12, nullptr, 10);
}

QueryMonitorOptions monitor_options(int64_t stored, double timeout_ms) {
  return QueryMonitorOptions().max_stored_queries(stored).max_batch(512).redis(
      RedisOptions::from_url(redis_url()).prefix("bench:" + std::to_string(stored)).timeout_ms(timeout_ms));
}

struct Filled {
  double bytes_per_stored = 0;
};

// Fills the store for `stored` once per process.
const Filled& filled(int64_t stored) {
  static std::map<int64_t, Filled> done;
  auto it = done.find(stored);
  if (it != done.end()) return it->second;
  parry::set_log_sink({});  // benign duplicates in the training set would log detections
  torch::set_num_threads(1);
  redis_command({"FLUSHALL"});
  const uint64_t before = used_memory();
  // Filling runs long scripts (512 images each): a generous timeout.
  QueryMonitor filler(monitor_options(stored, 60000));
  constexpr int64_t kBatch = 512;
  const parry::RequestContext context{"filler"};
  const torch::Tensor& train = fashion(true).images;
  const int64_t noise = std::max<int64_t>(0, stored - train.size(0));
  torch::manual_seed(0);
  parry::detail::for_each_chunk(noise, kBatch, [&](int64_t begin, int64_t end) {
    filler.admit(context, torch::rand({end - begin, 1, 28, 28}));
  });
  parry::detail::for_each_chunk(train.size(0), kBatch,
                                [&](int64_t begin, int64_t end) { filler.admit(context, train.slice(0, begin, end)); });
  const auto stats = filler.stats();
  Filled f;
  f.bytes_per_stored = static_cast<double>(used_memory() - before) / static_cast<double>(stats.stored);
  return done.emplace(stored, f).first->second;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

void BM_RedisMonitorAdmit(benchmark::State& state) {
  if (!redis_url()) {
    state.SkipWithError("set PARRY_BENCH_REDIS=redis://127.0.0.1:PORT (a scratch redis-server: it is flushed)");
    return;
  }
  const Filled& f = filled(state.range(0));
  QueryMonitor monitor(monitor_options(state.range(0), 1000));
  const torch::Tensor& test = fashion(false).images;
  const parry::RequestContext context{"benign"};
  std::vector<double> micros;
  micros.reserve(static_cast<size_t>(state.max_iterations));
  redis_command({"CONFIG", "RESETSTAT"});  // the script's own time, below, counts the timed queries only
  int64_t i = 0;
  for (auto _ : state) {
    const auto begin = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(monitor.admit(context, test[i % test.size(0)]));
    micros.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - begin).count());
    ++i;
  }
  const auto stats = monitor.stats();
  const std::string commands = redis_command({"INFO", "commandstats"});
  const size_t at = commands.find("cmdstat_evalsha:");
  const size_t per_call = at == std::string::npos ? std::string::npos : commands.find("usec_per_call=", at);
  state.counters["redis_script_us"] =
      per_call == std::string::npos ? 0 : std::strtod(commands.c_str() + per_call + 14, nullptr);
  state.counters["stored"] = static_cast<double>(stats.stored);
  state.counters["p50_us"] = percentile(micros, 0.50);
  state.counters["p99_us"] = percentile(micros, 0.99);
  state.counters["redis_bytes_per_stored"] = f.bytes_per_stored;
  state.counters["failures"] = static_cast<double>(stats.state_failures);
}
BENCHMARK(BM_RedisMonitorAdmit)->Arg(100000)->Arg(1000000)->Iterations(10000)->Unit(benchmark::kMicrosecond);

// N replicas (monitor objects, each on its own thread) sharing one Redis store
// of 100,000: total queries per second.
void BM_RedisReplicas(benchmark::State& state) {
  if (!redis_url()) {
    state.SkipWithError("set PARRY_BENCH_REDIS=redis://127.0.0.1:PORT (a scratch redis-server: it is flushed)");
    return;
  }
  constexpr int64_t kStored = 100000;
  constexpr int kQueries = 2000;
  filled(kStored);
  const int replicas = static_cast<int>(state.range(0));
  std::vector<std::unique_ptr<QueryMonitor>> monitors;
  for (int r = 0; r < replicas; ++r) monitors.push_back(std::make_unique<QueryMonitor>(monitor_options(kStored, 1000)));
  const torch::Tensor& test = fashion(false).images;
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int r = 0; r < replicas; ++r) {
      threads.emplace_back([&, r] {
        const parry::RequestContext context{"replica-" + std::to_string(r)};
        for (int q = 0; q < kQueries; ++q) monitors[r]->admit(context, test[(r * kQueries + q) % test.size(0)]);
      });
    }
    for (auto& t : threads) t.join();
  }
  state.SetItemsProcessed(state.iterations() * replicas * kQueries);
}
BENCHMARK(BM_RedisReplicas)->Arg(1)->Arg(2)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

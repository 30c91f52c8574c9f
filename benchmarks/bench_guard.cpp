// Cost of the Guard itself: a Guard with no defenses (validation + label-only
// output) against the raw model forward on the same batch.
//   build/benchmarks/parry_benchmarks --benchmark_filter=Guard
#include <benchmark/benchmark.h>

#include "parry/parry.hpp"

namespace {

constexpr int kThreads = 2;

parry::models::ReferenceCnn reference() {
  torch::manual_seed(0);
  parry::models::ReferenceCnn net;
  net->eval();
  return net;
}

void BM_RawForward(benchmark::State& state) {
  parry::configure_runtime(parry::RuntimeOptions().threads(kThreads));
  auto net = reference();
  const auto x = torch::rand({state.range(0), 1, 28, 28});
  for (auto _ : state) {
    c10::InferenceMode inference;
    benchmark::DoNotOptimize(net->forward(x));
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_GuardNoDefenses(benchmark::State& state) {
  parry::configure_runtime(parry::RuntimeOptions().threads(kThreads));
  auto net = reference();
  parry::Guard guard(parry::Model(net), parry::InputSpec(1, 28, 28));
  const auto x = torch::rand({state.range(0), 1, 28, 28});
  for (auto _ : state) benchmark::DoNotOptimize(guard.predict(x));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

}  // namespace

BENCHMARK(BM_RawForward)->Arg(1)->Arg(64)->Unit(benchmark::kMicrosecond)->MinTime(2.0);
BENCHMARK(BM_GuardNoDefenses)->Arg(1)->Arg(64)->Unit(benchmark::kMicrosecond)->MinTime(2.0);

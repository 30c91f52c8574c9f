// PGD speed: Parry's attack::pgd on the reference CNN, batch 64, L∞ ε = 0.1,
// 10 steps, 2 threads; and the cost of building parameter gradients, which
// attack::pgd avoids (input-only autograd::grad against loss.backward()).
//   build/benchmarks/parry_benchmarks --benchmark_filter=Pgd
// benchmarks/compare_pgd.py runs the same PGD in Python PyTorch in one run.
#include <benchmark/benchmark.h>

#include "parry/parry.hpp"

namespace {

constexpr int64_t kSteps = 10;

struct Setup {
  parry::models::ReferenceCnn net;
  torch::Tensor x;
  torch::Tensor y;
  explicit Setup(int64_t batch) {
    parry::configure_runtime(parry::RuntimeOptions().threads(2));
    torch::manual_seed(0);
    net->eval();
    x = torch::rand({batch, 1, 28, 28});
    y = torch::randint(0, 10, {batch}, torch::kInt64);
  }
};

void BM_PgdParry(benchmark::State& state) {
  Setup s(state.range(0));
  const parry::Model model(s.net);
  const auto options = parry::attack::PgdOptions(0.1).steps(kSteps).step_size(0.01);
  for (auto _ : state)
    benchmark::DoNotOptimize(parry::attack::pgd(parry::attack::differentiable(model), s.x, s.y, options));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

// The same loop written with loss.backward(), as AdverTorch does: parameter
// gradients are computed and accumulated on every step.
void BM_PgdWithParameterGradients(benchmark::State& state) {
  Setup s(state.range(0));
  for (auto _ : state) {
    torch::Tensor adv = (s.x + (torch::rand_like(s.x) * 2 - 1) * 0.1).clamp(0, 1);
    for (int64_t i = 0; i < kSteps; ++i) {
      adv = adv.detach().requires_grad_(true);
      torch::nn::functional::cross_entropy(s.net->forward(adv), s.y,
                                           torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
          .backward();
      adv = (adv.detach() + 0.01 * adv.grad().sign());
      adv = torch::min(torch::max(adv, s.x - 0.1), s.x + 0.1).clamp(0, 1);
    }
    s.net->zero_grad();
    benchmark::DoNotOptimize(adv);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

// APGD-CE against PGD at the same 100 iterations (issue 15's target: APGD
// costs at most 1.1× PGD per image). The labels are the model's own
// predictions, so APGD attacks every image as PGD does; neither stops early
// within a run, so both run every iteration on the whole batch.
void BM_Pgd100(benchmark::State& state) {
  Setup s(state.range(0));
  const parry::Model model(s.net);
  const auto options = parry::attack::PgdOptions(0.1).steps(100);
  const auto y = model.logits(s.x).argmax(1);
  for (auto _ : state)
    benchmark::DoNotOptimize(parry::attack::pgd(parry::attack::differentiable(model), s.x, y, options));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_ApgdCe100(benchmark::State& state) {
  Setup s(state.range(0));
  const parry::Model model(s.net);
  const auto options = parry::attack::ApgdOptions(0.1).steps(100);
  const auto y = model.logits(s.x).argmax(1);
  for (auto _ : state)
    benchmark::DoNotOptimize(parry::attack::apgd(parry::attack::differentiable(model), s.x, y, options));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

}  // namespace

BENCHMARK(BM_Pgd100)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(5.0);
BENCHMARK(BM_ApgdCe100)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(5.0);
BENCHMARK(BM_PgdParry)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(3.0);
BENCHMARK(BM_PgdWithParameterGradients)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(3.0);

// Detector cost on the reference CNN, 2 threads (the cost table in
// docs/detectors.md):
//   build/benchmarks/parry_benchmarks --benchmark_filter=Detect
// PlainForward is one ordinary forward pass of the batch, the yardstick for
// McDropout (T = 50): features once + a batched head (fast path) against T
// replicated forward passes. Detectors are timed as a Guard runs them: the
// served model's logits exist already (the prediction), so each benchmark
// times the detector's own work on top of that forward pass. The kernel density holds the features of all
// 60,000 training images. Differentiable is one forward+backward of the
// combined detector's differentiable score, the inner step of the adaptive
// attack.
//
// FunctionalDropout* run the same comparison on a TorchScript RGB CNN whose
// dropout is functional (F.dropout(f, 0.5, self.training); BatchNorm stays in
// eval), tests/fixtures/functional_dropout.pt, on 3×32×32 inputs: McDropout
// replicates the batch (no split), or runs the fast path when the model is
// split before the dropout with Model::with_feature_layer("fc1").
#include <benchmark/benchmark.h>

#include "parry/parry.hpp"

namespace {

using namespace parry;

struct DetectSetup {
  Model model;
  torch::Tensor x;
  std::shared_ptr<detect::KernelDensity> density;
  DetectSetup() : model(models::load_reference_cnn(PARRY_REFERENCE_MODEL)) {
    configure_runtime(RuntimeOptions().threads(2));
    x = data::load_fashion_mnist(data::kDebianFashionMnistDir, false, 256).images;
  }
  const std::shared_ptr<detect::KernelDensity>& fitted_density() {
    if (!density) {
      const auto train = data::load_fashion_mnist(data::kDebianFashionMnistDir, true, 60000);
      density = std::make_shared<detect::KernelDensity>();
      density->fit(model, train.images, train.labels);
    }
    return density;
  }
};

DetectSetup& setup() {
  static DetectSetup s;
  return s;
}

torch::Tensor plain_logits(DetectSetup& s, const torch::Tensor& x) {
  c10::InferenceMode inference;
  return s.model.logits(x);
}

void BM_DetectPlainForward(benchmark::State& state) {
  auto& s = setup();
  const auto x = s.x.slice(0, 0, state.range(0));
  c10::InferenceMode inference;
  for (auto _ : state) benchmark::DoNotOptimize(s.model.logits(x));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_DetectMcDropoutFast(benchmark::State& state) {
  auto& s = setup();
  const auto x = s.x.slice(0, 0, state.range(0));
  detect::McDropout detector(s.model);
  const auto logits = plain_logits(s, x);
  for (auto _ : state) benchmark::DoNotOptimize(detector.score(DetectorInput{x, logits, s.model}));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_DetectMcDropoutReplicated(benchmark::State& state) {
  auto& s = setup();
  const auto x = s.x.slice(0, 0, state.range(0));
  detect::McDropout detector(s.model, detect::McDropoutOptions().fast_path(false).max_rows(state.range(1)));
  const auto logits = plain_logits(s, x);
  for (auto _ : state) benchmark::DoNotOptimize(detector.score(DetectorInput{x, logits, s.model}));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_DetectKernelDensity(benchmark::State& state) {
  auto& s = setup();
  const auto x = s.x.slice(0, 0, state.range(0));
  const auto& density = s.fitted_density();
  const auto logits = plain_logits(s, x);
  for (auto _ : state) benchmark::DoNotOptimize(density->score(DetectorInput{x, logits, s.model}));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_DetectFeatureSqueezing(benchmark::State& state) {
  auto& s = setup();
  const auto x = s.x.slice(0, 0, state.range(0));
  const auto detector = detect::FeatureSqueezing::for_grayscale();
  const auto logits = plain_logits(s, x);
  for (auto _ : state) benchmark::DoNotOptimize(detector.score(DetectorInput{x, logits, s.model}));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_DetectCombinedDifferentiable(benchmark::State& state) {
  auto& s = setup();
  const auto x = s.x.slice(0, 0, state.range(0));
  detect::UncertaintyDensity combined(std::make_shared<detect::McDropout>(s.model), s.fitted_density());
  combined.fit(s.model, x, torch::Tensor(), (x + 0.2 * torch::randn_like(x)).clamp(0, 1));
  for (auto _ : state) {
    const auto input = x.clone().requires_grad_(true);
    benchmark::DoNotOptimize(torch::autograd::grad({combined.differentiable_score(input, s.model).sum()}, {input}));
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

struct FunctionalDropoutSetup {
  Model model;
  torch::Tensor x;
  FunctionalDropoutSetup() : model(Model::load_torchscript(PARRY_FIXTURES "/functional_dropout.pt")) {
    configure_runtime(RuntimeOptions().threads(2));
    torch::manual_seed(0);
    x = torch::rand({256, 3, 32, 32});
  }
};

FunctionalDropoutSetup& functional_setup() {
  static FunctionalDropoutSetup s;
  return s;
}

void BM_DetectFunctionalDropoutPlainForward(benchmark::State& state) {
  auto& s = functional_setup();
  const auto x = s.x.slice(0, 0, state.range(0));
  c10::InferenceMode inference;
  for (auto _ : state) benchmark::DoNotOptimize(s.model.logits(x));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_DetectFunctionalDropoutMcDropout(benchmark::State& state) {
  auto& s = functional_setup();
  const auto x = s.x.slice(0, 0, state.range(0));
  const Model model = state.range(1) ? s.model.with_feature_layer("fc1") : s.model;
  detect::McDropout detector(model);
  if (detector.uses_fast_path() != static_cast<bool>(state.range(1))) state.SkipWithError("unexpected path");
  torch::Tensor logits;
  {
    c10::InferenceMode inference;
    logits = model.logits(x);
  }
  for (auto _ : state) benchmark::DoNotOptimize(detector.score(DetectorInput{x, logits, model}));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

}  // namespace

BENCHMARK(BM_DetectPlainForward)->Arg(256)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DetectMcDropoutFast)->Arg(256)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DetectMcDropoutReplicated)->Args({256, 256})->Args({256, 2048})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DetectKernelDensity)->Arg(256)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DetectFeatureSqueezing)->Arg(256)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DetectFunctionalDropoutPlainForward)->Arg(256)->Unit(benchmark::kMillisecond);
// Args: batch, split at fc1 (fast path) or not (replicated).
BENCHMARK(BM_DetectFunctionalDropoutMcDropout)->Args({256, 0})->Args({256, 1})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DetectCombinedDifferentiable)->Arg(40)->Unit(benchmark::kMillisecond);

// Throughput of each preprocessing defense on a 256×1×28×28 batch (Fashion-
// MNIST-sized) and a 32×3×224×224 batch (ImageNet-sized).
//   build/benchmarks/parry_benchmarks --benchmark_filter=Preprocess
// benchmarks/compare_preprocess.py runs the Python (ART-style) peer on the
// same shapes and prints the ratios.
#include <benchmark/benchmark.h>

#include "parry/parry.hpp"

namespace {

using namespace parry::preprocess;

std::shared_ptr<parry::Preprocessor> make(int which) {
  switch (which) {
    case 0:
      return std::make_shared<BitDepth>(BitDepthOptions(4));
    case 1:
      return std::make_shared<MedianSmoothing>(MedianSmoothingOptions(2));
    case 2:
      return std::make_shared<MedianSmoothing>(MedianSmoothingOptions(3));
    case 3:
      return std::make_shared<Jpeg>(JpegOptions(75));
    case 4:
      return std::make_shared<GaussianBlur>(GaussianBlurOptions(5, 1.0));
    case 5:
      return std::make_shared<Resize>(ResizeOptions(14, 14));
    default:
      return std::make_shared<Normalize>(NormalizeOptions({0.5}, {0.25}));
  }
}

const char* kNames[] = {"BitDepth4", "Median2x2", "Median3x3", "Jpeg75", "Blur5", "ResizeHalf", "Normalize"};

void BM_Preprocess(benchmark::State& state) {
  parry::configure_runtime(parry::RuntimeOptions().threads(2));
  const int which = static_cast<int>(state.range(0));
  const bool large = state.range(1) == 1;
  auto p = which == 6 && large   ? std::make_shared<Normalize>(NormalizeOptions({0.5, 0.5, 0.5}, {0.25, 0.25, 0.25}))
           : which == 5 && large ? std::make_shared<Resize>(ResizeOptions(112, 112))
                                 : make(which);
  torch::manual_seed(0);
  const auto x = large ? torch::rand({32, 3, 224, 224}) : torch::rand({256, 1, 28, 28});
  for (auto _ : state) {
    c10::InferenceMode inference;
    benchmark::DoNotOptimize(p->apply(x));
  }
  state.SetLabel(std::string(kNames[which]) + (large ? " 32x3x224x224" : " 256x1x28x28"));
  state.SetItemsProcessed(state.iterations() * x.size(0));
}

}  // namespace

BENCHMARK(BM_Preprocess)->ArgsProduct({{0, 1, 2, 3, 4, 5, 6}, {0, 1}})->Unit(benchmark::kMillisecond)->MinTime(1.0);

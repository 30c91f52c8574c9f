// The in-process baseline of benchmarks/serve_load.sh: the Guard that
// `parry serve` would build from the same model and config, called directly
// by T threads (no HTTP), on one PNG image (data::predict_image: decode,
// gates, validation, model, label-only answer) and on the decoded tensor
// (Guard::predict). Prints p50/p99 latency and calls per second.
//   parry_serve_inprocess MODEL CONFIG IMAGE.png [THREADS=8] [CALLS_PER_THREAD=500] [TORCH_THREADS=1]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "parry/parry.hpp"

namespace {

using Clock = std::chrono::steady_clock;

void run(const char* what, int threads, int calls, const std::function<void()>& call) {
  std::vector<std::vector<double>> times(static_cast<size_t>(threads));
  for (int i = 0; i < 20; ++i) call();  // warm-up
  const auto begin = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = 0; i < calls; ++i) {
        const auto start = Clock::now();
        call();
        times[static_cast<size_t>(t)].push_back(
            std::chrono::duration<double, std::milli>(Clock::now() - start).count());
      }
    });
  }
  for (auto& p : pool) p.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - begin).count();
  std::vector<double> all;
  for (const auto& v : times) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  const auto at = [&](double q) { return all[static_cast<size_t>(q * static_cast<double>(all.size() - 1))]; };
  std::printf("%-28s threads %d  p50 %.3f ms  p99 %.3f ms  %.0f calls/s\n", what, threads, at(0.5), at(0.99),
              static_cast<double>(all.size()) / seconds);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL CONFIG IMAGE.png [THREADS] [CALLS_PER_THREAD] [TORCH_THREADS]\n", argv[0]);
    return 2;
  }
  const int threads = argc > 4 ? std::atoi(argv[4]) : 8;
  const int calls = argc > 5 ? std::atoi(argv[5]) : 500;
  parry::configure_runtime(parry::RuntimeOptions().threads(argc > 6 ? std::atoi(argv[6]) : 1));
  const parry::Model model = parry::models::load_reference_cnn(argv[1]);
  const auto config = parry::config::load_config(argv[2], model, parry::InputSpec(1, 28, 28));  // Fashion-MNIST
  const auto guard = config.defenses.at(0).build_guard(model);
  std::ifstream in(argv[3], std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  const std::string png = bytes.str();
  const torch::Tensor image = parry::data::decode_image_for(png, guard->input_spec());
  run("predict_image (PNG bytes)", 1, calls, [&] { parry::data::predict_image(*guard, png, {"bench"}); });
  run("predict_image (PNG bytes)", threads, calls, [&] { parry::data::predict_image(*guard, png, {"bench"}); });
  run("Guard::predict (tensor)", 1, calls, [&] { guard->predict(image, {"bench"}); });
  run("Guard::predict (tensor)", threads, calls, [&] { guard->predict(image, {"bench"}); });
  return 0;
}

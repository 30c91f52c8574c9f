// AutoAttack against PGD-40 on a reference CNN (the AutoAttack table in
// docs/attacks.md and the PGD/AutoAttack gap in docs/training.md).
//
//   build/benchmarks/parry_autoattack_table [MODEL=tests/fixtures/reference_cnn.pt] [N=1000] [EPS=0.1]
//       [VERSION=standard]
//
// MODEL is a reference CNN saved with parry::Model::save (the shipped one,
// or one written by parry_adversarial_training / parry_distillation_table).
// On the first N Fashion-MNIST test images, L∞ ε = EPS: clean accuracy,
// PGD-40 (α = ε/10, one random start) robust accuracy, then AutoAttack's
// robust accuracy after each component, its time and forward passes, and its
// sanity-check warnings. Square queries a Guard over the model that shows
// every class score. Images go through in chunks of 250, as the authors' code
// batches them.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "parry/parry.hpp"
#include "support.hpp"

int main(int argc, char** argv) {
  using namespace parry;
  const std::string path = argc > 1 ? argv[1] : PARRY_REFERENCE_MODEL;
  const int64_t n = argc > 2 ? std::stoll(argv[2]) : 1000;
  const double eps = argc > 3 ? std::stod(argv[3]) : 0.1;
  const std::string version = argc > 4 ? argv[4] : "standard";
  configure_runtime(RuntimeOptions().threads(2));
  const Model model(models::load_reference_cnn(path));
  const auto test = data::load_fashion_mnist(data::kDebianFashionMnistDir, false, n);
  const auto guard = GuardBuilder(model, InputSpec(1, 28, 28).max_batch(256))
                         .set_output_policy(std::make_shared<conceal::Full>())
                         .build_shared();
  const auto f = attack::differentiable(model);
  attack::GradientSettings settings;
  settings.seed = 0;

  const double clean = train::accuracy(model, test.images, test.labels);
  auto start = std::chrono::steady_clock::now();
  const auto pgd_options = attack::PgdOptions(eps).steps(40).step_size(eps / 10).settings(settings);
  const auto pgd = bench::run_chunked(
      [&](const torch::Tensor& x, const torch::Tensor& y) { return attack::pgd(f, x, y, pgd_options); }, test.images,
      test.labels);
  const double pgd_seconds = bench::seconds_since(start);
  const double pgd_robust = 1.0 - pgd.success_rate();

  const auto options = attack::AutoAttackOptions(eps, attack::Norm::Linf, attack::auto_attack_version(version))
                           .settings(settings)
                           .client_id("autoattack-table");
  attack::AutoAttackTally tally;
  start = std::chrono::steady_clock::now();
  parry::detail::for_each_chunk(n, 250, [&](int64_t begin, int64_t end) {
    tally.add(attack::auto_attack(f, guard.get(), test.images.slice(0, begin, end), test.labels.slice(0, begin, end),
                                  options));
  });
  const double aa_seconds = bench::seconds_since(start);

  std::printf("model %s, first %lld test images, L∞ ε = %.3f\n", path.c_str(), static_cast<long long>(n), eps);
  std::printf("| figure | accuracy | seconds |\n| --- | ---: | ---: |\n");
  std::printf("| clean | %.1f%% | |\n", 100 * clean);
  std::printf("| PGD-40 (α = ε/10) | %.1f%% | %.1f |\n", 100 * pgd_robust, pgd_seconds);
  int64_t passes = 0;
  for (const auto& s : tally.stages()) {
    passes += s.forward_passes;
    if (s.skipped) {
      std::printf("| AutoAttack-%s after %s | skipped: %s | |\n", version.c_str(), attack::to_string(s.component),
                  s.skip_reason.c_str());
    } else {
      std::printf("| AutoAttack-%s after %s | %.1f%% | %.1f |\n", version.c_str(), attack::to_string(s.component),
                  100.0 * static_cast<double>(s.robust_after) / static_cast<double>(n), s.seconds);
    }
  }
  std::printf("| AutoAttack-%s total | %.1f%% | %.1f |\n", version.c_str(),
              100.0 * static_cast<double>(tally.robust()) / static_cast<double>(n), aa_seconds);
  std::printf("forward passes: %lld (%.0f per image)\n", static_cast<long long>(passes),
              static_cast<double>(passes) / static_cast<double>(n));
  for (const auto& w : tally.warnings()) std::printf("warning: %s\n", w.c_str());
  return 0;
}

// Learned adversarial-input detectors trained on one attack and tested on
// others (the detector table in docs/training.md).
//
//   build/benchmarks/parry_detector_training_table [TRAIN_N=10000] [N=500]
//
// Target: the shipped reference model. Each detector network is a fresh
// reference CNN with 2 (Binary) or 11 (ExtraClass, Grosse et al. 2017)
// outputs, trained 3 epochs on TRAIN_N clean training images plus the
// successful adversarial examples of its training attack (L∞ ε = 0.1: FGSM,
// or PGD-10 with α = 0.025). Its threshold is calibrated on 2,000 clean test
// images (8000–9999) for 5% false positives. The test attacks run on the
// first N test images the model classifies correctly; "detected" is the
// fraction of successful adversarial examples flagged. The last column is
// the detector-aware attack of Carlini & Wagner 2017 (targeted PGD-40 on the
// combined classifier, target (y+1) mod 10): the fraction of images where it
// fools the model AND evades the detector.
#include <chrono>
#include <cstdio>

#include "parry/parry.hpp"
#include "support.hpp"

namespace {

using namespace parry;
using bench::seconds_since;

struct TestAttack {
  std::string name;
  torch::Tensor fooled;  // successful adversarial examples
  double success = 0;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace parry::attack;
  configure_runtime(RuntimeOptions().threads(2));
  try {
    const int64_t train_n = argc > 1 ? std::stoll(argv[1]) : 10000;
    const int64_t n = argc > 2 ? std::stoll(argv[2]) : 500;
    torch::manual_seed(0);
    const Model target(models::load_reference_cnn(PARRY_REFERENCE_MODEL));
    const auto f = differentiable(target);
    const auto train = data::load_fashion_mnist(data::kDebianFashionMnistDir, true, train_n);
    const auto test = data::load_fashion_mnist(data::kDebianFashionMnistDir, false);
    torch::Tensor correct;
    {
      torch::NoGradGuard no_grad;
      correct = target.logits(test.images.slice(0, 0, 2 * n)).argmax(1).eq(test.labels.slice(0, 0, 2 * n));
    }
    const auto rows = correct.nonzero().flatten().slice(0, 0, n);
    const auto x = test.images.index_select(0, rows), y = test.labels.index_select(0, rows);
    const auto calibration = test.images.slice(0, 8000, 10000);

    // Test attacks, against the model only (the detector is unknown to them).
    std::vector<TestAttack> tests;
    auto add_test = [&](const std::string& name,
                        const std::function<AttackResult(const torch::Tensor&, const torch::Tensor&)>& run) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto r = bench::run_chunked(run, x, y);
      tests.push_back({name, r.adversarial.index_select(0, r.success.nonzero().flatten()), r.success_rate()});
      std::fprintf(stderr, "test attack %s: success %.1f%% in %.0f s\n", name.c_str(), 100 * tests.back().success,
                   seconds_since(t0));
    };
    const auto pgd10 = PgdOptions(0.1).steps(10);
    add_test("FGSM ε=0.1", [&](auto& a, auto& b) { return fgsm(f, a, b, FgsmOptions(0.1)); });
    add_test("PGD-40 ε=0.1", [&](auto& a, auto& b) { return pgd(f, a, b, PgdOptions(0.1).steps(40).step_size(0.01)); });
    add_test("FGSM ε=0.05", [&](auto& a, auto& b) { return fgsm(f, a, b, FgsmOptions(0.05)); });
    add_test("PGD-L2 ε=1.5",
             [&](auto& a, auto& b) { return pgd(f, a, b, PgdOptions(1.5, Norm::L2).steps(40).step_size(0.1)); });
    add_test("C&W-L2", [&](auto& a, auto& b) { return carlini_wagner_l2(f, a, b); });

    struct Variant {
      std::string name;
      train::DetectorKind kind;
      train::TrainingAttack attack;
    };
    const std::vector<Variant> variants = {
        {"binary, trained on FGSM", train::DetectorKind::Binary, train::fgsm_attack(FgsmOptions(0.1))},
        {"binary, trained on PGD-10", train::DetectorKind::Binary, train::pgd_attack(pgd10)},
        {"extra class (Grosse), trained on FGSM", train::DetectorKind::ExtraClass,
         train::fgsm_attack(FgsmOptions(0.1))},
        {"extra class (Grosse), trained on PGD-10", train::DetectorKind::ExtraClass, train::pgd_attack(pgd10)},
    };
    std::printf("| detector | clean FPR (test) |");
    for (const auto& t : tests) std::printf(" %s detected |", t.name.c_str());
    std::printf(" detector-aware PGD: fooled and undetected |\n| --- | ---: |");
    for (size_t i = 0; i < tests.size(); ++i) std::printf(" ---: |");
    std::printf(" ---: |\n");
    std::fflush(stdout);
    for (const auto& v : variants) {
      const auto t0 = std::chrono::steady_clock::now();
      torch::manual_seed(3);
      Model network(
          models::ReferenceCnn(models::ReferenceCnnOptions().classes(v.kind == train::DetectorKind::Binary ? 2 : 11)));
      train::DetectorTrainer trainer(
          train::DetectorTrainerOptions().kind(v.kind).add_attack(v.attack).epochs(3).seed(0));
      const auto detector = trainer.fit(target, network, train);
      detector->calibrate(calibration, target, 0.05);
      const double threshold = detector->threshold();
      const double fpr =
          (bench::chunked_scores(*detector, x, target) > threshold).to(torch::kFloat64).mean().item<double>();
      std::printf("| %s | %.1f%% |", v.name.c_str(), 100 * fpr);
      for (const auto& t : tests) {
        const double detected = t.fooled.size(0) == 0 ? 0.0
                                                      : (bench::chunked_scores(*detector, t.fooled, target) > threshold)
                                                            .to(torch::kFloat64)
                                                            .mean()
                                                            .item<double>();
        std::printf(" %.1f%% |", 100 * detected);
      }
      // Detector-aware: targeted PGD on the combined classifier G (class 10 = flagged).
      const auto g = detector_aware(f, *detector, target, /*scale=*/20.0);
      GradientSettings targeted;
      targeted.targeted = true;
      const auto targets = (y + 1).remainder(10);
      // Success on G means G's argmax is the target (< 10): the model is fooled and the detector silent.
      const auto evaded = bench::run_chunked(
                              [&](const torch::Tensor& xs, const torch::Tensor& ts) {
                                return pgd(g, xs, ts, PgdOptions(0.1).steps(40).step_size(0.01).settings(targeted));
                              },
                              x, targets)
                              .success.sum()
                              .item<int64_t>();
      std::printf(" %.1f%% |\n", 100.0 * static_cast<double>(evaded) / static_cast<double>(x.size(0)));
      std::fprintf(stderr, "%s: %.0f s\n", v.name.c_str(), seconds_since(t0));
      std::fflush(stdout);
    }
    std::printf("\nattack success against the model (N = %lld):", static_cast<long long>(x.size(0)));
    for (const auto& t : tests) std::printf(" %s %.1f%%;", t.name.c_str(), 100 * t.success);
    std::printf("\n");
    return 0;
  } catch (const parry::Error& e) {
    std::fprintf(stderr, "error: %s (%s)\n", e.what(), e.detail().c_str());
    return 1;
  } catch (const std::exception& e) {  // bad arguments (std::stoll) or a LibTorch error
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}

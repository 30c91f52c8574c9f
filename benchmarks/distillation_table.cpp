// Defensive distillation at several temperatures against plain-gradient and
// logit-based attacks (the distillation table in docs/training.md).
//
//   build/benchmarks/parry_distillation_table [EPOCHS=4] [N=500] [LR=3e-3] [TRAIN=60000] [T...=1 20 100]
//
// For each T: a fresh reference CNN teacher (seed 0) and student (seed 1)
// are distilled on the first TRAIN training images, EPOCHS epochs each (Adam at
// LR, batch 128: training at T shrinks the effective step by about T, hence
// a larger rate than plain training's 1e-3). The
// deployed student (T = 1) is measured on the 10,000 test images (clean
// accuracy) and attacked on the first N test images it classifies
// correctly, L∞ ε = 0.1 unless noted:
//   FGSM and PGD-40 through the plain gradient of the cross-entropy at T = 1;
//   C&W-L2 (6 × 100 iterations) on the logits;
//   PGD-40 on the cross-entropy of logits / T (the adaptive fix: undo the
//   temperature so the softmax does not saturate);
//   APGD-DLR (100 iterations) and AutoAttack standard on the logits, which
//   need no knowledge of T (the DLR loss ignores the logits' scale).
#include <chrono>
#include <cstdio>
#include <vector>

#include "parry/parry.hpp"
#include "support.hpp"

namespace {

using namespace parry;
using bench::seconds_since;

struct Outcome {
  double success = 0;
  double median_l2 = 0;
};

Outcome run_chunked(const bench::AttackFn& run, const torch::Tensor& x, const torch::Tensor& y) {
  const auto r = bench::run_chunked(run, x, y);
  Outcome o;
  o.success = r.success_rate();
  if (r.success.any().item<bool>()) o.median_l2 = r.norm.masked_select(r.success).median().item<double>();
  return o;
}

double median_gradient_l1(const Model& model, const torch::Tensor& x, const torch::Tensor& y) {
  auto input = x.detach().clone().requires_grad_(true);
  auto loss = torch::nn::functional::cross_entropy(
      model.logits(input), y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  auto grad = torch::autograd::grad({loss}, {input})[0];
  return grad.abs().flatten(1).sum(1).median().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  configure_runtime(RuntimeOptions().threads(2));
  try {
    const int64_t epochs = argc > 1 ? std::stoll(argv[1]) : 4;
    const int64_t n = argc > 2 ? std::stoll(argv[2]) : 500;
    const double lr = argc > 3 ? std::stod(argv[3]) : 3e-3;
    const int64_t train_limit = argc > 4 ? std::stoll(argv[4]) : 60000;
    std::vector<double> temperatures;
    for (int i = 5; i < argc; ++i) temperatures.push_back(std::stod(argv[i]));
    if (temperatures.empty()) temperatures = {1, 20, 100};
    const auto train = data::load_fashion_mnist(data::kDebianFashionMnistDir, true, train_limit);
    const auto test = data::load_fashion_mnist(data::kDebianFashionMnistDir, false);
    std::printf(
        "| T | clean accuracy | median ‖∇ₓ CE‖₁ at T=1 | FGSM success | PGD-40 success | C&W-L2 success (median L2) "
        "| PGD-40 on logits/T success | APGD-DLR success | AutoAttack success | training s |\n");
    std::printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    std::fflush(stdout);
    for (const double t : temperatures) {
      const auto start = std::chrono::steady_clock::now();
      torch::manual_seed(0);
      Model teacher(models::ReferenceCnn{});
      torch::manual_seed(1);
      Model student(models::ReferenceCnn{});
      const auto summary =
          train::Distillation(train::DistillationOptions().temperature(t).epochs(epochs).learning_rate(lr).seed(0))
              .fit(teacher, student, train.images, train.labels);
      const double training_seconds = seconds_since(start);
      const double clean = train::accuracy(student, test.images, test.labels);
      torch::Tensor correct;
      {
        torch::NoGradGuard no_grad;
        correct = student.logits(test.images.slice(0, 0, 2 * n)).argmax(1).eq(test.labels.slice(0, 0, 2 * n));
      }
      const auto rows = correct.nonzero().flatten().slice(0, 0, n);
      const auto x = test.images.index_select(0, rows);
      const auto y = test.labels.index_select(0, rows);
      const auto f = attack::differentiable(student);
      const Model scaled =
          Model::from_callable([student, t](const torch::Tensor& in) { return student.logits(in) / t; });
      const auto f_scaled = attack::differentiable(scaled);
      const auto pgd_options = attack::PgdOptions(0.1).steps(40).step_size(0.01);
      const auto fgsm =
          run_chunked([&](auto& a, auto& b) { return attack::fgsm(f, a, b, attack::FgsmOptions(0.1)); }, x, y);
      const auto pgd = run_chunked([&](auto& a, auto& b) { return attack::pgd(f, a, b, pgd_options); }, x, y);
      const auto cw = run_chunked([&](auto& a, auto& b) { return attack::carlini_wagner_l2(f, a, b); }, x, y);
      const auto adaptive =
          run_chunked([&](auto& a, auto& b) { return attack::pgd(f_scaled, a, b, pgd_options); }, x, y);
      // The parameter-free attacks, on the deployed student's own logits (no
      // knowledge of T): APGD-DLR, and the standard AutoAttack whose Square
      // queries a Guard that shows the student's probabilities.
      const auto dlr = run_chunked(
          [&](auto& a, auto& b) { return attack::apgd(f, a, b, attack::ApgdOptions(0.1).loss(attack::ApgdLoss::Dlr)); },
          x, y);
      const auto service = GuardBuilder(student, InputSpec(1, 28, 28).max_batch(256))
                               .set_output_policy(std::make_shared<conceal::Full>())
                               .build_shared();
      const auto aa = run_chunked(
          [&](auto& a, auto& b) {
            return attack::auto_attack(f, service.get(), a, b, attack::AutoAttackOptions(0.1)).attack;
          },
          x, y);
      std::printf("| %.0f | %.2f%% | %.2e | %.1f%% | %.1f%% | %.1f%% (%.2f) | %.1f%% | %.1f%% | %.1f%% | %.0f |\n", t,
                  100 * clean, median_gradient_l1(student, x, y), 100 * fgsm.success, 100 * pgd.success,
                  100 * cw.success, cw.median_l2, 100 * adaptive.success, 100 * dlr.success, 100 * aa.success,
                  training_seconds);
      std::fprintf(stderr, "T=%.0f: teacher loss %.4f, student loss %.4f, agreement %.4f, %.0f s in all\n", t,
                   summary.teacher_loss, summary.student_loss, summary.label_agreement, seconds_since(start));
      std::fflush(stdout);
    }
    return 0;
  } catch (const parry::Error& e) {
    std::fprintf(stderr, "error: %s (%s)\n", e.what(), e.detail().c_str());
    return 1;
  } catch (const std::exception& e) {  // bad arguments (std::stoll) or a LibTorch error
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}

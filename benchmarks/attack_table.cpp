// Success rate and perturbation size of each attack on the reference model,
// on the first N Fashion-MNIST test images (the table in docs/attacks.md).
//   build/benchmarks/parry_attack_table [N=1000] [model.pt] [fashion-mnist dir] [row filter]
#include <chrono>
#include <cstdio>

#include "parry/parry.hpp"

int main(int argc, char** argv) {
  using namespace parry;
  using namespace parry::attack;
  configure_runtime(RuntimeOptions().threads(2));
  const int64_t n = argc > 1 ? std::stoll(argv[1]) : 1000;
  const std::string model_path = argc > 2 ? argv[2] : PARRY_REFERENCE_MODEL;
  const std::string data_dir = argc > 3 ? argv[3] : data::kDebianFashionMnistDir;
  const std::string only = argc > 4 ? argv[4] : "";  // run only rows whose name contains this
  try {
    torch::manual_seed(0);
    Model model(models::load_reference_cnn(model_path));
    const auto test = data::load_fashion_mnist(data_dir, false, n);
    const auto f = differentiable(model);
    const double clean = train::accuracy(model, test.images, test.labels);
    std::printf("reference model, first %lld test images, clean accuracy %.1f%%\n\n", static_cast<long long>(n),
                100 * clean);
    std::printf(
        "| attack | accuracy under attack | success on correctly classified | median L∞ | median L2 | seconds |\n");
    std::printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    auto row = [&](const char* name, const std::function<AttackResult()>& run) {
      if (!only.empty() && std::string(name).find(only) == std::string::npos) return;
      const auto start = std::chrono::steady_clock::now();
      const AttackResult r = run();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      torch::NoGradGuard no_grad;
      const auto predicted = model.logits(test.images).argmax(1);
      const auto correct = predicted.eq(test.labels);
      const auto adv_correct = model.logits(r.adversarial).argmax(1).eq(test.labels);
      const auto delta = r.adversarial - test.images;
      const auto fooled = correct & ~adv_correct;
      const auto linf = perturbation_norm(delta, Norm::Linf).masked_select(fooled);
      const auto l2 = perturbation_norm(delta, Norm::L2).masked_select(fooled);
      std::printf("| %s | %.1f%% | %.1f%% | %.3f | %.3f | %.1f |\n", name,
                  100 * adv_correct.to(torch::kFloat64).mean().item<double>(),
                  100 * fooled.sum().item<double>() / correct.sum().item<double>(),
                  linf.numel() ? linf.median().item<float>() : 0.f, l2.numel() ? l2.median().item<float>() : 0.f,
                  seconds);
      std::fflush(stdout);
    };
    row("FGSM L∞ ε=0.1", [&] { return fgsm(f, test.images, test.labels, FgsmOptions(0.1)); });
    row("PGD-40 L∞ ε=0.1 (α=0.01)",
        [&] { return pgd(f, test.images, test.labels, PgdOptions(0.1).steps(40).step_size(0.01)); });
    row("PGD-40 L∞ ε=0.03 (α=0.003)",
        [&] { return pgd(f, test.images, test.labels, PgdOptions(0.03).steps(40).step_size(0.003)); });
    row("PGD-40 L2 ε=1.0", [&] { return pgd(f, test.images, test.labels, PgdOptions(1.0, Norm::L2).steps(40)); });
    auto scored = GuardBuilder(model, InputSpec(1, 28, 28).max_batch(256))
                      .set_output_policy(std::make_shared<conceal::Full>())
                      .build_shared();
    row("Square L∞ ε=0.1 (≤2000 queries, scores visible)", [&] {
      const auto r = square(*scored, test.images, test.labels, SquareOptions(0.1).max_queries(2000));
      const auto q = r.queries.masked_select(r.success).to(torch::kFloat32);
      std::printf("<!-- square: median queries of successful samples %.0f -->\n",
                  q.numel() ? q.median().item<float>() : 0.f);
      return r;
    });
    Guard label_only(model, InputSpec(1, 28, 28).max_batch(256));
    row("HopSkipJump L2 (≤5000 queries, labels only)", [&] {
      const auto r = hop_skip_jump(label_only, test.images, test.labels, HopSkipJumpOptions().max_queries(5000));
      const auto started = r.start_norm.masked_select(r.success);
      std::printf("<!-- hop_skip_jump: median L2 at the first adversarial point %.3f, median queries %.0f -->\n",
                  started.numel() ? started.median().item<float>() : 0.f,
                  r.queries.to(torch::kFloat32).median().item<float>());
      return r;
    });
    row("C&W-L2 κ=0 (5×100 steps)", [&] {
      return carlini_wagner_l2(f, test.images, test.labels,
                               CarliniWagnerOptions().binary_search_steps(5).max_iterations(100).learning_rate(0.05));
    });
  } catch (const Error& e) {
    std::fprintf(stderr, "%s (%s)\n", e.public_message(), e.detail().c_str());
    return 1;
  }
  return 0;
}

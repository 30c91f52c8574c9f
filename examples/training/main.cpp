// Model improvement on Fashion-MNIST, in small: fine-tune the reference model
// with PGD adversarial training through the hook in an ordinary LibTorch loop
// (Madry et al. 2017), compare PGD accuracy before and after, then train a
// learned binary detector on FGSM examples and show that it misses PGD ones
// (the weakness the article names).
//   parry_example_training <reference_model.pt> [train images=256] [fashion-mnist dir]
#include <parry/parry.hpp>

#include <cstdio>

namespace {

using namespace parry;

// Accuracy under PGD-10 at ε = 0.1 on (x, y).
double pgd_accuracy(const Model& model, const torch::Tensor& x, const torch::Tensor& y) {
  const auto result =
      attack::pgd(attack::differentiable(model), x, y, attack::PgdOptions(0.1).steps(10).step_size(0.02));
  return 1.0 - result.success.to(torch::kFloat64).mean().item<double>();
}

double flagged_fraction(const Detector& detector, const Model& model, const torch::Tensor& x) {
  const auto scores = detector.score(x, model);
  return scores.gt(detector.threshold()).to(torch::kFloat64).mean().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <reference_model.pt> [train images] [fashion-mnist dir]\n", argv[0]);
    return 2;
  }
  try {
    configure_runtime(RuntimeOptions().threads(2));
    const int64_t n = argc > 2 ? std::stoll(argv[2]) : 256;
    const std::string dir = argc > 3 ? argv[3] : data::kDebianFashionMnistDir;
    const auto train = data::load_fashion_mnist(dir, true, n);
    const auto test = data::load_fashion_mnist(dir, false, 400);
    const auto x = test.images.slice(0, 0, 200), y = test.labels.slice(0, 0, 200);

    // 1. Adversarial training through the hook, in your own loop.
    auto net = models::load_reference_cnn(argv[1]);
    Model model(net);
    std::printf("before: clean %.1f%%, PGD-10 eps=0.1 %.1f%% on 200 test images\n", 100 * train::accuracy(model, x, y),
                100 * pgd_accuracy(model, x, y));
    train::AdversarialTrainer hook(
        train::AdversarialTrainerOptions().method(train::AdversarialMethod::Pgd).epsilon(0.1).steps(7));
    torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(5e-4));
    for (int epoch = 0; epoch < 2; ++epoch) {
      for (int64_t s = 0; s < n; s += 64) {
        const auto bx = train.images.slice(0, s, s + 64), by = train.labels.slice(0, s, s + 64);
        model.set_training(true);
        const auto batch = hook.adversarial_batch(model, bx, by);  // attack runs in eval mode
        optimizer.zero_grad();
        torch::nn::functional::cross_entropy(model.logits(batch.images), batch.labels).backward();
        optimizer.step();
      }
    }
    model.set_training(false);
    std::printf("after 2 epochs of PGD-7 training on %lld images: clean %.1f%%, PGD-10 %.1f%%\n",
                static_cast<long long>(n), 100 * train::accuracy(model, x, y), 100 * pgd_accuracy(model, x, y));

    // 2. A learned detector trained on FGSM only, tested on FGSM and PGD.
    const Model target(models::load_reference_cnn(argv[1]));
    torch::manual_seed(0);
    Model network(models::ReferenceCnn(models::ReferenceCnnOptions().classes(2)));
    auto detector = train::DetectorTrainer(train::DetectorTrainerOptions()
                                               .kind(train::DetectorKind::Binary)
                                               .add_attack(train::fgsm_attack(attack::FgsmOptions(0.1)))
                                               .epochs(3))
                        .fit(target, network, train);
    const auto calibration = detector->calibrate(test.images.slice(0, 200, 400), target, 0.05);
    const auto f = attack::differentiable(target);
    const auto fgsm = attack::fgsm(f, x, y, attack::FgsmOptions(0.1)).adversarial;
    const auto pgd = attack::pgd(f, x, y, attack::PgdOptions(0.1).steps(10).step_size(0.02)).adversarial;
    std::printf("%s\ncalibrated false-positive rate %.1f%%; flags FGSM %.1f%%, PGD %.1f%%, clean %.1f%%\n",
                detector->describe().c_str(), 100 * calibration.achieved_fpr,
                100 * flagged_fraction(*detector, target, fgsm), 100 * flagged_fraction(*detector, target, pgd),
                100 * flagged_fraction(*detector, target, x));
    return 0;
  } catch (const parry::Error& e) {
    std::fprintf(stderr, "error: %s (%s)\n", e.what(), e.detail().c_str());
    return 1;
  }
}

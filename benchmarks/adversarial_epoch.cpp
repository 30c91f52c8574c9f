// One epoch of PGD-7 adversarial training of the reference CNN with
// train::AdversarialTrainer::fit, timed; the Parry side of
// benchmarks/compare_adversarial_training.py.
//
//   build/benchmarks/parry_adversarial_epoch [N=60000]
//
// Fresh model (seed 0), the first N Fashion-MNIST training images, batch 128,
// Adam 1e-3, L∞ ε = 0.1, 7 steps of α = 2.5ε/7 from a uniform random start,
// attack in eval mode, no per-epoch evaluation and no checkpoint (the Python
// peer does neither). Prints JSON {"seconds", "images", "final_loss"}.
#include <chrono>
#include <cstdio>

#include "parry/parry.hpp"

int main(int argc, char** argv) {
  using namespace parry;
  configure_runtime(RuntimeOptions().threads(2));
  try {
    const int64_t n = argc > 1 ? std::stoll(argv[1]) : 60000;
    const auto train = data::load_fashion_mnist(data::kDebianFashionMnistDir, true, n);
    torch::manual_seed(0);
    Model model(models::ReferenceCnn{});
    train::AdversarialTrainer trainer(train::AdversarialTrainerOptions()
                                          .method(train::AdversarialMethod::Pgd)
                                          .epsilon(0.1)
                                          .steps(7)
                                          .epochs(1)
                                          .batch_size(128)
                                          .learning_rate(1e-3)
                                          .eval_samples(0)
                                          .seed(0));
    const auto start = std::chrono::steady_clock::now();
    const auto summary = trainer.fit(model, train, {});
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("{\"seconds\": %.3f, \"images\": %lld, \"final_loss\": %.4f}\n", seconds,
                static_cast<long long>(train.images.size(0)), summary.epochs.back().train_loss);
    return 0;
  } catch (const parry::Error& e) {
    std::fprintf(stderr, "error: %s (%s)\n", e.what(), e.detail().c_str());
    return 1;
  } catch (const std::exception& e) {  // bad arguments (std::stoll) or a LibTorch error
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}

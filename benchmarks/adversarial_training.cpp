// Adversarial training of the reference CNN on Fashion-MNIST at ε = 0.1 (L∞)
// and its evaluation (docs/training.md).
//
//   build/benchmarks/parry_adversarial_training METHOD EPOCHS [STEPS=7] [EVAL_N=10000]
//       [RESTARTS=3] [CHECKPOINT_DIR=""] [OUT=""] [TRAIN_LIMIT=0] [WIDTH=1] [DROPOUT=0.5]
//
// METHOD is pgd, fast_fgsm or trades. The model (the reference CNN at width
// multiplier WIDTH, head dropout DROPOUT) starts from a fresh initialisation
// (seed 0) and is trained on the 60,000 training images with Adam 1e-3,
// cosine decay, batch 128. With CHECKPOINT_DIR the run writes a checkpoint
// after every epoch and resumes from it when restarted. Then: clean accuracy
// on the 10,000 test images; FGSM and PGD-40 (α = 0.01, RESTARTS random
// restarts) accuracy on the first EVAL_N test images.
#include <chrono>
#include <cstdio>

#include "parry/parry.hpp"
#include "support.hpp"

namespace {

using namespace parry;
using bench::seconds_since;

// Accuracy under an attack, in chunks of 500 images.
double robust_accuracy(const bench::AttackFn& run, const torch::Tensor& x, const torch::Tensor& y) {
  return 1.0 - bench::run_chunked(run, x, y, 500).success_rate();
}

}  // namespace

int main(int argc, char** argv) {
  configure_runtime(RuntimeOptions().threads(2));
  if (argc < 3) {
    std::fprintf(
        stderr,
        "usage: %s pgd|fast_fgsm|trades EPOCHS [STEPS] [EVAL_N] [RESTARTS] [CHECKPOINT_DIR] [OUT] [TRAIN_LIMIT] "
        "[WIDTH] [DROPOUT]\n",
        argv[0]);
    return 2;
  }
  try {
    const auto method = train::adversarial_method_from_string(argv[1]);
    const int64_t epochs = std::stoll(argv[2]);
    const int64_t steps = argc > 3 ? std::stoll(argv[3]) : 7;
    const int64_t eval_n = argc > 4 ? std::stoll(argv[4]) : 10000;
    const int64_t restarts = argc > 5 ? std::stoll(argv[5]) : 3;
    const std::string checkpoint_dir = argc > 6 ? argv[6] : "";
    const std::string out = argc > 7 ? argv[7] : "";
    const int64_t train_limit = argc > 8 ? std::stoll(argv[8]) : 0;
    const auto architecture = models::ReferenceCnnOptions()
                                  .width(argc > 9 ? std::stoll(argv[9]) : 1)
                                  .dropout(argc > 10 ? std::stod(argv[10]) : 0.5);
    const double eps = 0.1;

    const auto train = data::load_fashion_mnist(data::kDebianFashionMnistDir, true, train_limit);
    const auto test = data::load_fashion_mnist(data::kDebianFashionMnistDir, false);
    torch::manual_seed(0);
    models::ReferenceCnn net(architecture);
    Model model(net);
    auto options = train::AdversarialTrainerOptions()
                       .method(method)
                       .epsilon(eps)
                       .steps(steps)
                       .epochs(epochs)
                       .batch_size(128)
                       .learning_rate(1e-3)
                       .eval_samples(1000)
                       .eval_steps(20)
                       .seed(0)
                       .checkpoint_dir(checkpoint_dir)
                       .on_progress(train::progress_printer());
    std::printf(
        "%s adversarial training of the reference CNN (width %lld, dropout %.2f), eps %.2f, %lld attack steps "
        "(alpha %.4f), %lld epochs on %lld images\n",
        train::to_string(method), static_cast<long long>(architecture.width()), architecture.dropout(), eps,
        static_cast<long long>(method == train::AdversarialMethod::FastFgsm ? 1 : steps), options.step_size(),
        static_cast<long long>(epochs), static_cast<long long>(train.images.size(0)));
    std::fflush(stdout);
    train::AdversarialTrainer trainer(options);
    const data::LabeledImages held_out{test.images.slice(0, 9000), test.labels.slice(0, 9000)};
    const auto summary = trainer.fit(model, train, held_out, [](const train::EpochReport& r) {
      std::printf("epoch %lld: loss %.4f, %.1f s; held-out (test 9000-9999) clean %.2f%%, PGD-20 %.2f%%\n",
                  static_cast<long long>(r.epoch), r.train_loss, r.seconds, 100 * r.clean_accuracy,
                  100 * r.adversarial_accuracy);
      std::fflush(stdout);
    });
    double train_seconds = 0;
    for (const auto& r : summary.epochs) train_seconds += r.seconds;
    std::printf("training time: %.1f s (%.1f s per epoch; resumed from epoch %lld)\n", train_seconds,
                train_seconds / static_cast<double>(summary.epochs.size()),
                static_cast<long long>(summary.resumed_from_epoch));
    if (!out.empty()) model.save(out);

    const auto start = std::chrono::steady_clock::now();
    const double clean = train::accuracy(model, test.images, test.labels);
    const auto x = test.images.slice(0, 0, eval_n);
    const auto y = test.labels.slice(0, 0, eval_n);
    const auto f = attack::differentiable(model);
    attack::GradientSettings settings;
    settings.seed = 1;
    const auto fgsm_options = attack::FgsmOptions(eps).settings(settings);
    const double fgsm = robust_accuracy(
        [&](const torch::Tensor& a, const torch::Tensor& b) { return attack::fgsm(f, a, b, fgsm_options); }, x, y);
    const auto pgd_options = attack::PgdOptions(eps).steps(40).step_size(0.01).restarts(restarts).settings(settings);
    const double pgd = robust_accuracy(
        [&](const torch::Tensor& a, const torch::Tensor& b) { return attack::pgd(f, a, b, pgd_options); }, x, y);
    std::printf(
        "RESULT method=%s width=%lld dropout=%.2f epochs=%lld steps=%lld clean=%.2f%% fgsm=%.2f%% pgd40x%lld=%.2f%% "
        "(on %lld test images) train_s=%.1f eval_s=%.1f\n",
        train::to_string(method), static_cast<long long>(architecture.width()), architecture.dropout(),
        static_cast<long long>(epochs), static_cast<long long>(steps), 100 * clean, 100 * fgsm,
        static_cast<long long>(restarts), 100 * pgd, static_cast<long long>(eval_n), train_seconds,
        seconds_since(start));
    return 0;
  } catch (const parry::Error& e) {
    std::fprintf(stderr, "error: %s (%s)\n", e.what(), e.detail().c_str());
    return 1;
  } catch (const std::exception& e) {  // bad arguments (std::stoll) or a LibTorch error
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}

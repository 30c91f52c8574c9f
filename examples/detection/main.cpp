// Feinman et al.'s detectors on Fashion-MNIST: fit the kernel density on
// training features, combine it with MC-dropout uncertainty, calibrate for a
// 5% false-positive rate and flag PGD examples inside a Guard.
//   parry_example_detection <reference_model.pt> [images=100] [fashion-mnist dir]
#include <parry/parry.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  using namespace parry;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <reference_model.pt> [images] [fashion-mnist dir]\n", argv[0]);
    return 2;
  }
  try {
    configure_runtime(RuntimeOptions().threads(2));
    const int64_t n = argc > 2 ? std::stoll(argv[2]) : 100;
    const std::string dir = argc > 3 ? argv[3] : data::kDebianFashionMnistDir;
    const Model model(models::load_reference_cnn(argv[1]));
    const auto train = data::load_fashion_mnist(dir, true, 20 * n);
    const auto test = data::load_fashion_mnist(dir, false, 10000);
    const auto f = attack::differentiable(model);
    const auto pgd = [&](const torch::Tensor& x, const torch::Tensor& y) {
      return attack::pgd(f, x, y, attack::PgdOptions(0.1).steps(10).step_size(0.02)).adversarial;
    };

    auto density = std::make_shared<detect::KernelDensity>();
    density->fit(model, train.images, train.labels);
    auto combined = std::make_shared<detect::UncertaintyDensity>(std::make_shared<detect::McDropout>(model), density);
    // The combiner learns from training images (never the ones attacked below).
    const auto fit_x = train.images.slice(0, 0, n), fit_y = train.labels.slice(0, 0, n);
    const auto fit_adv = pgd(fit_x, fit_y);
    combined->fit(model, fit_x, detect::noisy_counterparts(fit_x, fit_adv, 1), fit_adv);
    const auto calibration = combined->calibrate(test.images.slice(0, 9000, 10000), model, 0.05);
    std::printf("%s\ncalibrated on %lld clean images: false-positive rate %.1f%%\n", combined->describe().c_str(),
                static_cast<long long>(calibration.samples), 100 * calibration.achieved_fpr);

    const auto x = test.images.slice(0, 0, n), y = test.labels.slice(0, 0, n);
    const auto adversarial = pgd(x, y);
    std::printf("ROC-AUC clean vs PGD eps=0.1: %.3f\n",
                eval::roc_auc(combined->score(x, model), combined->score(adversarial, model)));

    Guard guard = GuardBuilder(model, InputSpec(1, 28, 28).max_batch(n)).add_detector(combined).build();
    const Response clean = guard.predict(x), attacked = guard.predict(adversarial);
    auto flagged = [](const Response& r) {
      int64_t k = 0;
      for (auto f : r.flagged) k += f ? 1 : 0;
      return k;
    };
    std::printf("Guard: %lld of %lld clean inputs flagged, %lld of %lld PGD inputs flagged\n",
                static_cast<long long>(flagged(clean)), static_cast<long long>(n),
                static_cast<long long>(flagged(attacked)), static_cast<long long>(n));
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s (%s)\n", e.public_message(), e.detail().c_str());
    return 1;
  }
}

// Preprocessing defenses against FGSM on Fashion-MNIST: accuracy of each
// transform against an attacker who ignores it, and against one who attacks
// through it (BPDA: the Guard's attack path treats non-differentiable
// transforms as the identity on the way back).
//   parry_example_preprocessing <reference_model.pt> [images=200] [fashion-mnist dir]
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
    const int64_t n = argc > 2 ? std::stoll(argv[2]) : 200;
    const auto test = data::load_fashion_mnist(argc > 3 ? argv[3] : data::kDebianFashionMnistDir, false, n);
    const Model model(models::load_reference_cnn(argv[1]));
    const auto fgsm = [&](const attack::LogitsFn& f) {
      return attack::fgsm(f, test.images, test.labels, attack::FgsmOptions(0.1)).adversarial;
    };
    const auto transferred = fgsm(attack::differentiable(model));  // the attacker does not know the defense
    const std::vector<std::shared_ptr<const Preprocessor>> transforms = {
        std::make_shared<preprocess::BitDepth>(preprocess::BitDepthOptions(4)),
        std::make_shared<preprocess::MedianSmoothing>(preprocess::MedianSmoothingOptions(2)),
        std::make_shared<preprocess::Jpeg>(preprocess::JpegOptions(75)),
        std::make_shared<preprocess::GaussianBlur>(preprocess::GaussianBlurOptions(3, 1.0))};
    std::printf("FGSM eps=0.1 on %lld test images\n%-44s %8s %12s %10s\n", static_cast<long long>(n), "defense",
                "clean", "transferred", "adaptive");
    auto accuracy = [&](const Guard& g, const torch::Tensor& x) {
      const Response r = g.predict(x);
      return torch::tensor(r.labels).eq(test.labels).to(torch::kFloat64).mean().item<double>();
    };
    Guard undefended(model, InputSpec(1, 28, 28).max_batch(n));
    std::printf("%-44s %7.1f%% %11.1f%% %9.1f%%\n", "none", 100 * accuracy(undefended, test.images),
                100 * accuracy(undefended, transferred), 100 * accuracy(undefended, transferred));
    for (const auto& t : transforms) {
      Guard guard = GuardBuilder(model, InputSpec(1, 28, 28).max_batch(n)).add_preprocessor(t).build();
      const auto adaptive = fgsm(attack::differentiable(guard));  // BPDA through the transform
      std::printf("%-44s %7.1f%% %11.1f%% %9.1f%%\n", t->describe().c_str(), 100 * accuracy(guard, test.images),
                  100 * accuracy(guard, transferred), 100 * accuracy(guard, adaptive));
    }
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s (%s)\n", e.public_message(), e.detail().c_str());
    return 1;
  }
}

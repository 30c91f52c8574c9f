// Randomized smoothing on Fashion-MNIST (docs/certified.md): certified
// accuracy against L2 radius for reference CNNs trained with Gaussian noise
// at each σ (Cohen, Rosenfeld, Kolter, ICML 2019), next to the accuracy of the
// smoothed classifier under PGD-L2 / APGD-L2 with EOT at the same radii, and
// CERTIFY's cost against the same number of plain forward passes.
//
//   build/benchmarks/parry_certified_table MODEL_DIR [IMAGES=500] [N=10000] [ATTACK_IMAGES=100]
//       [EPOCHS=10] [SIGMAS=0.12,0.25,0.5]
//
// For each σ, MODEL_DIR/gaussian_<σ>.pt is loaded, or trained (EPOCHS on the
// 60,000 training images, Adam 1e-3, batch 128, random flips, noise at σ,
// seed 0) and saved there first. The test set is shuffled with seed 0 (the
// order of `parry eval`); the first IMAGES are certified with n0 = 100, N
// and α = 0.001, the first ATTACK_IMAGES attacked (20 steps, 8 noise draws
// per gradient) and judged by PREDICT with n = 1,000. Prints one Markdown
// table and, per σ, the certified-accuracy curve as (radius, accuracy) pairs.
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "parry/parry.hpp"

namespace {

using namespace parry;

std::vector<double> parse_list(const std::string& text) {
  std::vector<double> values;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) values.push_back(std::stod(item));
  return values;
}

Model noise_trained_model(const std::string& directory, double sigma, int64_t epochs) {
  const std::string path = directory + "/gaussian_" + parry::detail::format_number(sigma) + ".pt";
  if (std::filesystem::exists(path)) {
    std::fprintf(stderr, "σ=%g: loading %s\n", sigma, path.c_str());
    return Model(models::load_reference_cnn(path));
  }
  const auto train_set = data::load_fashion_mnist("/usr/share/datasets/fashion-mnist", true);
  torch::manual_seed(0);
  models::ReferenceCnn net;
  Model model(net);
  const auto summary = train::fit_classifier(model, train_set.images, train_set.labels,
                                             train::ClassifierTrainerOptions()
                                                 .epochs(epochs)
                                                 .batch_size(128)
                                                 .random_flip(true)
                                                 .gaussian_noise(sigma)
                                                 .seed(0));
  std::fprintf(stderr, "σ=%g: trained %lld epochs in %.0f s\n", sigma, static_cast<long long>(epochs),
               summary.seconds);
  std::filesystem::create_directories(directory);
  model.save(path);
  return model;
}

}  // namespace

int main(int argc, char** argv) {
  configure_runtime(RuntimeOptions().threads(2));
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR [IMAGES] [N] [ATTACK_IMAGES] [EPOCHS] [SIGMAS]\n", argv[0]);
    return 2;
  }
  try {
    const std::string directory = argv[1];
    config::CertifiedSpec spec;
    spec.images = argc > 2 ? std::stoll(argv[2]) : 500;
    spec.n = argc > 3 ? std::stoll(argv[3]) : 10000;
    spec.attack_images = argc > 4 ? std::stoll(argv[4]) : 100;
    const int64_t epochs = argc > 5 ? std::stoll(argv[5]) : 10;
    const std::vector<double> sigmas = parse_list(argc > 6 ? argv[6] : "0.12,0.25,0.5");
    const std::string fashion = "/usr/share/datasets/fashion-mnist/";
    const auto test = data::shuffled(
        data::open_idx(fashion + "t10k-images-idx3-ubyte.gz", fashion + "t10k-labels-idx1-ubyte.gz"), 0);
    eval::Evaluation evaluation;
    for (const double sigma : sigmas) {
      const Model model = noise_trained_model(directory, sigma, epochs);
      spec.sigmas = {sigma};
      const auto rows = eval::evaluate_certified(model, *test, spec, 0,
                                                 [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); });
      evaluation.certified.insert(evaluation.certified.end(), rows.begin(), rows.end());
    }
    std::printf("%s\n", eval::certified_tables(evaluation).c_str());
    for (const auto& c : evaluation.certified) {
      std::printf("curve σ=%g (radius: certified accuracy):", c.sigma);
      for (double r = 0.0; r <= 2.0 + 1e-9; r += 0.125) std::printf(" %.3f:%.3f", r, c.certified_accuracy_at(r));
      // Three significant digits: at n = 100,000 a run certifies about 0.02 images a second.
      const double images_per_second = static_cast<double>(c.images) / c.certify_seconds;
      std::printf(
          "\nCERTIFY: %.3g images/s, %.0f noisy copies/s (n0 + n = %lld copies each), %.2fx the time of as many "
          "plain forward passes\n",
          images_per_second, images_per_second * static_cast<double>(c.n0 + c.n), static_cast<long long>(c.n0 + c.n),
          c.certify_cost_ratio);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

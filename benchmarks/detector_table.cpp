// Detection quality of every detector on the reference model (the tables in
// docs/detectors.md): FGSM, BIM/PGD (L∞ ε = 0.1) and C&W-L2, then the
// detector-aware adaptive C&W of Carlini & Wagner 2017 against the combined
// detector.
//   build/benchmarks/parry_detector_table [N=1000] [KDE training images=60000] [adaptive N=200]
//       [BANDWIDTH=1.20] [no-cw] [paper-eps] [MODEL FEATURE_LAYER]
//
// MODEL is a TorchScript classifier of 1×28×28 images in [0, 1] to use
// instead of the reference CNN, split for the kernel density at the input of
// its submodule FEATURE_LAYER (Model::with_feature_layer); MC dropout runs the
// whole model with all of its dropout active. docs/detectors.md uses it with
// Feinman et al.'s MNIST architecture (scripts/make_feinman_model.py).
//
// Protocol (Feinman et al. 2017): test images the model classifies correctly
// are split in half. Adversarial examples are kept where the attack succeeds;
// each gets a noisy counterpart with Gaussian noise of the same L2 norm. The
// combiner is fitted per attack on the first half; every metric is measured
// on the second half. ROC-AUC uses clean + noisy as negatives, as the paper
// does; "detected at 5% FPR" uses a threshold calibrated on 2,000 other clean
// test images (the deployment setting).
//
// A second table follows the authors' reference code
// (rfeinman/detecting-adversarial-samples, detect/util.py): every correctly
// classified clean image of a half and its noisy copy are negatives, whether
// or not the attack succeeded on it (the noise takes the norm of the
// attack's perturbation either way), for fitting and for scoring. With
// `paper-eps`, FGSM also runs at ε = 0.3, the reference code's MNIST budget
// (scripts/craft_adv_samples.py).
#include <chrono>
#include <cstdio>

#include "parry/parry.hpp"
#include "support.hpp"

namespace {

using namespace parry;
using bench::seconds_since;

}  // namespace

int main(int argc, char** argv) {
  using namespace parry::attack;
  configure_runtime(RuntimeOptions().threads(2));
  const int64_t n = argc > 1 ? std::stoll(argv[1]) : 1000;
  const int64_t kde_images = argc > 2 ? std::stoll(argv[2]) : 60000;
  const int64_t adaptive_n = argc > 3 ? std::stoll(argv[3]) : 200;
  const double bandwidth = argc > 4 ? std::stod(argv[4]) : 1.20;  // the paper's MNIST bandwidth
  const bool with_cw = argc > 5 ? std::string(argv[5]) != "no-cw" : true;
  const bool paper_eps = argc > 6 && std::string(argv[6]) == "paper-eps";
  if (argc == 8) {
    std::fprintf(stderr, "parry_detector_table: MODEL needs a FEATURE_LAYER after it\n");
    return 2;
  }
  const std::string model_path = argc > 8 ? argv[7] : "";
  try {
    torch::manual_seed(0);
    // Without a split, McDropout replicates the batch through the whole model,
    // so a dropout before the feature layer counts too.
    const Model unsplit = model_path.empty() ? Model(models::load_reference_cnn(PARRY_REFERENCE_MODEL))
                                             : Model::load_torchscript(model_path);
    const Model model = model_path.empty() ? unsplit : unsplit.with_feature_layer(argv[8]);
    const auto f = differentiable(model);
    const auto test = data::load_fashion_mnist(data::kDebianFashionMnistDir, false, 10000);
    torch::Tensor correct;
    {
      torch::NoGradGuard no_grad;
      correct = model.logits(test.images.slice(0, 0, n)).argmax(1).eq(test.labels.slice(0, 0, n));
    }
    const auto index = correct.nonzero().flatten();
    const auto x = test.images.index_select(0, index), y = test.labels.index_select(0, index);
    const int64_t half = x.size(0) / 2;
    const auto calibration_clean = test.images.slice(0, 8000, 10000);
    std::printf("%s; %lld correctly classified of the first %lld test images, halves of %lld\n",
                model_path.empty() ? "reference model" : model_path.c_str(), static_cast<long long>(x.size(0)),
                static_cast<long long>(n), static_cast<long long>(half));

    auto start = std::chrono::steady_clock::now();
    const auto train = data::load_fashion_mnist(data::kDebianFashionMnistDir, true, kde_images);
    auto density = std::make_shared<detect::KernelDensity>(detect::KernelDensityOptions().bandwidth(bandwidth));
    density->fit(model, train.images, train.labels);
    auto uncertainty = std::make_shared<detect::McDropout>(unsplit);  // T = 50
    auto squeezing = std::make_shared<detect::FeatureSqueezing>(detect::FeatureSqueezing::for_grayscale());
    std::printf("kernel density (σ=%.2f) fitted on %lld training images in %.1f s\n\n", bandwidth,
                static_cast<long long>(kde_images), seconds_since(start));

    struct AttackRun {
      std::string name;
      torch::Tensor adversarial, success;
    };
    std::vector<AttackRun> runs;
    auto run = [&](const std::string& name, const std::function<AttackResult()>& attack) {
      const auto t0 = std::chrono::steady_clock::now();
      const AttackResult r = attack();
      std::printf("%s: success %.1f%% in %.1f s\n", name.c_str(), 100 * r.success_rate(), seconds_since(t0));
      std::fflush(stdout);
      runs.push_back({name, r.adversarial, r.success});
    };
    run("FGSM L∞ ε=0.1", [&] { return fgsm(f, x, y, FgsmOptions(0.1)); });
    run("BIM/PGD-40 L∞ ε=0.1", [&] { return pgd(f, x, y, PgdOptions(0.1).steps(40).step_size(0.01)); });
    if (with_cw)
      run("C&W-L2 κ=0", [&] {
        return carlini_wagner_l2(f, x, y, CarliniWagnerOptions().binary_search_steps(5).max_iterations(100));
      });
    // Last: the adaptive part below takes runs[1] as PGD.
    if (paper_eps) run("FGSM L∞ ε=0.3", [&] { return fgsm(f, x, y, FgsmOptions(0.3)); });

    std::printf(
        "\n| attack | detector | ROC-AUC (clean+noisy vs adv) | ROC-AUC (clean vs adv) | detected at 5%% FPR | "
        "clean FPR |\n| --- | --- | ---: | ---: | ---: | ---: |\n");
    for (const auto& r : runs) {
      const auto ok = r.success.nonzero().flatten();
      const auto first = ok.masked_select(ok < half), second = ok.masked_select(ok >= half);
      const auto adv_fit = r.adversarial.index_select(0, first), clean_fit = x.index_select(0, first);
      const auto adv_eval = r.adversarial.index_select(0, second), clean_eval = x.index_select(0, second);
      const auto noisy_fit = detect::noisy_counterparts(clean_fit, adv_fit, 1);
      const auto noisy_eval = detect::noisy_counterparts(clean_eval, adv_eval, 2);
      auto combined = std::make_shared<detect::UncertaintyDensity>(uncertainty, density);
      combined->fit(model, clean_fit, noisy_fit, adv_fit);
      const std::vector<std::pair<std::string, std::shared_ptr<Detector>>> detectors = {
          {"uncertainty (MC dropout)", uncertainty},
          {"density (KDE)", density},
          {"combined (LR)", combined},
          {"feature squeezing", squeezing}};
      for (const auto& [name, d] : detectors) {
        const auto clean_s = bench::chunked_scores(*d, clean_eval, model),
                   noisy_s = bench::chunked_scores(*d, noisy_eval, model);
        const auto adv_s = bench::chunked_scores(*d, adv_eval, model);
        d->calibrate(calibration_clean, model, 0.05);
        const auto at = eval::detection_at_fpr(bench::chunked_scores(*d, calibration_clean, model), adv_s, 0.05);
        const double fpr = clean_s.gt(d->threshold()).to(torch::kFloat64).mean().item<double>();
        std::printf("| %s | %s | %.3f | %.3f | %.1f%% | %.1f%% |\n", r.name.c_str(), name.c_str(),
                    eval::roc_auc(torch::cat({clean_s, noisy_s}), adv_s), eval::roc_auc(clean_s, adv_s),
                    100 * at.detection_rate, 100 * fpr);
        std::fflush(stdout);
      }
    }

    std::printf(
        "\nThe reference code's protocol: every correctly classified clean image of a half, and its noisy copy, "
        "is a negative\n\n| attack | detector | ROC-AUC (clean+noisy vs adv) | ROC-AUC (clean vs adv) |\n"
        "| --- | --- | ---: | ---: |\n");
    for (const auto& r : runs) {
      const auto ok = r.success.nonzero().flatten();
      const auto first = ok.masked_select(ok < half), second = ok.masked_select(ok >= half);
      const auto clean_fit = x.slice(0, 0, half), clean_eval = x.slice(0, half, x.size(0));
      const auto noisy_fit = detect::noisy_counterparts(clean_fit, r.adversarial.slice(0, 0, half), 1);
      const auto noisy_eval = detect::noisy_counterparts(clean_eval, r.adversarial.slice(0, half, x.size(0)), 2);
      const auto adv_fit = r.adversarial.index_select(0, first), adv_eval = r.adversarial.index_select(0, second);
      auto combined = std::make_shared<detect::UncertaintyDensity>(uncertainty, density);
      combined->fit(model, clean_fit, noisy_fit, adv_fit);
      const std::vector<std::pair<std::string, std::shared_ptr<Detector>>> detectors = {
          {"uncertainty (MC dropout)", uncertainty}, {"density (KDE)", density}, {"combined (LR)", combined}};
      for (const auto& [name, d] : detectors) {
        const auto clean_s = bench::chunked_scores(*d, clean_eval, model),
                   noisy_s = bench::chunked_scores(*d, noisy_eval, model);
        const auto adv_s = bench::chunked_scores(*d, adv_eval, model);
        std::printf("| %s | %s | %.3f | %.3f |\n", r.name.c_str(), name.c_str(),
                    eval::roc_auc(torch::cat({clean_s, noisy_s}), adv_s), eval::roc_auc(clean_s, adv_s));
        std::fflush(stdout);
      }
    }

    if (adaptive_n == 0) return 0;
    // Adaptive: targeted C&W-L2 on the classifier merged with the combined
    // detector (fitted on PGD), EOT over dropout masks, against plain C&W.
    const auto pgd_ok = runs[1].success.nonzero().flatten();
    const auto pgd_first = pgd_ok.masked_select(pgd_ok < half);
    const auto adv_fit = runs[1].adversarial.index_select(0, pgd_first), clean_fit = x.index_select(0, pgd_first);
    detect::UncertaintyDensity combined(uncertainty, density);
    combined.fit(model, clean_fit, detect::noisy_counterparts(clean_fit, adv_fit, 1), adv_fit);
    combined.calibrate(calibration_clean, model, 0.05);
    const auto xa = x.slice(0, half, std::min(half + adaptive_n, x.size(0)));
    const auto ya = y.slice(0, half, std::min(half + adaptive_n, x.size(0)));
    const auto targets = (ya + 1 + torch::randint(0, 9, ya.sizes(), torch::kInt64)) % 10;
    GradientSettings settings;
    settings.targeted = true;
    auto cw = CarliniWagnerOptions().binary_search_steps(5).max_iterations(100).settings(settings);
    std::printf("\nadaptive attack on %lld images, targeted at a random other class; combined detector at 5%% FPR\n\n",
                static_cast<long long>(xa.size(0)));
    std::printf(
        "| attack | fooled the model | fooled and not flagged | mean L2 of those | seconds |\n"
        "| --- | ---: | ---: | ---: | ---: |\n");
    auto report = [&](const char* name, const AttackResult& r, double secs) {
      torch::NoGradGuard no_grad;
      const auto logits = model.logits(r.adversarial);
      const auto fooled = logits.argmax(1) == targets;
      const auto evaded = fooled & combined.flag(DetectorInput{r.adversarial, logits, model}).logical_not();
      const auto l2 = perturbation_norm(r.adversarial - xa, Norm::L2).masked_select(evaded);
      std::printf(
          "| %s | %.1f%% | %.1f%% | %.3f | %.0f |\n", name, 100 * fooled.to(torch::kFloat64).mean().item<double>(),
          100 * evaded.to(torch::kFloat64).mean().item<double>(), l2.numel() ? l2.mean().item<double>() : 0.0, secs);
      std::fflush(stdout);
    };
    start = std::chrono::steady_clock::now();
    const auto plain = carlini_wagner_l2(f, xa, targets, cw);
    report("C&W-L2 (detector unknown)", plain, seconds_since(start));
    settings.eot_samples = 4;
    start = std::chrono::steady_clock::now();
    const auto adaptive =
        carlini_wagner_l2(detector_aware(f, combined, model, /*scale=*/10.0), xa, targets, cw.settings(settings));
    report("adaptive C&W-L2 (detector-aware, EOT 4 masks)", adaptive, seconds_since(start));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parry_detector_table: %s\n", e.what());
    return 1;
  }
}

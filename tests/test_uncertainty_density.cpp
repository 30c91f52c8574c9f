// The combined detector of Feinman et al. 2017, its logistic regression, the
// detection quality of every detector on the reference model, and the
// detector-aware adaptive attack (Carlini & Wagner 2017).
#include "parry/detect/uncertainty_density.hpp"

#include "attack_support.hpp"
#include "parry/detect/feature_squeezing.hpp"
#include "parry/eval/metrics.hpp"

using namespace parry;
using parry::testing::correctly_classified;
using parry::testing::reference_model;

namespace {

class UncertaintyDensityTest : public parry::testing::SeededTest {};

double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}

std::shared_ptr<detect::KernelDensity> fitted_density(int64_t train_images) {
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, train_images);
  auto kde = std::make_shared<detect::KernelDensity>();
  kde->fit(reference_model(), train.images, train.labels, 256);
  return kde;
}

}  // namespace

TEST(LogisticRegression, SolvesTheSymmetricTwoPointCase) {
  // x = −1 (label 0) and x = +1 (label 1): by symmetry b = 0, and the
  // optimality condition is 2σ(−w) = λw.
  detect::LogisticRegression lr(detect::LogisticRegressionOptions().l2(1.0));
  lr.fit(torch::tensor({-1.0, 1.0}).view({2, 1}), torch::tensor({0, 1}));
  const double w = lr.weights()[0];
  EXPECT_NEAR(lr.bias(), 0.0, 1e-9);
  EXPECT_NEAR(2.0 * sigmoid(-w), 1.0 * w, 1e-9);
  EXPECT_GT(w, 0.5);
}

TEST(LogisticRegression, SeparatesASeparableSetAtAStationaryPoint) {
  torch::manual_seed(0);
  const auto negatives = torch::randn({100, 2}, torch::kFloat64) * 0.5 + torch::tensor({-2.0, 1.0}, torch::kFloat64);
  const auto positives = torch::randn({100, 2}, torch::kFloat64) * 0.5 + torch::tensor({2.0, -1.0}, torch::kFloat64);
  const auto x = torch::cat({negatives, positives});
  const auto y = torch::cat({torch::zeros({100}), torch::ones({100})});
  detect::LogisticRegression lr(detect::LogisticRegressionOptions().l2(0.1));
  const int64_t iterations = lr.fit(x, y);
  EXPECT_LT(iterations, 100);
  const auto p = lr.predict_probability(x);
  EXPECT_TRUE((p.narrow(0, 0, 100) < 0.5).all().item<bool>());
  EXPECT_TRUE((p.narrow(0, 100, 100) > 0.5).all().item<bool>());
  // Gradient of the penalised loss vanishes at the solution.
  const auto w = torch::tensor(lr.weights(), torch::kFloat64);
  const auto residual = p - y.to(torch::kFloat64);
  const auto grad_w = x.t().matmul(residual) + 0.1 * w;
  EXPECT_LT(grad_w.abs().max().item<double>(), 1e-6);
  EXPECT_LT(std::abs(residual.sum().item<double>()), 1e-6);
}

TEST(LogisticRegression, RejectsBadInput) {
  detect::LogisticRegression lr;
  EXPECT_THROW(lr.decision_function(torch::zeros({1, 1})), StateError);
  EXPECT_THROW(lr.fit(torch::zeros({3, 1}), torch::zeros({3})), OptionError);         // one class
  EXPECT_THROW(lr.fit(torch::zeros({3, 1}), torch::tensor({0, 1, 2})), OptionError);  // not binary
  EXPECT_THROW(lr.fit(torch::full({2, 1}, INFINITY), torch::tensor({0, 1})), OptionError);
  EXPECT_THROW(lr.fit(torch::zeros({2, 1}), torch::tensor({0, 1, 1})), OptionError);
  EXPECT_THROW(detect::LogisticRegressionOptions().l2(-1), OptionError);
  EXPECT_THROW(lr.set_parameters({NAN}, 0.0), OptionError);
}

TEST(NoisyCounterparts, MatchTheAdversarialL2NormBeforeClipping) {
  const auto clean = torch::full({3, 1, 8, 8}, 0.5);
  auto adversarial = clean.clone();
  adversarial[0] += 0.01;
  adversarial[1][0][0][0] += 0.2;
  const auto noisy = detect::noisy_counterparts(clean, adversarial, 5);
  const auto norms = (noisy - clean).flatten(1).norm(2, 1);
  EXPECT_NEAR(norms[0].item<double>(), 0.08, 1e-4);  // 0.01 · √64
  EXPECT_NEAR(norms[1].item<double>(), 0.2, 1e-4);
  EXPECT_NEAR(norms[2].item<double>(), 0.0, 1e-6);
  EXPECT_TRUE(torch::equal(noisy, detect::noisy_counterparts(clean, adversarial, 5)));
  EXPECT_THROW(detect::noisy_counterparts(clean, adversarial.narrow(0, 0, 2), 5), OptionError);
}

// On the reference model with FGSM and PGD at ε = 0.1 (L∞), each detector
// separates adversarial from clean inputs clearly better than chance, the
// combined one best, and a threshold calibrated on clean data keeps its
// false-positive rate on other clean data near the target.
TEST_F(UncertaintyDensityTest, DetectsFgsmAndPgdOnTheReferenceModel) {
  torch::set_num_threads(parry::testing::intra_op_threads(2));
  const Model model = reference_model();
  const auto f = attack::differentiable(model);
  const auto data = correctly_classified(300);
  const auto fit_x = data.images.slice(0, 0, 150), fit_y = data.labels.slice(0, 0, 150);
  const auto test_x = data.images.slice(0, 150), test_y = data.labels.slice(0, 150);
  auto fgsm = [&](const torch::Tensor& x, const torch::Tensor& y) {
    return attack::fgsm(f, x, y, attack::FgsmOptions().epsilon(0.1)).adversarial;
  };
  auto pgd = [&](const torch::Tensor& x, const torch::Tensor& y) {
    return attack::pgd(f, x, y, attack::PgdOptions().epsilon(0.1).steps(20).step_size(0.01)).adversarial;
  };

  auto uncertainty = std::make_shared<detect::McDropout>(model);
  auto density = fitted_density(3000);
  detect::UncertaintyDensity combined(uncertainty, density);
  const auto fit_adv = torch::cat({fgsm(fit_x, fit_y), pgd(fit_x, fit_y)});
  const auto fit_clean = torch::cat({fit_x, fit_x});
  const auto report = combined.fit(model, fit_clean, detect::noisy_counterparts(fit_clean, fit_adv, 1), fit_adv);
  EXPECT_EQ(report.negatives, 600);
  EXPECT_EQ(report.positives, 300);
  ASSERT_EQ(report.training_probability.size(0), 900);
  EXPECT_GT(eval::roc_auc(report.training_probability.slice(0, 0, 600), report.training_probability.slice(0, 600)),
            0.8);
  auto squeezing = detect::FeatureSqueezing::for_grayscale();

  const std::vector<std::pair<std::string, const Detector*>> detectors = {{"uncertainty", uncertainty.get()},
                                                                          {"density", density.get()},
                                                                          {"combined", &combined},
                                                                          {"squeezing", &squeezing}};
  for (const auto& [attack_name, adversarial] :
       {std::pair<std::string, torch::Tensor>{"fgsm", fgsm(test_x, test_y)}, {"pgd", pgd(test_x, test_y)}}) {
    for (const auto& [detector_name, detector] : detectors) {
      const double auc = eval::roc_auc(detector->score(test_x, model), detector->score(adversarial, model));
      if (attack_name == "pgd" && detector_name == "uncertainty") {
        // PGD run to the end of its budget lands deep inside the wrong class,
        // where dropout barely changes the answer: uncertainty is no better
        // than chance (docs/detectors.md). The density still catches it.
        EXPECT_LT(auc, 0.6) << detector_name << " on " << attack_name;
      } else {
        const double floor = attack_name == "pgd" && detector_name != "squeezing" ? 0.9 : 0.65;
        EXPECT_GT(auc, floor) << detector_name << " on " << attack_name;
      }
    }
  }

  // Calibrate on 300 clean images, measure on 300 others.
  const auto clean = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 1000).images;
  const auto calibration = combined.calibrate(clean.slice(0, 400, 700), model, 0.05);
  EXPECT_LE(calibration.achieved_fpr, 0.05);
  const double held_out_fpr = combined.score(clean.slice(0, 700, 1000), model)
                                  .gt(calibration.threshold)
                                  .to(torch::kFloat64)
                                  .mean()
                                  .item<double>();
  EXPECT_NEAR(held_out_fpr, 0.05, 0.04);
}

TEST_F(UncertaintyDensityTest, SavesAndLoadsTheCombinerWithTheDensity) {
  const Model model = reference_model();
  auto density = fitted_density(500);
  detect::UncertaintyDensity combined(std::make_shared<detect::McDropout>(model), density);
  const auto data = correctly_classified(40);
  const auto noise = (data.images + 0.3 * torch::randn_like(data.images)).clamp(0, 1);
  combined.fit(model, data.images, torch::Tensor(), noise);
  combined.set_threshold(0.5);
  parry::testing::TempDir dir;
  combined.save(dir.file("combined.pt"));

  detect::UncertaintyDensity loaded(std::make_shared<detect::McDropout>(model),
                                    std::make_shared<detect::KernelDensity>());
  loaded.load(dir.file("combined.pt"));
  EXPECT_TRUE(loaded.density().is_fitted());
  EXPECT_EQ(loaded.regression().weights(), combined.regression().weights());
  torch::manual_seed(9);
  const auto a = combined.score(data.images, model);
  torch::manual_seed(9);
  const auto b = loaded.score(data.images, model);
  EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-6));
  // Differentiable form agrees with the served score under the same masks.
  torch::manual_seed(9);
  const auto d = combined.differentiable_score(data.images, model);
  EXPECT_TRUE(torch::allclose(a, d.detach(), 1e-3, 1e-4));

  detect::UncertaintyDensity unfitted(std::make_shared<detect::McDropout>(model),
                                      std::make_shared<detect::KernelDensity>());
  EXPECT_THROW(unfitted.score(data.images, model), StateError);
  EXPECT_THROW(unfitted.fit(model, data.images, torch::Tensor(), noise), StateError);
  EXPECT_THROW(detect::UncertaintyDensity(nullptr, density), OptionError);
}

// Carlini & Wagner 2017's construction: the extra logit wins exactly when the
// detector flags, and an attack on the combined classifier evades the
// detector far more often than one that ignores it.
TEST_F(UncertaintyDensityTest, DetectorAwareAttackEvadesTheDensityDetector) {
  torch::set_num_threads(parry::testing::intra_op_threads(2));
  const Model model = reference_model();
  auto density = fitted_density(2000);
  const auto clean = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 500).images;
  density->calibrate(clean.slice(0, 300), model, 0.05);
  const auto f = attack::differentiable(model);
  const auto g = attack::detector_aware(f, *density, model, 0.1);

  const auto data = correctly_classified(40);
  const auto noise = torch::rand({10, 1, 28, 28});
  const auto probe = torch::cat({data.images.slice(0, 0, 10), noise});
  torch::Tensor combined_logits;
  {
    torch::NoGradGuard no_grad;
    combined_logits = g(probe);
  }
  ASSERT_EQ(combined_logits.size(1), 11);
  const auto flagged = density->flag(DetectorInput{probe, model.logits(probe), model});
  EXPECT_TRUE(torch::equal(combined_logits.argmax(1) == 10, flagged));
  EXPECT_GT(flagged.sum().item<int64_t>(), 0);

  // Targeted C&W-L2 towards class (y + 1) mod 10 with and without the detector.
  const auto targets = (data.labels + 1) % 10;
  attack::GradientSettings settings;
  settings.targeted = true;
  const auto options = attack::CarliniWagnerOptions()
                           .binary_search_steps(4)
                           .max_iterations(60)
                           .learning_rate(0.05)
                           .initial_const(1.0)
                           .settings(settings);
  const auto plain = attack::carlini_wagner_l2(f, data.images, targets, options);
  const auto adaptive = attack::carlini_wagner_l2(g, data.images, targets, options);
  auto evaded = [&](const attack::AttackResult& r) {
    const auto logits = model.logits(r.adversarial);
    const auto unflagged = density->flag(DetectorInput{r.adversarial, logits, model}).logical_not();
    return (logits.argmax(1) == targets).logical_and(unflagged).to(torch::kFloat64).mean().item<double>();
  };
  const double plain_rate = evaded(plain), adaptive_rate = evaded(adaptive);
  EXPECT_GT(adaptive_rate, plain_rate + 0.2) << "plain " << plain_rate << ", adaptive " << adaptive_rate;
  EXPECT_THROW(attack::detector_aware(f, *density, model, 0.0), OptionError);
  detect::KernelDensity uncalibrated;
  uncalibrated.fit_features(torch::randn({4, 128}), torch::zeros({4}, torch::kInt64));
  const auto broken = attack::detector_aware(f, uncalibrated, model);
  EXPECT_THROW(broken(data.images), StateError);
}

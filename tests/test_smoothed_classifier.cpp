#include "parry/certify/smoothed_classifier.hpp"

#include <gtest/gtest.h>
#include <torch/script.h>

#include <cmath>
#include <thread>

#include "parry/attack/pgd.hpp"
#include "parry/certify/statistics.hpp"
#include "parry/core/errors.hpp"
#include "certify_support.hpp"
#include "test_paths.hpp"

using namespace parry;

namespace {

constexpr double kSigma = 0.25;
using parry::testing::LinearTwoClass;
using parry::testing::radius_floor;

certify::SmoothingOptions seeded(uint64_t seed) { return certify::SmoothingOptions().sigma(kSigma).seed(seed); }

}  // namespace

TEST(SmoothedClassifier, CertifiedRadiusOfALinearModelIsCloseToTheDistanceAndNeverAbove) {
  const LinearTwoClass linear;
  const certify::SmoothedClassifier smoothed(linear.model(), seeded(1));
  for (const double t : {0.05, 0.1, 0.2, 0.4, 0.6, 0.8, -0.1, -0.4}) {
    const auto certificates = smoothed.certify(linear.at(t));  // n0 = 100, n = 100,000, α = 0.001
    ASSERT_EQ(certificates.size(), 1u);
    const auto& c = certificates[0];
    const double distance = std::abs(t);
    EXPECT_EQ(c.label, t > 0 ? 1 : 0) << "t = " << t;
    // Never above the exact radius (with probability 1 − α), and no lower
    // than a count 4 standard deviations short gives: 86% of the distance
    // at 0.05, 93% at 0.1, 96% from 0.2 to 0.6 (and 94% at 0.8, near n's cap).
    EXPECT_LE(c.radius, distance) << "t = " << t;
    EXPECT_GE(c.radius, radius_floor(t, kSigma, 100000, 0.001)) << "t = " << t;
    EXPECT_NEAR(c.radius, kSigma * certify::normal_quantile(c.p_lower), 1e-12);
    // The count agrees with the closed form p_A = Φ(t/σ) to within 5 standard errors.
    const double p_a = parry::testing::normal_cdf(distance / kSigma);
    EXPECT_NEAR(c.top_count / 1e5, p_a, 5 * std::sqrt(p_a * (1 - p_a) / 1e5)) << "t = " << t;
    EXPECT_EQ(c.votes.sum().item<int64_t>(), 100000);
    EXPECT_EQ(c.votes[c.label].item<int64_t>(), c.top_count);
  }
}

TEST(SmoothedClassifier, AbstainsOnTheBoundaryAndWhenTheNoiseOverwhelmsTheMargin) {
  const LinearTwoClass linear;
  const certify::SmoothedClassifier smoothed(linear.model(), seeded(2));
  const auto on_boundary = smoothed.certify(linear.at(0.0), certify::CertifyOptions().n(10000));
  EXPECT_TRUE(on_boundary[0].abstained());
  EXPECT_EQ(on_boundary[0].radius, 0.0);
  EXPECT_LE(on_boundary[0].p_lower, 0.5);
  // Far beyond what 1,000 samples can certify: the radius is capped at σ·Φ⁻¹(α^(1/n)).
  const auto far = smoothed.certify(linear.at(5.0), certify::CertifyOptions().n(1000));
  EXPECT_EQ(far[0].label, 1);
  EXPECT_EQ(far[0].top_count, 1000);
  EXPECT_NEAR(far[0].radius, kSigma * certify::normal_quantile(std::pow(0.001, 1.0 / 1000)), 1e-9);
}

TEST(SmoothedClassifier, PredictAbstainsOnTheBoundaryAtTheDesignedRate) {
  // On the hyperplane both classes have probability ½: PREDICT must abstain
  // except when the binomial test rejects by chance, i.e. with probability
  // exactly the test's size at (n, α), computed here from the binomial law.
  const LinearTwoClass linear;
  const certify::SmoothedClassifier smoothed(linear.model(), seeded(3).batch_size(100));
  const int64_t n = 100;
  const double alpha = 0.1;
  double size = 0.0;
  for (int64_t k = 0; k <= n; ++k) {
    if (certify::binomial_test_p_value(k, n) <= alpha) {
      size += std::exp(std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0) - n * std::log(2.0));
    }
  }
  ASSERT_GT(size, 0.02);
  ASSERT_LE(size, alpha);
  const int64_t trials = 1000;
  const torch::Tensor x = linear.at(0.0).expand({trials, 1, 4, 4});
  const auto labels = smoothed.predict(x, certify::SmoothedPredictOptions().n(n).alpha(alpha));
  ASSERT_EQ(labels.size(), static_cast<size_t>(trials));
  int64_t answered = 0, ones = 0;
  for (const int64_t label : labels) {
    answered += label != certify::kAbstain;
    ones += label == 1;
  }
  const double sd = std::sqrt(trials * size * (1 - size));
  EXPECT_NEAR(static_cast<double>(answered), trials * size, 4 * sd) << "size " << size;
  EXPECT_GT(ones, 0);
  EXPECT_GT(answered - ones, 0);
  // Off the boundary by 2σ, PREDICT answers the right class every time.
  const auto confident = smoothed.predict(linear.at(-0.5).expand({20, 1, 4, 4}),
                                          certify::SmoothedPredictOptions().n(n).alpha(0.001));
  for (const int64_t label : confident) EXPECT_EQ(label, 0);
}

TEST(SmoothedClassifier, NoL2AttackWithEotSucceedsInsideTheCertifiedRadius) {
  // The attacker of Salman et al. 2019 against the smoothed classifier: PGD
  // on the base model's cross-entropy averaged over noise draws (EOT). Inside
  // the certified radius it must not change g's answer; just beyond the true
  // distance to the boundary (known for the linear model) the same attack
  // does, so it is strong enough to find what the certificate rules out.
  const LinearTwoClass linear;
  const certify::SmoothedClassifier smoothed(linear.model(), seeded(4));
  const Model base = linear.model();
  const attack::LogitsFn noisy = [&](const torch::Tensor& x) { return base.logits(x + kSigma * torch::randn_like(x)); };
  attack::GradientSettings settings;
  settings.eot_samples = 32;
  settings.seed = 5;
  torch::manual_seed(5);
  const auto check = [&](double t) {
    const torch::Tensor x = linear.at(t).unsqueeze(0);
    const auto certificate = smoothed.certify(x, certify::CertifyOptions().n(20000))[0];
    ASSERT_FALSE(certificate.abstained()) << "t = " << t;
    const torch::Tensor y = torch::tensor({certificate.label});
    const auto inside = attack::pgd(noisy, x, y,
                                    attack::PgdOptions(certificate.radius, attack::Norm::L2).steps(20).random_start(false).settings(settings));
    const auto answer = smoothed.predict(inside.adversarial, certify::SmoothedPredictOptions().n(20000));
    EXPECT_TRUE(answer[0] == certificate.label || answer[0] == certify::kAbstain) << "t = " << t;
    const auto beyond = attack::pgd(noisy, x, y,
                                    attack::PgdOptions(1.2 * std::abs(t), attack::Norm::L2).steps(20).random_start(false).settings(settings));
    EXPECT_EQ(smoothed.predict(beyond.adversarial, certify::SmoothedPredictOptions().n(20000))[0], 1 - certificate.label)
        << "t = " << t;
  };
  for (const double t : {0.15, 0.3, -0.5}) check(t);
}

TEST(SmoothedClassifier, AttackLogitsAreTheLogOfTheSmoothedSoftClassifierAndDifferentiable) {
  // With logits scaled by 1,000 the base model's softmax is its hard label,
  // so the mean softmax over the noise is P(f(x + δ) = c) = Φ(±t/σ).
  const LinearTwoClass linear;
  const certify::SmoothedClassifier smoothed(linear.model(/*logit_scale=*/1000.0), seeded(12));
  const auto logits = smoothed.attack_logits(20000, /*seed=*/3);
  const torch::Tensor x = torch::stack({linear.at(0.1), linear.at(-0.3)}).requires_grad_(true);
  const torch::Tensor out = logits(x);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, 2}));
  const torch::Tensor p = out.exp();
  EXPECT_NEAR(p[0][1].item<double>(), parry::testing::normal_cdf(0.1 / kSigma), 0.015);
  EXPECT_NEAR(p[1][0].item<double>(), parry::testing::normal_cdf(0.3 / kSigma), 0.015);
  const torch::Tensor gradient = torch::autograd::grad({out.select(1, 1).sum()}, {x})[0];
  EXPECT_GT(gradient.abs().sum().item<double>(), 0.0);
  EXPECT_THROW(smoothed.attack_logits(0, 1), OptionError);
}

TEST(SmoothedClassifier, VotesSumToNAndTheSameSeedGivesTheSameAnswers) {
  const LinearTwoClass linear;
  const certify::SmoothedClassifier first(linear.model(), seeded(9).batch_size(64));
  const certify::SmoothedClassifier second(linear.model(), seeded(9).batch_size(64));
  const torch::Tensor x = linear.at(0.1);
  const torch::Tensor votes = first.vote_counts(x, 100000);
  EXPECT_EQ(votes.sizes(), (std::vector<int64_t>{2}));
  EXPECT_EQ(votes.sum().item<int64_t>(), 100000);
  EXPECT_TRUE(torch::equal(votes, second.vote_counts(x, 100000)));
  EXPECT_FALSE(torch::equal(first.vote_counts(x, 100000), votes));  // each call draws a fresh stream
  const certify::SmoothedClassifier third(linear.model(), seeded(9).batch_size(1000));
  const certify::SmoothedClassifier fourth(linear.model(), seeded(9).batch_size(1000));
  const auto a = third.certify(x, certify::CertifyOptions().n(5000));
  const auto b = fourth.certify(x, certify::CertifyOptions().n(5000));
  EXPECT_EQ(a[0].top_count, b[0].top_count);
  EXPECT_EQ(a[0].radius, b[0].radius);
}

TEST(SmoothedClassifier, IsSafeToShareBetweenThreads) {
  const LinearTwoClass linear;
  const certify::SmoothedClassifier smoothed(linear.model(), seeded(10).batch_size(500));
  const torch::Tensor x = linear.at(0.4);
  std::vector<std::vector<certify::Certificate>> results(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = smoothed.certify(x.expand({3, 1, 4, 4}), certify::CertifyOptions().n(20000)); });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& result : results) {
    ASSERT_EQ(result.size(), 3u);
    for (const auto& c : result) {
      EXPECT_EQ(c.label, 1);
      EXPECT_GT(c.radius, 0.35);
      EXPECT_LE(c.radius, 0.4);
    }
  }
}

TEST(SmoothedClassifier, CertifiesAnRgbNonSquareImageAsTightlyAsAGreyOne) {
  // The closed form of the linear model holds in any dimension: 3×5×7 pixels,
  // noise on every channel of every pixel.
  const LinearTwoClass linear(21, {3, 5, 7});
  const certify::SmoothedClassifier smoothed(linear.model(), seeded(13));
  for (const double t : {0.3, -0.2}) {
    const auto c = smoothed.certify(linear.at(t))[0];
    EXPECT_EQ(c.label, t > 0 ? 1 : 0) << "t = " << t;
    EXPECT_LE(c.radius, std::abs(t)) << "t = " << t;
    EXPECT_GE(c.radius, radius_floor(t, kSigma, 100000, 0.001)) << "t = " << t;
  }
  EXPECT_EQ(smoothed.predict(torch::stack({linear.at(0.4), linear.at(-0.4)})), (std::vector<int64_t>{1, 0}));
}

TEST(SmoothedClassifier, SmoothsATorchScriptRgbResNet) {
  // The committed ResNet fixture: 10 classes, 3×32×32 inputs, loaded from
  // TorchScript. With σ far below the pixel scale every noisy copy gets the
  // base model's label, so g = f and each certificate's p̲_A is the
  // Clopper–Pearson bound of n out of n.
  const Model resnet = Model::load_torchscript(parry::testing::fixture_path("resnet_small.pt"));
  const torch::Tensor images = torch::jit::load(parry::testing::fixture_path("resnet_small_expected.pt"))
                                   .attr("inputs").toTensor();
  ASSERT_EQ(images.sizes(), (std::vector<int64_t>{4, 3, 32, 32}));
  const torch::Tensor base_labels = resnet.logits(images).argmax(1);
  const certify::SmoothedClassifier tiny(resnet, certify::SmoothingOptions().sigma(1e-6).batch_size(96).seed(3));
  const auto certificates = tiny.certify(images, certify::CertifyOptions().n0(20).n(200));
  ASSERT_EQ(certificates.size(), 4u);
  for (int64_t i = 0; i < 4; ++i) {
    const auto& c = certificates[static_cast<size_t>(i)];
    EXPECT_EQ(c.label, base_labels[i].item<int64_t>());
    EXPECT_EQ(c.top_count, 200);
    EXPECT_EQ(c.votes.sizes(), (std::vector<int64_t>{10}));
    EXPECT_NEAR(c.p_lower, certify::clopper_pearson_lower(200, 200, 0.001), 1e-12);
    EXPECT_NEAR(c.radius, 1e-6 * certify::normal_quantile(c.p_lower), 1e-15);
  }
  // At σ = 0.25 the votes spread, still summing to n over the 10 classes;
  // the attacker's logits differentiate through the ResNet to every channel.
  const certify::SmoothedClassifier noisy(resnet, certify::SmoothingOptions().sigma(0.25).batch_size(96).seed(4));
  const torch::Tensor votes = noisy.vote_counts(images[0], 300);
  EXPECT_EQ(votes.sizes(), (std::vector<int64_t>{10}));
  EXPECT_EQ(votes.sum().item<int64_t>(), 300);
  const torch::Tensor x = images.slice(0, 0, 2).clone().requires_grad_(true);
  const torch::Tensor out = noisy.attack_logits(16, /*seed=*/5)(x);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, 10}));
  const torch::Tensor gradient = torch::autograd::grad({out.select(1, 0).sum()}, {x})[0];
  for (int64_t channel = 0; channel < 3; ++channel) {
    EXPECT_GT(gradient.select(1, channel).abs().sum().item<double>(), 0.0) << "channel " << channel;
  }
}

TEST(SmoothedClassifier, RejectsBadOptionsAndInputWithParryErrors) {
  EXPECT_THROW(certify::SmoothingOptions().sigma(0.0), OptionError);
  EXPECT_THROW(certify::SmoothingOptions().sigma(-0.25), OptionError);
  EXPECT_THROW(certify::SmoothingOptions().sigma(std::nan("")), OptionError);
  EXPECT_THROW(certify::SmoothingOptions().batch_size(0), OptionError);
  EXPECT_THROW(certify::CertifyOptions().alpha(0.0), OptionError);
  EXPECT_THROW(certify::CertifyOptions().alpha(1.0), OptionError);
  EXPECT_THROW(certify::SmoothedPredictOptions().alpha(1.5), OptionError);
  EXPECT_THROW(certify::SmoothedPredictOptions().n(0), OptionError);
  try {
    certify::SmoothingOptions().sigma(-1);
    FAIL() << "no exception";
  } catch (const OptionError& e) {
    EXPECT_STREQ(e.what(), "SmoothingOptions::sigma: must be positive and finite, but got -1");
  }
  const LinearTwoClass linear;
  const certify::SmoothedClassifier smoothed(linear.model(), seeded(11));
  EXPECT_THROW(smoothed.certify(linear.at(0.1), certify::CertifyOptions().n0(200).n(100)), OptionError);
  EXPECT_THROW(smoothed.predict(torch::zeros({16})), InputError);
  EXPECT_THROW(smoothed.predict(torch::zeros({0, 1, 4, 4})), InputError);
  EXPECT_THROW(smoothed.predict(torch::zeros({1, 1, 4, 4}, torch::kInt64)), InputError);
  // Double precision is converted to the model's float32, not refused.
  EXPECT_EQ(smoothed.predict(linear.at(0.5).to(torch::kFloat64))[0], 1);
  EXPECT_THROW(smoothed.predict(torch::Tensor()), InputError);
  EXPECT_THROW(smoothed.vote_counts(linear.at(0.1), 0), OptionError);
  auto net = torch::nn::Sequential(torch::nn::Flatten(), torch::nn::Linear(16, 2));
  EXPECT_THROW((void)certify::SmoothedClassifier(Model(net), seeded(1)), StateError);  // LibTorch modules start in training mode
}

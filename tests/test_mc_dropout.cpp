#include "parry/detect/mc_dropout.hpp"

#include <thread>

#include "attack_support.hpp"

using namespace parry;
using parry::testing::correctly_classified;
using parry::testing::reference_model;

namespace {

class McDropoutTest : public parry::testing::SeededTest {};

// Dropout before the features/head split: the fast path must refuse it.
struct DropoutInFeaturesImpl : torch::nn::Cloneable<DropoutInFeaturesImpl> {
  DropoutInFeaturesImpl() { reset(); }
  void reset() override {
    fc1 = register_module("fc1", torch::nn::Linear(4, 8));
    drop = register_module("drop", torch::nn::Dropout(0.5));
    fc2 = register_module("fc2", torch::nn::Linear(8, 3));
  }
  torch::Tensor features(const torch::Tensor& x) { return drop(torch::relu(fc1(x.flatten(1)))); }
  torch::Tensor head(const torch::Tensor& f) { return fc2(f); }
  torch::Tensor forward(const torch::Tensor& x) { return head(features(x)); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(DropoutInFeatures);

torch::Tensor test_images(int64_t n) {
  return correctly_classified(n).images;
}

}  // namespace

TEST(McDropoutFormula, IsThePopulationVarianceAveragedOverClasses) {
  // The paper's U(x) = (1/T) Σ ŷ_tᵀŷ_t − ȳᵀȳ, divided by K.
  const auto probs = torch::softmax(torch::randn({7, 3, 5}, torch::kFloat64), 2);
  const auto u = detect::mc_dropout_uncertainty(probs);
  for (int64_t i = 0; i < 3; ++i) {
    const auto y = probs.select(1, i);  // T×K
    const auto mean = y.mean(0);
    const double expected = ((y * y).sum(1).mean() - mean.dot(mean)).item<double>() / 5.0;
    EXPECT_NEAR(u[i].item<double>(), expected, 1e-12);
  }
  EXPECT_THROW(detect::mc_dropout_uncertainty(torch::ones({3, 5})), OptionError);
}

TEST_F(McDropoutTest, ZeroDropoutGivesZeroUncertainty) {
  models::ReferenceCnn net(models::ReferenceCnnOptions().dropout(0.0));
  net->eval();
  detect::McDropout detector{Model(net)};
  const auto x = torch::rand({6, 1, 28, 28});
  EXPECT_LT(detector.score(x, Model(net)).abs().max().item<double>(), 1e-12);
}

TEST_F(McDropoutTest, ScoreIsReproducibleUnderASeedAndVariesWithIt) {
  const Model model = reference_model();
  detect::McDropout detector(model);
  EXPECT_TRUE(detector.uses_fast_path());
  const auto x = test_images(16);
  torch::manual_seed(7);
  const auto first = detector.score(x, model);
  torch::manual_seed(7);
  const auto again = detector.score(x, model);
  torch::manual_seed(8);
  const auto other = detector.score(x, model);
  EXPECT_TRUE(torch::equal(first, again));
  EXPECT_FALSE(torch::equal(first, other));
  EXPECT_GT(first.min().item<double>(), 0.0);
  EXPECT_EQ(first.sizes(), torch::IntArrayRef({16}));
}

TEST_F(McDropoutTest, FastPathAndReplicatedPathDrawTheSameMasks) {
  // Both paths feed a (T·N)×128 tensor, pass-major, to the head's dropout, so
  // under one seed they draw identical masks and must agree to rounding.
  const Model model = reference_model();
  detect::McDropout fast(model, detect::McDropoutOptions().samples(20));
  detect::McDropout replicated(model, detect::McDropoutOptions().samples(20).fast_path(false));
  EXPECT_FALSE(replicated.uses_fast_path());
  const auto x = test_images(12);
  torch::manual_seed(3);
  const auto a = fast.mc_probabilities(x);
  torch::manual_seed(3);
  const auto b = replicated.mc_probabilities(x);
  EXPECT_EQ(a.sizes(), torch::IntArrayRef({20, 12, 10}));
  EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-6));
  // And chunking the passes (max_rows) does not change the distribution's
  // mean: compare average uncertainty over many fresh draws.
  detect::McDropout chunked(model, detect::McDropoutOptions().samples(20).max_rows(30));
  double mean_fast = 0, mean_chunked = 0;
  for (int r = 0; r < 20; ++r) {
    mean_fast += fast.score(x, model).mean().item<double>() / 20;
    mean_chunked += chunked.score(x, model).mean().item<double>() / 20;
  }
  EXPECT_NEAR(mean_chunked / mean_fast, 1.0, 0.1);
}

TEST_F(McDropoutTest, NeverTouchesTheServedModel) {
  const Model model = reference_model();
  const auto x = test_images(8);
  torch::Tensor before;
  {
    torch::NoGradGuard no_grad;
    before = model.logits(x);
  }
  detect::McDropout detector(model);
  detector.score(x, model);
  EXPECT_FALSE(model.is_training());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(model.logits(x), before));  // eval mode: deterministic
}

TEST_F(McDropoutTest, RefusesTheFastPathWhenFeaturesAreStochastic) {
  DropoutInFeatures net;
  net->eval();
  const Model model(net);
  detect::McDropout fast(model);
  const auto x = torch::rand({5, 4});
  EXPECT_THROW(fast.score(x, model), StateError);
  detect::McDropout replicated(model, detect::McDropoutOptions().fast_path(false));
  EXPECT_GT(replicated.score(x, model).min().item<double>(), 0.0);
}

TEST_F(McDropoutTest, RejectsBadOptionsAndModelsWithoutDropout) {
  EXPECT_THROW(detect::McDropoutOptions().samples(1), OptionError);
  EXPECT_THROW(detect::McDropoutOptions().samples(10001), OptionError);
  EXPECT_THROW(detect::McDropoutOptions().max_rows(0), OptionError);
  torch::nn::Sequential plain(torch::nn::Flatten(), torch::nn::Linear(4, 2));
  EXPECT_THROW(detect::McDropout{Model(plain)}, StateError);
  detect::McDropout detector(reference_model());
  EXPECT_THROW(detector.score(torch::empty({0, 1, 28, 28}), reference_model()), InputError);
}

TEST_F(McDropoutTest, DifferentiableScoreCarriesGradientsToTheInput) {
  const Model model = reference_model();
  detect::McDropout detector(model, detect::McDropoutOptions().samples(10));
  const auto x = test_images(4).requires_grad_(true);
  const auto u = detector.differentiable_score(x, model);
  const auto grad = torch::autograd::grad({u.sum()}, {x})[0];
  EXPECT_GT(grad.abs().sum().item<double>(), 0.0);
  for (const auto& p : model.parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST_F(McDropoutTest, ConcurrentScoringIsSafeAndDrawsTheSameDistribution) {
  torch::set_num_threads(1);
  const Model model = reference_model();
  detect::McDropout detector(model, detect::McDropoutOptions().samples(30));
  const auto x = test_images(32);
  double reference = 0;
  for (int r = 0; r < 8; ++r) reference += detector.score(x, model).mean().item<double>() / 8;
  constexpr int kThreads = 8;
  std::vector<double> means(kThreads, 0.0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < 4; ++r) means[t] += detector.score(x, model).mean().item<double>() / 4;
    });
  }
  for (auto& thread : threads) thread.join();
  for (double m : means) EXPECT_NEAR(m / reference, 1.0, 0.25);
}

TEST_F(McDropoutTest, CalibratesToTheTargetFalsePositiveRate) {
  const Model model = reference_model();
  detect::McDropout detector(model, detect::McDropoutOptions().samples(20));
  const auto clean = test_images(200);
  const auto report = detector.calibrate(clean, model, 0.05, 64);
  EXPECT_LE(report.achieved_fpr, 0.05);
  EXPECT_GE(report.achieved_fpr, 0.04);
  EXPECT_EQ(report.samples, 200);
}

#include "parry/detect/kernel_density.hpp"

#include <fstream>
#include <thread>

#include "attack_support.hpp"
#include "parry/detect/softmax_confidence.hpp"

using namespace parry;
using parry::testing::reference_model;

namespace {

class KernelDensityTest : public parry::testing::SeededTest {};

// scikit-learn's KernelDensity(kernel="gaussian", bandwidth=σ).score_samples,
// computed directly in double: O(n) per query, no tricks.
double direct_log_density(const torch::Tensor& query, const torch::Tensor& points, double sigma) {
  const auto q = query.to(torch::kFloat64);
  const auto p = points.to(torch::kFloat64);
  const int64_t d = p.size(1);
  double top = -1e300;
  std::vector<double> exponents;
  for (int64_t j = 0; j < p.size(0); ++j) {
    const double d2 = (q - p[j]).pow(2).sum().item<double>();
    exponents.push_back(-d2 / (2 * sigma * sigma));
    top = std::max(top, exponents.back());
  }
  double sum = 0;
  for (double e : exponents) sum += std::exp(e - top);
  return top + std::log(sum) - std::log(static_cast<double>(p.size(0))) -
         0.5 * static_cast<double>(d) * std::log(2 * M_PI * sigma * sigma);
}

}  // namespace

TEST_F(KernelDensityTest, MatchesTheDirectComputationPerClass) {
  const auto features = torch::randn({60, 5}) * 2.0;
  const auto labels = torch::randint(0, 3, {60}, torch::kInt64);
  detect::KernelDensity kde(detect::KernelDensityOptions().bandwidth(1.2));
  kde.fit_features(features, labels);
  EXPECT_EQ(kde.feature_dim(), 5);
  EXPECT_EQ(kde.classes(), 3);
  const auto queries = torch::randn({9, 5}) * 2.0;
  const auto classes = torch::tensor({0, 1, 2, 2, 1, 0, 0, 1, 2}, torch::kInt64);
  const auto got = kde.log_density(queries, classes);
  for (int64_t i = 0; i < 9; ++i) {
    const int64_t c = classes[i].item<int64_t>();
    const auto members = features.index_select(0, torch::nonzero(labels == c).flatten());
    EXPECT_NEAR(got[i].item<double>(), direct_log_density(queries[i], members, 1.2), 1e-4) << "query " << i;
  }
}

TEST_F(KernelDensityTest, BlocksOfStoredPointsCombineExactly) {
  // 5000 points of one class: the log-sum-exp runs over three blocks of 2048.
  const auto features = torch::randn({5000, 4});
  detect::KernelDensity kde(detect::KernelDensityOptions().bandwidth(0.3));
  kde.fit_features(features, torch::zeros({5000}, torch::kInt64));
  const auto queries = torch::randn({3, 4}) * 3.0;  // some far away: tiny densities
  const auto got = kde.log_density(queries, torch::zeros({3}, torch::kInt64));
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(got[i].item<double>(), direct_log_density(queries[i], features, 0.3), 1e-3);
  }
}

TEST_F(KernelDensityTest, ScoresOnTheReferenceModelAndAgreesWithTheDifferentiableForm) {
  const Model model = reference_model();
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 500);
  detect::KernelDensity kde;
  kde.fit(model, train.images, train.labels, 128);
  EXPECT_EQ(kde.feature_dim(), 128);
  const auto test = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 20);
  const auto served = kde.score(test.images, model);
  const auto differentiable = kde.differentiable_score(test.images, model);
  EXPECT_TRUE(torch::allclose(served, differentiable.detach(), 1e-3, 1e-2))
      << served.slice(0, 0, 4) << differentiable.slice(0, 0, 4);
  // Uniform noise is far from every class's features: much lower density.
  const auto noise = kde.score(torch::rand({20, 1, 28, 28}), model);
  EXPECT_GT(noise.median().item<double>(), served.median().item<double>());
}

TEST_F(KernelDensityTest, RejectsBadInputsAndUnfittedUse) {
  EXPECT_THROW(detect::KernelDensityOptions().bandwidth(0.0), OptionError);
  EXPECT_THROW(detect::KernelDensityOptions().bandwidth(std::nan("")), OptionError);
  detect::KernelDensity kde;
  EXPECT_FALSE(kde.is_fitted());
  EXPECT_THROW(kde.log_density(torch::zeros({1, 3}), torch::zeros({1}, torch::kInt64)), StateError);
  EXPECT_THROW(kde.fit_features(torch::zeros({4, 3}), torch::zeros({3}, torch::kInt64)), OptionError);
  EXPECT_THROW(kde.fit_features(torch::zeros({4, 3}), torch::zeros({4}, torch::kFloat32)), OptionError);
  EXPECT_THROW(kde.fit_features(torch::full({2, 3}, std::nan("")), torch::zeros({2}, torch::kInt64)), OptionError);
  EXPECT_THROW(kde.fit_features(torch::zeros({2, 3}), torch::tensor({0, -1}, torch::kInt64)), OptionError);
  kde.fit_features(torch::zeros({2, 3}), torch::tensor({0, 2}, torch::kInt64));
  EXPECT_THROW(kde.log_density(torch::zeros({1, 4}), torch::zeros({1}, torch::kInt64)), OptionError);
  // Class 1 has no training features: density 0, log density −inf.
  EXPECT_TRUE(std::isinf(kde.log_density(torch::zeros({1, 3}), torch::ones({1}, torch::kInt64))[0].item<double>()));
  torch::nn::Sequential no_split(torch::nn::Flatten(), torch::nn::Linear(784, 10));
  EXPECT_THROW(kde.fit(Model(no_split), torch::zeros({2, 1, 28, 28}), torch::zeros({2}, torch::kInt64)), StateError);
}

TEST_F(KernelDensityTest, SavesAndLoadsItsFitAndRejectsCorruptOrForeignFiles) {
  parry::testing::TempDir dir;
  const auto features = torch::randn({50, 6});
  const auto labels = torch::randint(0, 4, {50}, torch::kInt64);
  detect::KernelDensity kde(detect::KernelDensityOptions().bandwidth(0.8));
  kde.fit_features(features, labels);
  kde.set_threshold(3.5);
  kde.save(dir.file("kde.pt"));

  detect::KernelDensity loaded;  // default bandwidth 1.2: the file's 0.8 wins
  loaded.load(dir.file("kde.pt"));
  EXPECT_DOUBLE_EQ(loaded.options().bandwidth(), 0.8);
  EXPECT_DOUBLE_EQ(loaded.threshold(), 3.5);
  const auto q = torch::randn({5, 6});
  const auto c = torch::randint(0, 4, {5}, torch::kInt64);
  EXPECT_TRUE(torch::equal(kde.log_density(q, c), loaded.log_density(q, c)));

  {
    std::ofstream out(dir.file("corrupt.pt"), std::ios::binary);
    out << "not a detector";
  }
  detect::KernelDensity untouched;
  EXPECT_THROW(untouched.load(dir.file("corrupt.pt")), IoError);
  EXPECT_FALSE(untouched.is_fitted());
  detect::SoftmaxConfidence other;
  other.set_threshold(0.5);
  other.save(dir.file("other.pt"));
  EXPECT_THROW(untouched.load(dir.file("other.pt")), IoError);
  EXPECT_THROW(untouched.load(dir.file("missing.pt")), IoError);
  EXPECT_FALSE(untouched.is_fitted());
  EXPECT_THROW(untouched.save(dir.file("unfitted.pt")), StateError);
}

TEST_F(KernelDensityTest, ConcurrentScoresAreIdentical) {
  const auto features = torch::randn({3000, 16});
  const auto labels = torch::randint(0, 10, {3000}, torch::kInt64);
  detect::KernelDensity kde;
  kde.fit_features(features, labels);
  const auto q = torch::randn({64, 16});
  const auto c = torch::randint(0, 10, {64}, torch::kInt64);
  const auto expected = kde.log_density(q, c);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int r = 0; r < 5; ++r) {
        if (!torch::equal(kde.log_density(q, c), expected)) ++mismatches;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

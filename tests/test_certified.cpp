#include "parry/eval/certified.hpp"

#include <gtest/gtest.h>

#include "certify_support.hpp"
#include "parry/data/image_source.hpp"

using namespace parry;
using parry::testing::LinearTwoClass;

TEST(CertifiedRows, MatchTheClosedFormOfALinearModelAtEveryRadius) {
  // The linear model's images at distance |t| from the boundary: |t| is
  // their exact certified radius and the L2 budget that breaks them.
  const LinearTwoClass linear(23);
  const std::vector<double> distances{0.2, -0.2, 0.45, -0.45, 0.7, -0.7};
  std::vector<torch::Tensor> images;
  std::vector<int64_t> labels;
  for (const double t : distances) {
    images.push_back(linear.at(t));
    labels.push_back(t > 0 ? 1 : 0);
  }
  const auto test = data::from_tensors(torch::stack(images), torch::tensor(labels), {"negative", "positive"}, "linear");
  config::CertifiedSpec spec;
  spec.sigmas = {0.25};
  spec.images = 6;
  spec.attack_images = 6;
  spec.radii = {0.0, 0.1, 0.3, 0.55};
  const auto rows = eval::evaluate_certified(linear.model(), *test, spec, /*seed=*/3);
  ASSERT_EQ(rows.size(), 1u);
  const auto& row = rows[0];
  EXPECT_EQ(row.images, 6);
  EXPECT_EQ(row.n, 10000);
  // Each image's certified radius lies between its floor at n = 10,000
  // (0.175, 0.411, 0.613: radius_floor) and its distance, and each table
  // radius lies outside those bands with room: so the certified accuracy is
  // the share of images at distance >= r, 6, 6, 4, 2 of 6. An attack at
  // budget r moves an image 0.1 or more past the boundary if its distance is
  // below r and leaves it 0.1 or more short otherwise, where PREDICT
  // (n = 1,000) answers without doubt: the attacked accuracy is the same.
  for (size_t i = 0; i < distances.size(); ++i) {
    EXPECT_LE(row.correct_radius[i], std::abs(distances[i]));
    EXPECT_GE(row.correct_radius[i], parry::testing::radius_floor(distances[i], 0.25, 10000, 0.001));
  }
  const std::vector<double> expected{6 / 6.0, 6 / 6.0, 4 / 6.0, 2 / 6.0};
  ASSERT_EQ(row.certified_accuracy.size(), 4u);
  ASSERT_EQ(row.empirical_accuracy.size(), 4u);
  for (size_t k = 0; k < expected.size(); ++k) {
    EXPECT_NEAR(row.certified_accuracy[k], expected[k], 1e-12) << "r = " << spec.radii[k];
    EXPECT_NEAR(row.empirical_accuracy[k], expected[k], 1e-12) << "r = " << spec.radii[k];
  }
  EXPECT_EQ(row.abstention_rate, 0.0);
  EXPECT_DOUBLE_EQ(row.certified_accuracy_at(0.6), 2 / 6.0);
  EXPECT_DOUBLE_EQ(row.certified_accuracy_at(0.71), 0.0);
  EXPECT_GT(row.certify_cost_ratio, 0.0);
  EXPECT_GT(row.images_per_second(), 0.0);
}

TEST(CertifiedRows, AreEmptyWithoutSigmasAndRefuseBadSettingsBeforeAnyWork) {
  const LinearTwoClass linear;
  const auto test = data::from_tensors(torch::full({2, 1, 4, 4}, 0.5), torch::tensor({0, 1}, torch::kInt64),
                                       {"a", "b"}, "two");
  config::CertifiedSpec spec;
  EXPECT_TRUE(eval::evaluate_certified(linear.model(), *test, spec, 0).empty());
  spec.sigmas = {0.25};
  spec.images = 3;
  EXPECT_THROW(eval::check_certified(spec, *test), OptionError);  // 3 images of 2
  spec.images = 2;
  spec.attack_images = 2;
  EXPECT_NO_THROW(eval::check_certified(spec, *test));
  spec.sigmas = {0.25, std::numeric_limits<double>::infinity()};
  EXPECT_THROW(eval::check_certified(spec, *test), OptionError);
  spec.sigmas = {0.25};
  spec.n0 = 20000;
  EXPECT_THROW(eval::check_certified(spec, *test), OptionError);
}

#include "parry/eval/certified.hpp"

#include <gtest/gtest.h>

#include "parry/data/image_source.hpp"

using namespace parry;

namespace {

// A linear two-class model on 1×4×4 pixels: class 1 where (x − ½)·w > 0, w
// of unit length, so the image ½ + t·w lies at distance |t| from the
// boundary, which is both the exact certified radius (σ·Φ⁻¹(p_A) with
// p_A = Φ(|t|/σ)) and the L2 budget an attacker needs.
struct Linear {
  torch::Tensor w;
  Linear() {
    torch::manual_seed(23);
    w = torch::randn({16});
    w /= w.norm();
  }
  Model model() const {
    const torch::Tensor weights = w;
    return Model::from_callable([weights](const torch::Tensor& x) {
      const torch::Tensor margin = (x.flatten(1) - 0.5).matmul(weights);
      return torch::stack({torch::zeros_like(margin), margin}, 1);
    });
  }
};

}  // namespace

TEST(CertifiedRows, MatchTheClosedFormOfALinearModelAtEveryRadius) {
  const Linear linear;
  const std::vector<double> distances{0.05, -0.15, 0.3, -0.45, 0.6, -0.8};
  std::vector<torch::Tensor> images;
  std::vector<int64_t> labels;
  for (const double t : distances) {
    images.push_back((0.5 + t * linear.w).reshape({1, 4, 4}));
    labels.push_back(t > 0 ? 1 : 0);
  }
  const auto test = data::from_tensors(torch::stack(images), torch::tensor(labels), {"negative", "positive"}, "linear");
  config::CertifiedSpec spec;
  spec.sigmas = {0.25};
  spec.images = 6;
  spec.attack_images = 6;
  spec.radii = {0.0, 0.1, 0.25, 0.5};
  const auto rows = eval::evaluate_certified(linear.model(), *test, spec, /*seed=*/3);
  ASSERT_EQ(rows.size(), 1u);
  const auto& row = rows[0];
  EXPECT_EQ(row.images, 6);
  EXPECT_EQ(row.n, 10000);
  // Images at distance ≥ r: 6, 5, 4, 2 of 6. With n = 10,000 every radius
  // from distance 0.15 on is within 10% of its distance, and no distance is
  // within 10% above a radius of the table, so certified and attacked
  // accuracy both equal it.
  const std::vector<double> expected{6 / 6.0, 5 / 6.0, 4 / 6.0, 2 / 6.0};
  ASSERT_EQ(row.certified_accuracy.size(), 4u);
  ASSERT_EQ(row.empirical_accuracy.size(), 4u);
  for (size_t k = 0; k < expected.size(); ++k) {
    EXPECT_NEAR(row.certified_accuracy[k], expected[k], 1e-12) << "r = " << spec.radii[k];
    EXPECT_NEAR(row.empirical_accuracy[k], expected[k], 1e-12) << "r = " << spec.radii[k];
  }
  EXPECT_EQ(row.abstention_rate, 0.0);
  ASSERT_EQ(row.correct_radius.size(), 6u);
  for (size_t i = 0; i < distances.size(); ++i) {
    EXPECT_LE(row.correct_radius[i], std::abs(distances[i]));
    // Clopper–Pearson at n = 10,000 costs about 20% of the radius at distance 0.05, under 10% from 0.15 on.
    EXPECT_GE(row.correct_radius[i], (std::abs(distances[i]) >= 0.15 ? 0.9 : 0.75) * std::abs(distances[i]));
  }
  EXPECT_DOUBLE_EQ(row.certified_accuracy_at(0.7), 1 / 6.0);
  EXPECT_GT(row.certify_cost_ratio, 0.0);
}

TEST(CertifiedRows, AreEmptyWithoutSigmasAndRefuseTooFewImages) {
  const Linear linear;
  const auto test = data::from_tensors(torch::full({2, 1, 4, 4}, 0.5), torch::tensor({0, 1}, torch::kInt64), {"a", "b"}, "two");
  config::CertifiedSpec spec;
  EXPECT_TRUE(eval::evaluate_certified(linear.model(), *test, spec, 0).empty());
  spec.sigmas = {0.25};
  spec.images = 3;
  EXPECT_THROW(eval::evaluate_certified(linear.model(), *test, spec, 0), OptionError);
}

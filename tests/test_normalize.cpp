#include "parry/preprocess/normalize.hpp"

#include "test_support.hpp"

using parry::GradientPolicy;
using parry::OptionError;
using parry::preprocess::Normalize;
using parry::preprocess::NormalizeOptions;

class NormalizeTest : public parry::testing::SeededTest {};

TEST_F(NormalizeTest, MatchesFormulaPerChannel) {
  Normalize n(NormalizeOptions({0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}));
  auto x = torch::rand({2, 3, 5, 4});
  auto y = n.apply(x);
  for (int c = 0; c < 3; ++c) {
    const double mean[] = {0.485, 0.456, 0.406};
    const double stdev[] = {0.229, 0.224, 0.225};
    EXPECT_TRUE(torch::allclose(y.select(1, c), (x.select(1, c) - mean[c]) / stdev[c], 1e-5, 1e-6));
  }
  EXPECT_EQ(n.gradient_policy(), GradientPolicy::Exact);
}

TEST_F(NormalizeTest, ExactGradientPassesGradcheck) {
  Normalize n(NormalizeOptions({0.3}, {0.7}));
  auto x = torch::rand({2, 1, 3, 3}, torch::kFloat64);
  EXPECT_LT(parry::testing::gradcheck_error([&](const torch::Tensor& in) { return n.apply_differentiable(in); }, x),
            1e-6);
}

TEST_F(NormalizeTest, BadOptionsAndChannelMismatch) {
  EXPECT_THROW(NormalizeOptions({0.5}, {0.0}), OptionError);
  EXPECT_THROW(NormalizeOptions({0.5}, {-1.0}), OptionError);
  EXPECT_THROW(NormalizeOptions({0.5, 0.5}, {1.0}), OptionError);
  EXPECT_THROW(NormalizeOptions({}, {}), OptionError);
  Normalize n(NormalizeOptions({0.5}, {0.5}));
  EXPECT_THROW(n.apply(torch::rand({1, 3, 2, 2})), OptionError);
}

TEST_F(NormalizeTest, ServingAndAttackPathsAgreeExactly) {
  Normalize n(NormalizeOptions({0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}));
  auto x = torch::rand({4, 3, 16, 16});
  auto served = n.apply(x);
  auto attacked = n.apply_differentiable(x.clone().requires_grad_(true));
  EXPECT_TRUE(torch::equal(served, attacked.detach()));
}

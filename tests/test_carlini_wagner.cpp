#include "attack_support.hpp"

using namespace parry;
using namespace parry::attack;

namespace {
class CarliniWagnerTest : public parry::testing::SeededTest {};
}  // namespace

TEST_F(CarliniWagnerTest, FindsTheMinimalL2ExampleOfALinearModel) {
  // Two classes, logits z = Wx: the closest point of the other class lies at
  // distance margin / ||w1 − w0|| along w1 − w0 (when it stays in [0, 1]).
  auto w = torch::randn({2, 16}) * 0.5;
  parry::testing::LinearModel lin{w, torch::zeros({2})};
  auto x = torch::full({1, 1, 4, 4}, 0.5f);
  auto z = lin.fn()(x);
  const int64_t label = z.argmax(1).item<int64_t>();
  auto y = torch::full({1}, label, torch::kInt64);
  const auto d = w[1 - label] - w[label];
  const double distance = (z[0][label] - z[0][1 - label]).item<double>() / d.norm().item<double>();
  auto r = carlini_wagner_l2(lin.fn(), x, y,
                             CarliniWagnerOptions().binary_search_steps(10).max_iterations(300).learning_rate(0.01));
  ASSERT_TRUE(r.success[0].item<bool>());
  EXPECT_NEAR(r.norm[0].item<double>(), distance, 0.1 * distance + 1e-3);
  EXPECT_GE(r.norm[0].item<double>(), distance - 1e-4) << "cannot beat the true minimum";
}

TEST_F(CarliniWagnerTest, SucceedsOnTheReferenceModel) {
  auto data = parry::testing::correctly_classified(32);
  auto r = carlini_wagner_l2(differentiable(parry::testing::reference_model()), data.images, data.labels,
                             CarliniWagnerOptions().binary_search_steps(5).max_iterations(60).learning_rate(0.05));
  RecordProperty("cw_success", std::to_string(r.success_rate()));
  RecordProperty("cw_median_l2", std::to_string(r.norm.median().item<float>()));
  EXPECT_GE(r.success_rate(), 0.95);
  EXPECT_GE(r.adversarial.min().item<float>(), 0.f);
  EXPECT_LE(r.adversarial.max().item<float>(), 1.f);
  // Minimal perturbations: far below what PGD's L∞ ball at 0.1 allows (L2 up to 2.8).
  EXPECT_LT(r.norm.masked_select(r.success).median().item<float>(), 1.5f);
  EXPECT_TRUE(torch::allclose(r.norm, perturbation_norm(r.adversarial - data.images, Norm::L2)));
}

TEST_F(CarliniWagnerTest, ConfidenceMarginIsHonoured) {
  auto data = parry::testing::correctly_classified(8);
  const double kappa = 5.0;
  auto r = carlini_wagner_l2(
      differentiable(parry::testing::reference_model()), data.images, data.labels,
      CarliniWagnerOptions().confidence(kappa).binary_search_steps(5).max_iterations(60).learning_rate(0.05));
  torch::NoGradGuard no_grad;
  auto logits = parry::testing::reference_model().logits(r.adversarial);
  auto own = logits.gather(1, data.labels.view({-1, 1})).flatten();
  auto other = std::get<0>(logits.scatter(1, data.labels.view({-1, 1}), -1e9).max(1));
  auto margin = (other - own).masked_select(r.success);
  ASSERT_GT(margin.numel(), 0);
  EXPECT_GT(margin.min().item<float>(), kappa - 1e-3);
}

TEST_F(CarliniWagnerTest, BadArguments) {
  EXPECT_THROW(CarliniWagnerOptions().confidence(-1), OptionError);
  EXPECT_THROW(CarliniWagnerOptions().initial_const(0), OptionError);
  EXPECT_THROW(CarliniWagnerOptions().binary_search_steps(0), OptionError);
  EXPECT_THROW(CarliniWagnerOptions().max_iterations(0), OptionError);
  EXPECT_THROW(CarliniWagnerOptions().learning_rate(-0.1), OptionError);
}

#include "attack_support.hpp"

using namespace parry;
using namespace parry::attack;

namespace {
class FgsmTest : public parry::testing::SeededTest {};
}  // namespace

TEST_F(FgsmTest, MatchesTheClosedFormOnALinearModel) {
  parry::testing::LinearModel lin{torch::randn({3, 12}), torch::randn({3})};
  auto x = torch::rand({5, 1, 3, 4}) * 0.6 + 0.2;
  auto y = torch::tensor({0, 1, 2, 1, 0}, torch::kInt64);
  // ∇x CE = Wᵀ (softmax(Wx + b) − onehot(y)).
  auto p = torch::softmax(torch::addmm(lin.bias, x.flatten(1), lin.weight.t()), 1);
  auto grad = (p - torch::one_hot(y, 3).to(torch::kFloat32)).mm(lin.weight).view_as(x);
  auto expected = (x + 0.1 * grad.sign()).clamp(0, 1);
  auto r = fgsm(lin.fn(), x, y, FgsmOptions(0.1));
  EXPECT_TRUE(torch::allclose(r.adversarial, expected));
  EXPECT_TRUE(torch::allclose(r.norm, torch::full({5}, 0.1f), 0, 1e-6));
  // Targeted: descends the loss of the target class.
  GradientSettings targeted;
  targeted.targeted = true;
  auto t = torch::tensor({2, 2, 0, 0, 1}, torch::kInt64);
  auto pt = torch::softmax(torch::addmm(lin.bias, x.flatten(1), lin.weight.t()), 1);
  auto gt = (pt - torch::one_hot(t, 3).to(torch::kFloat32)).mm(lin.weight).view_as(x);
  auto rt = fgsm(lin.fn(), x, t, FgsmOptions(0.05).settings(targeted));
  EXPECT_TRUE(torch::allclose(rt.adversarial, (x - 0.05 * gt.sign()).clamp(0, 1)));
}

TEST_F(FgsmTest, LowersReferenceAccuracyInsideTheThreatModel) {
  auto data = parry::testing::correctly_classified(64);
  auto r = fgsm(differentiable(parry::testing::reference_model()), data.images, data.labels, FgsmOptions(0.1));
  const double accuracy = parry::testing::reference_accuracy(r.adversarial, data.labels);
  RecordProperty("fgsm_accuracy", std::to_string(accuracy));
  EXPECT_LT(accuracy, 0.6) << "FGSM at ε = 0.1 should fool a large share of an undefended model";
  EXPECT_NEAR(r.success_rate(), 1.0 - accuracy, 1e-9);
  EXPECT_LE((r.adversarial - data.images).abs().max().item<float>(), 0.1f + 1e-6f);
  EXPECT_GE(r.adversarial.min().item<float>(), 0.f);
  EXPECT_LE(r.adversarial.max().item<float>(), 1.f);
  EXPECT_TRUE(torch::equal(r.queries, torch::full({64}, 2, torch::kInt64)));
}

TEST_F(FgsmTest, BadArguments) {
  parry::testing::LinearModel lin{torch::randn({3, 4}), torch::zeros({3})};
  auto x = torch::rand({2, 1, 2, 2});
  auto y = torch::zeros({2}, torch::kInt64);
  EXPECT_THROW(FgsmOptions(-0.1), OptionError);
  EXPECT_THROW(fgsm(lin.fn(), x, y.slice(0, 0, 1)), OptionError);
  EXPECT_THROW(fgsm(lin.fn(), x, y.to(torch::kInt32)), OptionError);
  EXPECT_THROW(fgsm(lin.fn(), x * 3, y), OptionError) << "outside the clip range";
  EXPECT_THROW(fgsm(lin.fn(), x, torch::full({2}, 7, torch::kInt64)), OptionError) << "label above the class count";
  EXPECT_THROW(fgsm(lin.fn(), torch::rand({2, 4}), y), OptionError);
  GradientSettings bad;
  bad.eot_samples = 0;
  EXPECT_THROW(FgsmOptions(0.1).settings(bad), OptionError);
}

#include "attack_support.hpp"

#include "parry/preprocess/bit_depth.hpp"

using namespace parry;
using namespace parry::attack;

namespace {
class PgdTest : public parry::testing::SeededTest {};

// Two classes: the loss gradient of class 0 always points along w1 − w0.
parry::testing::LinearModel two_class() {
  auto w = torch::randn({2, 16});
  return {w, torch::zeros({2})};
}
}  // namespace

TEST_F(PgdTest, LinfConvergesToTheClosedFormCorner) {
  auto lin = two_class();
  auto x = torch::full({3, 1, 4, 4}, 0.5f);
  auto y = torch::zeros({3}, torch::kInt64);
  const auto direction = (lin.weight[1] - lin.weight[0]).sign().view({1, 1, 4, 4});
  for (bool random_start : {false, true}) {
    auto r = pgd(lin.fn(), x, y, PgdOptions(0.1).steps(20).random_start(random_start));
    EXPECT_TRUE(torch::allclose(r.adversarial, (x + 0.1 * direction).expand_as(x), 0, 1e-6)) << random_start;
  }
}

TEST_F(PgdTest, L2ConvergesToTheClosedFormPoint) {
  auto lin = two_class();
  auto x = torch::full({2, 1, 4, 4}, 0.5f);
  auto y = torch::zeros({2}, torch::kInt64);
  auto d = (lin.weight[1] - lin.weight[0]);
  auto expected = x + (0.3 * d / d.norm()).view({1, 1, 4, 4});  // inside [0,1]: every |0.3·d_i/||d||| < 0.5
  // From x itself (BIM) every step goes along d and the projection stops it at ε.
  auto r = pgd(lin.fn(), x, y, PgdOptions(0.3, Norm::L2).steps(30).random_start(false));
  EXPECT_TRUE(torch::allclose(r.adversarial, expected.expand_as(x), 0, 1e-5));
  EXPECT_TRUE(torch::allclose(r.norm, torch::full({2}, 0.3f), 0, 1e-5));
  // From a random start the radial projection turns the perturbation towards d.
  auto random = pgd(lin.fn(), x, y, PgdOptions(0.3, Norm::L2).steps(200).step_size(0.15));
  EXPECT_TRUE(torch::allclose(random.adversarial, expected.expand_as(x), 0, 1e-3));
}

TEST_F(PgdTest, Pgd40DrivesReferenceAccuracyBelowFivePercent) {
  auto data = parry::testing::correctly_classified(64);
  auto r = pgd(differentiable(parry::testing::reference_model()), data.images, data.labels,
               PgdOptions(0.1).steps(40).step_size(0.01));
  const double accuracy = parry::testing::reference_accuracy(r.adversarial, data.labels);
  RecordProperty("pgd40_accuracy", std::to_string(accuracy));
  EXPECT_LT(accuracy, 0.05);
  EXPECT_LE(r.norm.max().item<float>(), 0.1f + 1e-6f);
  EXPECT_GE(r.adversarial.min().item<float>(), 0.f);
  EXPECT_LE(r.adversarial.max().item<float>(), 1.f);
}

TEST_F(PgdTest, L2AndRestartsStayInTheBall) {
  auto data = parry::testing::correctly_classified(16);
  auto r = pgd(differentiable(parry::testing::reference_model()), data.images, data.labels,
               PgdOptions(1.0, Norm::L2).steps(10).restarts(3));
  EXPECT_LE(r.norm.max().item<float>(), 1.0f + 1e-5f);
  EXPECT_GT(r.success_rate(), 0.5);
  // A fooled sample is not attacked again: queries are 11 per restart it took part in.
  EXPECT_TRUE((r.queries % 11 == 0).all().item<bool>());
  EXPECT_LE(r.queries.max().item<int64_t>(), 33);
}

TEST_F(PgdTest, ReproducibleUnderASeed) {
  auto data = parry::testing::correctly_classified(8);
  auto run = [&] {
    return pgd(differentiable(parry::testing::reference_model()), data.images, data.labels, PgdOptions(0.05).steps(5))
        .adversarial;
  };
  EXPECT_TRUE(torch::equal(run(), run()));
}

TEST_F(PgdTest, BpdaThroughTheGuardAndBlockedGradientsShowMasking) {
  // Bit-depth reduction in front of the model: with BPDA PGD still works; with
  // a blocked gradient the attack learns nothing (gradient masking, not robustness).
  auto data = parry::testing::correctly_classified(32);
  auto make_guard = [&](GradientPolicy policy) {
    auto guard = GuardBuilder(parry::testing::reference_model(), InputSpec(1, 28, 28))
                     .add_preprocessor(
                         std::make_shared<preprocess::BitDepth>(preprocess::BitDepthOptions(4).gradient_policy(policy)))
                     .build_shared();
    return guard;
  };
  auto bpda = make_guard(GradientPolicy::StraightThrough);
  auto blocked = make_guard(GradientPolicy::Blocked);
  auto options = PgdOptions(0.1).steps(20).random_start(false);
  auto r_bpda = pgd(differentiable(*bpda), data.images, data.labels, options);
  auto r_blocked = pgd(differentiable(*blocked), data.images, data.labels, options);
  EXPECT_GT(r_bpda.success_rate(), 0.9);
  EXPECT_TRUE(torch::equal(r_blocked.adversarial, data.images)) << "zero gradient: PGD cannot move";
  // Its only "successes" are images the bit-depth reduction alone misclassifies.
  torch::NoGradGuard no_grad;
  const double clean_error =
      blocked->differentiable_logits(data.images).argmax(1).ne(data.labels).to(torch::kFloat64).mean().item<double>();
  EXPECT_DOUBLE_EQ(r_blocked.success_rate(), clean_error);
  EXPECT_LT(clean_error, 0.1);
}

TEST_F(PgdTest, NoParameterGradientsAreTouched) {
  auto model = parry::testing::reference_model();
  for (auto& p : model.parameters()) p.mutable_grad() = torch::Tensor();
  auto data = parry::testing::correctly_classified(4);
  pgd(differentiable(model), data.images, data.labels, PgdOptions(0.1).steps(3));
  for (const auto& p : model.parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST_F(PgdTest, BadArguments) {
  auto lin = two_class();
  EXPECT_THROW(PgdOptions(-1), OptionError);
  EXPECT_THROW(PgdOptions(0.1).steps(0), OptionError);
  EXPECT_THROW(PgdOptions(0.1).restarts(0), OptionError);
  EXPECT_THROW(PgdOptions(0.1).step_size(0), OptionError);
  EXPECT_THROW(pgd(lin.fn(), torch::rand({2, 1, 4, 4}), torch::zeros({3}, torch::kInt64)), OptionError);
}

TEST_F(PgdTest, EotRecoversTheExpectedGradientOfARandomisedDefense) {
  // Randomised defense: logits = (W + R) x with fresh zero-mean noise R on
  // every call. Reference E[∇]: the closed-form per-draw gradient
  // (W + R)ᵀ (softmax((W + R) x) − e_y), averaged over 20,000 draws.
  auto w = torch::randn({2, 64});
  auto randomised = [w](const torch::Tensor& x) { return x.flatten(1).mm((w + 3.0 * torch::randn_like(w)).t()); };
  auto x = torch::full({1, 1, 8, 8}, 0.5f);
  auto y = torch::zeros({1}, torch::kInt64);
  auto draws = w.unsqueeze(0) + 3.0 * torch::randn({20000, 2, 64});
  auto p = torch::softmax(draws.matmul(x.flatten()), 1);                             // M × 2
  auto residual = p - torch::tensor({1.0f, 0.0f});                                   // p − e_0
  auto expected = (draws * residual.unsqueeze(2)).sum(1).mean(0).view_as(x).sign();  // E[(W+R)ᵀ(p − e_y)]
  GradientSettings one, many;
  many.eot_samples = 2000;
  auto agreement = [&](const GradientSettings& s) {
    return loss_gradient(randomised, x, y, s).first.sign().eq(expected).to(torch::kFloat32).mean().item<float>();
  };
  const float single = agreement(one);
  const float averaged = agreement(many);
  RecordProperty("eot_sign_agreement_1", std::to_string(single));
  RecordProperty("eot_sign_agreement_2000", std::to_string(averaged));
  EXPECT_GT(averaged, 0.95f);
  EXPECT_LT(single, 0.85f) << "one draw of the randomised defense should be a poor gradient";
}

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

// Ten logits with a zero input gradient: sign steps do not move, so PGD returns its start point.
LogitsFn flat_model() {
  return [](const torch::Tensor& x) { return x.flatten(1).mm(torch::zeros({x[0].numel(), 10})); };
}

// Summed KL(p ‖ q) per sample of two probability matrices, in float64.
torch::Tensor kl_per_sample(const torch::Tensor& p, const torch::Tensor& q) {
  const auto p64 = p.to(torch::kFloat64), q64 = q.to(torch::kFloat64);
  return (p64 * (p64.clamp_min(1e-30).log() - q64.clamp_min(1e-30).log())).sum(1);
}

torch::Tensor probabilities(const LogitsFn& f, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return torch::softmax(f(x), 1);
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
  EXPECT_THROW(PgdOptions(0.1).gaussian_start(0), OptionError);
  const auto x = torch::rand({2, 1, 4, 4});
  const auto y = torch::zeros({2}, torch::kInt64);
  // last_iterate is one run: restarts would have nothing to select from.
  try {
    pgd(lin.fn(), x, y, PgdOptions(0.1).restarts(3).last_iterate(true));
    ADD_FAILURE() << "restarts with last_iterate were accepted";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("restarts = 1, but got 3"), std::string::npos) << e.what();
  }
  GradientSettings targeted;
  targeted.targeted = true;
  EXPECT_THROW(pgd(lin.fn(), x, y, PgdOptions(0.1).loss(PgdLoss::KlToClean).settings(targeted)), OptionError);
  // The KL loss checks the labels too (they judge success).
  EXPECT_THROW(pgd(lin.fn(), x, torch::full({2}, 5L), PgdOptions(0.1).loss(PgdLoss::KlToClean)), OptionError);
}

TEST_F(PgdTest, StartsFromTheCallersGeneratorAndAdvancesIt) {
  const auto x = torch::rand({4, 1, 4, 4}) * 0.6 + 0.2;
  const auto y = torch::zeros({4}, torch::kInt64);
  torch::Generator g = at::detail::createCPUGenerator(123);
  const torch::Tensor state = g.get_state();
  const auto options = PgdOptions(0.1).steps(2).generator(g);
  // With a zero gradient PGD stays at its start: the uniform draw of g, projected.
  torch::Generator copy = at::detail::createCPUGenerator(0);
  copy.set_state(state);
  const auto expected =
      project(x + (torch::rand(x.sizes(), copy, x.options()) * 2 - 1) * 0.1, x, 0.1, Norm::Linf, 0, 1);
  const auto first = pgd(flat_model(), x, y, options).adversarial;
  EXPECT_TRUE(torch::equal(first, expected));
  // The caller's generator moved on: the next call starts elsewhere, as the copy's next draw says.
  EXPECT_FALSE(torch::equal(g.get_state(), state));
  const auto second = pgd(flat_model(), x, y, options).adversarial;
  EXPECT_FALSE(torch::equal(second, first));
  EXPECT_TRUE(torch::equal(
      second, project(x + (torch::rand(x.sizes(), copy, x.options()) * 2 - 1) * 0.1, x, 0.1, Norm::Linf, 0, 1)));
  // Restoring the state reproduces a run bit for bit (what a resumed trainer relies on), on a real model too.
  auto data = parry::testing::correctly_classified(8);
  const auto f = differentiable(parry::testing::reference_model());
  g.set_state(state);
  const auto run1 = pgd(f, data.images, data.labels, options).adversarial;
  g.set_state(state);
  const auto run2 = pgd(f, data.images, data.labels, options).adversarial;
  EXPECT_TRUE(torch::equal(run1, run2));
  // Without a generator the seed decides, and the caller's generator is not touched.
  const auto before = g.get_state();
  pgd(f, data.images, data.labels, PgdOptions(0.1).steps(2));
  EXPECT_TRUE(torch::equal(g.get_state(), before));
}

TEST_F(PgdTest, GaussianStartIsXPlusSigmaTimesNoiseProjected) {
  const auto x = torch::rand({3, 1, 4, 4});  // some pixels near 0 and 1: the projection clips them
  const auto y = torch::zeros({3}, torch::kInt64);
  torch::Generator g = at::detail::createCPUGenerator(5);
  torch::Generator copy = at::detail::createCPUGenerator(0);
  copy.set_state(g.get_state());
  const auto r = pgd(flat_model(), x, y, PgdOptions(0.05).steps(1).gaussian_start(0.03).generator(g));
  const auto expected = project(x + 0.03 * torch::randn(x.sizes(), copy, x.options()), x, 0.05, Norm::Linf, 0, 1);
  EXPECT_TRUE(torch::equal(r.adversarial, expected));
  EXPECT_GT((r.adversarial - x).abs().max().item<double>(), 0.03);  // ~N(0, 0.03²) over 48 pixels reaches 1σ
  EXPECT_LE(r.norm.max().item<double>(), 0.05 + 1e-6);
  EXPECT_EQ(PgdOptions().gaussian_start(0.03).start(), PgdStart::Gaussian);
  EXPECT_TRUE(PgdOptions().gaussian_start(0.03).random_start());
  EXPECT_EQ(PgdOptions().gaussian_start(0.03).random_start(false).start(), PgdStart::None);
}

TEST_F(PgdTest, KlLossStepFollowsTheClosedFormGradient) {
  // Linear logits z = W x': ∇ₓ' KL(p ‖ softmax(z)) = Wᵀ (softmax(W x') − p), p = softmax(W x) fixed.
  auto lin = parry::testing::LinearModel{torch::randn({3, 16}), torch::zeros({3})};
  const auto x = torch::full({2, 1, 4, 4}, 0.5f);
  const auto y = torch::zeros({2}, torch::kInt64);
  torch::Generator g = at::detail::createCPUGenerator(9);
  torch::Generator copy = at::detail::createCPUGenerator(0);
  copy.set_state(g.get_state());
  const auto r =
      pgd(lin.fn(), x, y,
          PgdOptions(0.2).steps(1).step_size(0.05).gaussian_start(0.01).loss(PgdLoss::KlToClean).generator(g));
  const auto start = project(x + 0.01 * torch::randn(x.sizes(), copy, x.options()), x, 0.2, Norm::Linf, 0, 1);
  const auto p = probabilities(lin.fn(), x);
  const auto grad = (probabilities(lin.fn(), start) - p).mm(lin.weight).view_as(x);
  const auto expected = project(start + 0.05 * grad.sign(), x, 0.2, Norm::Linf, 0, 1);
  EXPECT_TRUE(torch::allclose(r.adversarial, expected, 0, 1e-6));
}

TEST_F(PgdTest, KlLossAscentRaisesTheKlAndIgnoresTheLabels) {
  auto data = parry::testing::correctly_classified(32);
  const auto f = differentiable(parry::testing::reference_model());
  const auto options = PgdOptions(0.1).steps(10).gaussian_start(0.001).loss(PgdLoss::KlToClean).last_iterate(true);
  const auto r = pgd(f, data.images, data.labels, options);
  const auto p_clean = probabilities(f, data.images);
  const auto kl_attack = kl_per_sample(p_clean, probabilities(f, r.adversarial));
  // The same budget spent at random (a uniform point of the ball) barely moves the prediction.
  const auto random = pgd(flat_model(), data.images, data.labels, PgdOptions(0.1).steps(1)).adversarial;
  const auto kl_random = kl_per_sample(p_clean, probabilities(f, random));
  RecordProperty("kl_attack_mean", std::to_string(kl_attack.mean().item<double>()));
  RecordProperty("kl_random_mean", std::to_string(kl_random.mean().item<double>()));
  EXPECT_GT(kl_attack.mean().item<double>(), 1.0);
  EXPECT_GT(kl_attack.mean().item<double>(), 10 * kl_random.mean().item<double>());
  EXPECT_GT((kl_attack > kl_random).to(torch::kFloat64).mean().item<double>(), 0.9);
  // It also raises the cross-entropy it never saw, but the gradient itself uses no labels.
  const auto other_labels = (data.labels + 1).remainder(10);
  EXPECT_TRUE(torch::equal(pgd(f, data.images, other_labels, options).adversarial, r.adversarial));
  EXPECT_LE(r.norm.max().item<double>(), 0.1 + 1e-6);
  // Queries: one clean prediction plus one gradient per step.
  EXPECT_TRUE(torch::equal(r.queries, torch::full({32}, 11L)));
}

TEST_F(PgdTest, LastIterateIsThePlainPgdLoopWithoutTheSuccessPass) {
  auto data = parry::testing::correctly_classified(16);
  const auto f = differentiable(parry::testing::reference_model());
  const auto& x = data.images;
  const auto& y = data.labels;
  torch::Generator g = at::detail::createCPUGenerator(21);
  const auto state = g.get_state();
  const auto r = pgd(f, x, y, PgdOptions(0.1).steps(4).step_size(0.03).generator(g).last_iterate(true));
  // The loop of Madry et al., written out: uniform start, sign steps, projection; the last point is kept.
  torch::Generator copy = at::detail::createCPUGenerator(0);
  copy.set_state(state);
  auto current = project(x + (torch::rand(x.sizes(), copy, x.options()) * 2 - 1) * 0.1, x, 0.1, Norm::Linf, 0, 1);
  for (int i = 0; i < 4; ++i) {
    const auto grad = loss_gradient(f, current, y, GradientSettings()).first;
    current = project(current + 0.03 * grad.sign(), x, 0.1, Norm::Linf, 0, 1);
  }
  EXPECT_TRUE(torch::equal(r.adversarial, current));
  EXPECT_FALSE(r.success.defined()) << "no forward pass judged success";
  EXPECT_TRUE(torch::equal(r.queries, torch::full({16}, 4L)));
  EXPECT_TRUE(torch::allclose(r.norm, perturbation_norm(current - x, Norm::Linf)));
  // With one restart the default mode keeps the same point and also judges it (one more query).
  g.set_state(state);
  const auto judged = pgd(f, x, y, PgdOptions(0.1).steps(4).step_size(0.03).generator(g));
  EXPECT_TRUE(torch::equal(judged.adversarial, current));
  EXPECT_TRUE(torch::equal(judged.queries, torch::full({16}, 5L)));
  EXPECT_GT(judged.success_rate(), 0.5);
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

#include "attack_support.hpp"

#include "parry/attack/apgd.hpp"
#include "parry/attack/auto_attack.hpp"
#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/throttle.hpp"

using namespace parry;
using namespace parry::attack;

namespace {
class AutoAttackTest : public parry::testing::SeededTest {};

std::shared_ptr<const Guard> guard_of(const Model& model, std::shared_ptr<const OutputPolicy> policy,
                                      std::shared_ptr<Gate> gate = nullptr) {
  GuardBuilder builder(model, InputSpec(1, 28, 28).max_batch(64));
  builder.set_output_policy(std::move(policy));
  if (gate) builder.add_gate(std::move(gate));
  return builder.build_shared();
}

// A cheap ensemble for the suite: the published components with fewer iterations and queries.
AutoAttackOptions quick(double epsilon, AutoAttackVersion version = AutoAttackVersion::Standard) {
  return AutoAttackOptions(epsilon, Norm::Linf, version).steps(20).square_queries(300).target_classes(3);
}

bool has_warning(const AutoAttackResult& r, const std::string& words) {
  return std::any_of(r.warnings.begin(), r.warnings.end(),
                     [&](const std::string& w) { return w.find(words) != std::string::npos; });
}

std::string all_warnings(const AutoAttackResult& r) {
  std::string out;
  for (const auto& w : r.warnings) out += w + "\n";
  return out;
}
}  // namespace

TEST_F(AutoAttackTest, VersionsRunThePublishedEnsembles) {
  using C = AutoAttackComponent;
  EXPECT_EQ(auto_attack_components(AutoAttackVersion::Standard),
            (std::vector<C>{C::ApgdCe, C::ApgdT, C::FabT, C::Square}));
  EXPECT_EQ(auto_attack_components(AutoAttackVersion::Plus),
            (std::vector<C>{C::ApgdCe, C::ApgdDlr, C::Fab, C::Square, C::ApgdT, C::FabT}));
  EXPECT_EQ(auto_attack_components(AutoAttackVersion::Rand), (std::vector<C>{C::ApgdCe, C::ApgdDlr}));
  const AutoAttackOptions standard;
  EXPECT_EQ(standard.steps(), 100);
  EXPECT_EQ(standard.square_queries(), 5000);
  EXPECT_EQ(standard.target_classes(), 9);
  EXPECT_EQ(standard.restarts(), 1);
  EXPECT_EQ(standard.eot_samples(), 1);
  EXPECT_EQ(AutoAttackOptions(0.1, Norm::Linf, AutoAttackVersion::Plus).restarts(), 5);
  EXPECT_EQ(AutoAttackOptions(0.1, Norm::Linf, AutoAttackVersion::Rand).eot_samples(), 20);
  for (auto c : {C::ApgdCe, C::ApgdDlr, C::ApgdT, C::Fab, C::FabT, C::Square}) {
    EXPECT_EQ(auto_attack_component(to_string(c)), c);
  }
  EXPECT_EQ(auto_attack_version("plus"), AutoAttackVersion::Plus);
}

TEST_F(AutoAttackTest, BadOptionsNameTheValue) {
  try {
    auto_attack_version("strong");
    FAIL();
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("'strong'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("'standard'"), std::string::npos);
  }
  EXPECT_THROW(auto_attack_component("pgd"), OptionError);
  EXPECT_THROW(AutoAttackOptions(-1), OptionError);
  EXPECT_THROW(AutoAttackOptions().steps(0), OptionError);
  EXPECT_THROW(AutoAttackOptions().square_queries(0), OptionError);
  EXPECT_THROW(AutoAttackOptions().components({}), OptionError);
  EXPECT_THROW(AutoAttackOptions().components({AutoAttackComponent::Fab, AutoAttackComponent::Fab}), OptionError);
}

TEST_F(AutoAttackTest, EachComponentAttacksWhatTheEarlierOnesLeftAndTheWorstCaseIsKept) {
  const auto data = parry::testing::correctly_classified(32);
  const auto model = parry::testing::reference_model();
  const auto f = differentiable(model);
  const auto guard = guard_of(model, std::make_shared<conceal::Full>());
  const double epsilon = 0.03;
  const auto r = auto_attack(f, guard.get(), data.images, data.labels, quick(epsilon));
  ASSERT_EQ(r.stages.size(), 4u);
  EXPECT_EQ(r.clean_correct, 32);
  int64_t robust = 32;
  for (const auto& stage : r.stages) {
    EXPECT_FALSE(stage.skipped) << to_string(stage.component) << ": " << stage.skip_reason;
    EXPECT_EQ(stage.attacked, robust) << to_string(stage.component);
    EXPECT_EQ(stage.robust_after, robust - stage.broken);
    EXPECT_GT(stage.forward_passes, 0);
    robust = stage.robust_after;
  }
  // Every reported break is real and inside the threat model.
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(r.attack.success.equal(f(r.attack.adversarial).argmax(1).ne(data.labels)));
  EXPECT_LE(perturbation_norm(r.attack.adversarial - data.images, Norm::Linf).max().item<double>(), epsilon + 1e-6);
  EXPECT_NEAR(r.robust_accuracy(), static_cast<double>(robust) / 32.0, 1e-12);
  // The ensemble is at least as strong as its first component alone.
  const auto ce = apgd(f, data.images, data.labels, ApgdOptions(epsilon).steps(20));
  EXPECT_LE(r.robust_accuracy(), 1.0 - ce.success_rate() + 1e-12);
  RecordProperty("robust_after_apgd_ce", std::to_string(r.stages[0].robust_after));
  RecordProperty("robust_after_all", std::to_string(robust));
  for (const char* words : {"randomised", "probabilities", "zero", "optimises"}) {
    EXPECT_FALSE(has_warning(r, words)) << all_warnings(r);
  }
}

TEST_F(AutoAttackTest, SquareIsSkippedWithAReasonAndStoppedByAThrottle) {
  const auto data = parry::testing::correctly_classified(4);
  const auto model = parry::testing::reference_model();
  const auto f = differentiable(model);
  const auto square_only = quick(0.05).components({AutoAttackComponent::Square});
  const auto no_guard = auto_attack(f, nullptr, data.images, data.labels, square_only);
  EXPECT_TRUE(no_guard.stages[0].skipped);
  const auto label_only = guard_of(model, std::make_shared<LabelOnly>());
  const auto hidden = auto_attack(f, label_only.get(), data.images, data.labels, square_only);
  ASSERT_TRUE(hidden.stages[0].skipped);
  EXPECT_NE(hidden.stages[0].skip_reason.find("class scores"), std::string::npos);
  double now = 0;
  const auto throttled = guard_of(
      model, std::make_shared<conceal::Full>(),
      std::make_shared<conceal::Throttle>(conceal::ThrottleOptions().rate(1).burst(20).clock([&now] { return now; })));
  const auto stopped = auto_attack(f, throttled.get(), data.images, data.labels, square_only);
  EXPECT_FALSE(stopped.stages[0].skipped);
  EXPECT_TRUE(has_warning(stopped, "stopped Square")) << all_warnings(stopped);
}

TEST_F(AutoAttackTest, SanityChecksFlagWhatMakesAnEvaluationUnreliable) {
  const auto data = parry::testing::correctly_classified(16);
  const auto model = parry::testing::reference_model();
  const auto f = differentiable(model);
  EXPECT_TRUE(auto_attack_checks(f, data.images, data.labels, false).empty());
  const auto check = [&](const LogitsFn& g, const std::string& words) {
    const auto warnings = auto_attack_checks(g, data.images, data.labels, false);
    const bool found = std::any_of(warnings.begin(), warnings.end(),
                                   [&](const std::string& w) { return w.find(words) != std::string::npos; });
    EXPECT_TRUE(found) << "no warning with '" << words << "'";
  };
  check([f](const torch::Tensor& x) { return f(x + 0.05 * torch::randn_like(x)); }, "randomised");
  check([f](const torch::Tensor& x) { return torch::softmax(f(x), 1); }, "probabilities");
  check([f](const torch::Tensor& x) { return f(x.detach()) + 0 * x.sum(); }, "zero");
  // A defense that takes one gradient step on its input before answering.
  check(
      [f](const torch::Tensor& x) {
        torch::Tensor moved;
        {
          torch::AutoGradMode grad_on(true);
          const auto probe = x.detach().requires_grad_(true);
          const auto entropy = -(torch::softmax(f(probe), 1) * torch::log_softmax(f(probe), 1)).sum();
          moved = (x - 0.01 * torch::autograd::grad({entropy}, {probe})[0].sign()).detach();
        }
        return f(moved);
      },
      "optimises at inference time");
  // A misclassified image whose true class ranks third has DLR ≡ 1 and a zero
  // gradient; it needs no attack, so it raises no warning.
  auto relabelled = data.labels.clone();
  {
    torch::NoGradGuard no_grad;
    relabelled[0] = f(data.images.slice(0, 0, 1)).argsort(1, true)[0][2];
  }
  const auto third = auto_attack_checks(f, data.images, relabelled, false);
  EXPECT_TRUE(std::none_of(third.begin(), third.end(),
                           [](const std::string& w) { return w.find("zero") != std::string::npos; }));
  {
    torch::AutoGradMode grad_on(true);
    const auto probe = data.images.slice(0, 0, 1).detach().requires_grad_(true);
    const auto loss = dlr_loss(f(probe), relabelled.slice(0, 0, 1)).sum();
    EXPECT_EQ(torch::autograd::grad({loss}, {probe})[0].abs().sum().item<double>(), 0.0) << "DLR ≡ 1 there";
  }
  // The rand version expects randomness.
  const auto noisy = [f](const torch::Tensor& x) { return f(x + 0.05 * torch::randn_like(x)); };
  const auto warnings = auto_attack_checks(noisy, data.images, data.labels, true);
  EXPECT_TRUE(std::none_of(warnings.begin(), warnings.end(),
                           [](const std::string& w) { return w.find("randomised") != std::string::npos; }));
}

TEST_F(AutoAttackTest, SquareBreakingWhatGradientsMissedIsReportedAsMasking) {
  // The attacker differentiates a copy whose gradient is zero; the service answers with the real model.
  const auto data = parry::testing::correctly_classified(16);
  const auto model = parry::testing::reference_model();
  const auto real = differentiable(model);
  const LogitsFn masked = [real](const torch::Tensor& x) { return real(x.detach()) + 0 * x.sum(); };
  const auto guard = guard_of(model, std::make_shared<conceal::Full>());
  const auto r = auto_attack(masked, guard.get(), data.images, data.labels,
                             quick(0.1).components({AutoAttackComponent::ApgdCe, AutoAttackComponent::Square}));
  EXPECT_EQ(r.stages[0].broken, 0);
  EXPECT_GT(r.stages[1].broken, 0);
  EXPECT_TRUE(has_warning(r, "masked")) << all_warnings(r);
  EXPECT_TRUE(has_warning(r, "zero")) << all_warnings(r);
}

TEST_F(AutoAttackTest, RandVersionAveragesGradientsOverDraws) {
  const auto data = parry::testing::correctly_classified(4);
  const auto f = differentiable(parry::testing::reference_model());
  const auto r = auto_attack(f, nullptr, data.images, data.labels,
                             AutoAttackOptions(0.03, Norm::Linf, AutoAttackVersion::Rand).steps(5));
  ASSERT_EQ(r.stages.size(), 2u);
  // APGD-CE on 4 images: a clean pass, (5 + 1) × 20 draws, and the judging pass, per image.
  EXPECT_EQ(r.stages[0].forward_passes, 4 * (1 + 6 * 20 + 1));
}

TEST_F(AutoAttackTest, MaskingIsJudgedOnAllImagesAndSkippedComponentsAreWarned) {
  using C = AutoAttackComponent;
  const auto stages = [](int64_t square_broken, bool white_box_skipped) {
    std::vector<AutoAttackStage> s(2);
    s[0].component = C::ApgdCe;
    s[0].skipped = white_box_skipped;
    s[1].component = C::Square;
    s[1].broken = square_broken;
    return s;
  };
  // checks.py's α = 0.2% of the images: 2 of 1,000 is not above it, 3 is.
  EXPECT_EQ(square_masking_warning(stages(2, false), 1000), "");
  EXPECT_NE(square_masking_warning(stages(3, false), 1000).find("masked"), std::string::npos);
  EXPECT_EQ(square_masking_warning(stages(3, true), 1000), "");  // no white-box attack ran before it
  // A published ensemble that had to skip Square says so.
  const auto data = parry::testing::correctly_classified(4);
  const auto model = parry::testing::reference_model();
  const auto label_only = guard_of(model, std::make_shared<LabelOnly>());
  const auto r = auto_attack(differentiable(model), label_only.get(), data.images, data.labels,
                             quick(0.01).components({C::ApgdCe, C::Square}));
  if (r.stages[1].attacked > 0) {
    EXPECT_TRUE(has_warning(r, "ran without square")) << all_warnings(r);
  }
  EXPECT_TRUE(r.stages[1].skipped);
}

TEST_F(AutoAttackTest, TallySumsBatchesAndJudgesMaskingOnTheWhole) {
  using C = AutoAttackComponent;
  const auto batch = [](int64_t images, int64_t square_broken, bool square_skipped) {
    AutoAttackResult r;
    r.attack.success = torch::zeros({images}, torch::kBool);
    r.attack.success.slice(0, 0, square_broken + 1).fill_(true);  // one misclassified clean, the rest broken
    r.clean_correct = images - 1;
    r.stages.resize(2);
    r.stages[0].component = C::ApgdCe;
    r.stages[0].attacked = images - 1;
    r.stages[0].robust_after = images - 1;
    r.stages[0].forward_passes = 10 * images;
    r.stages[0].seconds = 1.5;
    r.stages[1].component = C::Square;
    r.stages[1].attacked = images - 1;
    r.stages[1].broken = square_broken;
    r.stages[1].robust_after = images - 1 - square_broken;
    r.stages[1].skipped = square_skipped;
    r.stages[1].skip_reason = square_skipped ? "no Guard" : "";
    r.warnings = {"the DLR loss gradient is exactly zero on " + std::to_string(images / 10) + " images"};
    const std::string masking = square_masking_warning(r.stages, images);
    if (!masking.empty()) r.warnings.push_back(masking);
    return r;
  };
  AutoAttackTally tally;
  const AutoAttackResult first = batch(100, 1, false);  // 1 of 100 broken by Square: 1% > 0.2% in this batch
  ASSERT_EQ(first.warnings.size(), 2u);
  tally.add(first);
  tally.add(batch(900, 0, true));
  EXPECT_EQ(tally.images(), 1000);
  EXPECT_EQ(tally.clean_correct(), 998);
  EXPECT_EQ(tally.robust(), 1000 - 2 - 1);
  ASSERT_EQ(tally.stages().size(), 2u);
  EXPECT_EQ(tally.stages()[0].attacked, 998);
  EXPECT_EQ(tally.stages()[0].forward_passes, 10000);
  EXPECT_DOUBLE_EQ(tally.stages()[0].seconds, 3.0);
  EXPECT_EQ(tally.stages()[1].broken, 1);
  EXPECT_EQ(tally.stages()[1].robust_after, 99 - 1 + 899);
  EXPECT_FALSE(tally.stages()[1].skipped) << "ran on one batch";
  // 1 of 1,000 is below checks.py's 0.2%: no masking warning; the zero-gradient warning once (the first batch's).
  const auto warnings = tally.warnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("on 10 images"), std::string::npos);
  // 3 of 1,000 is above it.
  AutoAttackTally masked;
  masked.add(batch(500, 3, false));
  masked.add(batch(500, 0, false));
  ASSERT_EQ(masked.warnings().size(), 2u);
  EXPECT_NE(masked.warnings()[1].find("masked"), std::string::npos);
  // Stages skipped on every batch stay skipped, with the reason.
  AutoAttackTally skipped;
  skipped.add(batch(10, 0, true));
  skipped.add(batch(10, 0, true));
  EXPECT_TRUE(skipped.stages()[1].skipped);
  EXPECT_EQ(skipped.stages()[1].skip_reason, "no Guard");
  // Batches of a different ensemble cannot be summed.
  AutoAttackResult other = batch(10, 0, false);
  other.stages.pop_back();
  EXPECT_THROW(skipped.add(other), OptionError);
}

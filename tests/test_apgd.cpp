#include "attack_support.hpp"

using namespace parry;
using namespace parry::attack;

namespace {
class ApgdTest : public parry::testing::SeededTest {};

// Two logits [v, 0] with v scripted by the call count and a zero input
// gradient, for label 1: the cross-entropy softplus(v) rises with v. Call 0
// is APGD's clean pass, call 1 its start point, call k + 2 iteration k.
LogitsFn scripted(std::function<double(int64_t iteration)> v_of) {
  auto calls = std::make_shared<int64_t>(0);
  return [calls, v_of](const torch::Tensor& x) {
    const int64_t call = (*calls)++;
    const double v = call == 0 ? -30.0 : v_of(call - 2);
    auto logits = torch::zeros({x.size(0), 2});
    logits.select(1, 0).fill_(v);
    return logits + 0 * x.flatten(1).sum(1, true);  // part of the graph, zero gradient
  };
}

ApgdTrace trace_of(const LogitsFn& f, double epsilon = 0.1) {
  ApgdTrace trace;
  auto x = torch::full({1, 1, 2, 2}, 0.5f);
  auto y = torch::ones({1}, torch::kInt64);
  apgd(f, x, y, ApgdOptions(epsilon).steps(100).trace(&trace));
  return trace;
}

LogitsFn scaled(const LogitsFn& f, double factor) {
  return [f, factor](const torch::Tensor& x) { return f(x) * factor; };
}

void expect_in_threat_model(const AttackResult& r, const torch::Tensor& x, double epsilon, Norm norm) {
  EXPECT_LE(perturbation_norm(r.adversarial - x, norm).max().item<double>(), epsilon + 1e-5);
  EXPECT_GE(r.adversarial.min().item<double>(), 0.0);
  EXPECT_LE(r.adversarial.max().item<double>(), 1.0);
}
}  // namespace

TEST_F(ApgdTest, CheckpointsFollowThePaperForOneHundredIterations) {
  // w1 = 0.22·100 = 22; then w_j+1 = w_j + max(w_j − w_j−1 − 3, 6).
  EXPECT_EQ(apgd_checkpoints(100), (std::vector<int64_t>{0, 22, 41, 57, 70, 80, 87, 93, 99}));
  // N = 10: w1 = max(⌊2.2⌋, 1) = 2, then periods max(2 − 1, 1) = 1.
  EXPECT_EQ(apgd_checkpoints(10), (std::vector<int64_t>{0, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  EXPECT_EQ(apgd_checkpoints(1), (std::vector<int64_t>{0, 1}));
  EXPECT_THROW(apgd_checkpoints(0), OptionError);
}

TEST_F(ApgdTest, HalvesTheStepAtEveryCheckpointWhenTheLossNeverRises) {
  const auto trace = trace_of(scripted([](int64_t) { return -5.0; }));
  ASSERT_EQ(trace.step_size.size(), 100u);
  const auto checkpoints = apgd_checkpoints(100);
  for (int64_t k = 0; k < 100; ++k) {
    // Iteration k uses 2ε halved once per checkpoint w <= k (w > 0).
    const auto halvings = std::count_if(checkpoints.begin() + 1, checkpoints.end(), [k](int64_t w) { return w <= k; });
    EXPECT_NEAR(trace.step_size[k], 0.2 / std::pow(2.0, static_cast<double>(halvings)), 1e-7) << "iteration " << k;
  }
}

TEST_F(ApgdTest, KeepsTheStepWhileTheLossRisesAndItsBestImproves) {
  const auto trace = trace_of(scripted([](int64_t k) { return -5.0 + 0.01 * static_cast<double>(k); }));
  for (double step : trace.step_size) EXPECT_NEAR(step, 0.2, 1e-7);
}

TEST_F(ApgdTest, HalvesWhenTheBestLossStallsEvenIfMostStepsRaiseIt) {
  // Period 1 (iterations 0–21) rises to v = −2.9 and keeps the step. Period 2
  // (22–40) drops to −8 and then rises in 18 of its 19 steps (above ρ), but
  // never beats −2.9: condition 2 halves at w = 41. Afterwards it rises past
  // the best again, so the step stays.
  const auto trace = trace_of(scripted([](int64_t k) {
    if (k < 22) return -5.0 + 0.1 * static_cast<double>(k);
    if (k <= 40) return -8.0 + 0.25 * static_cast<double>(k - 22);
    return -2.5 + 0.01 * static_cast<double>(k);
  }));
  for (int64_t k = 0; k < 100; ++k) EXPECT_NEAR(trace.step_size[k], k <= 40 ? 0.2 : 0.1, 1e-7) << "iteration " << k;
}

TEST_F(ApgdTest, RhoRuleHalvesAtExactlyRhoTimesThePeriodAndNotAbove) {
  // Periods 1 and 2 rise throughout. Period 3 (iterations 41–56, 16 steps,
  // ρ·16 = 12 exactly) drops `drops` times by 1, then rises by 0.5 in the
  // rest, beating the best loss either way (so only condition 1 can halve):
  // 12 raises (≤ ρ·period, as the authors' code) halve at w = 57; 13 do not.
  const auto script = [](int drops) {
    return [drops](int64_t k) {
      if (k <= 40) return -5.0 + 0.01 * static_cast<double>(k);
      const double at_40 = -5.0 + 0.4;
      if (k <= 56) {
        const int64_t into = k - 40;  // 1 … 16
        return into <= drops ? at_40 - static_cast<double>(into)
                             : at_40 - drops + 0.5 * static_cast<double>(into - drops);
      }
      return at_40 + 10.0 + 0.01 * static_cast<double>(k);
    };
  };
  const auto twelve = trace_of(scripted(script(4)));
  const auto thirteen = trace_of(scripted(script(3)));
  for (int64_t k = 0; k < 100; ++k) {
    EXPECT_NEAR(twelve.step_size[k], k < 57 ? 0.2 : 0.1, 1e-7) << "12 raises, iteration " << k;
    EXPECT_NEAR(thirteen.step_size[k], 0.2, 1e-7) << "13 raises, iteration " << k;
  }
}

TEST_F(ApgdTest, AHalvingRestartsFromTheBestPointWithItsGradient) {
  // Logits [v + d·(Σx − Σx detached), 0] for label 1: the loss is the
  // scripted v exactly, the gradient's sign is d's. The best loss is at
  // iteration 0's iterate (v = −1, d = +1); every later one has v = −5 (no
  // raise: a halving at the first checkpoint w) and d = −1. Iteration w must
  // step from the best point with its gradient, its momentum term taken
  // against the iterate before the reset (as autopgd_base.py).
  auto seen = std::make_shared<std::vector<torch::Tensor>>();
  const LogitsFn f = [seen](const torch::Tensor& x) {
    const auto call = static_cast<int64_t>(seen->size());
    seen->push_back(x.detach().clone());
    const double v = call == 0 ? -30.0 : (call == 2 ? -1.0 : -5.0);
    const double d = call <= 2 ? 1.0 : -1.0;
    auto logits = torch::zeros({x.size(0), 2});
    logits.select(1, 0).fill_(v);
    return logits + d * (x - x.detach()).flatten(1).sum(1, true);
  };
  const auto x = torch::full({1, 1, 2, 2}, 0.5f);
  ApgdTrace trace;
  apgd(f, x, torch::ones({1}, torch::kInt64), ApgdOptions(0.1).steps(30).trace(&trace));
  // Call 0: the clean pass; call 1: the start; call k + 2: the iterate after iteration k.
  const int64_t w = apgd_checkpoints(30)[1];
  ASSERT_GE(seen->size(), static_cast<size_t>(w + 3));
  const auto step = torch::tensor({0.1f});  // 2ε halved once
  const auto from_best =
      apgd_update((*seen)[2], (*seen)[w], torch::ones_like(x), x, step, 0.75, 0.1, Norm::Linf, 0.0, 1.0);
  const auto without_reset =
      apgd_update((*seen)[w + 1], (*seen)[w], -torch::ones_like(x), x, step, 0.75, 0.1, Norm::Linf, 0.0, 1.0);
  EXPECT_NEAR(trace.step_size[w - 1], 0.2, 1e-7);
  EXPECT_NEAR(trace.step_size[w], 0.1, 1e-7);
  EXPECT_TRUE(torch::allclose((*seen)[w + 2], from_best, 0, 1e-6)) << (*seen)[w + 2] << from_best;
  EXPECT_FALSE(torch::allclose(from_best, without_reset, 0, 1e-6)) << "the test must tell the two apart";
}

TEST_F(ApgdTest, MomentumUpdateMatchesAHandStepOnAQuadratic) {
  // Ascending L(x) = −(x − c)² with c = 1: ∇L = −2(x − c).
  const auto origin = torch::tensor({0.5f, 0.5f, 0.5f}).view({1, 3, 1, 1});
  const auto current = torch::tensor({0.6f, 0.9f, 0.4f}).view({1, 3, 1, 1});
  const auto previous = torch::tensor({0.55f, 0.8f, 0.45f}).view({1, 3, 1, 1});
  const auto c = torch::tensor({1.0f, 1.0f, 0.0f}).view({1, 3, 1, 1});
  const auto grad = -2 * (current - c);
  const auto step = torch::tensor({0.2f});
  const auto next = apgd_update(current, previous, grad, origin, step, 0.75, 0.5, Norm::Linf, 0.0, 1.0).flatten();
  // 0.6: z = 0.8, 0.6 + 0.75·0.2 + 0.25·0.05 = 0.7625.
  // 0.9: z = min(1.1, 0.5 + 0.5) = 1.0, 0.9 + 0.75·0.1 + 0.25·0.1 = 1.0.
  // 0.4 (gradient towards 0): z = 0.2, 0.4 − 0.75·0.2 − 0.25·0.05 = 0.2375.
  EXPECT_NEAR(next[0].item<double>(), 0.7625, 1e-6);
  EXPECT_NEAR(next[1].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(next[2].item<double>(), 0.2375, 1e-6);
  // L2: from (1, 0) with previous (0, 0) and gradient (0, 2): z = (1, 1),
  // then (1, 0) + 0.75·(0, 1) + 0.25·(1, 0) = (1.25, 0.75), inside ε = 2.
  const auto l2 = apgd_update(torch::tensor({1.0f, 0.0f}).view({1, 2, 1, 1}), torch::zeros({1, 2, 1, 1}),
                              torch::tensor({0.0f, 2.0f}).view({1, 2, 1, 1}), torch::zeros({1, 2, 1, 1}),
                              torch::tensor({1.0f}), 0.75, 2.0, Norm::L2, -10.0, 10.0)
                      .flatten();
  EXPECT_NEAR(l2[0].item<double>(), 1.25, 1e-6);
  EXPECT_NEAR(l2[1].item<double>(), 0.75, 1e-6);
}

TEST_F(ApgdTest, DlrMatchesHandValuesAndIgnoresScaleAndShift) {
  const auto z = torch::tensor({{3.0f, 1.0f, 2.0f, 0.0f}, {3.0f, 1.0f, 2.0f, 0.0f}});
  const auto y = torch::tensor({0, 2}, torch::kInt64);
  // y = 0: −(3 − 2)/(3 − 1) = −0.5; y = 2: −(2 − 3)/(3 − 1) = 0.5.
  const auto dlr = dlr_loss(z, y);
  EXPECT_NEAR(dlr[0].item<double>(), -0.5, 1e-6);
  EXPECT_NEAR(dlr[1].item<double>(), 0.5, 1e-6);
  // Targeted, t = 3: −(3 − 0)/(3 − ½(1 + 0)) = −1.2; y = 2, t = 1: −(2 − 1)/2.5 = −0.4.
  const auto t = torch::tensor({3, 1}, torch::kInt64);
  const auto targeted = targeted_dlr_loss(z, y, t);
  EXPECT_NEAR(targeted[0].item<double>(), -1.2, 1e-6);
  EXPECT_NEAR(targeted[1].item<double>(), -0.4, 1e-6);
  const auto random = torch::randn({16, 10}), labels = torch::randint(0, 10, {16}, torch::kInt64);
  const auto targets = (labels + 1) % 10;
  EXPECT_TRUE(torch::allclose(dlr_loss(random * 100 + 7, labels), dlr_loss(random, labels), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(targeted_dlr_loss(random * 100 - 3, labels, targets),
                              targeted_dlr_loss(random, labels, targets), 1e-4, 1e-5));
}

TEST_F(ApgdTest, BadArgumentsAreOptionErrors) {
  EXPECT_THROW(ApgdOptions(-0.1), OptionError);
  EXPECT_THROW(ApgdOptions().steps(0), OptionError);
  EXPECT_THROW(ApgdOptions().restarts(0), OptionError);
  EXPECT_THROW(ApgdOptions().rho(0), OptionError);
  EXPECT_THROW(ApgdOptions().momentum(1.5), OptionError);
  EXPECT_THROW(ApgdOptions().initial_step(0), OptionError);
  EXPECT_THROW(ApgdOptions().target_classes(0), OptionError);
  EXPECT_THROW(dlr_loss(torch::zeros({2, 2}), torch::zeros({2}, torch::kInt64)), OptionError);
  EXPECT_THROW(
      targeted_dlr_loss(torch::zeros({2, 3}), torch::zeros({2}, torch::kInt64), torch::ones({2}, torch::kInt64)),
      OptionError);
  const auto data = parry::testing::correctly_classified(2);
  const auto f = differentiable(parry::testing::reference_model());
  try {
    apgd(f, data.images, data.labels, ApgdOptions().loss(ApgdLoss::TargetedDlr).target_classes(10).steps(2));
    FAIL() << "10 targets of 10 classes accepted";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("10"), std::string::npos) << e.what();
    parry::testing::expect_public(e.what());
  }
  GradientSettings targeted;
  targeted.targeted = true;
  EXPECT_THROW(apgd(f, data.images, data.labels, ApgdOptions().loss(ApgdLoss::Dlr).settings(targeted)), OptionError);
  EXPECT_THROW(apgd(f, data.images * 2, data.labels), OptionError);  // outside the pixel range
}

TEST_F(ApgdTest, EveryLossStaysInsideItsThreatModel) {
  const auto data = parry::testing::correctly_classified(8);
  const auto f = differentiable(parry::testing::reference_model());
  for (auto norm : {Norm::Linf, Norm::L2}) {
    const double epsilon = norm == Norm::Linf ? 0.05 : 1.0;
    for (auto loss : {ApgdLoss::CrossEntropy, ApgdLoss::Dlr, ApgdLoss::TargetedDlr}) {
      const auto r =
          apgd(f, data.images, data.labels, ApgdOptions(epsilon, norm).steps(10).loss(loss).target_classes(2));
      expect_in_threat_model(r, data.images, epsilon, norm);
      // Reported successes are real: the model misclassifies them.
      torch::NoGradGuard no_grad;
      EXPECT_TRUE(r.success.equal(f(r.adversarial).argmax(1).ne(data.labels))) << to_string(loss);
    }
  }
}

TEST_F(ApgdTest, CrossEntropyFoolsAtLeastAsOftenAsPgd40) {
  const auto data = parry::testing::correctly_classified(64);
  const auto f = differentiable(parry::testing::reference_model());
  for (double epsilon : {0.02, 0.04}) {
    const auto pgd_result = pgd(f, data.images, data.labels, PgdOptions(epsilon).steps(40));
    const auto apgd_result = apgd(f, data.images, data.labels, ApgdOptions(epsilon).steps(100));
    RecordProperty("pgd40_success_" + std::to_string(epsilon), std::to_string(pgd_result.success_rate()));
    RecordProperty("apgd_ce_success_" + std::to_string(epsilon), std::to_string(apgd_result.success_rate()));
    EXPECT_GE(apgd_result.success_rate(), pgd_result.success_rate()) << "ε = " << epsilon;
    EXPECT_GT(apgd_result.success_rate(), 0.0);
  }
}

TEST_F(ApgdTest, DlrBreaksLogitScalingThatStallsCrossEntropy) {
  // Logits × 1000 saturate the softmax: the cross-entropy's gradient
  // underflows to zero on confident images, as defensive distillation's does.
  const auto data = parry::testing::correctly_classified(32);
  const auto masked = scaled(differentiable(parry::testing::reference_model()), 1000.0);
  const auto pgd_result = pgd(masked, data.images, data.labels, PgdOptions(0.1).steps(40));
  const auto dlr = apgd(masked, data.images, data.labels, ApgdOptions(0.1).loss(ApgdLoss::Dlr));
  const auto targeted = apgd(masked, data.images, data.labels, ApgdOptions(0.1).loss(ApgdLoss::TargetedDlr));
  RecordProperty("pgd_ce_success", std::to_string(pgd_result.success_rate()));
  RecordProperty("apgd_dlr_success", std::to_string(dlr.success_rate()));
  RecordProperty("apgd_t_success", std::to_string(targeted.success_rate()));
  EXPECT_LE(pgd_result.success_rate(), 0.3);
  EXPECT_GE(dlr.success_rate(), 0.9);
  EXPECT_GE(targeted.success_rate(), 0.9);
}

TEST_F(ApgdTest, TargetedCrossEntropyReachesItsTargets) {
  const auto data = parry::testing::correctly_classified(16);
  const auto f = differentiable(parry::testing::reference_model());
  const auto targets = (data.labels + 1) % 10;
  GradientSettings s;
  s.targeted = true;
  const auto r = apgd(f, data.images, targets, ApgdOptions(0.15).settings(s));
  torch::NoGradGuard no_grad;
  const auto predicted = f(r.adversarial).argmax(1);
  EXPECT_TRUE(r.success.equal(predicted.eq(targets)));
  EXPECT_GE(r.success_rate(), 0.75);
  expect_in_threat_model(r, data.images, 0.15, Norm::Linf);
}

TEST_F(ApgdTest, CountsQueriesPerRunRestartAndEotDraw) {
  // A flat model never fools: every sample pays 1 clean pass + restarts × (steps + 1) × EOT draws.
  const LogitsFn flat = [](const torch::Tensor& x) { return x.flatten(1).mm(torch::zeros({x[0].numel(), 10})); };
  auto x = torch::full({3, 1, 4, 4}, 0.5f);
  auto y = torch::full({3}, 0, torch::kInt64);  // argmax of equal logits is 0: correct
  GradientSettings s;
  s.eot_samples = 3;
  const auto r = apgd(flat, x, y, ApgdOptions(0.1).steps(5).restarts(2).settings(s));
  EXPECT_EQ(r.success.sum().item<int64_t>(), 0);
  EXPECT_TRUE(r.queries.equal(torch::full({3}, 1 + 2 * 6 * 3, torch::kInt64)));
  EXPECT_TRUE(r.adversarial.equal(x));  // failures come back unchanged
  // Targeted DLR: per target class one run.
  const auto t = apgd(flat, x, y, ApgdOptions(0.1).steps(5).loss(ApgdLoss::TargetedDlr).target_classes(3));
  EXPECT_TRUE(t.queries.equal(torch::full({3}, 1 + 3 * 6, torch::kInt64)));
}

TEST_F(ApgdTest, IsReproducibleForASeed) {
  const auto data = parry::testing::correctly_classified(8);
  const auto f = differentiable(parry::testing::reference_model());
  const auto a = apgd(f, data.images, data.labels, ApgdOptions(0.03).steps(20));
  const auto b = apgd(f, data.images, data.labels, ApgdOptions(0.03).steps(20));
  EXPECT_TRUE(a.adversarial.equal(b.adversarial));
}

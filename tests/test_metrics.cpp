#include "parry/eval/metrics.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "parry/core/errors.hpp"
#include "test_paths.hpp"

using namespace parry;

namespace {
torch::Tensor t(std::vector<double> v) {
  return torch::tensor(v, torch::kFloat64);
}

// Reference values from SciPy (scripts/make_wilson_fixture.py).
nlohmann::json wilson_fixture() {
  std::ifstream in(parry::testing::fixture_path("wilson_intervals.json"));
  EXPECT_TRUE(in.good()) << "tests/fixtures/wilson_intervals.json is missing";
  return nlohmann::json::parse(in);
}
}  // namespace

TEST(RocAuc, MatchesHandComputedCases) {
  // Pairs (pos > neg): 0.35>0.1, 0.8>0.1, 0.8>0.4 → 3 of 4.
  EXPECT_DOUBLE_EQ(eval::roc_auc(t({0.1, 0.4}), t({0.35, 0.8})), 0.75);
  EXPECT_DOUBLE_EQ(eval::roc_auc(t({0.1, 0.2}), t({0.3, 0.4})), 1.0);
  EXPECT_DOUBLE_EQ(eval::roc_auc(t({0.3, 0.4}), t({0.1, 0.2})), 0.0);
  // Ties count one half: (0.5,0.5)×2 → 1, (1.0 > 0.5)×2 → 2; 3 of 4.
  EXPECT_DOUBLE_EQ(eval::roc_auc(t({0.5, 0.5}), t({0.5, 1.0})), 0.75);
  EXPECT_DOUBLE_EQ(eval::roc_auc(t({1, 1, 1}), t({1, 1})), 0.5);
}

TEST(RocCurve, HasOnePointPerDistinctScoreAndItsAreaEqualsTheAuc) {
  const auto curve = eval::roc_curve(t({0.5, 0.5, 0.1}), t({0.5, 1.0}));
  // Thresholds: +inf, 1.0, 0.5, 0.1.
  ASSERT_EQ(curve.fpr.size(), 4u);
  EXPECT_EQ(curve.fpr, (std::vector<double>{0, 0, 2.0 / 3, 1}));
  EXPECT_EQ(curve.tpr, (std::vector<double>{0, 0.5, 1, 1}));
  EXPECT_DOUBLE_EQ(curve.thresholds[1], 1.0);
  EXPECT_NEAR(curve.auc, eval::roc_auc(t({0.5, 0.5, 0.1}), t({0.5, 1.0})), 1e-12);
  // On random scores with many ties the trapezoid equals Mann–Whitney.
  torch::manual_seed(1);
  const auto neg = torch::randint(0, 20, {300}).to(torch::kFloat64);
  const auto pos = torch::randint(5, 25, {200}).to(torch::kFloat64);
  EXPECT_NEAR(eval::roc_curve(neg, pos).auc, eval::roc_auc(neg, pos), 1e-12);
}

TEST(DetectionAtFpr, UsesTheCalibrationRule) {
  std::vector<double> negatives;
  for (int i = 0; i < 100; ++i) negatives.push_back(i / 100.0);
  const auto result = eval::detection_at_fpr(t(negatives), t({0.2, 0.945, 0.96, 0.99, 2.0}), 0.05);
  EXPECT_NEAR(result.threshold, 0.94, 1e-12);
  EXPECT_DOUBLE_EQ(result.fpr, 0.05);
  EXPECT_DOUBLE_EQ(result.detection_rate, 0.8);
}

TEST(DetectorMetrics, RejectBadInput) {
  EXPECT_THROW(eval::roc_auc(torch::empty({0}), t({1})), OptionError);
  EXPECT_THROW(eval::roc_curve(t({1}), t({std::nan("")})), OptionError);
  EXPECT_THROW(eval::detection_at_fpr(t({1}), t({1}), 1.0), OptionError);
  EXPECT_THROW(eval::detection_at_fpr(t({1}), t({1}), -0.1), OptionError);
}

TEST(NormalQuantile, MatchesScipyFromTheFarTailsToTheCentre) {
  const auto fixture = wilson_fixture();
  ASSERT_GE(fixture["normal_quantiles"].size(), 20u);
  for (const auto& q : fixture["normal_quantiles"]) {
    const double p = q["p"].get<double>(), z = q["z"].get<double>();
    // Acklam alone is good to about 1e-9 relative; the Halley step must bring it to ~1e-14.
    EXPECT_NEAR(eval::normal_quantile(p), z, 1e-13 * std::max(1.0, std::abs(z))) << "p = " << p;
  }
  EXPECT_EQ(eval::normal_quantile(0.5), 0.0);
  EXPECT_NEAR(eval::normal_quantile(0.975), 1.959963984540054, 1e-14);
  for (double bad : {0.0, 1.0, -0.1, 1.5, std::nan("")}) EXPECT_THROW(eval::normal_quantile(bad), OptionError) << bad;
}

TEST(WilsonInterval, MatchesScipyReferenceValues) {
  const auto fixture = wilson_fixture();
  ASSERT_GE(fixture["intervals"].size(), 90u);
  for (const auto& c : fixture["intervals"]) {
    const auto k = c["successes"].get<int64_t>(), n = c["trials"].get<int64_t>();
    const double confidence = c["confidence"].get<double>();
    const auto i = eval::wilson_interval(k, n, confidence);
    EXPECT_NEAR(i.low, c["low"].get<double>(), 1e-12) << k << "/" << n << " at " << confidence;
    EXPECT_NEAR(i.high, c["high"].get<double>(), 1e-12) << k << "/" << n << " at " << confidence;
  }
}

TEST(WilsonInterval, GivesTheDemosPlusMinusFivePointsAndExactEnds) {
  // 133 of 150 = 88.7%: the interval is about ±5 points wide, and not symmetric around p̂.
  const auto demo = eval::wilson_interval(133, 150);
  EXPECT_NEAR(demo.low, 0.825997250162395, 1e-12);
  EXPECT_NEAR(demo.high, 0.928025760859626, 1e-12);
  EXPECT_GT((demo.high - demo.low) / 2, 0.045);
  EXPECT_LT((demo.high - demo.low) / 2, 0.055);
  EXPECT_GT(133.0 / 150 - demo.low, demo.high - 133.0 / 150);
  // k = 0 and k = n: the end is exact and the other side informative, unlike p̂ ± z·se.
  EXPECT_EQ(eval::wilson_interval(0, 10).low, 0.0);
  EXPECT_NEAR(eval::wilson_interval(0, 10).high, 0.2775327998628892, 1e-12);
  EXPECT_EQ(eval::wilson_interval(10, 10).high, 1.0);
  EXPECT_NEAR(eval::wilson_interval(10, 10).low, 1 - 0.2775327998628892, 1e-12);
  // No images: nothing is known.
  EXPECT_EQ(eval::wilson_interval(0, 0).low, 0.0);
  EXPECT_EQ(eval::wilson_interval(0, 0).high, 1.0);
  // Symmetric in successes and failures; wider at higher confidence; narrower with more trials.
  for (int64_t k : {0, 3, 50, 99}) {
    const auto a = eval::wilson_interval(k, 100), b = eval::wilson_interval(100 - k, 100);
    EXPECT_NEAR(a.low, 1 - b.high, 1e-12);
    const auto wide = eval::wilson_interval(k, 100, 0.99);
    EXPECT_LE(wide.low, a.low);
    EXPECT_GE(wide.high, a.high);
  }
  const auto large = eval::wilson_interval(8870, 10000);
  EXPECT_LT(large.high - large.low, (demo.high - demo.low) / 5);
}

TEST(WilsonInterval, RejectsBadArguments) {
  EXPECT_THROW(eval::wilson_interval(-1, 10), OptionError);
  EXPECT_THROW(eval::wilson_interval(11, 10), OptionError);
  EXPECT_THROW(eval::wilson_interval(0, -1), OptionError);
  for (double bad : {0.0, 1.0, -0.5, 1.2, std::nan("")}) {
    EXPECT_THROW(eval::wilson_interval(5, 10, bad), OptionError) << bad;
  }
  try {
    eval::wilson_interval(11, 10);
    ADD_FAILURE() << "accepted 11 successes of 10";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("wilson_interval"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("11"), std::string::npos) << e.what();
  }
}

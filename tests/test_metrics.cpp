#include "parry/eval/metrics.hpp"

#include <gtest/gtest.h>

#include "parry/core/errors.hpp"

using namespace parry;

namespace {
torch::Tensor t(std::vector<double> v) {
  return torch::tensor(v, torch::kFloat64);
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

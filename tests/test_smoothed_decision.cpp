#include "parry/certify/smoothed_decision.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "parry/conceal/output_policies.hpp"
#include "parry/core/errors.hpp"
#include "parry/core/guard.hpp"
#include "certify_support.hpp"

using namespace parry;

namespace {

using parry::testing::LinearTwoClass;

std::shared_ptr<const certify::SmoothedClassifier> smoothed(const Model& model, uint64_t seed) {
  return std::make_shared<const certify::SmoothedClassifier>(model,
                                                             certify::SmoothingOptions().sigma(0.25).seed(seed));
}

Guard smoothed_guard(const LinearTwoClass& linear, certify::SmoothedDecisionOptions options,
                     std::shared_ptr<const OutputPolicy> policy, uint64_t seed = 1) {
  const Model model = linear.model();
  return GuardBuilder(model, InputSpec(linear.shape[0], linear.shape[1], linear.shape[2]).max_batch(64))
      .set_decision_rule(std::make_shared<certify::SmoothedDecision>(smoothed(model, seed), options))
      .set_output_policy(std::move(policy))
      .build();
}

}  // namespace

TEST(SmoothedDecision, AGuardAnswersConfidentSamplesAndAbstainsOnTheBoundary) {
  const LinearTwoClass linear(17);
  const Guard guard = smoothed_guard(linear, certify::SmoothedDecisionOptions(), std::make_shared<LabelOnly>());
  const Response far = guard.predict(linear.at(0.4));
  EXPECT_EQ(far.verdict, Verdict::Accepted);
  EXPECT_EQ(far.reason, reason::kOk);
  EXPECT_EQ(far.labels, (std::vector<int64_t>{1}));
  EXPECT_TRUE(far.certified_radius.empty());
  EXPECT_FALSE(far.scores.defined());

  // One sample on the boundary, one far on the other side: the batch's
  // verdict is Abstained, the boundary sample has no label.
  const Response mixed = guard.predict(torch::stack({linear.at(0.0), linear.at(-0.4)}));
  EXPECT_EQ(mixed.verdict, Verdict::Abstained);
  EXPECT_EQ(mixed.reason, reason::kAbstained);
  EXPECT_STREQ(to_string(mixed.verdict), "abstained");
  EXPECT_EQ(mixed.labels, (std::vector<int64_t>{kNoLabel, 0}));
  EXPECT_EQ(mixed.flagged, (std::vector<uint8_t>{0, 0}));
  EXPECT_NE(guard.describe().find("SmoothedDecision(PREDICT n=1000 alpha=0.001, SmoothedClassifier(sigma=0.25"),
            std::string::npos)
      << guard.describe();
}

TEST(SmoothedDecision, TheOutputPolicyDecidesWhetherTheCertifiedRadiusLeaves) {
  const LinearTwoClass linear(17);
  const auto certifying = certify::SmoothedDecisionOptions().certify(true).certification(
      certify::CertifyOptions().n(20000));
  const torch::Tensor x = torch::stack({linear.at(0.3), linear.at(0.0)});
  const Response hidden = smoothed_guard(linear, certifying, std::make_shared<LabelOnly>()).predict(x);
  EXPECT_EQ(hidden.labels, (std::vector<int64_t>{1, kNoLabel}));
  EXPECT_TRUE(hidden.certified_radius.empty());
  const Response shown =
      smoothed_guard(linear, certifying, std::make_shared<LabelOnly>(/*show_certified_radius=*/true)).predict(x);
  EXPECT_EQ(shown.labels, (std::vector<int64_t>{1, kNoLabel}));
  ASSERT_EQ(shown.certified_radius.size(), 2u);
  EXPECT_GE(shown.certified_radius[0], parry::testing::radius_floor(0.3, 0.25, 20000, 0.001));  // 0.280
  EXPECT_LE(shown.certified_radius[0], 0.3);
  EXPECT_EQ(shown.certified_radius[1], 0.0);
  EXPECT_EQ(shown.verdict, Verdict::Abstained);
}

TEST(SmoothedDecision, AGuardOverRgbNonSquareImagesCertifiesAndAbstainsAlike) {
  const LinearTwoClass linear(19, {3, 6, 5});
  const auto certifying = certify::SmoothedDecisionOptions().certify(true).certification(
      certify::CertifyOptions().n(20000));
  const Guard guard = smoothed_guard(linear, certifying, std::make_shared<LabelOnly>(/*show_certified_radius=*/true));
  const Response response = guard.predict(torch::stack({linear.at(-0.3), linear.at(0.0)}));
  EXPECT_EQ(response.labels, (std::vector<int64_t>{0, kNoLabel}));
  ASSERT_EQ(response.certified_radius.size(), 2u);
  EXPECT_GE(response.certified_radius[0], parry::testing::radius_floor(0.3, 0.25, 20000, 0.001));
  EXPECT_LE(response.certified_radius[0], 0.3);
  EXPECT_EQ(response.verdict, Verdict::Abstained);
  // A grey 1×6×5 image is refused by the RGB input spec before any noise is drawn.
  EXPECT_THROW(guard.predict(torch::full({1, 1, 6, 5}, 0.5)), InputError);
}

TEST(SmoothedDecision, ScoresAreVoteSharesAndAbstainedRowsRevealNothing) {
  const LinearTwoClass linear(17);
  const torch::Tensor x = torch::stack({linear.at(0.1), linear.at(0.0)});
  const Response top = smoothed_guard(linear, certify::SmoothedDecisionOptions(), std::make_shared<conceal::TopK>(2),
                                      /*seed=*/5)
                           .predict(x);
  ASSERT_EQ(top.labels, (std::vector<int64_t>{1, kNoLabel}));
  // Row 0: the shares of 1,000 copies, P(class 1) = Φ(0.1/0.25) = 0.655.
  EXPECT_EQ(top.top_classes[0][0].item<int64_t>(), 1);
  EXPECT_NEAR(top.scores[0][0].item<double>(), 0.655, 0.05);
  EXPECT_NEAR(top.scores[0].sum().item<double>(), 1.0, 1e-6);
  const double share = top.scores[0][0].item<double>() * 1000;
  EXPECT_NEAR(share, std::round(share), 1e-2);  // a count of 1,000 copies
  // Row 1 abstained: neither its classes nor its shares leave.
  EXPECT_TRUE(torch::isnan(top.scores[1]).all().item<bool>());
  EXPECT_TRUE((top.top_classes[1] == -1).all().item<bool>());
  // Full shows radii too (for internal callers).
  const Response full = smoothed_guard(linear,
                                       certify::SmoothedDecisionOptions().certify(true).certification(
                                           certify::CertifyOptions().n(2000)),
                                       std::make_shared<conceal::Full>())
                            .predict(linear.at(0.5));
  ASSERT_EQ(full.certified_radius.size(), 1u);
  EXPECT_GT(full.certified_radius[0], 0.3);
}

TEST(SmoothedDecision, ConcurrentRequestsOnOneGuardAgree) {
  const LinearTwoClass linear(17);
  const Guard guard = smoothed_guard(linear, certify::SmoothedDecisionOptions(), std::make_shared<LabelOnly>());
  std::vector<std::thread> threads;
  std::vector<int> wrong(8, 0);
  for (size_t i = 0; i < wrong.size(); ++i) {
    threads.emplace_back([&, i] {
      for (int r = 0; r < 10; ++r) {
        const Response response = guard.predict(torch::stack({linear.at(0.3), linear.at(-0.3)}));
        wrong[i] += response.labels != std::vector<int64_t>{1, 0} || response.verdict != Verdict::Accepted;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const int w : wrong) EXPECT_EQ(w, 0);
}

TEST(SmoothedDecision, RejectsANullClassifierAndBadOptions) {
  const LinearTwoClass linear(17);
  EXPECT_THROW((void)certify::SmoothedDecision(nullptr), OptionError);
  EXPECT_THROW((void)certify::SmoothedDecision(smoothed(linear.model(), 1),
                                         certify::SmoothedDecisionOptions().certification(
                                             certify::CertifyOptions().n0(500).n(100))),
               OptionError);
  EXPECT_THROW(GuardBuilder(linear.model(), InputSpec(1, 4, 4)).set_decision_rule(nullptr), OptionError);
  // Malformed input is refused by the Guard before any noise is drawn.
  const Guard guard = smoothed_guard(linear, certify::SmoothedDecisionOptions(), std::make_shared<LabelOnly>());
  EXPECT_THROW(guard.predict(torch::full({1, 4, 4}, std::nan(""))), InputError);
  EXPECT_THROW(guard.predict(torch::zeros({1, 5, 4})), InputError);
}

namespace {
// A decision rule that answers what it is told: for the Guard's own checks.
class FixedRule final : public DecisionRule {
 public:
  explicit FixedRule(Decisions decisions) : decisions_(std::move(decisions)) {}
  Decisions decide(const torch::Tensor&) const override { return decisions_; }
  std::string describe() const override { return "FixedRule"; }

 private:
  Decisions decisions_;
};

// Flags every sample whose first pixel is above ½.
class BrightDetector final : public Detector {
 public:
  BrightDetector() { set_threshold(0.5); }
  std::string name() const override { return "bright"; }
  std::string describe() const override { return "bright"; }
  torch::Tensor score(const DetectorInput& input) const override { return input.batch.flatten(1).select(1, 0); }
  using Detector::score;
};
}  // namespace

TEST(SmoothedDecision, AFlagTakesPrecedenceOverAnAbstentionAndMalformedDecisionsAreInternalErrors) {
  const LinearTwoClass linear(17);
  Decisions two;
  two.labels = {kNoLabel, 1};
  two.probabilities = torch::tensor({{0.5, 0.5}, {0.1, 0.9}});
  const Guard flagged = GuardBuilder(linear.model(), InputSpec(1, 4, 4))
                            .set_decision_rule(std::make_shared<FixedRule>(two))
                            .add_detector(std::make_shared<BrightDetector>())
                            .build();
  const Response r = flagged.predict(torch::stack({torch::full({1, 4, 4}, 0.2), torch::full({1, 4, 4}, 0.9)}));
  EXPECT_EQ(r.verdict, Verdict::Flagged);
  EXPECT_EQ(r.labels, (std::vector<int64_t>{kNoLabel, 1}));
  EXPECT_EQ(r.flagged, (std::vector<uint8_t>{0, 1}));

  Decisions short_answer = two;
  short_answer.labels = {1};  // one label for two samples
  Decisions bad_radii = two;
  bad_radii.certified_radius = {0.1, 0.2, 0.3};
  Decisions no_probabilities = two;
  no_probabilities.probabilities = torch::Tensor();
  for (const auto& decisions : {short_answer, bad_radii, no_probabilities}) {
    const Guard guard =
        GuardBuilder(linear.model(), InputSpec(1, 4, 4)).set_decision_rule(std::make_shared<FixedRule>(decisions)).build();
    try {
      guard.predict(torch::full({2, 1, 4, 4}, 0.3));
      ADD_FAILURE() << "a malformed decision was served";
    } catch (const InternalError& e) {
      EXPECT_STREQ(e.what(), "internal error while processing the request");
      EXPECT_NE(e.detail().find("FixedRule"), std::string::npos) << e.detail();
    }
  }
}

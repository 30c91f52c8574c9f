#include "parry/conceal/output_policies.hpp"

#include <limits>

#include "test_support.hpp"

using namespace parry;

namespace {
const torch::Tensor kLogits = torch::tensor({{1.0f, 3.0f, 2.0f, 0.0f}, {0.5f, 0.1f, 0.2f, 4.0f}});
}

TEST(OutputPolicies, LabelOnlyRevealsOnlyLabels) {
  Response r;
  conceal::LabelOnly().fill(kLogits, r);
  EXPECT_EQ(r.labels, (std::vector<int64_t>{1, 3}));
  EXPECT_FALSE(r.scores.defined());
  EXPECT_FALSE(r.top_classes.defined());
}

TEST(OutputPolicies, LabelsAreTorchArgmaxForEveryLayoutAndForNaN) {
  torch::manual_seed(4);
  torch::Tensor logits = torch::randn({64, 10});
  logits[3] = 1.0f;  // ties: the first maximum
  logits[5][2] = 7.0f;
  logits[5][8] = 7.0f;
  logits[7][0] = std::numeric_limits<float>::quiet_NaN();  // a NaN counts as the maximum
  logits[9][4] = std::numeric_limits<float>::quiet_NaN();
  logits[9][6] = std::numeric_limits<float>::quiet_NaN();
  logits[11][9] = std::numeric_limits<float>::quiet_NaN();
  const auto expect_argmax = [](const torch::Tensor& l) {
    Response r;
    LabelOnly().fill(l, r);
    const torch::Tensor expected = l.argmax(1).contiguous();
    EXPECT_EQ(r.labels,
              std::vector<int64_t>(expected.data_ptr<int64_t>(), expected.data_ptr<int64_t>() + expected.numel()));
  };
  expect_argmax(logits);                                                      // the scan
  expect_argmax(logits.t().contiguous().t());                                 // a strided view: the kernel
  expect_argmax(logits.to(torch::kFloat64));                                  // another dtype: the kernel
  expect_argmax(torch::tensor({{-std::numeric_limits<float>::infinity()}}));  // one class
}

TEST(OutputPolicies, TopKRevealsKClasses) {
  Response r;
  conceal::TopK(2).fill(kLogits, r);
  EXPECT_EQ(r.labels, (std::vector<int64_t>{1, 3}));
  EXPECT_TRUE(torch::equal(r.top_classes, torch::tensor({{1, 2}, {3, 0}})));
  auto probs = torch::softmax(kLogits, 1);
  EXPECT_TRUE(torch::allclose(r.scores[0], torch::stack({probs[0][1], probs[0][2]})));
  EXPECT_EQ(r.scores.sizes(), (std::vector<int64_t>{2, 2}));
  // k above the class count reveals all classes, no more.
  Response all;
  conceal::TopK(10).fill(kLogits, all);
  EXPECT_EQ(all.scores.size(1), 4);
  EXPECT_THROW(conceal::TopK(0), OptionError);
}

TEST(OutputPolicies, RoundedScores) {
  Response r;
  conceal::RoundedScores(1).fill(kLogits, r);
  auto probs = torch::softmax(kLogits, 1);
  EXPECT_TRUE(torch::allclose(r.scores, torch::round(probs * 10) / 10));
  EXPECT_TRUE(torch::allclose(r.scores * 10, torch::round(r.scores * 10), 0, 1e-5)) << "not rounded";
  EXPECT_THROW(conceal::RoundedScores(-1), OptionError);
  EXPECT_THROW(conceal::RoundedScores(7), OptionError);
}

TEST(OutputPolicies, FullRevealsProbabilities) {
  Response r;
  conceal::Full().fill(kLogits, r);
  EXPECT_TRUE(torch::allclose(r.scores, torch::softmax(kLogits, 1)));
  EXPECT_EQ(conceal::Full().describe(), "Full");
}

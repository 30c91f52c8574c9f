#include "attack_support.hpp"

#include "parry/conceal/throttle.hpp"

using namespace parry;
using namespace parry::attack;

namespace {
class HopSkipJumpTest : public parry::testing::SeededTest {};
}  // namespace

TEST_F(HopSkipJumpTest, ShrinksTheDistanceAgainstALabelOnlyGuard) {
  auto data = parry::testing::correctly_classified(4);
  Guard guard(parry::testing::reference_model(), InputSpec(1, 28, 28).max_batch(128));  // label-only default
  auto r = hop_skip_jump(guard, data.images, data.labels, HopSkipJumpOptions().max_queries(1500));
  RecordProperty("hsj_start_l2", std::to_string(r.start_norm.median().item<float>()));
  RecordProperty("hsj_final_l2", std::to_string(r.norm.median().item<float>()));
  ASSERT_TRUE(r.success.all().item<bool>());
  EXPECT_TRUE((r.norm < 0.7 * r.start_norm).all().item<bool>()) << r.start_norm << r.norm;
  EXPECT_LE(r.queries.max().item<int64_t>(), 1500);
  // Every kept point is adversarial and valid.
  auto fooled = parry::testing::reference_model().logits(r.adversarial).argmax(1).ne(data.labels);
  EXPECT_TRUE(fooled.all().item<bool>());
  EXPECT_GE(r.adversarial.min().item<float>(), 0.f);
  EXPECT_LE(r.adversarial.max().item<float>(), 1.f);
  EXPECT_TRUE(torch::allclose(r.norm, perturbation_norm(r.adversarial - data.images, Norm::L2)));
}

TEST_F(HopSkipJumpTest, TargetedFromAnImageOfTheTargetClass) {
  auto data = parry::testing::correctly_classified(8);
  // Targets: the class of the next image; starts: that image.
  auto targets = data.labels.roll(1);
  auto starts = data.images.roll(1, 0);
  auto keep = targets.ne(data.labels).nonzero().flatten().slice(0, 0, 3);
  Guard guard(parry::testing::reference_model(), InputSpec(1, 28, 28).max_batch(128));
  auto x = data.images.index_select(0, keep);
  auto t = targets.index_select(0, keep);
  auto r = hop_skip_jump(guard, x, t, HopSkipJumpOptions().max_queries(1500).targeted(starts.index_select(0, keep)));
  ASSERT_TRUE(r.success.all().item<bool>());
  auto predicted = parry::testing::reference_model().logits(r.adversarial).argmax(1);
  EXPECT_TRUE(torch::equal(predicted, t)) << "every kept point is classified as its target";
  EXPECT_TRUE((r.norm < r.start_norm).all().item<bool>()) << r.start_norm << r.norm;
  EXPECT_THROW(hop_skip_jump(guard, x, t, HopSkipJumpOptions().targeted(starts)), OptionError) << "shape mismatch";
}

TEST_F(HopSkipJumpTest, AnAlreadyMisclassifiedImageIsItsOwnExample) {
  auto data = parry::testing::correctly_classified(2);
  auto wrong = (data.labels + 1) % 10;  // pretend labels: the model disagrees with them
  Guard guard(parry::testing::reference_model(), InputSpec(1, 28, 28));
  auto r = hop_skip_jump(guard, data.images, wrong, HopSkipJumpOptions().max_queries(100));
  EXPECT_TRUE(r.success.all().item<bool>());
  EXPECT_TRUE(torch::equal(r.adversarial, data.images));
  EXPECT_TRUE(torch::equal(r.queries, torch::ones({2}, torch::kInt64)));
}

TEST_F(HopSkipJumpTest, StopsWhenThrottled) {
  auto data = parry::testing::correctly_classified(2);
  double now = 0;
  const Guard guard = GuardBuilder(parry::testing::reference_model(), InputSpec(1, 28, 28).max_batch(128))
                          .add_gate(std::make_shared<conceal::Throttle>(
                              conceal::ThrottleOptions().rate(1).burst(300).clock([&now] { return now; })))
                          .build();
  auto r = hop_skip_jump(guard, data.images, data.labels, HopSkipJumpOptions().max_queries(5000));
  EXPECT_TRUE(r.stopped_by_defense);
  EXPECT_EQ(r.stop_reason, "rate_limited");
  EXPECT_LE(r.queries.sum().item<int64_t>(), 300);
  EXPECT_THROW(HopSkipJumpOptions().max_queries(5), OptionError);
  EXPECT_THROW(HopSkipJumpOptions().initial_probes(0), OptionError);
}
